"""Tests for the seeded single-cell simulator."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scconcerto.datasets import simulate, simulate_to_h5ad

SMALL = dict(n_cells=600, n_genes=300, n_types=4, n_batches=3, seed=7)


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return simulate(**SMALL, n_proteins=6)


@pytest.fixture(scope="module")
def adata_major() -> ad.AnnData:
    return simulate(n_cells=800, n_genes=400, n_types=6, n_major=2, n_batches=2, n_proteins=8, seed=3)


def _normalized(a: ad.AnnData) -> np.ndarray:
    X = a.X.toarray().astype(np.float64)
    return X / X.sum(axis=1, keepdims=True) * 1e4


def _assert_adata_equal(a: ad.AnnData, b: ad.AnnData) -> None:
    assert a.shape == b.shape
    assert sp.issparse(a.X) and sp.issparse(b.X)
    assert a.X.dtype == b.X.dtype
    np.testing.assert_array_equal(a.X.indptr, b.X.indptr)
    np.testing.assert_array_equal(a.X.indices, b.X.indices)
    np.testing.assert_array_equal(a.X.data, b.X.data)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert set(a.obsm.keys()) == set(b.obsm.keys())
    for key in a.obsm:
        np.testing.assert_array_equal(np.asarray(a.obsm[key]), np.asarray(b.obsm[key]))
    _assert_nested_equal(a.uns, b.uns)


def _assert_nested_equal(x, y) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and set(x) == set(y), (sorted(x), sorted(y))
        for k in x:
            _assert_nested_equal(x[k], y[k])
    elif isinstance(x, (list, tuple, np.ndarray)):
        assert list(np.asarray(x).tolist()) == list(np.asarray(y).tolist())
    else:
        assert x == y or (x != x and y != y), (x, y)


def test_shapes_dtypes_and_format(adata: ad.AnnData) -> None:
    assert adata.shape == (600, 300)
    X = adata.X
    assert isinstance(X, sp.csr_matrix)
    assert X.dtype == np.float32
    assert X.has_sorted_indices
    assert np.all(np.diff(X.indptr) >= 0)
    for i in range(0, 600, 97):  # indices strictly increasing within rows
        assert np.all(np.diff(X.indices[X.indptr[i] : X.indptr[i + 1]]) > 0)
    assert np.all(X.data > 0), "explicit zeros must be removed"
    np.testing.assert_array_equal(X.data, np.round(X.data))
    assert list(adata.obs_names[:3]) == ["cell_0", "cell_1", "cell_2"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]
    assert adata.obs["cell_type"].dtype == "category"
    assert adata.obs["batch"].dtype == "category"
    assert list(adata.obs["cell_type"].cat.categories) == [f"type_{k}" for k in range(4)]
    assert list(adata.obs["batch"].cat.categories) == [f"batch_{b}" for b in range(3)]
    assert "cell_type_major" not in adata.obs
    prot = adata.obsm["protein"]
    assert prot.shape == (600, 6) and prot.dtype == np.float32 and isinstance(prot, np.ndarray)
    np.testing.assert_array_equal(prot, np.round(prot))
    assert adata.obsm["protein_truth"].shape == (600, 6)
    assert adata.obsm["protein_truth"].dtype == np.float32
    assert list(adata.uns["protein_names"]) == [f"prot_{j}" for j in range(6)]
    sim = adata.uns["simulation"]
    assert sim["seed"] == 7 and sim["n_cells"] == 600 and sim["n_types"] == 4
    assert set(sim["marker_genes"]) == {f"type_{k}" for k in range(4)}
    assert all(len(v) == 20 for v in sim["marker_genes"].values())


def test_sparsity_is_realistic() -> None:
    a = simulate(n_cells=400, seed=1)  # defaults: 500 genes, depth 2000
    frac = a.X.getnnz(axis=1) / a.n_vars
    assert 0.10 <= frac.mean() <= 0.45
    # a few genes dominate: the top 5% of genes carry a large share of counts
    totals = np.sort(np.asarray(a.X.sum(axis=0)).ravel())[::-1]
    assert totals[: len(totals) // 20].sum() / totals.sum() > 0.3


def test_determinism() -> None:
    a = simulate(**SMALL, n_proteins=3)
    b = simulate(**SMALL, n_proteins=3)
    _assert_adata_equal(a, b)
    c = simulate(**{**SMALL, "seed": 8}, n_proteins=3)
    assert (a.X != c.X).nnz > 0
    assert not a.obs["cell_type"].equals(c.obs["cell_type"])


def test_chunk_size_does_not_change_data() -> None:
    a = simulate(**SMALL, chunk_size=50_000)
    b = simulate(**SMALL, chunk_size=37)
    _assert_adata_equal(a, b)


def test_threads_do_not_change_data(tmp_path: Path) -> None:
    kw = dict(n_cells=30_000, n_genes=300, n_types=4, n_batches=3, seed=3)  # 3 blocks of ~14k cells
    a = simulate(**kw, n_jobs=1)
    b = simulate(**kw, n_jobs=3, chunk_size=9_999)
    _assert_adata_equal(a, b)
    path = simulate_to_h5ad(tmp_path / "threads.h5ad", kw["n_cells"], kw["n_genes"], n_jobs=2,
                            **{k: v for k, v in kw.items() if k not in ("n_cells", "n_genes")})
    c = ad.read_h5ad(path)
    assert (c.X != a.X).nnz == 0
    with pytest.raises(ValueError, match="n_jobs"):
        simulate(**SMALL, n_jobs=0)


def test_every_type_in_every_batch(adata: ad.AnnData) -> None:
    tab = pd.crosstab(adata.obs["cell_type"], adata.obs["batch"])
    assert tab.shape == (4, 3)
    assert (tab.to_numpy() > 0).all()
    frac = adata.obs["cell_type"].value_counts(normalize=True)
    assert frac.min() >= 0.03
    # frequencies are unequal
    assert frac.max() / frac.min() > 1.2


def test_every_type_in_every_batch_minimal() -> None:
    a = simulate(n_cells=12, n_genes=200, n_types=4, n_batches=3, markers_per_type=5, seed=0)
    tab = pd.crosstab(a.obs["cell_type"], a.obs["batch"])
    assert (tab.to_numpy() == 1).all()
    for seed in range(5):  # few cells, unequal frequencies: still no empty (type, batch) cell
        a = simulate(n_cells=30, n_genes=200, n_types=6, n_batches=4, markers_per_type=5, seed=seed)
        tab = pd.crosstab(a.obs["cell_type"], a.obs["batch"], dropna=False)
        assert tab.shape == (6, 4)
        assert (tab.to_numpy() > 0).all(), seed
    with pytest.raises(ValueError, match="too small"):
        simulate(n_cells=11, n_genes=200, n_types=4, n_batches=3, markers_per_type=5)


def test_marker_genes_enriched(adata: ad.AnnData) -> None:
    norm = _normalized(adata)
    col = {g: i for i, g in enumerate(adata.var_names)}
    ratios = []
    for t, genes in adata.uns["simulation"]["marker_genes"].items():
        idx = [col[g] for g in genes]
        in_t = (adata.obs["cell_type"] == t).to_numpy()
        ratios.append(norm[in_t][:, idx].mean(0) / (norm[~in_t][:, idx].mean(0) + 1e-9))
    ratios = np.concatenate(ratios)
    assert np.median(ratios) > 3.0
    assert np.mean(ratios > 2.0) >= 0.9


def test_markers_are_disjoint(adata_major: ad.AnnData) -> None:
    sim = adata_major.uns["simulation"]
    sets = [set(v) for v in sim["marker_genes"].values()]
    sets += [set(v) for v in sim["major_marker_genes"].values()]
    assert sum(len(s) for s in sets) == len(set().union(*sets))
    marker_of = adata_major.var["marker_of"]
    for t, genes in sim["marker_genes"].items():
        assert (marker_of[list(genes)] == t).all()


def test_hierarchy(adata_major: ad.AnnData) -> None:
    obs = adata_major.obs
    assert obs["cell_type_major"].dtype == "category"
    assert list(obs["cell_type_major"].cat.categories) == ["major_0", "major_1"]
    # each fine type maps to exactly one major group, consistent with uns
    pairs = obs.groupby("cell_type", observed=True)["cell_type_major"].nunique()
    assert (pairs == 1).all()
    groups = adata_major.uns["simulation"]["major_groups"]
    for major, types in groups.items():
        assert set(obs.loc[obs["cell_type_major"] == major, "cell_type"].unique()) == set(types)
    # the major program is enriched in its group
    norm = _normalized(adata_major)
    col = {g: i for i, g in enumerate(adata_major.var_names)}
    for major, genes in adata_major.uns["simulation"]["major_marker_genes"].items():
        idx = [col[g] for g in genes]
        in_m = (obs["cell_type_major"] == major).to_numpy()
        ratio = norm[in_m][:, idx].mean() / norm[~in_m][:, idx].mean()
        assert ratio > 2.0


def test_batch_depths_differ(adata: ad.AnnData) -> None:
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    med = pd.Series(lib).groupby(adata.obs["batch"].to_numpy()).median()
    assert med.max() / med.min() > 1.5
    factors = adata.uns["simulation"]["batch_depth_factors"]
    assert all(0.5 <= f <= 2.0 for f in factors.values())
    # measured depth ordering follows the simulated factors
    order = sorted(factors, key=factors.get)
    assert list(med.loc[order].to_numpy()) == sorted(med.to_numpy())


def test_batch_effect_on_genes() -> None:
    a = simulate(**SMALL, batch_effect=1.0)
    b = simulate(**SMALL, batch_effect=0.0)

    def batch_lfc(x: ad.AnnData) -> float:
        norm = _normalized(x)
        in_b = (x.obs["batch"] == "batch_0").to_numpy()
        m0, m1 = norm[in_b].mean(0), norm[~in_b].mean(0)
        keep = (m0 > 1) & (m1 > 1)
        return float(np.median(np.abs(np.log(m0[keep] / m1[keep]))))

    assert batch_lfc(a) > 2 * batch_lfc(b)


def test_proteins_correlate_with_type(adata_major: ad.AnnData) -> None:
    sim = adata_major.uns["simulation"]
    names = list(adata_major.uns["protein_names"])
    prot = np.log1p(adata_major.obsm["protein"])
    for j, name in enumerate(names):
        target = sim["protein_targets"][name]
        col = "cell_type_major" if target.startswith("major_") else "cell_type"
        is_target = (adata_major.obs[col] == target).to_numpy().astype(float)
        r = np.corrcoef(prot[:, j], is_target)[0, 1]
        assert r > 0.5, (name, target, r)
    # protein_markers lists each type's proteins
    for t, prots in sim["protein_markers"].items():
        for pname in prots:
            target = sim["protein_targets"][pname]
            assert target == t or t in list(sim["major_groups"][target])
    # truth is the noise-free mean: counts scatter around it
    truth = adata_major.obsm["protein_truth"]
    assert np.all(truth > 0)
    ratio = adata_major.obsm["protein"].mean(0) / truth.mean(0)
    assert np.all(np.abs(ratio - 1) < 0.15)


def test_no_proteins_by_default() -> None:
    a = simulate(n_cells=50, n_genes=200, n_types=2, markers_per_type=5)
    assert "protein" not in a.obsm and "protein_names" not in a.uns


def test_write_read_h5ad(adata_major: ad.AnnData, tmp_path) -> None:
    path = tmp_path / "sim.h5ad"
    adata_major.write_h5ad(path)
    back = ad.read_h5ad(path)
    _assert_adata_equal(adata_major, back)


def test_simulate_to_h5ad_roundtrip(tmp_path) -> None:
    kw = dict(n_types=5, n_major=2, n_batches=2, n_proteins=4, seed=11)
    n_cells, n_genes = 700, 250
    path = simulate_to_h5ad(tmp_path / "out" / "big.h5ad", n_cells, n_genes, chunk_size=150, **kw)
    assert path.exists() and path.name == "big.h5ad"
    assert [p.name for p in path.parent.iterdir()] == ["big.h5ad"], "temporary file left behind"
    ref = simulate(n_cells, n_genes, **kw)

    full = ad.read_h5ad(path)
    _assert_adata_equal(ref, full)

    backed = ad.read_h5ad(path, backed="r")
    try:
        assert backed.shape == (n_cells, n_genes)
        rows = backed.X[100:260]
        np.testing.assert_array_equal(rows.toarray(), ref.X[100:260].toarray())
        pd.testing.assert_frame_equal(backed.obs, ref.obs)
    finally:
        backed.file.close()

    with h5py.File(path, "r") as f:
        X = f["X"]
        assert X.attrs["encoding-type"] == "csr_matrix"
        assert X.attrs["encoding-version"] == "0.1.0"
        assert tuple(X.attrs["shape"]) == (n_cells, n_genes)
        assert X["data"].maxshape == (None,)
        ds = ad.io.sparse_dataset(X)
        assert ds.shape == (n_cells, n_genes)
        np.testing.assert_array_equal(ds[:50].toarray(), ref.X[:50].toarray())


def test_simulate_to_h5ad_never_replaces_a_file_it_did_not_write(tmp_path) -> None:
    """Written with a new file's permissions (the umask's, not a temporary file's 0600); a user's own .h5ad at
    the path is left as it was, with an error that says why."""
    import os

    from scconcerto._errors import InputError

    path = simulate_to_h5ad(tmp_path / "sim.h5ad", 40, 200, n_types=2, markers_per_type=5, seed=0)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    theirs = tmp_path / "theirs.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(theirs)
    before = theirs.read_bytes()
    with pytest.raises(InputError, match="did not write"):
        simulate_to_h5ad(theirs, 40, 200, n_types=2, markers_per_type=5, seed=0)
    assert theirs.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.h5ad", "theirs.h5ad"]  # no temporary file left


def test_simulate_to_h5ad_overwrites_and_rejects_unknown_kwargs(tmp_path) -> None:
    path = tmp_path / "x.h5ad"
    simulate_to_h5ad(path, 40, 200, n_types=2, markers_per_type=5, seed=0)
    simulate_to_h5ad(path, 60, 200, n_types=2, markers_per_type=5, seed=1)
    assert ad.read_h5ad(path).shape == (60, 200)
    with pytest.raises(TypeError, match="unexpected"):
        simulate_to_h5ad(path, 40, 200, n_type=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_cells=0),
        dict(n_major=0),
        dict(n_major=6),
        dict(n_genes=50),
        dict(dispersion=0.0),
        dict(mean_depth=-1.0),
        dict(seed=-1),
        dict(batch_effect=-0.1),
    ],
)
def test_invalid_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        simulate(**kwargs)


def test_poisson_limit() -> None:
    a = simulate(n_cells=300, n_genes=300, n_types=3, dispersion=np.inf, seed=2)
    assert a.X.dtype == np.float32 and a.X.nnz > 0
