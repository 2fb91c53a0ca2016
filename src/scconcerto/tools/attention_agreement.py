"""How far the teacher's attention ranking of each cell group agrees with a differential-expression ranking.

For every group, the features are ranked twice over the same universe: by
attention (the contrast of :func:`~scconcerto.tools.rank_attention`) and by
expression (scanpy's Wilcoxon test of log-normalized genes, or the mean
difference of normalized proteins, group vs the other labelled cells). The
per-feature table says which features each ranking puts in its top ``k`` and
gives the evidence a reader needs to judge a feature that attention finds and
expression does not: the fraction of the group's cells that express it
(detection) against the other cells, and the mean normalized expression.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import hypergeom, spearmanr

from .._errors import InputError
from .attention import _group_stats, _wilcoxon, attention_matrix, group_codes, ranked_names

log = logging.getLogger("scconcerto")

if TYPE_CHECKING:
    from ..model import Concerto
    from .attention import AttentionWeights

Modality = Literal["rna", "protein"]
#: Columns of :func:`attention_vs_expression`, in order.
FEATURE_COLUMNS = ["modality", "group", "n_cells", "feature", "found_by", "attention_rank", "expression_rank",
                   "attention_score", "expression_score", "detection_in", "detection_out", "mean_in", "mean_out"]
#: Columns of :func:`attention_agreement`, in order.
SUMMARY_COLUMNS = ["modality", "group", "n_cells", "n_features", "k", "overlap", "expected", "pval", "spearman",
                   "attention_only", "expression_only", "note"]


# --------------------------------------------------------------------------- expression values
def _lognormalized(adata: ad.AnnData, layer: str | None, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    """``log1p(CP10K)`` of counts (totals over all genes), or log-normalized values as they are."""
    from ..data.preprocess import cell_totals, csr_rows, detect_input_kind, normalize_values

    if layer is not None and layer not in adata.layers:
        raise InputError(f"Layer {layer!r} is not in the AnnData (layers: {list(adata.layers)}).")
    matrix = csr_rows(adata.layers[layer] if layer is not None else adata.X)
    kind = detect_input_kind(matrix.data, where=f"layers[{layer!r}]" if layer else "X")
    totals = cell_totals(matrix)
    block = matrix[rows][:, cols].tocsr().astype(np.float64)
    row_of = np.repeat(np.arange(rows.size), np.diff(block.indptr))
    block.data = normalize_values(block.data, row_of, totals[rows], kind).astype(np.float64)
    block.eliminate_zeros()
    return block


def _protein_values(adata: ad.AnnData, names: Sequence[str], model: Concerto | None, protein_key: str | None,
                    protein_norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalized protein values (cells x ``names``) and each protein's background level.

    The model's recorded key, normalization and fitted backgrounds are used when given;
    otherwise the background is fitted on these cells.
    """
    from ..data.protein import fit_protein_background
    from ..data.setup import normalize_protein, protein_matrix

    background = None
    if model is not None:
        protein_key = protein_key or model.setup.protein_key
        protein_norm = model.setup.protein_norm
        if model.setup.protein_background:
            background = dict(zip(model.setup.proteins, model.setup.protein_background))
    if protein_key is None:
        raise InputError("Give protein_key= (the obsm key of the antibody counts) or the model to compare "
                         "protein attention with protein expression.")
    raw, panel = protein_matrix(adata, protein_key)
    pos = pd.Index(panel).get_indexer(list(names))
    if (pos < 0).any():
        missing = [n for n, p in zip(names, pos) if p < 0]
        raise InputError(f"`obsm[{protein_key!r}]` lacks proteins {missing[:10]} of the attention weights; "
                         "pass the data the attention was computed on.")
    values = normalize_protein(raw[:, pos], protein_norm)
    if background is not None and all(n in background for n in names):
        levels = np.array([background[n] for n in names], dtype=np.float32)
    else:
        levels = fit_protein_background(values)
    return values, levels


# --------------------------------------------------------------------------- comparison
def _ranks(score: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """1-based rank of each feature by ``score`` (descending), ties broken by ``tie`` (descending)."""
    order = np.lexsort((-tie, -score))
    ranks = np.empty(score.size, dtype=np.int64)
    ranks[order] = np.arange(1, score.size + 1)
    return ranks


def _compare(adata: ad.AnnData, groupby: str, model: Concerto | None, attention: AttentionWeights | sp.spmatrix | None,
             modality: Modality, n_top: int, layer: str | None, protein_key: str | None, protein_norm: str,
             min_cells: int, batch_size: int, device: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if n_top < 1:
        raise InputError(f"n_top must be a positive number of features, got {n_top}.")
    if min_cells < 2:
        raise InputError(f"min_cells must be at least 2 (a rank test needs two cells per group), got {min_cells}.")
    weights, features = attention_matrix(adata, model, attention, modality, batch_size, device)
    codes, groups = group_codes(adata, groupby)
    labelled = np.flatnonzero(codes >= 0)
    n_cells = np.bincount(codes[labelled], minlength=len(groups))
    if (n_cells > 0).sum() < 2:
        raise InputError(f"The comparison contrasts a group with the other cells, but only {int((n_cells > 0).sum())} "
                         "group has labelled cells; give an obs column with at least two groups.")
    small = [str(g) for g, n in zip(groups, n_cells) if 0 < n < min_cells]
    if small:
        log.warning("Groups %s have too few cells (fewer than %d) for an expression ranking; they get attention "
                    "ranks only.", small, min_cells)
    # the universe: features the attention could rank (attended in some labelled cell)
    universe = np.flatnonzero(np.diff(weights[labelled].tocsc().indptr) > 0)
    if universe.size == 0:
        raise InputError("No labelled cell attends any feature; nothing to compare.")
    names = features[universe]
    att = _group_stats(weights[:, universe].tocsr(), codes, len(groups))
    sub_codes = codes[labelled]
    if modality == "rna":
        cols = adata.var_names.get_indexer(names.astype(str))
        if (cols < 0).any():
            raise InputError("The RNA attention is not over this AnnData's var_names; compute it on this AnnData.")
        expr = _lognormalized(adata, layer, labelled, cols)
        stats = _group_stats(expr, sub_codes, len(groups))
        stats["score"] = _wilcoxon(expr, sub_codes, groups, pd.Index(names.astype(str)))["score"]
        small = n_cells < min_cells
        stats["score"][small] = np.nan
    else:
        values, levels = _protein_values(adata[labelled], list(names), model, protein_key, protein_norm)
        stats = _group_stats(sp.csr_matrix(values.astype(np.float64)), sub_codes, len(groups))
        stats["score"] = stats["contrast"]
        detected = _group_stats(sp.csr_matrix((values > levels).astype(np.float64)), sub_codes, len(groups))
        stats["detection_in"], stats["detection_out"] = detected["mean_in"], detected["mean_out"]
        stats["score"][n_cells < min_cells] = np.nan
    k = int(min(n_top, max(1, universe.size // 4)))
    rows, summary = [], []
    for g, name in enumerate(groups):
        if n_cells[g] == 0:
            continue
        note = "" if n_cells[g] >= min_cells else f"fewer than {min_cells} cells: no expression ranking"
        a_score, e_score = att["contrast"][g], stats["score"][g]
        a_rank = _ranks(a_score, att["mean_in"][g])
        top_a = set(np.flatnonzero(a_rank <= k))
        if note:
            e_rank = np.full(universe.size, -1)
            top_e: set[int] = set()
            rho = np.nan
        else:
            e_rank = _ranks(e_score, stats["contrast"][g])
            top_e = set(np.flatnonzero(e_rank <= k))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rho = float(spearmanr(a_score, e_score).statistic) if universe.size > 2 else np.nan
        shown = sorted(top_a | top_e, key=lambda j: (a_rank[j], e_rank[j]))
        for j in shown:
            found = "both" if j in top_a and j in top_e else ("attention" if j in top_a else "expression")
            rows.append({"modality": modality, "group": name, "n_cells": int(n_cells[g]), "feature": str(names[j]),
                         "found_by": found, "attention_rank": int(a_rank[j]),
                         "expression_rank": int(e_rank[j]) if e_rank[j] > 0 else pd.NA,
                         "attention_score": float(a_score[j]), "expression_score": float(e_score[j]),
                         "detection_in": float(stats["detection_in"][g, j]),
                         "detection_out": float(stats["detection_out"][g, j]),
                         "mean_in": float(stats["mean_in"][g, j]), "mean_out": float(stats["mean_out"][g, j])})
        overlap = len(top_a & top_e)
        expected = np.nan if note else k * k / universe.size
        summary.append({"modality": modality, "group": name, "n_cells": int(n_cells[g]),
                        "n_features": int(universe.size), "k": k, "overlap": np.nan if note else overlap,
                        "expected": expected,
                        "pval": np.nan if note else float(hypergeom.sf(overlap - 1, universe.size, k, k)),
                        "spearman": rho,
                        "attention_only": ", ".join(str(names[j]) for j in sorted(top_a - top_e,
                                                                                  key=a_rank.__getitem__)),
                        "expression_only": ", ".join(str(names[j]) for j in sorted(top_e - top_a,
                                                                                   key=e_rank.__getitem__)),
                        "note": note})
    features_table = pd.DataFrame(rows, columns=FEATURE_COLUMNS)
    features_table["expression_rank"] = features_table["expression_rank"].astype("Int64")
    return features_table, pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def attention_vs_expression(adata: ad.AnnData, groupby: str, model: Concerto | None = None,
                            attention: AttentionWeights | sp.spmatrix | None = None, modality: Modality = "rna",
                            n_top: int = 20, layer: str | None = None, protein_key: str | None = None,
                            protein_norm: str = "clr", min_cells: int = 3, batch_size: int = 1024,
                            device: str = "auto") -> pd.DataFrame:
    """Each group's top attention and top expression features side by side, with the expression evidence.

    Parameters
    ----------
    adata
        The cells (never modified); ``obs[groupby]`` holds their groups (missing values are left out).
    groupby
        ``obs`` column of the groups.
    model, attention
        The trained model, or its weights from ``model.attention(adata)`` (as for
        :func:`~scconcerto.tools.rank_attention`).
    modality
        ``"rna"`` (genes, against scanpy's Wilcoxon ranking of log-normalized
        expression) or ``"protein"`` (against the mean difference of normalized proteins).
    n_top
        Size ``k`` of the top lists compared, at most a quarter of the features
        compared (so that 13 proteins give ``k = 3``).
    layer
        Layer with the expression (``None``: ``X``; counts are log-normalized to 10,000 per cell).
    protein_key, protein_norm
        ``obsm`` key and normalization of the proteins when no model is given (the model's otherwise).
    min_cells
        Groups with fewer labelled cells get attention ranks only (no expression ranking).
    batch_size, device
        For computing the attention with ``model``.

    Returns
    -------
    DataFrame
        One row per group and feature in either top ``k``: ``found_by``
        (``"both"``, ``"attention"``, ``"expression"``), both 1-based ranks over
        the features compared (those attended in some labelled cell), both
        scores (attention contrast; Wilcoxon z-score or protein mean difference),
        ``detection_in`` / ``detection_out`` (fraction of the group's / the other
        cells expressing the feature: a count above zero for genes, a value above
        the antibody's background for proteins) and ``mean_in`` / ``mean_out``
        (mean log-normalized or normalized expression).

    Examples
    --------
    >>> table = attention_vs_expression(adata, "cell_type", model=model)  # doctest: +SKIP
    >>> table[table["found_by"] == "attention"]  # what attention ranks high and expression does not  # doctest: +SKIP
    """
    return _compare(adata, groupby, model, attention, modality, n_top, layer, protein_key, protein_norm, min_cells,
                    batch_size, device)[0]


def attention_agreement(adata: ad.AnnData, groupby: str, model: Concerto | None = None,
                        attention: AttentionWeights | sp.spmatrix | None = None, modality: Modality = "rna",
                        n_top: int = 20, layer: str | None = None, protein_key: str | None = None,
                        protein_norm: str = "clr", min_cells: int = 3, batch_size: int = 1024,
                        device: str = "auto") -> pd.DataFrame:
    """Per group, the agreement of the attention ranking with the expression ranking of the same features.

    Parameters are those of :func:`attention_vs_expression`.

    Returns
    -------
    DataFrame
        One row per group: ``n_features`` compared, ``k``, ``overlap`` of the
        two top-``k`` lists, ``expected`` overlap of two random lists, ``pval``
        (hypergeometric, an overlap at least this large by chance), ``spearman``
        (rank correlation of the two scores over all features compared),
        ``attention_only`` / ``expression_only`` (the features of one top list
        only, best first) and ``note`` (why a group has no expression ranking).
    """
    return _compare(adata, groupby, model, attention, modality, n_top, layer, protein_key, protein_norm, min_cells,
                    batch_size, device)[1]


def expression_markers(adata: ad.AnnData, groupby: str, n_top: int = 20, genes: Sequence[str] | None = None,
                       layer: str | None = None, method: str = "wilcoxon") -> dict[str, list[str]]:
    """Expression-based markers per group with :func:`scanpy.tl.rank_genes_groups` (``adata`` is not changed).

    Counts are normalized to 10,000 per cell (totals over all genes) and
    ``log1p``-transformed first; log-normalized values are used as they are.

    Parameters
    ----------
    adata
        The cells.
    groupby
        ``obs`` column of the groups (cells with a missing group are left out).
    n_top
        Markers per group.
    genes
        Rank only these genes (e.g. the genes the attention could rank).
    layer
        Layer with the values (``None``: ``X``).
    method
        Any method of :func:`scanpy.tl.rank_genes_groups`.
    """
    import scanpy as sc

    codes, group_names = group_codes(adata, groupby)
    keep = np.flatnonzero(codes >= 0)
    cols = np.arange(adata.n_vars) if genes is None else adata.var_names.get_indexer(list(genes))
    cols = cols[cols >= 0]
    if cols.size == 0:
        raise InputError("None of the requested genes is in the data; nothing to rank.")
    tmp = ad.AnnData(X=_lognormalized(adata, layer, keep, cols),
                     var=pd.DataFrame(index=adata.var_names[cols].astype(str)),
                     obs=pd.DataFrame({"group": pd.Categorical.from_codes(codes[keep], categories=group_names)},
                                      index=adata.obs_names[keep].astype(str)))
    tmp.obs["group"] = tmp.obs["group"].cat.remove_unused_categories()
    tmp.uns["log1p"] = {"base": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "group", method=method, use_raw=False, n_genes=min(n_top, cols.size))
    return ranked_names(tmp, "rank_genes_groups", n_top)
