"""Donor variants of one technology: compositions drawn per type, a technical effect only when asked for."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.tasks.data import simulated
from benchmarks.tasks.donors import donors, load_donors, technical_shift


def test_donors_take_every_cell_of_one_technology_with_their_own_composition():
    adata = simulated(n_cells=900, n_genes=200)
    out = donors(adata, n_donors=4, max_cells=10_000, seed=0)
    assert out.n_obs == adata.n_obs and out.obs["batch"].nunique() == 4
    np.testing.assert_array_equal(out.X.toarray(), adata.X.toarray())  # expression untouched
    shares = pd.crosstab(out.obs["cell_type"], out.obs["batch"], normalize="index").to_numpy()
    assert shares.max() > 0.5  # a donor holds most of some type
    assert not np.allclose(shares, shares[0])  # the types are spread differently
    assert donors(adata, max_cells=300, seed=0).n_obs == 300


def test_a_technical_shift_thins_counts_by_donor_and_gene():
    out = donors(simulated(n_cells=600, n_genes=200), seed=0)
    shifted = technical_shift(out, sigma=1.0, keep=0.6, seed=0)
    x, y = out.X.toarray(), shifted.X.toarray()
    assert (y <= x).all() and np.array_equal(y, np.rint(y))
    assert 0.5 < y.sum() / x.sum() < 0.7
    a, b = (out.obs["batch"] == "donor0").to_numpy(), (out.obs["batch"] == "donor1").to_numpy()
    kept_a = y[a].sum(0) / np.maximum(x[a].sum(0), 1)
    kept_b = y[b].sum(0) / np.maximum(x[b].sum(0), 1)
    assert np.corrcoef(kept_a, kept_b)[0, 1] < 0.5  # each donor's genes are captured differently


def test_only_donor_variants_are_built(tmp_path):
    with pytest.raises(ValueError, match="not a donor variant"):
        load_donors(tmp_path, "cbmc_citeseq:skewed", [])
    skipped: list[str] = []
    assert load_donors(tmp_path, "cbmc_citeseq:donors", skipped) is None and skipped
