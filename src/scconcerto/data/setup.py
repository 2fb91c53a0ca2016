"""The recorded data setup of a model (keys, vocabulary, preprocessing, categories) and
how any AnnData is turned into :class:`~scconcerto.data.cells.CellMatrix` under it."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._defaults import DEFAULT_HVG, WHOLE_TRANSCRIPTOME_GENES
from .._errors import InputError
from .._random import sample_rows
from .backed import BackedCSR, is_backed_csr
from .cells import CellMatrix
from .preprocess import InputKind, cell_totals, check_values, csr_rows, detect_input_kind, normalize_values
from .protein import fit_protein_background
from .sources import DEFAULT_SOURCE, domain_codes, source_names
from .value_scale import matching_map, needs_matching, value_profile
from .vocabulary import DEFAULT_MIN_OVERLAP, GeneAlignment, GeneVocabulary

log = logging.getLogger("scconcerto")

UNLABELED = -1


@dataclass(frozen=True)
class DataSetup:
    """What a model was built on; saved with it and re-checked on every dataset it sees."""

    genes: list[str]
    input_kind: InputKind
    batch_key: str | None = None
    label_keys: list[str] = field(default_factory=list)
    protein_key: str | None = None
    layer: str | None = None
    hvg: int | None = None
    sources: list[str] = field(default_factory=lambda: [DEFAULT_SOURCE])
    labels: dict[str, list[str]] = field(default_factory=dict)
    proteins: list[str] = field(default_factory=list)
    protein_norm: str = "clr"
    #: Per-protein background of the normalized values (:mod:`scconcerto.data.protein`); the model sees a
    #: protein only above it. Empty: every non-zero value is seen (models saved before it was fitted).
    protein_background: list[float] = field(default_factory=list)
    #: Percentiles of the reference's normalized non-zero values (:func:`~scconcerto.data.value_scale.value_profile`):
    #: data of another kind are matched to them. Empty: no matching (models saved before 2026-12-07).
    value_profile: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSetup":
        return cls(**d)

    @property
    def vocabulary(self) -> GeneVocabulary:
        return GeneVocabulary(self.genes)

    @property
    def n_features(self) -> dict[str, int]:
        out = {"rna": len(self.genes)}
        if self.proteins:
            out["protein"] = len(self.proteins)
        return out


def expression_matrix(adata: ad.AnnData, layer: str | None) -> sp.csr_matrix:
    """The cells x genes matrix of ``adata`` (``layer`` or ``X``) as CSR, without densifying."""
    if layer is not None:
        if layer not in adata.layers:
            raise InputError(
                f"Layer {layer!r} is not in the AnnData (layers: {list(adata.layers)}). "
                "Pass an existing layer, or layer=None to use X.")
        m = adata.layers[layer]
    else:
        m = adata.X
    if m is None:
        raise InputError("The AnnData has no X matrix; pass the counts layer with `layer=`.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if is_backed_csr(m):  # on disk (backed h5ad, zarr): streamed by row blocks, never loaded whole
        return m if isinstance(m, BackedCSR) else BackedCSR(m)
    if hasattr(m, "to_memory") and not sp.issparse(m) and not isinstance(m, np.ndarray):
        m = m.to_memory()
    return csr_rows(m)


def stored_values(matrix: sp.csr_matrix | BackedCSR) -> np.ndarray:
    """The stored values to validate: all of an in-memory matrix, the first block of an on-disk one."""
    return matrix.head_values() if isinstance(matrix, BackedCSR) else matrix.data


def _obs_column(adata: ad.AnnData, key: str, what: str) -> pd.Series:
    if key not in adata.obs:
        raise InputError(f"The {what} key {key!r} is not a column of `adata.obs` (columns: "
                         f"{list(adata.obs.columns)[:20]}). Pass an existing column or None.")
    return adata.obs[key]


def protein_matrix(adata: ad.AnnData, protein_key: str) -> tuple[np.ndarray, list[str]]:
    """Raw protein values (cells x proteins, float32) and their names."""
    if protein_key not in adata.obsm:
        raise InputError(f"The protein key {protein_key!r} is not in `adata.obsm` (keys: {list(adata.obsm)}). "
                         "Pass the obsm key holding the antibody counts, or protein_key=None.")
    p = adata.obsm[protein_key]
    if isinstance(p, pd.DataFrame):
        names, values = [str(c) for c in p.columns], p.to_numpy()
    else:
        values = p.toarray() if sp.issparse(p) else np.asarray(p)
        names = [str(n) for n in adata.uns.get("protein_names", [f"protein_{i}" for i in range(values.shape[1])])]
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or len(names) != values.shape[1]:
        raise InputError(f"`obsm[{protein_key!r}]` has shape {values.shape} but {len(names)} protein names; "
                         "`uns['protein_names']` must list one name per column.")
    check_values(values.ravel(), f"obsm[{protein_key!r}]")
    return values, names


def normalize_protein(values: np.ndarray, method: str) -> np.ndarray:
    """Per-cell protein normalization: ``clr`` (Seurat-style, margin 1) or ``log1p`` of CP10K."""
    if method == "clr":
        geo = np.exp(np.log1p(values).mean(axis=1, keepdims=True))
        return np.log1p(values / np.maximum(geo, 1e-12)).astype(np.float32)
    if method == "log1p":
        totals = np.maximum(values.sum(axis=1, keepdims=True), 1e-12)
        return np.log1p(values / totals * 1e4).astype(np.float32)
    raise InputError(f"Unknown protein normalization {method!r}; use 'clr' or 'log1p'.")


def resolve_hvg(hvg: int | str | None, n_genes: int) -> int | None:
    """The number of highly variable genes a reference of ``n_genes`` genes keeps (``None``: every gene).

    ``hvg``: a number of genes (at least 2), ``None`` for every gene, or ``"auto"`` (see
    :data:`scconcerto._defaults.WHOLE_TRANSCRIPTOME_GENES`). A number not below ``n_genes`` keeps every gene.
    """
    if hvg == "auto":
        hvg = DEFAULT_HVG if n_genes > WHOLE_TRANSCRIPTOME_GENES else None
    elif hvg is not None and (isinstance(hvg, bool) or not isinstance(hvg, (int, np.integer)) or hvg < 2):
        raise InputError(f"hvg must be a number of genes of at least 2, None for every gene, or 'auto', got {hvg!r}.")
    return None if hvg is None or hvg >= n_genes else int(hvg)


#: Highly variable genes are chosen on at most this many cells (a seeded sample of larger references,
#: in memory or on disk alike, read by rows: the chosen genes do not depend on where the matrix is).
HVG_MAX_CELLS = 50_000


def _gene_sample(matrix: sp.csr_matrix | BackedCSR, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """The cells genes are chosen on, read once: all of them in memory, or a seeded sample of ``HVG_MAX_CELLS``
    (of larger references, and of any on disk), with its rows (``None``: every row)."""
    n = matrix.shape[0]
    if n <= HVG_MAX_CELLS and not isinstance(matrix, BackedCSR):
        return matrix, None
    rows = sample_rows(n, HVG_MAX_CELLS, seed)
    return csr_rows(matrix[rows]), rows


def _select_hvg(sample: sp.csr_matrix, rows: np.ndarray | None, kind: InputKind, n_top: int, var_names: pd.Index,
                batches: pd.Series | None) -> list[str]:
    """``n_top`` highly variable genes (fewer than there are: :func:`resolve_hvg`; scanpy's ``seurat`` flavour,
    per batch when there are several) on the log-normalized values of the cells of :func:`_gene_sample`."""
    import scanpy as sc

    if batches is not None and rows is not None:
        batches = batches.iloc[rows]
    totals = cell_totals(sample)
    row_of = np.repeat(np.arange(sample.shape[0]), np.diff(sample.indptr))
    lognorm = sp.csr_matrix((normalize_values(sample.data, row_of, totals, kind), sample.indices, sample.indptr),
                            shape=sample.shape)
    tmp = ad.AnnData(lognorm, var=pd.DataFrame(index=var_names.astype(str)))
    if batches is not None:
        tmp.obs["batch"] = pd.Categorical(batches.astype(str).to_numpy())
    sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor="seurat",
                                batch_key="batch" if batches is not None and batches.nunique() > 1 else None)
    return [g for g, keep in zip(tmp.var_names, tmp.var["highly_variable"].to_numpy()) if keep]


def _detected_genes(sample: sp.csr_matrix) -> np.ndarray:
    """``(n_genes,)`` bool: the genes with a non-zero value in some cell of the :func:`_gene_sample`."""
    nonzero = np.asarray(sample.data) != 0
    return np.bincount(np.asarray(sample.indices)[nonzero], minlength=sample.shape[1]) > 0


def setup_reference(adata: ad.AnnData, batch_key: str | None = None, label_key: str | list[str] | None = None,
                    protein_key: str | None = None, layer: str | None = None, hvg: int | str | None = "auto",
                    protein_norm: str = "clr", protein_background: bool = True) -> DataSetup:
    """Validate a reference AnnData and record its setup (vocabulary, preprocessing, categories).

    ``hvg``: how many highly variable genes to keep (:func:`resolve_hvg`); the setup records the number kept
    (``None``: every gene).

    With ``protein_background``, each protein's background level is fitted on the reference's
    normalized values (:func:`~scconcerto.data.protein.fit_protein_background`).
    """
    matrix = expression_matrix(adata, layer)
    where = f"layers[{layer!r}]" if layer else "X"
    if matrix.nnz == 0:
        raise InputError(f"{where} of the reference holds only zeros: there is nothing to learn from. Pass the "
                         "layer with the counts (`layer=`), or check how the AnnData was built.")
    kind = detect_input_kind(stored_values(matrix), where=where)
    names = pd.Index(adata.var_names.astype(str))
    GeneVocabulary(names)  # validates uniqueness
    if adata.obs_names.has_duplicates:
        raise InputError("Cell names (`obs_names`) are not unique; run `adata.obs_names_make_unique()` first.")
    sources = [DEFAULT_SOURCE]
    batches = None
    if batch_key is not None:
        batches = _obs_column(adata, batch_key, "batch")
        counts = pd.Series(source_names(adata, batch_key, what="the reference")).value_counts()
        sources = sorted(counts.index.tolist())
        small = counts[counts < 2]
        if len(small):
            raise InputError(f"Source(s) {small.index.tolist()} in `obs[{batch_key!r}]` have a single cell; "
                             "source-aware batch normalization needs at least 2 cells per source. Merge them "
                             "into another source or drop them.")
    label_keys = [label_key] if isinstance(label_key, str) else list(label_key or [])
    labels: dict[str, list[str]] = {}
    for key in label_keys:
        col = _obs_column(adata, key, "label")
        labels[key] = sorted(col.dropna().astype(str).unique().tolist())
        if not labels[key]:
            raise InputError(f"`obs[{key!r}]` holds no labels (all missing).")
    proteins: list[str] = []
    background: list[float] = []
    if protein_key is not None:
        raw, proteins = protein_matrix(adata, protein_key)
        if protein_background:
            background = fit_protein_background(normalize_protein(raw, protein_norm)).tolist()
    sample, sampled_rows = _gene_sample(matrix)
    detected = _detected_genes(sample)
    if not detected.all():
        log.debug("%d of the reference's %d genes are never detected in it (no non-zero value) and are left out "
                 "of the model's genes: nothing could be learnt of them.", int((~detected).sum()), len(names))
    genes = names[detected].tolist()
    hvg = resolve_hvg(hvg, len(names))  # the size of the gene set, as given
    if hvg is not None:
        chosen = set(_select_hvg(sample, sampled_rows, kind, hvg, names, batches))
        genes = [g for g in genes if g in chosen]
    return DataSetup(genes=genes, input_kind=kind, batch_key=batch_key, label_keys=label_keys,
                     protein_key=protein_key, layer=layer, hvg=hvg, sources=sources, labels=labels,
                     proteins=proteins, protein_norm=protein_norm, protein_background=background,
                     value_profile=_reference_profile(matrix, names, genes, kind))


def _reference_profile(matrix: sp.csr_matrix | BackedCSR, names: pd.Index, genes: list[str], kind: InputKind,
                       seed: int = 0) -> list[float]:
    """The percentiles of the reference's normalized non-zero values in its chosen ``genes``
    (:func:`~scconcerto.data.value_scale.value_profile`, on a seeded sample of cells)."""
    from .value_scale import PROFILE_CELLS

    rows = sample_rows(matrix.shape[0], PROFILE_CELLS, seed)
    sample = csr_rows(matrix[rows])
    alignment = GeneVocabulary(genes).align(names, min_overlap=0.0, what="the reference")
    col = None if alignment.is_identity else alignment.column_to_vocab
    cells = CellMatrix(sample, col, cell_totals(sample), kind, np.zeros(len(rows), dtype=np.int64))
    return [float(v) for v in value_profile(cells, seed=seed)]


@dataclass
class PreparedCells:
    """A dataset ready for the network, with what was learnt while preparing it."""

    cells: CellMatrix
    alignment: GeneAlignment
    source_names: list[str]
    unseen_sources: list[str]
    input_kind: InputKind


def prepare_cells(adata: ad.AnnData, setup: DataSetup, layer: str | None = "__setup__",
                  batch_key: str | None = "__setup__", min_overlap: float = DEFAULT_MIN_OVERLAP,
                  use_protein: bool = True, what: str = "the data", query_species: str | None = None
                  ) -> PreparedCells:
    """Turn ``adata`` into a :class:`CellMatrix` in the model's space.

    Genes are aligned by name (harmonised; ``query_species``: the data's species when it is not
    the model's, see :meth:`~scconcerto.data.GeneVocabulary.align`); sources
    (:func:`~scconcerto.data.sources.source_names`) named like a reference source use its statistics, other
    sources get new ids (listed in ``unseen_sources``, in sorted order:
    :func:`~scconcerto.data.sources.domain_codes`) for AdaBN.
    Proteins are used if the data has the model's protein key.
    """
    if layer == "__setup__":  # the reference's layer if this data has it, else X
        layer = setup.layer if setup.layer in adata.layers else None
    names = source_names(adata, batch_key, setup.batch_key, setup.sources, what=what)
    matrix = expression_matrix(adata, layer)
    kind = detect_input_kind(stored_values(matrix), where=f"layers[{layer!r}]" if layer else "X")
    alignment = setup.vocabulary.align(adata.var_names, min_overlap=min_overlap, what=what,
                                       query_species=query_species)
    totals = cell_totals(matrix)
    domains, unseen = domain_codes(names, setup.sources)
    protein = None
    if use_protein and setup.proteins and setup.protein_key is not None and setup.protein_key in adata.obsm:
        raw, pnames = protein_matrix(adata, setup.protein_key)
        pos = pd.Index(pnames).get_indexer(setup.proteins)
        if (pos < 0).any():
            missing = [p for p, i in zip(setup.proteins, pos) if i < 0]
            raise InputError(f"{what} lacks proteins {missing[:10]} of the model's panel; give the same antibody "
                             "names in `uns['protein_names']`, or drop the protein key to embed RNA only.")
        protein = normalize_protein(raw[:, pos], setup.protein_norm)
    col = None if alignment.is_identity else alignment.column_to_vocab
    background = np.asarray(setup.protein_background, dtype=np.float32) if setup.protein_background else None
    cells = CellMatrix(matrix, col, totals, kind, domains, protein, protein_background=background)
    if setup.value_profile and needs_matching(kind, setup.input_kind):
        cells.value_map = matching_map(value_profile(cells), np.asarray(setup.value_profile))
        if cells.value_map is not None:
            log.info("%s holds %s values and the reference %s values: its non-zero values are matched to the "
                     "reference's distribution (scconcerto.data.value_scale).", what[:1].upper() + what[1:],
                     kind.replace("_", "-"), setup.input_kind.replace("_", "-"))
    return PreparedCells(cells, alignment, [str(s) for s in pd.unique(names)], unseen, kind)


def value_scale_summary(prepared: PreparedCells, setup: DataSetup) -> dict:
    """What a dataset's values were and whether they were matched to the reference's scale
    (:mod:`~scconcerto.data.value_scale`), for ``uns``."""
    return {"kind": prepared.input_kind, "reference_kind": setup.input_kind,
            "matched_to_reference": prepared.cells.value_map is not None}


def label_codes(adata: ad.AnnData, setup: DataSetup) -> dict[str, np.ndarray]:
    """Integer codes of each saved label key (``-1`` = missing)."""
    out = {}
    for key, cats in setup.labels.items():
        out[key] = category_codes(adata.obs[key], cats)
    return out


def category_codes(col: pd.Series, categories: list[str]) -> np.ndarray:
    """Codes of ``col`` among ``categories`` (``-1`` = missing or not a category).

    Values are compared as the strings :func:`setup_reference` recorded them as
    (``str`` of each value), so integer, float and boolean columns keep their labels.
    """
    present = col.notna().to_numpy()
    codes = np.full(len(col), UNLABELED, dtype=np.int64)
    if present.any():
        names = col[present].astype(str).to_numpy()
        codes[present] = pd.Categorical(names, categories=categories).codes
    return codes
