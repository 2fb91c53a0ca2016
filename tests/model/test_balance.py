"""Training with source statistics balanced for composition: settings recorded, groups kept, queries alike."""

import numpy as np
import pytest

from scconcerto import Concerto
from scconcerto._errors import InputError


def _skewed(sim):
    """Batch 0 keeps types 0-1 whole and a fifth of types 2-3; batch 1 the reverse."""
    t = sim.obs["cell_type"].astype(str).str[-1].astype(int).to_numpy()
    b = sim.obs["batch"].astype(str).str[-1].astype(int).to_numpy()
    keep = ((t < 2) == (b == 0)) | (np.arange(sim.n_obs) % 5 == 0)
    return sim[keep].copy()


def test_balanced_training_records_its_groups_and_weights(sim, tmp_path, monkeypatch):
    from scconcerto.train import plan

    seen = {}
    original = plan.ContrastivePlan.__init__

    def spy(self, network, config, total_steps=None, cells=None, loader_options=None):
        seen["weights"] = None if cells is None else cells.balance_weights
        original(self, network, config, total_steps, cells, loader_options)

    monkeypatch.setattr(plan.ContrastivePlan, "__init__", spy)
    data = _skewed(sim)
    model = Concerto(data, batch_key="batch", label_key="cell_type").train(epochs=1, progress=False, device="cpu",
                                                                           balance="labels")
    assert model.train_config.balance == "labels"
    groups = model.reference.balance_groups
    np.testing.assert_array_equal(groups, model.reference.labels["cell_type"])
    w, types, batches = seen["weights"], groups, data.obs["batch"].to_numpy()
    for b in np.unique(batches):  # every type has the same weighted share within each batch
        mine = batches == b
        shares = np.bincount(types[mine], weights=w[mine]) / w[mine].sum()
        np.testing.assert_allclose(shares, 0.25, atol=1e-5)
    model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    assert loaded.train_config.balance == "labels"
    np.testing.assert_array_equal(loaded.reference.balance_groups, groups)


def test_unlabelled_training_balances_by_clusters_and_maps_queries_alike(sim):
    data = _skewed(sim)
    ref, query = data[data.obs["batch"] == "batch_0"].copy(), data[data.obs["batch"] == "batch_1"].copy()
    ref.obs["donor"] = np.where(np.arange(ref.n_obs) % 2 == 0, "a", "b")  # two sources in the reference
    model = Concerto(ref, batch_key="donor").train(epochs=1, progress=False, device="cpu", balance="auto",
                                                   source_norm="source")  # random donors: 'auto' would share
    assert model.train_config.balance == "clusters"
    assert model.reference.balance_groups.shape == (ref.n_obs,)
    result = model.map_query(query, batch_key="batch", impute=False, place=False)
    assert result.info["adabn"]["balanced"] and result.info["adabn"]["groups"] == "clusters"
    assert result.info["adabn"]["target"] == "equal" and result.info["adabn"]["label_key"] is None
    assert np.isfinite(result.embedding).all()


def test_one_source_or_no_balance_trains_plain_statistics(sim):
    small = sim[:200].copy()
    one = Concerto(small).train(epochs=1, progress=False, device="cpu", balance="auto")
    assert one.train_config.balance == "none" and one.reference.balance_groups is None
    plain = Concerto(small, batch_key="batch").train(epochs=1, progress=False, device="cpu", balance="none")
    assert plain.train_config.balance == "none"


def test_bad_balance_settings_are_clear_errors(sim):
    small = sim[:200].copy()
    with pytest.raises(InputError, match="balance must be one of"):
        Concerto(small, batch_key="batch").train(epochs=1, progress=False, balance="yes")
    with pytest.raises(InputError, match="needs label keys"):
        Concerto(small, batch_key="batch").train(epochs=1, progress=False, balance="labels")
