"""Sources normalized together or apart: what 'auto' decides, what it records, and that 'shared' is one BN."""

import numpy as np
import pytest

from scconcerto import Concerto
from scconcerto._errors import InputError
from scconcerto.data.source_effect import SHARED_BELOW
from scconcerto.nn.dsbn import DomainSpecificBatchNorm1d


@pytest.fixture(scope="module")
def donors():
    """One batch of one technology split into two donors of very different compositions (types 0-1 mostly in
    donor 1, types 2-3 mostly in donor 0): no technical effect between them."""
    import pandas as pd

    from scconcerto.datasets import simulate

    sim = simulate(600, 300, n_types=4, n_batches=1, seed=3)
    t = sim.obs["cell_type"].astype(str).str[-1].astype(int).to_numpy()
    second = np.random.default_rng(0).random(sim.n_obs) < np.where(t < 2, 0.85, 0.15)
    sim.obs["batch"] = pd.Categorical(np.where(second, "donor_1", "donor_0"))
    return sim


def _norms(model):
    return [m for m in model.network.modules() if isinstance(m, DomainSpecificBatchNorm1d)]


def test_auto_normalizes_donors_of_one_technology_together_and_every_source_uses_the_shared_statistics(
        donors, tmp_path):
    model = Concerto(donors, batch_key="batch", seed=0).train(epochs=2, progress=False, device="cpu")
    assert model.train_config.source_norm == "shared"
    assert model.training_record.source_shift < SHARED_BELOW
    assert model.train_config.balance == "none"  # one normalization: no source statistics to balance
    for norm in _norms(model):
        for name in ("weight", "bias", "running_mean", "running_var"):
            values = getattr(norm, name).detach()
            np.testing.assert_array_equal(values[1].numpy(), values[0].numpy())
    np.testing.assert_allclose(model.embed(donors, device="cpu"), model.reference.embedding, atol=1e-5)
    np.testing.assert_array_equal(model.reference.domains, donors.obs["batch"].cat.codes.to_numpy())
    model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    assert loaded.train_config.source_norm == "shared"
    assert loaded.training_record.source_shift == pytest.approx(model.training_record.source_shift)
    np.testing.assert_allclose(loaded.embed(donors, device="cpu"), model.reference.embedding, atol=1e-5)


def test_auto_keeps_per_source_statistics_when_the_sources_are_shifted(donors):
    from scconcerto.datasets import simulate

    shifted = simulate(600, 300, n_types=4, n_batches=2, batch_effect=1.5, seed=3)
    model = Concerto(shifted, batch_key="batch", seed=0).train(epochs=1, progress=False, device="cpu")
    assert model.train_config.source_norm == "source"
    assert model.training_record.source_shift >= SHARED_BELOW
    norm = _norms(model)[0]
    assert not np.allclose(norm.running_mean[0].numpy(), norm.running_mean[1].numpy())


def test_shared_normalization_trains_what_one_batch_norm_without_a_batch_key_trains(donors):
    shared = Concerto(donors, batch_key="batch", seed=0).train(epochs=2, progress=False, device="cpu",
                                                               source_norm="shared", prepare_mapping=False)
    assert shared.train_config.source_norm == "shared" and shared.training_record.source_shift is None
    one = Concerto(donors, seed=0).train(epochs=2, progress=False, device="cpu", prepare_mapping=False)
    np.testing.assert_allclose(shared.reference.embedding, one.reference.embedding, atol=1e-4)


def test_source_norm_is_checked_and_one_source_is_never_measured(donors):
    with pytest.raises(InputError, match="source_norm must be one of auto, source, shared"):
        Concerto(donors, batch_key="batch").train(epochs=1, progress=False, device="cpu", source_norm="donor")
    single = Concerto(donors, seed=0).train(epochs=1, progress=False, device="cpu", prepare_mapping=False)
    assert single.train_config.source_norm == "source" and single.training_record.source_shift is None


def test_a_backed_reference_decides_and_trains_as_the_same_cells_in_memory(donors, tmp_path):
    from scconcerto.data.backed import read_backed

    path = tmp_path / "donors.h5ad"
    donors.write_h5ad(path)
    memory = Concerto(donors, batch_key="batch", seed=0).train(epochs=2, progress=False, device="cpu",
                                                               prepare_mapping=False)
    backed = Concerto(read_backed(path), batch_key="batch", seed=0).train(epochs=2, progress=False, device="cpu",
                                                                          prepare_mapping=False)
    assert backed.train_config == memory.train_config and backed.train_config.source_norm == "shared"
    assert backed.training_record.source_shift == pytest.approx(memory.training_record.source_shift)
    np.testing.assert_allclose(backed.reference.embedding, memory.reference.embedding, atol=1e-4)
