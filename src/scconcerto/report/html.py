"""Build the report of a mapped (or annotated) query: one self-contained HTML file that answers first.

The page opens with the answers, per label key: the predicted labels on the reference UMAP, a table per
predicted type (cells, confidence, unknown cells), the confidence per type, what "unknown" means and a
downloadable table of the predictions; then the hierarchy (``levels``), the checks against given labels,
the query on the reference, what was mapped onto what, proteins and training; the parameters last, folded.
Everything is read from the query's public outputs (:mod:`scconcerto.plotting.outputs`) and drawn by the
public plotting functions; nothing re-derives how mapping placed or labelled the cells.
"""

from __future__ import annotations

import base64
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
from markupsafe import Markup

from .. import plotting as pl
from .._errors import InputError
from .._random import sample_rows
from .._io import check_output, write_atomic_file
from .._keys import EMBEDDING_KEY, IMPUTED_PROTEIN_KEY, REFERENCE_UMAP_KEY, known_key, unknown_score_key
from ..plotting.mapping import reference_labels
from ..plotting.outputs import (annotation_info, check_mapped_onto, imputed_protein, is_annotated, mapped_label_keys,
                                mapped_levels, mapping_info, predicted_labels, unknown_score_name)
from . import _facts as facts
from ._figures import EmbeddedFigure, Figures, figure_png
from ._template import TEMPLATE

if TYPE_CHECKING:
    from ..model import Concerto

__all__ = ["EmbeddedFigure", "figure_png", "mapping_report"]

#: Queries of up to this many cells get their predictions embedded as a CSV download (larger ones: a note).
MAX_CSV_CELLS = 200_000
_XY = "_report_xy"


@dataclass
class _Coordinates:
    """Where the report draws the query: on the stored reference UMAP, or on a UMAP of its own cells."""

    view: ad.AnnData | None  # the drawn cells' obs and coordinates (obsm[_XY]); None: no UMAP
    reference: np.ndarray | None  # reference UMAP when the query was placed on it by mapping
    note: str = ""

    @property
    def placed(self) -> bool:
        return self.reference is not None


def mapping_report(query: ad.AnnData, model: "Concerto", path: str | Path, label_keys: Sequence[str] | None = None,
                   true_keys: Mapping[str, str] | None = None, source_key: str | None = None,
                   title: str | None = None, query_name: str | None = None, model_name: str | None = None,
                   max_points: int | None = 50_000, dpi: int = 110, seed: int = 0, overwrite: bool = False) -> Path:
    """Write an HTML report of a query mapped onto a reference (or annotated by its classifier): one file.

    The page answers first. For each label key: the predicted labels on the reference UMAP (reference
    cells in grey behind), a table per predicted type (cells, share, median confidence, median
    known-type probability, unknown cells), the confidence per type, a note on what "unknown" and
    "confidence" mean (with given labels, the rate of unknown cells on types the reference has) and the
    predictions as a CSV download. Then the hierarchy of a mapping with ``levels``, the confusion
    matrix and Sankey plot against given labels, the query on the reference by confidence and source,
    what was mapped onto what (cells, sources, gene overlap), imputed proteins, the training loss, and,
    folded at the end, timings, parameters and versions. A query annotated by :meth:`Concerto.predict`
    gets an annotation report: its own UMAP (from ``obsm['X_concerto']``, or embedded by the model).

    Parameters
    ----------
    query
        Mapped query (``obs['<L>_pred']``, ``obs['<L>_confidence']``, ``obs['<L>_known_prob']``,
        ``obs['<L>_unknown']`` per label key ``L``, ``obsm['X_umap_ref']``, ``uns['scconcerto_mapping']``), or
        one annotated by ``annotate predict`` (``uns['scconcerto_annotation']``). Not modified.
    model
        The reference model the query was mapped onto (or annotated with).
    path
        The ``.html`` file to write (atomically).
    label_keys
        Label keys to report (default: every key with predictions in the query; levels coarse to fine).
    true_keys
        ``{label_key: obs column of given labels}``; default: the column named like the key, if present.
    source_key
        ``obs`` column of the query's sources (default: the model's batch key, if present).
    title
        Title of the page (default: "scConcerto mapping report", or "... annotation report").
    query_name, model_name
        Shown in the header.
    max_points
        Draw at most this many cells of each of reference and query per scatter plot.
    dpi
        Resolution of the embedded images.
    seed
        Seed of subsamples and of a UMAP computed for the report.
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    start = time.perf_counter()
    check_output(path, overwrite)
    if model.reference is None:
        raise InputError("The model has no stored reference (it was never trained): train it before reporting.")
    check_mapped_onto(query, model)
    annotated = is_annotated(query)
    keys = _label_keys(query, model, label_keys)
    given_keys = {k: (dict(true_keys or {}).get(k) or k) for k in keys}
    given_keys = {k: v if facts.has_given_labels(query, v) else None for k, v in given_keys.items()}
    if source_key is None and model.setup.batch_key is not None and model.setup.batch_key in query.obs:
        source_key = model.setup.batch_key

    figs = Figures(dpi)
    coords = _coordinates(query, model, annotated, max_points, seed)
    answers = {key: _answers(figs, query, model, coords, key, given_keys[key], annotated, max_points, seed)
               for key in keys}
    if not keys:
        figs.notes.append("No predicted labels in the query (no `obs['<label>_pred']` for the model's label keys "
                          f"{list(model.setup.labels)}).")
    levels = [k for k in mapped_levels(query) if k in keys]
    hierarchy = [_hierarchy(figs, query, coarse, fine) for coarse, fine in zip(levels, levels[1:])]
    checks = {key: _checks(figs, query, key, given_keys[key]) for key in keys if given_keys[key] is not None}
    if keys and not checks:
        figs.notes.append("Confusion matrix and Sankey plot: the query has no given labels to compare with (name "
                          "their column with `--true-key` / `true_keys=`).")
    placement = _placement(figs, query, model, coords, source_key, keys, max_points, seed)
    protein = _protein_section(query, model, figs, max_points, seed)
    training = figs.draw("Training loss", "Contrastive (NT-Xent) loss of the reference model per epoch.",
                         lambda: pl.loss_curve(model))
    download = _download(query, keys, given_keys, source_key, query_name, figs)
    timings = facts.timings(query, model)
    timings["this report"] = time.perf_counter() - start
    record = mapping_info(query) or annotation_info(query)
    html = _render(
        title=title or f"scConcerto {'annotation' if annotated else 'mapping'} report", annotated=annotated,
        query_name=query_name or "the query", model_name=model_name or "the reference model",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        reference=facts.reference_facts(model), query=facts.query_facts(query, source_key),
        overlap=facts.overlap_facts(query, model), answers=answers, hierarchy=hierarchy, checks=checks,
        placement=placement, coords_note=coords.note, protein=protein, training=training, download=download,
        notes=figs.notes, timings=timings, parameters=facts.flatten(record),
        reject=bool(record.get("rejected", record.get("reject"))), versions=facts.versions())
    return write_atomic_file(path, lambda tmp: _write_readable(tmp, html), overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- what to show
def _label_keys(query: ad.AnnData, model: "Concerto", label_keys: Sequence[str] | None) -> list[str]:
    """The label keys to report: as asked, else the mapped ones (levels coarse to fine, then the model's order)."""
    mapped = mapped_label_keys(query)
    if label_keys is not None:
        keys = [str(k) for k in label_keys]
        missing = [k for k in keys if k not in mapped]
        if missing:
            raise InputError(f"The query has no predictions for {missing} (no `obs['<key>_pred']`); mapped keys: "
                             f"{mapped}. Map the query first (`scconcerto map`).")
        return keys
    order = [*mapped_levels(query), *model.setup.labels, *mapped]
    return list(dict.fromkeys(k for k in order if k in mapped))


def _coordinates(query: ad.AnnData, model: "Concerto", annotated: bool, max_points: int | None,
                 seed: int) -> _Coordinates:
    """The query on the stored reference UMAP where mapping placed it; else a UMAP of the query's own cells.

    The own UMAP is computed from ``obsm['X_concerto']`` or, for a query annotated by the classifier, from
    the model's embedding of it (on at most ``max_points`` cells). The query itself is not changed.
    """
    reference = model.reference_umap()
    obs = query.obs.copy(deep=False)
    if REFERENCE_UMAP_KEY in query.obsm and reference is not None:
        xy = np.asarray(query.obsm[REFERENCE_UMAP_KEY], dtype=np.float32)[:, :2]
        return _Coordinates(ad.AnnData(obs=obs, uns=dict(query.uns), obsm={_XY: xy}), reference)
    rows = sample_rows(query.n_obs, max_points, seed)
    if EMBEDDING_KEY in query.obsm:
        embedding, source = np.asarray(query.obsm[EMBEDDING_KEY])[rows], f"`obsm['{EMBEDDING_KEY}']`"
    else:
        try:
            embedding = model.embed(query[rows] if len(rows) < query.n_obs else query)
        except InputError as exc:
            return _Coordinates(None, None, f"UMAP: the query has neither a place on the reference UMAP "
                                            f"(`obsm['{REFERENCE_UMAP_KEY}']`) nor an embedding, and the model could "
                                            f"not embed it ({exc}).")
        source = "the model's embedding of the query"
    if len(rows) < 3:
        return _Coordinates(None, None, "UMAP: fewer than 3 cells to draw.")
    why = ("the classifier labels cells without placing them on the reference" if annotated else
           "the query has no place on the reference UMAP (`obsm['X_umap_ref']`)" if reference is not None else
           "the model stores no reference UMAP")
    xy = pl.umap_coords(embedding, seed=seed)
    view = ad.AnnData(obs=obs.iloc[rows], uns=dict(query.uns), obsm={_XY: xy})
    shown = f" of {len(rows):,} cells drawn at random" if len(rows) < query.n_obs else ""
    return _Coordinates(view, None, f"The UMAP{shown} is computed from {source} alone: {why}.")


# ---------------------------------------------------------------------------------------------- sections
def _answers(figs: Figures, query: ad.AnnData, model: "Concerto", coords: _Coordinates, key: str,
             given: str | None, annotated: bool, max_points: int | None, seed: int) -> dict[str, Any]:
    """The answers for one label key: UMAP, per-type table, confidence per type, the unknown note."""
    umap = None
    if coords.placed:
        umap = figs.draw(f"Predicted {key} on the reference", "Query cells on the reference UMAP, coloured by their "
                         "predicted label (unknown cells in black); reference cells in grey behind.",
                         lambda: pl.mapping_umap(coords.view, model, color="label", label_key=key, basis=_XY,
                                                 reference_coords=coords.reference, background="grey",
                                                 max_points=max_points, seed=seed))
    elif coords.view is not None:
        umap = figs.draw(f"Predicted {key}", "Query cells on a UMAP of their own embedding, coloured by predicted "
                         "label (unknown cells in black).",
                         lambda: pl.label_umap(coords.view, key, basis=_XY, max_points=max_points, seed=seed))
    reference_counts = None if annotated else facts.reference_type_counts(model, key)
    table = facts.type_table(query, key, given, reference_counts)
    unknown = facts.unknown_facts(query, key, given, model)
    score_name = unknown_score_name(query, key)
    boxes = figs.draw(f"{key}: confidence per predicted type", "Each box spans the middle half of a type's cells, "
                      "the line is its median, dots are cells. Left: the confidence (probability that the label "
                      f"is right); right: the {score_name}, below whose dashed threshold a cell is unknown.",
                      lambda: pl.confidence_by_type(query, key, seed=seed), wide=True)
    histogram = None
    if given is not None and unknown["column"] is not None:
        histogram = figs.draw(f"{key}: {score_name}", "Cells whose given type the reference has (blue) and "
                              "cells of other types (orange); the dashed line is the unknown threshold.",
                              lambda: pl.confidence_histogram(query, key, true_key=given, score="unknown"))
    return {"summary": facts.label_summary(query, key, given), "umap": umap, "boxes": boxes, "histogram": histogram,
            "table_html": _type_table_html(table, key, score_name), "unknown": unknown, "score_name": score_name,
            "low": facts.low_confidence_types(table), "given": given,
            "known_column": known_key(key) if unknown["known_prob"] else unknown_score_key(key)}


def _hierarchy(figs: Figures, query: ad.AnnData, coarse: str, fine: str) -> dict[str, Any]:
    table = facts.level_table(query, coarse, fine)
    figure = figs.draw(f"{coarse} to {fine}", f"Each cell's predicted {coarse} (left) and its predicted {fine} "
                       f"(right), chosen among the {fine} labels of that {coarse}; band width is the number of cells.",
                       lambda: pl.level_sankey(query, coarse, fine), wide=True)
    shown = table.reset_index()
    shown.columns = [coarse, fine, "cells", f"share of the {coarse}", f"mean {fine} confidence"]
    return {"coarse": coarse, "fine": fine, "figure": figure,
            "table_html": _table_html(shown, percent=(f"share of the {coarse}",),
                                      decimals={f"mean {fine} confidence": 2}, counts=("cells",), index=False,
                                      table_id=f"levels-{coarse}-{fine}")}


def _checks(figs: Figures, query: ad.AnnData, key: str, given: str) -> dict[str, Any]:
    """Against the given labels: the confusion matrix (shown at its own size) and the Sankey plot."""
    drawn = [figs.draw(f"{key}: confusion matrix", f"Rows: given labels (obs['{given}']); columns: predictions "
                       "(unknown cells in their own column); each row sums to 1.",
                       lambda: pl.confusion_matrix(query, key, true_key=given), natural=True),
             figs.draw(f"{key}: label transfer (Sankey)", "Given labels (left) flow to predicted labels (right); "
                       "band width is the number of cells.", lambda: pl.sankey(query, key, true_key=given),
                       wide=True)]
    return {"summary": facts.label_summary(query, key, given), "figures": [f for f in drawn if f is not None]}


def _placement(figs: Figures, query: ad.AnnData, model: "Concerto", coords: _Coordinates, source_key: str | None,
               keys: list[str], max_points: int | None, seed: int) -> list[EmbeddedFigure]:
    """The query by confidence and (with several sources) by source; per-source panels with the reference."""
    if coords.view is None or not keys:
        return []
    key = keys[0]
    n_sources = (coords.view.obs[source_key].nunique() if source_key is not None and source_key in coords.view.obs
                 else 1)
    drawn = []
    if coords.placed:
        common = {"basis": _XY, "reference_coords": coords.reference, "max_points": max_points, "seed": seed}
        drawn.append(figs.draw(f"{key} confidence on the reference", "Query cells coloured by the confidence (0-1) "
                               "of their predicted label; reference in grey.",
                               lambda: pl.mapping_umap(coords.view, model, color="confidence", label_key=key,
                                                       **common)))
        if n_sources > 1:
            drawn.append(figs.draw("Query by source", "Reference cells in grey; query cells coloured by source.",
                                   lambda: pl.mapping_umap(coords.view, model, color="source", source_key=source_key,
                                                           **common)))
        both = _integrated(coords, model, source_key, key)
        drawn.append(figs.draw("Per-source panels", "Each panel shows one source's cells (coloured by reference "
                               "label, or predicted label for the query) over all cells in grey; a well integrated "
                               "embedding places every source's cells of a type in the same region.",
                               lambda: pl.source_umap(both, "source", color="label", seed=seed,
                                                      max_points=None if max_points is None else 2 * max_points),
                               wide=True))
    elif n_sources > 1:
        view = coords.view.copy()
        view.obs["predicted"] = predicted_labels(view, key)
        drawn.append(figs.draw("Per-source panels", "Each panel shows one query source's cells, coloured by "
                               "predicted label, over all query cells in grey.",
                               lambda: pl.source_umap(view, source_key, color="predicted", basis=_XY, seed=seed),
                               wide=True))
    return [f for f in drawn if f is not None]


def _integrated(coords: _Coordinates, model: "Concerto", source_key: str | None, label_key: str) -> ad.AnnData:
    """Reference and query cells together on the reference UMAP, with source and (predicted) label."""
    view = coords.view
    if model.setup.batch_key is not None:
        src_names = np.asarray(list(model.setup.sources), dtype=object)
        ref_src = np.char.add("reference: ", src_names[model.reference.domains].astype(str))
    else:
        ref_src = np.full(len(coords.reference), "reference", dtype=object).astype(str)
    if source_key is not None and source_key in view.obs:
        names = facts.labels_of(view.obs[source_key].to_numpy())
        q_src = np.char.add("query: ", np.where(pd.isna(names), "unnamed", names).astype(str))
    else:
        q_src = np.full(view.n_obs, "query", dtype=object).astype(str)
    obs = pd.DataFrame({"source": np.concatenate([ref_src, q_src])})
    ref_labels = (reference_labels(model, label_key) if label_key in model.setup.labels
                  else np.full(len(coords.reference), "nan", dtype=object))
    ref_labels = np.where(ref_labels == "nan", "unlabelled", ref_labels)
    obs["label"] = np.concatenate([ref_labels, predicted_labels(view, label_key)])
    obs.index = obs.index.astype(str)
    return ad.AnnData(obs=obs, obsm={"X_umap": np.vstack([coords.reference, view.obsm[_XY]]).astype(np.float32)})


def _download(query: ad.AnnData, keys: list[str], given_keys: Mapping[str, str | None], source_key: str | None,
              query_name: str | None, figs: Figures) -> dict[str, Any] | None:
    """The predictions as a CSV embedded in the page (a ``data:`` link), for queries up to ``MAX_CSV_CELLS``."""
    if not keys:
        return None
    frame = facts.predictions_frame(query, keys, given_keys, source_key)
    stem = Path(query_name).stem if query_name else "query"
    name = f"{stem}_predictions.csv"
    if query.n_obs > MAX_CSV_CELLS:
        figs.notes.append(f"Predictions table: {query.n_obs:,} cells are more than the {MAX_CSV_CELLS:,} embedded "
                          "in the page; write them from Python with "
                          f"`adata.obs[{list(frame.columns)!r}].to_csv('{name}')`.")
        return None
    text = frame.to_csv(na_rep="", float_format="%.4g")
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return {"href": f"data:text/csv;charset=utf-8;base64,{encoded}", "name": name, "cells": len(frame),
            "columns": list(frame.columns), "kilobytes": math.ceil(len(text) / 1024)}


def _protein_section(query: ad.AnnData, model: "Concerto", figs: Figures, max_points: int | None,
                     seed: int) -> dict[str, Any] | None:
    if IMPUTED_PROTEIN_KEY not in query.obsm:
        return None
    measured_key = model.setup.protein_key
    if measured_key is None or measured_key not in query.obsm:
        imputed = np.asarray(query.obsm[IMPUTED_PROTEIN_KEY], dtype=np.float32)
        found = imputed_protein(query)
        names = found[1] if found else []
        table = pd.DataFrame({"mean imputed level": imputed.mean(axis=0)}, index=pd.Index(names, name="protein"))
        figs.notes.append("Imputed vs measured proteins: the query has no measured proteins "
                          f"(`obsm[{measured_key!r}]`) to compare with.")
        return {"figure": None, "table_html": _table_html(table, decimals={"mean imputed level": 3})}
    norm = model.setup.protein_norm
    figure = figs.draw("Imputed vs measured proteins", f"Each panel: one protein, measured ({norm}-normalized like "
                       "the reference) against imputed (mean of the nearest reference cells); dashed: y = x.",
                       lambda: pl.protein_imputation(query, measured_key=measured_key, normalize=norm,
                                                     max_points=max_points, seed=seed), wide=True)
    try:
        measured, imputed, names = pl.measured_vs_imputed(query, measured_key, IMPUTED_PROTEIN_KEY, norm)
    except InputError as exc:
        figs.notes.append(f"Protein table: {exc}")
        return {"figure": figure, "table_html": Markup("")}
    table = pd.DataFrame({"pearson_r": pl.pearson_per_column(measured, imputed)}, index=pd.Index(names, name="protein"))
    table = table.sort_values("pearson_r", ascending=False)
    return {"figure": figure, "table_html": _table_html(table, decimals={"pearson_r": 3})}


# ---------------------------------------------------------------------------------------------- HTML
def _type_table_html(table: pd.DataFrame, key: str, score_name: str) -> Markup:
    names = {"reference_cells": "in reference", "share": "share", "mean_confidence": "mean confidence",
             "mean_known_prob": f"mean {score_name}", "unknown": "unknown", "unknown_share": "unknown share",
             "agrees_with_given": "agrees with given label"}
    shown = table.rename(columns=names)
    return _table_html(shown, percent=("share", "unknown share", "agrees with given label"),
                       decimals={"mean confidence": 2, f"mean {score_name}": 2},
                       counts=("cells", "in reference", "unknown"), table_id=f"types-{key}")


def _table_html(table: pd.DataFrame, percent: Sequence[str] = (), decimals: Mapping[str, int] | None = None,
                counts: Sequence[str] = (), index: bool = True, table_id: str | None = None) -> Markup:
    """A DataFrame as an HTML table (text escaped by pandas), numbers formatted, missing values as "–"."""
    shown = table.reset_index() if index else table.copy()
    formats = {c: (lambda v: f"{100 * v:.1f}%") for c in percent}
    formats.update({c: (lambda v, d=d: f"{v:.{d}f}") for c, d in (decimals or {}).items()})
    formats.update({c: (lambda v: f"{int(v):,}") for c in counts})
    for col in shown.columns:
        fmt = formats.get(col, str)
        shown[col] = [facts.MISSING if facts.is_missing(v) else fmt(v) for v in shown[col].tolist()]
    html = shown.to_html(border=0, escape=True, index=False, classes="data", table_id=table_id)
    return Markup(html)


def _write_readable(tmp: Path, text: str) -> None:
    """Write the page; give it the usual permissions (the temporary file starts owner-only)."""
    tmp.write_text(text, encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)


def _number(value: Any, digits: int = 3) -> str:
    return facts.MISSING if facts.is_missing(value) else f"{float(value):.{digits}f}"


def _percent(value: Any, digits: int = 1) -> str:
    return facts.MISSING if facts.is_missing(value) else f"{100 * float(value):.{digits}f}%"


def _count(value: Any) -> str:
    return facts.MISSING if facts.is_missing(value) else f"{int(value):,}"


def _render(**context: Any) -> str:
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False)
    env.filters.update(number=_number, percent=_percent, count=_count)
    return env.from_string(TEMPLATE).render(**context)
