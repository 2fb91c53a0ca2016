"""Rank the genes (or proteins) the teacher attends to in each cell group.

The ranking contrasts each group with the rest of the labelled cells, so a
feature that every cell attends to (a ubiquitous, highly expressed gene) does
not top every list; each feature's detection rate in and out of the group comes
with it. A cell's attention covers only the features it expresses: the genes it
detects and the proteins above their antibody's background
(:mod:`scconcerto.data.protein`), so a protein cannot rank high in a group that
lacks it. :mod:`scconcerto.tools.attention_agreement` compares the ranking with
differential expression. Results are written to ``adata.uns`` in the layout of
:func:`scanpy.tl.rank_genes_groups`, so ``scanpy.get.rank_genes_groups_df`` and
``scanpy.pl.rank_genes_groups_*`` read them (``key='rank_attention'``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import InputError

if TYPE_CHECKING:
    from ..data.setup import PreparedCells
    from ..model import Concerto
    from ..nn import ConcertoNetwork

log = logging.getLogger("scconcerto")

RankMethod = Literal["contrast", "wilcoxon"]
UNS_KEY = "rank_attention"
#: Columns of each per-group table, in order.
COLUMNS = ["feature", "score", "contrast", "mean_in", "mean_out", "detection_in", "detection_out", "lift",
           "logfoldchange", "pval", "pval_adj"]
_EPS = 1e-9


@dataclass(frozen=True)
class AttentionWeights:
    """The teacher's attention of every cell over its expressed features (:meth:`Concerto.attention`).

    Attributes
    ----------
    rna
        ``(n_cells, n_vars)`` CSR float32 in the AnnData's own ``var_names``
        order. A cell's row sums to one over its expressed genes that the
        model knows; genes the cell does not express, and genes outside the
        model's vocabulary, are zero (not stored).
    var_names
        Column names of :attr:`rna` (the AnnData's ``var_names``).
    protein
        ``(n_cells, n_proteins)`` CSR float32 over the model's protein panel
        (rows sum to one over the proteins above their background, see
        :mod:`scconcerto.data.protein`; over every non-zero normalized value for
        models saved without fitted backgrounds),
        or ``None`` when the model or the data has no proteins.
    protein_names
        Column names of :attr:`protein` (the model's panel, in its order).
    """

    rna: sp.csr_matrix
    var_names: pd.Index
    protein: sp.csr_matrix | None = None
    protein_names: list[str] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        """The modalities present (``"rna"``, then ``"protein"`` when available)."""
        return ["rna"] + (["protein"] if self.protein is not None else [])

    def __getitem__(self, modality: str) -> sp.csr_matrix:
        return self.matrix(modality)

    def matrix(self, modality: str = "rna") -> sp.csr_matrix:
        """The cells x features weights of ``modality`` (``"rna"`` or ``"protein"``)."""
        if modality == "rna":
            return self.rna
        if modality == "protein":
            if self.protein is None:
                raise InputError("These attention weights hold no protein modality: the model was trained "
                                 "without proteins, or the data lacks the model's protein key in `obsm`.")
            return self.protein
        raise InputError(f"Unknown modality {modality!r}; use 'rna' or 'protein'.")

    def feature_names(self, modality: str = "rna") -> pd.Index:
        """Column names of :meth:`matrix` ``(modality)``."""
        self.matrix(modality)
        return pd.Index(self.var_names if modality == "rna" else self.protein_names, dtype=object)



# --------------------------------------------------------------------------- the weights
def _vocab_to_column(column_to_vocab: np.ndarray, n_vocab: int) -> np.ndarray:
    """Invert a gene alignment: the dataset column of each vocabulary gene (``-1`` if absent)."""
    out = np.full(n_vocab, -1, dtype=np.int64)
    present = np.flatnonzero(column_to_vocab >= 0)
    out[column_to_vocab[present]] = present
    return out


def _stack_rows(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], shape: tuple[int, int]) -> sp.csr_matrix:
    """One CSR matrix from consecutive row blocks given as (column indices, values, offsets)."""
    if not parts:
        return sp.csr_matrix(shape, dtype=np.float32)
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    lengths = np.concatenate([np.diff(off) for _, _, off in parts])
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate([idx for idx, _, _ in parts])
    values = np.concatenate([val for _, val, _ in parts]).astype(np.float32, copy=False)
    m = sp.csr_matrix((values, indices, indptr), shape=shape)
    m.sort_indices()  # vocabulary order -> the data's column order, in place
    return m


def teacher_attention(network: ConcertoNetwork, prepared: PreparedCells, var_names: pd.Index,
                      protein_names: Sequence[str], batch_size: int = 1024, device: str = "auto") -> AttentionWeights:
    """The teacher's attention weights of the ``prepared`` cells over their expressed genes (and proteins).

    The teacher pools each modality's expressed features by attention
    (:func:`scconcerto.nn.attention.attention_pool`) before the domain-specific batch normalization of its
    tail, so the weights depend neither on a cell's source nor on BN statistics: cells of unseen sources need
    no AdaBN. They come from the call the embedding makes (:meth:`~scconcerto.nn.ConcertoNetwork.teacher_hidden`
    on the full teacher view, eval mode), in chunks of ``batch_size`` consecutive cells; only the sparse result
    is kept. ``var_names`` are the data's genes (the columns of ``.rna``), ``protein_names`` the model's panel.
    :meth:`scconcerto.Concerto.attention` prepares the cells and calls this; the network is left as it was.
    """
    import torch

    from ..train import resolve_device

    cells, alignment = prepared.cells, prepared.alignment
    to_column = _vocab_to_column(alignment.column_to_vocab, alignment.n_vocab)
    shapes = {"rna": (cells.n_cells, len(var_names))}
    if cells.protein is not None:
        shapes["protein"] = (cells.n_cells, len(protein_names))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {m: [] for m in shapes}
    index_dtype = np.int32 if max(len(var_names), len(protein_names)) < 2**31 else np.int64
    dev = resolve_device(device)
    was_training = network.training
    network.to(dev).eval()
    try:
        with torch.no_grad():
            # consecutive chunks of cells: attention comes before the (source-specific) BN, so chunks
            # need not be source-homogeneous, and consecutive rows give the CSR directly
            for start in range(0, cells.n_cells, batch_size):
                views = cells.batch(np.arange(start, min(start + batch_size, cells.n_cells))).teacher
                _, weights = network.teacher_hidden({m: v.to(dev) for m, v in views.items()})
                for m, w in weights.items():
                    idx = views[m].indices.numpy()
                    columns = (to_column[idx] if m == "rna" else idx).astype(index_dtype)
                    parts[m].append((columns, w.float().cpu().numpy(), views[m].offsets.numpy()))
    finally:
        network.cpu().train(was_training)
    out = {m: _stack_rows(parts[m], shapes[m]) for m in shapes}
    return AttentionWeights(rna=out["rna"], var_names=pd.Index(var_names.astype(str), dtype=object),
                            protein=out.get("protein"), protein_names=list(protein_names) if "protein" in out else [])


# --------------------------------------------------------------------------- inputs
def group_codes(adata: ad.AnnData, groupby: str) -> tuple[np.ndarray, list[str]]:
    """Integer code of each cell's group (``-1``: missing label) and the group names, in category order."""
    if groupby not in adata.obs:
        raise InputError(f"`obs[{groupby!r}]` does not exist (obs columns: {list(adata.obs.columns)[:20]}). "
                         "Pass the obs column that holds the cell groups, e.g. groupby='cell_type'.")
    col = adata.obs[groupby]
    cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
    cat = cat.cat.remove_unused_categories()
    names = [str(c) for c in cat.cat.categories]
    if len(set(names)) != len(names):
        raise InputError(f"`obs[{groupby!r}]` has categories that are equal as text ({names[:10]}); "
                         "rename them so that every group has a distinct name.")
    return np.asarray(cat.cat.codes, dtype=np.int64), names


def attention_matrix(adata: ad.AnnData, model: Concerto | None = None,
                     attention: AttentionWeights | sp.spmatrix | None = None, modality: str = "rna",
                     batch_size: int = 1024, device: str = "auto") -> tuple[sp.csr_matrix, pd.Index]:
    """The cells x features attention of ``modality`` and the feature names, from weights or a model.

    ``attention`` may be an :class:`AttentionWeights`
    (from :meth:`Concerto.attention`) or, for RNA, a sparse cells x
    ``adata.var_names`` matrix; otherwise it is computed with ``model``.
    """
    if attention is None:
        if model is None:
            raise InputError("Pass the trained model (`model=`) or attention weights computed with "
                             "`model.attention(adata)` (`attention=`).")
        attention = model.attention(adata, batch_size=batch_size, device=device)
    if isinstance(attention, AttentionWeights):
        matrix, names = attention.matrix(modality), attention.feature_names(modality)
    elif sp.issparse(attention):
        if modality != "rna":
            raise InputError("A bare sparse matrix is taken as RNA attention over `adata.var_names`; pass the "
                             "AttentionWeights of `model.attention(adata)` for proteins.")
        matrix, names = sp.csr_matrix(attention), pd.Index(adata.var_names.astype(str), dtype=object)
    else:
        raise InputError(f"attention= must be the result of `model.attention(adata)` or a sparse matrix, got "
                         f"{type(attention).__name__}.")
    if matrix.shape[0] != adata.n_obs or matrix.shape[1] != len(names):
        raise InputError(f"The attention matrix is {matrix.shape[0]} x {matrix.shape[1]} but the data has "
                         f"{adata.n_obs} cells and {len(names)} {modality} features: compute it on this AnnData.")
    return matrix.tocsr(), names


# --------------------------------------------------------------------------- statistics
def _group_sums(matrix: sp.csr_matrix, codes: np.ndarray, n_groups: int,
                chunk_nnz: int = 4_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group and feature: summed weights, cells attending, summed relative weights.

    Rows are processed in blocks of about ``chunk_nnz`` stored weights, so
    the extra memory stays bounded whatever the number of cells.

    The relative weight of a cell's feature is its weight times the number of
    features the cell attends (1 for uniform attention).
    """
    shape = (n_groups, matrix.shape[1])
    weight, attending, relative = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    chunk = max(1, int(chunk_nnz * matrix.shape[0] / max(matrix.nnz, 1)))
    for start in range(0, matrix.shape[0], chunk):
        stop = min(start + chunk, matrix.shape[0])
        block_codes = codes[start:stop]
        labelled = np.flatnonzero(block_codes >= 0)
        onehot = sp.csr_matrix((np.ones(labelled.size), (block_codes[labelled], labelled)),
                               shape=(n_groups, stop - start))
        block = matrix[start:stop].astype(np.float64)
        data = block.data.copy()
        weight += (onehot @ block).toarray()
        block.data = np.ones_like(data)
        attending += (onehot @ block).toarray()
        per_cell = np.diff(block.indptr)
        block.data = data * np.repeat(per_cell, per_cell)
        relative += (onehot @ block).toarray()
    return weight, attending, relative


def _group_stats(matrix: sp.csr_matrix, codes: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """Per group and feature (groups x features): mean attention and detection in/out, lift, contrast."""
    n_in = np.bincount(codes[codes >= 0], minlength=n_groups).astype(np.float64)
    n_out = n_in.sum() - n_in
    sum_in, det_in, rel_in = _group_sums(matrix, codes, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = sum_in / n_in[:, None]
        mean_out = (sum_in.sum(axis=0) - sum_in) / n_out[:, None]
        detection_in = det_in / n_in[:, None]
        detection_out = (det_in.sum(axis=0) - det_in) / n_out[:, None]
        lift = np.where(det_in > 0, rel_in / np.maximum(det_in, 1), np.nan)
    return {"mean_in": mean_in, "mean_out": mean_out, "contrast": mean_in - mean_out,
            "detection_in": detection_in, "detection_out": detection_out, "lift": lift,
            "logfoldchange": np.log2((mean_in + _EPS) / (mean_out + _EPS)), "n_cells": n_in}


def _wilcoxon(matrix: sp.csr_matrix, codes: np.ndarray, groups: list[str],
              features: pd.Index) -> dict[str, np.ndarray]:
    """Wilcoxon rank-sum z-scores and BH-adjusted p-values of each group vs the rest (scanpy's test)."""
    import scanpy as sc

    keep = codes >= 0
    tmp = ad.AnnData(X=matrix[keep].astype(np.float32), var=pd.DataFrame(index=features.astype(str)),
                     obs=pd.DataFrame({"group": pd.Categorical.from_codes(codes[keep], categories=groups)},
                                      index=[str(i) for i in np.flatnonzero(keep)]))
    sizes = tmp.obs["group"].value_counts()
    testable = [g for g in groups if sizes.get(g, 0) >= 2]  # the rest still counts every other cell
    shape = (len(groups), len(features))
    out = {"score": np.full(shape, np.nan), "pval": np.full(shape, np.nan), "pval_adj": np.full(shape, np.nan)}
    if not testable:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "group", groups=testable, method="wilcoxon", reference="rest",
                                use_raw=False, n_genes=len(features), corr_method="benjamini-hochberg")
    res = tmp.uns["rank_genes_groups"]
    for g in res["names"].dtype.names:
        k = groups.index(g)
        pos = features.get_indexer(np.asarray(res["names"][g], dtype=object))
        out["score"][k, pos] = res["scores"][g]
        out["pval"][k, pos] = res["pvals"][g]
        out["pval_adj"][k, pos] = res["pvals_adj"][g]
    return out


def _rank_tables(matrix: sp.csr_matrix, features: pd.Index, codes: np.ndarray, groups: list[str],
                 n_top: int | None, method: RankMethod, min_detection: float,
                 selected: Sequence[str] | None) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    if method not in ("contrast", "wilcoxon"):
        raise InputError(f"Unknown method {method!r}; use 'contrast' (mean attention in the group minus the "
                         "mean in the other cells) or 'wilcoxon' (rank-sum test of the attention weights).")
    if not 0.0 <= min_detection <= 1.0:
        raise InputError(f"min_detection is a fraction of the group's cells, between 0 and 1; got {min_detection}.")
    if n_top is not None and n_top < 1:
        raise InputError(f"n_top must be a positive number of features (or None for all), got {n_top}.")
    stats = _group_stats(matrix, codes, len(groups))
    sizes = stats["n_cells"]
    if (sizes > 0).sum() < 2:
        raise InputError(f"Ranking contrasts a group with the other cells, but only {int((sizes > 0).sum())} "
                         "group has labelled cells; give an obs column with at least two groups.")
    if method == "wilcoxon":
        stats.update(_wilcoxon(matrix, codes, groups, features))
    else:
        stats["score"] = stats["contrast"]
        stats["pval"] = stats["pval_adj"] = np.full_like(stats["contrast"], np.nan)
    wanted = list(groups) if selected is None else [str(g) for g in selected]
    unknown = [g for g in wanted if g not in groups]
    if unknown:
        raise InputError(f"Groups {unknown[:10]} are not in the groupby column (groups: {groups[:20]}).")
    tables: dict[str, pd.DataFrame] = {}
    for g in wanted:
        k = groups.index(g)
        if sizes[k] == 0 or (method == "wilcoxon" and sizes[k] < 2):
            log.warning("rank_attention: group %r has %d cell(s); it is not ranked.", g, int(sizes[k]))
            continue
        score = stats["score"][k]
        ok = np.flatnonzero((stats["detection_in"][k] >= min_detection) & np.isfinite(score))
        order = ok[np.lexsort((-stats["mean_in"][k][ok], -score[ok]))]
        if n_top is not None:
            order = order[:n_top]
        table = pd.DataFrame({"feature": features.to_numpy()[order]})
        for c in COLUMNS[1:]:
            table[c] = stats[c][k][order]
        tables[g] = table
    return tables, stats


# --------------------------------------------------------------------------- scanpy layout
def _records(tables: dict[str, pd.DataFrame], column: str, dtype: str, fill: Any) -> np.recarray:
    n = max(len(t) for t in tables.values())
    cols = {}
    for g, t in tables.items():
        values = t[column].to_numpy()
        cols[g] = np.concatenate([values, np.full(n - len(values), fill, dtype=object if dtype == "O" else dtype)]) \
            if len(values) < n else values
    return pd.DataFrame(cols).to_records(index=False, column_dtypes=dtype)


def _to_uns(tables: dict[str, pd.DataFrame], stats: dict[str, np.ndarray], features: pd.Index, groups: list[str],
            params: dict) -> dict:
    """The ranking in :func:`scanpy.tl.rank_genes_groups`'s layout, plus our columns."""
    ranked = list(tables)
    rows = [groups.index(g) for g in ranked]
    uns: dict[str, Any] = {"params": params,
                           "names": _records(tables, "feature", "O", ""),
                           "scores": _records(tables, "score", "float32", np.nan),
                           "logfoldchanges": _records(tables, "logfoldchange", "float32", np.nan),
                           "pvals": _records(tables, "pval", "float64", np.nan),
                           "pvals_adj": _records(tables, "pval_adj", "float64", np.nan)}
    for name in ("contrast", "mean_in", "mean_out", "lift"):
        uns[name] = _records(tables, name, "float32", np.nan)
    index = pd.Index(features.astype(str), dtype=object)
    uns["pts"] = pd.DataFrame(stats["detection_in"][rows].T, index=index, columns=ranked)
    uns["pts_rest"] = pd.DataFrame(stats["detection_out"][rows].T, index=index, columns=ranked)
    return uns


def rank_attention(adata: ad.AnnData, groupby: str, model: Concerto | None = None,
                   attention: AttentionWeights | sp.spmatrix | None = None, modality: str = "rna",
                   n_top: int | None = 20, method: RankMethod = "contrast", min_detection: float = 0.0,
                   groups: Sequence[str] | None = None, key_added: str | None = None, batch_size: int = 1024,
                   device: str = "auto") -> dict[str, pd.DataFrame]:
    """Rank, for each cell group, the features the teacher attends to more than in the other cells.

    Parameters
    ----------
    adata
        The cells; ``obs[groupby]`` holds their groups (missing values are left out).
    groupby
        ``obs`` column of the groups (e.g. ``"cell_type"``).
    model
        Trained model; its attention on ``adata`` is computed when ``attention`` is not given.
    attention
        Weights from ``model.attention(adata)`` (reuse them across calls), or for
        RNA a sparse cells x ``adata.var_names`` matrix.
    modality
        ``"rna"`` (genes) or ``"protein"``.
    n_top
        Features per group in the result (``None``: all).
    method
        ``"contrast"``: mean attention in the group minus the mean over the
        other labelled cells (cells not expressing a feature count as zero);
        ``"wilcoxon"``: scanpy's rank-sum test of the weights, group vs rest
        (score = z-score, with p-values).
    min_detection
        Leave out features attended (expressed) in fewer than this fraction of the group's cells.
    groups
        Rank only these groups (the rest still counts every other labelled cell).
    key_added
        ``adata.uns`` key of the result (default ``"rank_attention"`` for RNA,
        ``"rank_attention_protein"`` for proteins); ``""`` writes nothing.
    batch_size, device
        For computing the attention with ``model``.

    Returns
    -------
    dict of DataFrame
        One table per group, best first, with columns ``feature``, ``score``
        (the ranking statistic), ``contrast`` (mean in - mean out),
        ``mean_in``, ``mean_out``, ``detection_in`` / ``detection_out`` (fraction
        of cells whose attention covers the feature, i.e. that express it: genes
        detected, proteins above their background),
        ``lift`` (mean over the group's cells expressing the feature of its weight
        times the cell's number of attended features: 1 means the attention is
        uniform, above 1 the teacher favours the feature beyond its mere
        presence), ``logfoldchange`` (log2 ratio of mean attention in vs out),
        ``pval``, ``pval_adj`` (NaN for ``"contrast"``).

    Notes
    -----
    ``adata.uns[key_added]`` follows :func:`scanpy.tl.rank_genes_groups`
    (``names``, ``scores``, ``logfoldchanges``, ``pvals``, ``pvals_adj``,
    ``pts``, ``pts_rest``, ``params``) with extra record arrays ``contrast``,
    ``mean_in``, ``mean_out``, ``lift``. With ``min_detection`` some groups
    may have fewer than ``n_top`` features; their ``names`` are padded with ``""``.

    Examples
    --------
    >>> att = model.attention(adata)  # doctest: +SKIP
    >>> markers = rank_attention(adata, "cell_type", attention=att, n_top=20)  # doctest: +SKIP
    >>> markers["B cell"].head()  # doctest: +SKIP
    >>> sc.get.rank_genes_groups_df(adata, "B cell", key="rank_attention")  # doctest: +SKIP
    """
    matrix, features = attention_matrix(adata, model, attention, modality, batch_size, device)
    codes, group_names = group_codes(adata, groupby)
    tables, stats = _rank_tables(matrix, features, codes, group_names, n_top, method, min_detection, groups)
    if key_added is None:
        key_added = UNS_KEY if modality == "rna" else f"{UNS_KEY}_{modality}"
    if key_added and tables:
        params = {"groupby": groupby, "reference": "rest", "method": f"attention_{method}", "use_raw": False,
                  "layer": None, "corr_method": "benjamini-hochberg", "modality": modality,
                  "n_top": -1 if n_top is None else int(n_top), "min_detection": float(min_detection)}
        adata.uns[key_added] = _to_uns(tables, stats, features, group_names, params)
    return tables


def ranked_names(adata: ad.AnnData, key: str = UNS_KEY, n_top: int | None = None) -> dict[str, list[str]]:
    """Top feature names per group from a ranking stored in ``adata.uns[key]`` (ours or scanpy's)."""
    if key not in adata.uns or "names" not in adata.uns[key]:
        raise InputError(f"`adata.uns[{key!r}]` holds no ranking; run `rank_attention` (or "
                         "`scanpy.tl.rank_genes_groups`) with key_added={key!r} first.")
    names = adata.uns[key]["names"]
    out = {}
    for g in names.dtype.names:
        values = [str(v) for v in np.asarray(names[g], dtype=object) if v is not None and str(v) != ""]
        out[str(g)] = values[:n_top] if n_top is not None else values
    return out
