"""The reference's scaled expression space: PCA of each gene's standardized expression.

The plain expression space (:func:`~scconcerto.data.positives.expression_space`, an uncentred
truncated SVD of the normalized values) is dominated by the most highly expressed genes. Scaling
each gene to unit variance first (scanpy's ``pp.scale(max_value=10)`` then ``pp.pca``, the space
Seurat, Symphony and scanpy tutorials annotate in) weighs the few marker genes of a rare type as
much as a common type's: in the symphony PBMC splits, 5-NN in this space finds the 2-5
megakaryocytes of a reference, the plain space none. Mapping pools the vote of a cell's nearest
reference cells in this space with the embedding's (:mod:`scconcerto.mapping.label_model`); training
searches neighbour positives in it (:mod:`scconcerto.data.positives`).

Cells are compared by direction (cosine), so the average cell is taken out of each cell's coordinates as a
*direction*, not subtracted as a point (:data:`CENTRINGS`): the component of a cell along the average cell's
direction is removed. That keeps a cell's direction where it is when all its values shrink. A cell sequenced
shallowly detects few genes; subtracting the average cell from its small coordinates left mostly minus the
average cell, the same direction for every shallow cell, so that all of them sat next to the reference type
with the fewest detected genes (measured in ``docs/mapping.md``). Models saved before 2026-12-07 keep the
subtraction they were fitted with.

With ``scale=False`` the same fit gives the *centred* expression space, the PCA of the normalized values as
they are (scanpy's ``pp.pca`` on log-normalized values): training searches neighbour positives in it and in the
scaled space together (:mod:`scconcerto.train.reference`).

Never densified: values above ``mean + CLIP_SD * sd`` are clipped on the sparse entries (with
zeros below the mean, that is scanpy's clipping of z-scores at ``CLIP_SD``, save a lower clip that
binds only for genes whose mean exceeds ``CLIP_SD`` standard deviations), the PCA centres
implicitly (:func:`principal_axes`: the z-scores' covariance summed over dense blocks of cells, or
scikit-learn's ARPACK solver on sparse input for very many genes), and cells are projected block by block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .cells import CellMatrix
from .positives import DEFAULT_COMPONENTS, _csr_of, _vocabulary_width, project_expression

log = logging.getLogger("scconcerto")

#: z-scores are clipped at this many standard deviations (scanpy's ``max_value=10``).
CLIP_SD = 10.0
#: How the average cell is taken out of a cell's coordinates: ``"direction"`` (the component along it removed),
#: ``"mean"`` (subtracted: the PCA's own centring; models saved before 2026-12-07).
CENTRINGS = ("direction", "mean")
#: The PCA is fitted on at most this many cells (a seeded sample, plus every cell in ``keep_rows``).
FIT_CELLS = 20_000
#: Up to this many varying genes the PCA decomposes their covariance (``8 * genes**2`` bytes: 0.2 GB here;
#: the model selects 2,000 genes of a larger vocabulary by default); above, it runs ARPACK on the sparse z-scores
#: (the same axes, several times slower when cells detect many of the genes).
COVARIANCE_MAX_GENES = 5_000
#: Cells densified at once while the covariance is summed.
COVARIANCE_BLOCK = 4_096


@dataclass(frozen=True)
class ScaledSpace:
    """A fitted scaled expression space: ``project`` places cells of the same gene vocabulary in it.

    Attributes
    ----------
    loadings
        ``(n_vocabulary_genes, c)``: the principal axes divided by each gene's standard deviation
        (zero rows for genes constant in the fit cells).
    offset
        ``(c,)``: the average cell in that space (the PCA's centre).
    caps
        ``(n_vocabulary_genes,)``: values above are clipped (``mean + CLIP_SD * sd``).
    centring
        How ``offset`` is taken out of a cell's coordinates (:data:`CENTRINGS`).
    """

    loadings: np.ndarray
    offset: np.ndarray
    caps: np.ndarray
    centring: str = "direction"

    def __post_init__(self) -> None:
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {self.centring!r}")

    def project(self, cells: CellMatrix, rows: np.ndarray | None = None) -> np.ndarray:
        """``(n_cells, c)`` float32: the cells (or only ``rows`` of them) in this space, L2-normalized rows (block
        by block)."""
        if self.centring == "mean":
            return project_expression(cells, self.loadings, offset=self.offset, caps=self.caps, rows=rows)
        return project_expression(cells, self.loadings, caps=self.caps, rows=rows, remove_direction=self.offset)


def fit_scaled_space(cells: CellMatrix, n_components: int = DEFAULT_COMPONENTS, fit_cells: int = FIT_CELLS,
                     seed: int = 0, keep_rows: np.ndarray | None = None, scale: bool = True) -> ScaledSpace:
    """Fit the scaled expression space on a seeded sample of ``cells``.

    Parameters
    ----------
    cells
        Normalized expression (e.g. the reference, prepared for the model).
    n_components
        Principal components kept (fewer when the data has fewer cells or genes).
    fit_cells
        Size of the random sample the means, deviations and axes are fitted on.
    seed
        Seed of the sample and of the ARPACK start vector.
    keep_rows
        Rows always fitted on, besides the sample (e.g. every cell of a rare label, which a
        sample of an atlas would miss).
    scale
        ``False``: the *centred* expression space instead, the PCA of the normalized values as they are (no
        standardization, no clipping: scanpy's ``pp.pca`` on log-normalized values), placed the same way.

    Raises
    ------
    ValueError
        When fewer than two genes vary (nothing to decompose).
    """
    n, n_genes = cells.n_cells, _vocabulary_width(cells)
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, min(n, fit_cells), replace=False)
    if keep_rows is not None:
        rows = np.union1d(rows, np.asarray(keep_rows, dtype=np.int64))
    X = _csr_of(cells, np.sort(rows), n_genes).astype(np.float64)
    mean = np.asarray(X.mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2, 0.0))
    varies = sd > 1e-8
    if varies.sum() < 2:
        raise ValueError(f"only {int(varies.sum())} gene(s) vary in the cells: nothing to decompose")
    if scale:
        caps = np.where(varies, mean + CLIP_SD * sd, np.inf)
        inv_sd = np.where(varies, 1.0 / np.where(varies, sd, 1.0), 0.0)
    else:
        caps, inv_sd = np.full(n_genes, np.inf), varies.astype(np.float64)
    X.data = np.minimum(X.data, caps[X.indices])
    Z = (X @ sp.diags(inv_sd)).tocsr()  # never centred: the PCA centres implicitly
    n_comp = int(max(1, min(n_components, min(Z.shape[0], int(varies.sum())) - 1)))
    axes, centre = principal_axes(Z, n_comp, np.flatnonzero(varies), seed)
    # the PCA centres the clipped z-scores on their own mean: (clip(x) / sd - centre) @ axes
    offset = centre @ axes
    return ScaledSpace(loadings=(axes * inv_sd[:, None]).astype(np.float32), offset=offset.astype(np.float32),
                       caps=caps.astype(np.float32))


def principal_axes(Z: sp.csr_matrix, n_components: int, columns: np.ndarray, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The leading principal axes of the rows of ``Z`` (centred implicitly) and its column means.

    Only ``columns`` vary (the axes are zero elsewhere). Up to :data:`COVARIANCE_MAX_GENES` of them, the
    covariance of those columns is summed over dense blocks of :data:`COVARIANCE_BLOCK` rows and its top
    eigenvectors taken (SciPy's ``eigh``); above, scikit-learn's ARPACK PCA of the sparse matrix (``seed``: its
    start vector). Both give the exact axes; each axis's sign puts its largest loading positive.

    Returns
    -------
    axes
        ``(n_columns_of_Z, n_components)`` float64, orthonormal columns.
    centre
        ``(n_columns_of_Z,)`` column means of ``Z``.
    """
    n, width = Z.shape
    centre = np.asarray(Z.mean(axis=0), dtype=np.float64).ravel()
    if len(columns) > COVARIANCE_MAX_GENES:
        from sklearn.decomposition import PCA

        axes = PCA(n_components, svd_solver="arpack", random_state=seed).fit(Z).components_.T
    else:
        from scipy.linalg import eigh

        Zc = Z[:, columns]
        gram = np.zeros((len(columns), len(columns)))
        for start in range(0, n, COVARIANCE_BLOCK):
            block = Zc[start:start + COVARIANCE_BLOCK].toarray()
            gram += block.T @ block
        mu = centre[columns]
        gram /= n
        gram -= np.outer(mu, mu)  # the covariance, in place
        top = len(columns) - n_components
        _, vectors = eigh(gram, subset_by_index=(top, len(columns) - 1), overwrite_a=True)
        axes = np.zeros((width, n_components))
        axes[columns] = vectors[:, ::-1]
    largest = np.abs(axes).argmax(axis=0)
    axes *= np.sign(axes[largest, np.arange(axes.shape[1])])
    return axes, centre


def scaled_expression(cells: CellMatrix, seed: int = 0) -> tuple[np.ndarray, ScaledSpace] | None:
    """The in-memory ``cells`` in a scaled expression space fitted on them, and that space; ``None`` when there
    is nothing to fit (e.g. a single varying gene)."""
    try:
        space = fit_scaled_space(cells, seed=seed)
    except ValueError as exc:
        log.info("No scaled expression space for the reference (%s).", exc)
        return None
    return space.project(cells), space
