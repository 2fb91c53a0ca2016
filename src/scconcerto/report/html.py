"""Build the mapping report: one self-contained HTML file, figures embedded as base64 PNG."""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
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
from .._io import check_output, write_atomic_file
from .._keys import EMBEDDING_KEY, IMPUTED_PROTEIN_KEY, REFERENCE_UMAP_KEY
from ..plotting._mapped import check_mapped_onto, imputed_protein, mapped_label_keys, predicted_labels
from ..model._reference import RNA_EMBEDDING_EXTRA, UMAP_EXTRA
from ..plotting.mapping import reference_labels
from . import _facts as facts
from ._template import TEMPLATE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..model import Concerto


@dataclass(frozen=True)
class EmbeddedFigure:
    """A rendered figure: title, caption, base64 PNG bytes, and whether it takes the page's full width."""

    title: str
    caption: str
    png: str
    wide: bool = False


def figure_png(fig: "Figure", dpi: int = 110) -> str:
    """The figure as base64 PNG text; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _Figures:
    """Draws figures one by one; a figure whose inputs are missing becomes a note instead."""

    def __init__(self, dpi: int):
        self.dpi = dpi
        self.notes: list[str] = []

    def draw(self, title: str, caption: str, make: Callable[[], "Figure"], wide: bool = False) -> EmbeddedFigure | None:
        try:
            fig = make()
        except InputError as exc:
            self.notes.append(f"{title}: {exc}")
            return None
        return EmbeddedFigure(title, caption, figure_png(fig, self.dpi), wide)


def _coordinates(query: ad.AnnData, model: "Concerto", seed: int) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Reference and query UMAP coordinates: stored by mapping, or made here from the embeddings.

    Without stored coordinates the query is placed as mapping places it (the
    similarity-weighted mean of its 5 nearest reference cells' coordinates), on
    the stored reference UMAP or on one computed for the report (the model is
    not changed).
    """
    from ..tools import knn
    from ..tools.placement import place_on_reference, reference_umap

    ref = model.reference
    stored = UMAP_EXTRA in ref.extra
    if stored and REFERENCE_UMAP_KEY in query.obsm:
        return (np.asarray(ref.extra[UMAP_EXTRA], dtype=np.float32),
                np.asarray(query.obsm[REFERENCE_UMAP_KEY], dtype=np.float32)[:, :2], "")
    if EMBEDDING_KEY not in query.obsm:
        return None, None, (f"The query has neither `obsm['{REFERENCE_UMAP_KEY}']` nor `obsm['{EMBEDDING_KEY}']`: "
                            "no UMAP is drawn.")
    space = facts.mapping_info(query).get("space")
    ref_emb = ref.extra.get(RNA_EMBEDDING_EXTRA, ref.embedding) if space == "rna_only" else ref.embedding
    ref_xy = (np.asarray(ref.extra[UMAP_EXTRA], dtype=np.float32) if stored
              else reference_umap(ref.embedding, seed=seed))
    q_xy = place_on_reference(knn(np.asarray(query.obsm[EMBEDDING_KEY]), ref_emb, k=5), ref_xy)
    what = "the stored reference UMAP" if stored else "a reference UMAP computed for this report"
    return ref_xy, q_xy, (f"The query has no stored place on the reference UMAP: it was placed here on {what}, "
                          "each cell at the similarity-weighted mean of its 5 nearest reference cells.")


def _integrated(query: ad.AnnData, model: "Concerto", ref_xy: np.ndarray, q_xy: np.ndarray, source_key: str | None,
                label_key: str | None) -> ad.AnnData:
    """Reference and query cells together on the reference UMAP, with source and (predicted) label."""
    src_names = np.asarray(list(model.setup.sources), dtype=object)
    ref_src = np.char.add("reference: ", src_names[model.reference.domains].astype(str))
    if source_key is not None and source_key in query.obs:
        q_src = np.char.add("query: ", np.asarray(query.obs[source_key].astype(str), dtype=str))
    else:
        q_src = np.full(query.n_obs, "query", dtype=object).astype(str)
    obs = pd.DataFrame({"source": np.concatenate([ref_src, q_src])})
    if label_key is not None:
        obs["label"] = np.concatenate([reference_labels(model, label_key), predicted_labels(query, label_key)])
    obs.index = obs.index.astype(str)
    return ad.AnnData(obs=obs, obsm={"X_umap": np.vstack([ref_xy, q_xy]).astype(np.float32)})


def _table_html(table: pd.DataFrame, percent: Sequence[str] = (), decimals: Mapping[str, int] | None = None) -> Markup:
    """A DataFrame as an HTML table (cell text escaped by pandas), numbers formatted."""
    shown = table.reset_index()
    for col in percent:
        if col in shown:
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    for col, d in (decimals or {}).items():
        if col in shown:
            shown[col] = shown[col].map(lambda v, d=d: "" if pd.isna(v) else f"{v:.{d}f}")
    return Markup(shown.to_html(border=0, escape=True, index=False, classes="data"))


def mapping_report(query: ad.AnnData, model: "Concerto", path: str | Path, label_keys: Sequence[str] | None = None,
                   true_keys: Mapping[str, str] | None = None, source_key: str | None = None,
                   title: str = "scConcerto mapping report", query_name: str | None = None,
                   model_name: str | None = None, max_points: int | None = 50_000, dpi: int = 110, seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Write an HTML report of a query mapped onto a reference: one self-contained file.

    The report states what was mapped onto what (cells, sources, genes), the
    gene overlap, the query on the reference UMAP (by predicted label,
    confidence and source) and per-source panels, and for each label key a
    table of predicted label counts with confidence, the unknown cells, the
    confidence histogram with the unknown threshold, and, when the query has
    given labels, accuracy, a confusion matrix and a Sankey plot of the label
    transfer. It adds imputed-vs-measured proteins when both are present, the
    training loss curve, timings, mapping parameters and package versions.
    Figures are PNG embedded in the page; nothing outside the file is needed.

    Parameters
    ----------
    query
        Mapped query: ``obs['<L>_pred']``, ``obs['<L>_confidence']``, ``obs['<L>_unknown']`` per label
        key ``L``; ``obsm['X_umap_ref']`` (or ``obsm['X_concerto']``, a UMAP is then computed);
        optionally ``obsm['protein_imputed']`` and ``uns['scconcerto_mapping']``. Not modified.
    model
        The reference model the query was mapped onto.
    path
        The ``.html`` file to write (atomically).
    label_keys
        Reference label keys to report (default: those with predictions in the query).
    true_keys
        ``{label_key: obs column of given labels}``; default: the column named like the key, if present.
    source_key
        ``obs`` column of the query's sources (default: the model's batch key, if present).
    title, query_name, model_name
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
    mapped = mapped_label_keys(query)
    keys = list(label_keys) if label_keys is not None else [k for k in model.setup.labels if k in mapped]
    missing = [k for k in keys if k not in mapped]
    if missing:
        raise InputError(f"The query has no predictions for {missing} (no `obs['<key>_pred']`); mapped keys: "
                         f"{mapped}. Map the query first (`scconcerto map`).")
    true_keys = dict(true_keys or {})
    for k in keys:
        true_keys.setdefault(k, k)
    if source_key is None and model.setup.batch_key is not None and model.setup.batch_key in query.obs:
        source_key = model.setup.batch_key

    figs = _Figures(dpi)
    ref_xy, q_xy, coords_note = _coordinates(query, model, seed)
    have_xy = ref_xy is not None
    common = {"model": model, "reference_coords": ref_xy, "basis": "_report_xy", "max_points": max_points,
              "seed": seed}
    # a light AnnData holding the coordinates, so the caller's AnnData is not touched
    view = ad.AnnData(obs=query.obs, obsm={"_report_xy": q_xy}) if have_xy else None
    placement = _placement_figures(figs, query, view, model, ref_xy, q_xy, source_key, keys, common) if have_xy else []
    labels = {key: _label_section(figs, query, view, key, true_keys.get(key), common) for key in keys}
    if not keys:
        figs.notes.append("No label transfer in the query (no `obs['<label>_pred']` for the model's label keys "
                          f"{list(model.setup.labels)}).")

    protein = _protein_section(query, model, figs, max_points, seed)
    training = figs.draw("Training loss", "Contrastive (NT-Xent) loss of the reference model per epoch.",
                         lambda: pl.loss_curve(model))
    timings = facts.timings(query, model)
    timings["this report"] = time.perf_counter() - start
    html = _render(
        title=title, query_name=query_name or "the query", model_name=model_name or "the reference model",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        reference=facts.reference_facts(model), query=facts.query_facts(query, source_key),
        overlap=facts.overlap_facts(query, model), coords_note=coords_note if have_xy else "",
        placement_figures=placement, labels=labels, protein=protein,
        training=training, notes=figs.notes + ([coords_note] if not have_xy else []),
        timings=timings, parameters=facts.flatten(facts.mapping_info(query)), versions=facts.versions())
    return write_atomic_file(path, lambda tmp: _write_readable(tmp, html), overwrite=overwrite)


def _placement_figures(figs: _Figures, query: ad.AnnData, view: ad.AnnData, model: "Concerto", ref_xy: np.ndarray,
                       q_xy: np.ndarray, source_key: str | None, keys: list[str], common: dict) -> list[EmbeddedFigure]:
    """The query by source on the reference UMAP, and one panel per source (reference and query)."""
    max_points = common["max_points"]
    both = _integrated(query, model, ref_xy, q_xy, source_key, keys[0] if keys else None)
    drawn = [figs.draw("Query by source", "Reference cells in grey; query cells coloured by their source.",
                       lambda: pl.mapping_umap(view, color="source", source_key=source_key, **common)),
             figs.draw("Per-source panels", "Each panel shows one source's cells (coloured by reference label, or "
                       "predicted label for the query) over all cells in grey; a well integrated embedding places "
                       "every source's cells of a type in the same region.",
                       lambda: pl.source_umap(both, "source", color="label" if keys else None, seed=common["seed"],
                                              max_points=None if max_points is None else 2 * max_points),
                       wide=True)]
    return [f for f in drawn if f is not None]


def _label_section(figs: _Figures, query: ad.AnnData, view: ad.AnnData | None, key: str, true_key: str | None,
                   common: dict) -> dict[str, Any]:
    """Summary, predicted-label table, unknown cells and figures of one label key."""
    has_truth = facts.has_given_labels(query, true_key)
    given = true_key if has_truth else None
    drawn = []
    if view is not None:
        drawn.append(figs.draw(f"{key}: predicted labels on the reference", "Reference cells faint in their label's "
                               "colour, query cells in their predicted label's colour (unknown cells in black).",
                               lambda: pl.mapping_umap(view, color="label", label_key=key, **common)))
        drawn.append(figs.draw(f"{key}: confidence on the reference", "Query cells coloured by the confidence (0-1) "
                               "of their predicted label; reference in grey.",
                               lambda: pl.mapping_umap(view, color="confidence", label_key=key, **common)))
    drawn.append(figs.draw(f"{key}: confidence histogram", "The dashed line is the threshold below which cells are "
                           "called unknown." + (" Bars are split by agreement with the given labels." if has_truth
                                                else ""),
                           lambda: pl.confidence_histogram(query, key, true_key=given)))
    if has_truth:
        drawn.append(figs.draw(f"{key}: confusion matrix", f"Rows: given labels (obs['{true_key}']); columns: "
                               "predictions; each row sums to 1.",
                               lambda: pl.confusion_matrix(query, key, true_key=true_key)))
        drawn.append(figs.draw(f"{key}: label transfer (Sankey)", "Given labels (left) flow to predicted labels "
                               "(right); band width is the number of cells.",
                               lambda: pl.sankey(query, key, true_key=true_key), wide=True))
    else:
        figs.notes.append(f"{key}: confusion matrix and Sankey plot need given labels in the query "
                          f"(no `obs[{true_key!r}]` with labels).")
    table = facts.predicted_table(query, key, given)
    return {"summary": facts.label_summary(query, key, given),
            "table_html": _table_html(table, percent=("share", "agrees_with_given"),
                                      decimals={"mean_confidence": 3, "median_confidence": 3}),
            "unknown_given": facts.unknown_given_labels(query, key, given),
            "figures": [f for f in drawn if f is not None]}


def _write_readable(tmp: Path, text: str) -> None:
    """Write the page; give it the usual permissions (the temporary file starts owner-only)."""
    tmp.write_text(text, encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)


def _protein_section(query: ad.AnnData, model: "Concerto", figs: _Figures, max_points: int | None,
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


def _render(**context: Any) -> str:
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False)
    return env.from_string(TEMPLATE).render(**context)
