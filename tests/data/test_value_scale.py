"""A dataset's values put on the reference's scale when one side holds counts and the other normalized values."""

import numpy as np
import pytest
import scipy.sparse as sp

from scconcerto.data import prepare_cells, setup_reference
from scconcerto.data.value_scale import PROFILE_POINTS, check_profile, matching_map, needs_matching
from scconcerto.datasets import simulate


def log2_cpm(X) -> sp.csr_matrix:
    """``log2(1 + counts per million)``: a normalization other than scConcerto's own (ln of counts per 10,000)."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X = sp.diags((1e6 / np.asarray(X.sum(axis=1)).ravel()).astype(np.float32)) @ X
    X.data = np.log2(1 + X.data).astype(np.float32)
    return X.tocsr()


def percentiles(values: np.ndarray) -> np.ndarray:
    return np.percentile(values[values > 0], np.linspace(0, 100, PROFILE_POINTS))


def test_matched_values_take_the_reference_distribution_and_keep_their_order():
    rng = np.random.default_rng(0)
    query = rng.gamma(2.0, 0.8, 5000)
    reference = 3.0 + 2.5 * np.log1p(rng.gamma(3.0, 1.0, 8000))
    value_map = matching_map(percentiles(query), percentiles(reference))
    mapped = value_map(query)
    np.testing.assert_allclose(np.percentile(mapped, [10, 50, 90]), np.percentile(reference, [10, 50, 90]),
                               rtol=0.03)
    order = np.argsort(query)
    assert np.all(np.diff(mapped[order]) >= 0)  # monotone: each cell keeps the order of its genes
    np.testing.assert_array_equal(value_map(np.array([0.0, 0.0])), [0.0, 0.0])  # zeros stay zero


def test_tied_percentiles_of_a_shallow_dataset_map_to_one_value():
    """Counts of 1 fill the lower half of a shallow dataset's values: one value, mapped to the mean of the
    reference percentiles it covers (not to the lowest)."""
    source = np.concatenate([np.full(50, 2.0), np.linspace(2.5, 6.0, PROFILE_POINTS - 50)])
    target = np.linspace(1.0, 11.0, PROFILE_POINTS)
    mapped = matching_map(source, target)(np.array([2.0]))
    np.testing.assert_allclose(mapped, [target[:50].mean()], rtol=1e-6)
    assert matching_map(np.zeros(0), target) is None


def test_which_kinds_are_matched():
    assert needs_matching("counts", "log_normalized") and needs_matching("log_normalized", "counts")
    assert needs_matching("normalized", "counts")
    assert not needs_matching("counts", "counts") and not needs_matching("log_normalized", "log_normalized")


def test_check_profile_refuses_a_damaged_profile():
    good = np.linspace(0.5, 9.0, PROFILE_POINTS)
    np.testing.assert_array_equal(check_profile(good), good)
    assert check_profile([]).size == 0
    for bad in (good[::-1], good[:10], np.r_[good[:-1], np.nan], np.r_[-1.0, good[1:]]):
        with pytest.raises(ValueError):
            check_profile(bad)


@pytest.fixture(scope="module")
def counts_and_log2():
    adata = simulate(n_cells=400, n_genes=200, n_types=4, n_batches=1, seed=3)
    normalized = adata.copy()
    normalized.X = log2_cpm(adata.X)
    return adata, normalized


@pytest.mark.parametrize("reference_is_counts", [False, True])
def test_a_query_of_the_other_kind_is_read_on_the_references_scale(counts_and_log2, reference_is_counts):
    """The same cells as counts and as log2 counts per million: prepared under the other one's setup, their
    values are matched (and only then) and land on the reference's own normalized values, cell by cell."""
    counts, log2 = counts_and_log2
    reference, query = (counts, log2) if reference_is_counts else (log2, counts)
    setup = setup_reference(reference, hvg=None)
    assert len(setup.value_profile) == PROFILE_POINTS
    own = prepare_cells(reference, setup).cells
    other = prepare_cells(query, setup).cells
    assert own.value_map is None and other.value_map is not None
    rows = np.arange(own.n_cells)
    ind_ref, val_ref, off_ref = own.rna_rows(rows)
    ind_q, val_q, off_q = other.rna_rows(rows)
    np.testing.assert_array_equal(ind_ref, ind_q)
    np.testing.assert_array_equal(off_ref, off_q)
    # the distributions agree, and so do the values themselves (the two normalizations are nearly one monotone
    # function of each other), far closer than before matching
    unmatched = prepare_cells(query, setup).cells
    unmatched.value_map = None
    _, val_raw, _ = unmatched.rna_rows(rows)
    before = np.median(np.abs(val_raw - val_ref))
    after = np.median(np.abs(val_q - val_ref))
    assert after < 0.1 * before
    assert after < 0.05 * np.median(val_ref)


def test_a_model_saved_before_profiles_loads_and_a_damaged_profile_is_refused(tmp_path, counts_and_log2):
    import json

    from scconcerto import Concerto
    from scconcerto._errors import ModelFileError
    from scconcerto.model.storage import config_checksum

    def write(config):
        config["config_checksum"] = config_checksum(config)
        config_path.write_text(json.dumps(config))

    counts, _ = counts_and_log2
    model = Concerto(counts, seed=0)
    model.train(epochs=1, progress=False, prepare_mapping=False)
    model.save(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    del config["setup"]["value_profile"]  # as written before the profile was kept
    write(config)
    old = Concerto.load(tmp_path / "m")
    assert old.setup.value_profile == []
    config["setup"]["value_profile"] = [3.0, 2.0]
    write(config)
    with pytest.raises(ModelFileError, match="value_profile"):
        Concerto.load(tmp_path / "m")


def test_mapping_and_the_map_command_report_whether_the_values_were_matched(tmp_path, counts_and_log2, capsys):
    import json

    from scconcerto import Concerto
    from scconcerto.cli import main

    counts, log2 = counts_and_log2
    model = Concerto(log2, seed=0)
    model.train(epochs=1, progress=False, prepare_mapping={"umap": False})
    same, other = log2.copy(), counts.copy()
    model.map_query(same, place=False, device="cpu")
    model.map_query(other, place=False, device="cpu")
    assert same.uns["scconcerto_mapping"]["values"] == {"kind": "log_normalized", "reference_kind": "log_normalized",
                                                        "matched_to_reference": False}
    assert other.uns["scconcerto_mapping"]["values"]["matched_to_reference"]
    model.save(tmp_path / "model")
    counts.write_h5ad(tmp_path / "counts.h5ad")
    assert main(["map", str(tmp_path / "model"), str(tmp_path / "counts.h5ad"), "--out", str(tmp_path / "m.h5ad"),
                 "--no-umap", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["values"] == {"kind": "counts", "reference_kind": "log_normalized", "matched_to_reference": True}
