"""The scaled expression space: scanpy's scale + PCA, without densifying; clipping; rare cells in the fit; the
average cell taken out as a direction, so that shallow cells keep their place."""

from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from scconcerto.data import prepare_cells, setup_reference
from scconcerto.data.positives import _csr_of, _vocabulary_width
from scconcerto.data.scaled_space import CLIP_SD, fit_scaled_space
from scconcerto.datasets import simulate


@pytest.fixture(scope="module")
def cells(sim):
    return prepare_cells(sim, setup_reference(sim, batch_key="batch", label_key="cell_type")).cells


def normalized(cells) -> np.ndarray:
    return _csr_of(cells, np.arange(cells.n_cells), _vocabulary_width(cells)).toarray()


def test_equals_scanpy_scale_and_pca(cells):
    """Centred as the PCA centres (``"mean"``), each component matches scanpy's ``pp.scale(max_value=10)`` +
    ``pp.pca`` up to its sign."""
    space = replace(fit_scaled_space(cells, n_components=10, seed=0), centring="mean")
    mine = space.project(cells)
    a = ad.AnnData(normalized(cells))
    sc.pp.scale(a, max_value=CLIP_SD)
    sc.pp.pca(a, n_comps=10, svd_solver="arpack")
    theirs = a.obsm["X_pca"] / np.linalg.norm(a.obsm["X_pca"], axis=1, keepdims=True)
    cos = np.abs((mine * theirs).sum(0)) / (np.linalg.norm(mine, axis=0) * np.linalg.norm(theirs, axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, rtol=1e-5)


def test_unscaled_it_is_scanpys_pca_of_the_normalized_values(cells):
    """``scale=False`` (the centred space training searches positives in): each component matches scanpy's
    ``pp.pca`` of the normalized values as they are, up to its sign, and differs from the scaled space."""
    space = replace(fit_scaled_space(cells, n_components=10, seed=0, scale=False), centring="mean")
    mine = space.project(cells)
    a = ad.AnnData(normalized(cells))
    sc.pp.pca(a, n_comps=10, svd_solver="arpack")
    theirs = a.obsm["X_pca"] / np.linalg.norm(a.obsm["X_pca"], axis=1, keepdims=True)
    cos = np.abs((mine * theirs).sum(0)) / (np.linalg.norm(mine, axis=0) * np.linalg.norm(theirs, axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    scaled = replace(fit_scaled_space(cells, n_components=10, seed=0), centring="mean").project(cells)
    assert np.abs((mine * scaled).sum(0)).min() < 0.99 * len(mine)  # not the same space


def test_covariance_and_arpack_give_the_same_space(cells, monkeypatch):
    """The two solvers of :func:`principal_axes` (the covariance of dense blocks, and ARPACK above
    ``COVARIANCE_MAX_GENES`` varying genes) give the same axes, signs and centre; blocks smaller than the fit
    change nothing."""
    import scconcerto.data.scaled_space as scaled

    monkeypatch.setattr(scaled, "COVARIANCE_BLOCK", 37)
    by_blocks = fit_scaled_space(cells, n_components=10, seed=0)
    monkeypatch.setattr(scaled, "COVARIANCE_MAX_GENES", 0)
    by_arpack = fit_scaled_space(cells, n_components=10, seed=0)
    np.testing.assert_allclose(by_blocks.loadings, by_arpack.loadings, atol=1e-5)
    np.testing.assert_allclose(by_blocks.offset, by_arpack.offset, atol=1e-5)
    assert np.abs(by_blocks.loadings).max() > 1e-3


def test_values_above_the_cap_are_clipped(cells):
    """A query value beyond mean + 10 sd projects as if it were the cap itself."""
    space = fit_scaled_space(cells, n_components=10, seed=0)
    X = normalized(cells)[:3]
    gene = int(np.argmax(X[0]))
    dense = X.copy()
    dense[0, gene] = 1e4  # far beyond the cap
    capped = dense.copy()
    capped[0, gene] = space.caps[gene]
    z = lambda m: (np.minimum(m, space.caps) @ space.loadings) - space.offset  # noqa: E731 (before normalizing)
    np.testing.assert_allclose(z(dense), z(capped), rtol=1e-5)
    assert np.isfinite(space.caps[gene]) and space.caps[gene] < 1e4
    assert not np.allclose(dense @ space.loadings, capped @ space.loadings)  # the cap does bind here


def test_reproducible_and_rare_cells_kept_in_a_small_fit(cells):
    """The same seed gives the same space; the rows in ``keep_rows`` are fitted on even when the sample
    is small: six cells with private marker genes then find each other as nearest neighbours."""
    a, b = fit_scaled_space(cells, n_components=8, seed=3), fit_scaled_space(cells, n_components=8, seed=3)
    np.testing.assert_array_equal(a.loadings, b.loadings)
    adata = simulate(600, 300, n_types=4, n_batches=2, seed=0)
    rare = np.arange(594, 600)
    X = adata.X.tolil()
    X[rare, :20] = 50.0  # genes 0-19: markers of the six cells only
    X[:594, :20] = 0.0
    adata.X = X.tocsr()
    prepared = prepare_cells(adata, setup_reference(adata, batch_key="batch", label_key="cell_type")).cells

    def found_each_other(keep_rows) -> float:
        coords = fit_scaled_space(prepared, n_components=8, fit_cells=50, seed=0, keep_rows=keep_rows).project(prepared)
        sim = coords[rare] @ coords.T
        sim[np.arange(6), rare] = -np.inf
        return float(np.isin(np.argsort(-sim, axis=1)[:, :5], rare).mean())

    assert found_each_other(rare) >= 0.8 > found_each_other(None)


def test_too_few_varying_genes_is_an_error():
    adata = simulate(60, 100, n_types=2, n_batches=1, seed=0)
    X = adata.X.tolil()
    X[:, :] = 1.0
    adata.X = X.tocsr()
    prepared = prepare_cells(adata, setup_reference(adata)).cells
    with pytest.raises(ValueError, match="vary"):
        fit_scaled_space(prepared)


def test_the_average_cells_direction_is_taken_out(cells):
    """By default a cell's coordinates lose their component along the average cell (``offset``), and the space
    still separates the types: a cell's nearest other cell is mostly of its own type."""
    space = fit_scaled_space(cells, n_components=10, seed=0)
    assert space.centring == "direction"
    coords = space.project(cells)
    np.testing.assert_allclose(coords @ (space.offset / np.linalg.norm(space.offset)), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(coords, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="centring"):
        replace(space, centring="median")


def _log_normalized_cells(X: np.ndarray, labels: np.ndarray, ref_setup=None):
    adata = ad.AnnData(sp.csr_matrix(X.astype(np.float32)),
                       obs={"cell_type": labels.astype(str), "batch": "b"})
    adata.var_names = [f"g{i}" for i in range(X.shape[1])]
    setup = ref_setup or setup_reference(adata, label_key="cell_type", hvg=None)
    return prepare_cells(adata, setup).cells, setup


def test_a_cell_whose_values_all_shrink_keeps_its_place():
    """Log-normalized values taken as given: a cell with every value scaled down keeps its coordinates when the
    average cell's direction is taken out (the projection is linear), while subtracting the average cell moves
    it (it sits nearer to minus the average cell)."""
    adata = simulate(300, 120, n_types=3, n_batches=1, seed=2)
    X = np.log1p(adata.X.toarray())
    reference, setup = _log_normalized_cells(X, adata.obs["cell_type"].to_numpy())
    shrunk, _ = _log_normalized_cells(X[:20] * 0.2, adata.obs["cell_type"].to_numpy()[:20], setup)
    space = fit_scaled_space(reference, n_components=10, seed=0)
    np.testing.assert_allclose(space.project(shrunk), space.project(reference, rows=np.arange(20)), atol=1e-4)
    mean = replace(space, centring="mean")
    moved = (mean.project(shrunk) * mean.project(reference, rows=np.arange(20))).sum(axis=1)
    assert moved.mean() < 0.9


def test_shallow_cells_find_their_type():
    """Cells thinned to a tenth of their counts find reference cells of their own type in the space as it is,
    and far more often than when the average cell is subtracted (shallow cells then look alike)."""
    adata = simulate(800, 300, n_types=4, n_batches=1, seed=5)
    labels = adata.obs["cell_type"].to_numpy()
    setup = setup_reference(adata, label_key="cell_type", hvg=None)
    reference = prepare_cells(adata, setup).cells
    rng = np.random.default_rng(0)
    thin = adata.copy()
    thin.X = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    thin.X.data = rng.binomial(np.rint(thin.X.data).astype(np.int64), 0.1).astype(np.float32)
    thin.X.eliminate_zeros()
    shallow = prepare_cells(thin, setup).cells
    space = fit_scaled_space(reference, n_components=20, seed=0)

    def right(s) -> float:
        ref = s.project(reference)
        near = np.argmax(s.project(shallow) @ ref.T - 2 * np.eye(len(labels)), axis=1)  # not its own deep self
        return float((labels[near] == labels).mean())

    assert right(space) >= 0.9
    assert right(space) > right(replace(space, centring="mean")) + 0.05
