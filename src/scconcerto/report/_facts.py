"""The facts a report states, read from the query's public outputs and the model's public attributes.

Nothing here re-derives a label, a probability or a placement: every number is counted from what mapping
(:meth:`~scconcerto.Concerto.map_query`) or annotation (:meth:`~scconcerto.Concerto.predict`) wrote.
Missing values stay ``None``/NaN here; the page shows them as "–".
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from .._errors import InputError
from .._keys import confidence_key, known_key, pred_key, unknown_key, unknown_score_key
from ..plotting.outputs import (annotation_info, gene_overlap, label_classes, mapping_info, predicted_labels,
                                unknown_score_column, unknown_threshold)

if TYPE_CHECKING:
    from ..model import Concerto

VERSIONED_PACKAGES = ("scconcerto", "torch", "lightning", "anndata", "scanpy", "numpy", "scipy", "pandas",
                      "faiss-cpu", "scikit-learn", "matplotlib", "umap-learn", "leidenalg", "jinja2")
#: A type whose mean confidence is below this is named in the note on confidence.
LOW_CONFIDENCE = 0.5
MISSING = "–"


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages the result depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def is_missing(value: Any) -> bool:
    """``None``, NaN, or a label that stands for a missing value."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return not math.isfinite(float(value))
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "<na>")


def labels_of(values: np.ndarray | Sequence) -> np.ndarray:
    """Labels as an object array of strings, missing values as ``None``."""
    s = pd.Series(np.asarray(values, dtype=object))
    s = s.where(s.notna(), None).map(lambda v: None if is_missing(v) else str(v))
    return s.to_numpy(dtype=object)


def source_counts(names: np.ndarray | Sequence) -> dict[str, int]:
    """Cells per source (missing names left out), largest first."""
    counts = pd.Series(labels_of(names)).dropna().value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def reference_facts(model: "Concerto") -> dict[str, Any]:
    """Size, sources, genes, proteins, label keys and training of the reference model."""
    setup = model.setup
    ref = model.reference
    facts: dict[str, Any] = {"genes": len(setup.genes), "input": setup.input_kind, "batch_key": setup.batch_key,
                             "proteins": list(setup.proteins), "labels": {k: len(v) for k, v in setup.labels.items()},
                             "hvg": setup.hvg, "cells": None, "sources": {}, "epochs": None, "first_loss": None,
                             "final_loss": None, "train_seconds": None}
    if ref is not None:
        facts["cells"] = int(ref.embedding.shape[0])
        if setup.batch_key is not None:  # without a batch key the reference is one unnamed source
            names = np.asarray(list(setup.sources), dtype=object)
            facts["sources"] = source_counts(names[ref.domains])
    history = [h for h in model.history if isinstance(h, Mapping) and "loss" in h]
    if model.train_config is not None:
        facts["epochs"] = int(model.train_config.epochs)
    if history:
        facts["first_loss"] = float(history[0]["loss"])
        facts["final_loss"] = float(history[-1]["loss"])
    if model.training_record.seconds is not None:
        facts["train_seconds"] = float(model.training_record.seconds)
    return facts


def reference_type_counts(model: "Concerto", label_key: str) -> dict[str, int] | None:
    """Reference cells per label of ``label_key`` (``None`` when the reference has no such label key)."""
    ref = model.reference
    if ref is None or label_key not in model.setup.labels or label_key not in ref.labels:
        return None
    names = list(model.setup.labels[label_key])
    codes = np.asarray(ref.labels[label_key])
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    return {str(n): int(c) for n, c in zip(names, counts)}


def query_facts(query: ad.AnnData, source_key: str | None) -> dict[str, Any]:
    """Size and sources of the query (no sources without a source column)."""
    facts: dict[str, Any] = {"cells": int(query.n_obs), "genes": int(query.n_vars), "source_key": None,
                             "sources": {}}
    if source_key is not None and source_key in query.obs:
        facts["source_key"] = source_key
        facts["sources"] = source_counts(query.obs[source_key].to_numpy())
    return facts


def has_given_labels(query: ad.AnnData, key: str | None) -> bool:
    """Whether ``obs[key]`` exists and holds at least one label."""
    return key is not None and key in query.obs and bool(pd.notna(labels_of(query.obs[key].to_numpy())).any())


def _column(query: ad.AnnData, name: str, dtype: type = float) -> np.ndarray | None:
    return query.obs[name].to_numpy(dtype=dtype) if name in query.obs else None


def label_summary(query: ad.AnnData, label_key: str, true_key: str | None) -> dict[str, Any]:
    """Cells, unknown cells, mean confidence and, with given labels, accuracy and F1 of the predictions."""
    from ..metrics import annotation_report

    n = query.n_obs
    unknown = _column(query, unknown_key(label_key), bool)
    unknown = np.zeros(n, dtype=bool) if unknown is None else unknown
    conf = _column(query, confidence_key(label_key))
    out: dict[str, Any] = {"cells": n, "types": int(pd.Series(predicted_labels(query, label_key, False)).nunique()),
                           "unknown": int(unknown.sum()), "unknown_fraction": float(unknown.mean()) if n else None,
                           "mean_confidence": float(np.mean(conf)) if conf is not None and n else None,
                           "scores": None, "given_key": None, "labeled_cells": 0, "accuracy_of_known": None}
    if has_given_labels(query, true_key):
        given = labels_of(query.obs[true_key].to_numpy())
        pred = labels_of(query.obs[pred_key(label_key)].to_numpy())
        labeled = pd.notna(given)
        out["given_key"] = true_key
        out["labeled_cells"] = int(labeled.sum())
        scores = annotation_report(given[labeled].astype(str), pred[labeled].astype(str))
        out["scores"] = {k: float(v) for k, v in scores.items()}
        known = labeled & ~unknown
        if known.any() and unknown.any():
            out["accuracy_of_known"] = float(np.mean(given[known] == pred[known]))
    return out


def type_table(query: ad.AnnData, label_key: str, true_key: str | None = None,
               reference_counts: Mapping[str, int] | None = None) -> pd.DataFrame:
    """One row per predicted type, most cells first: what the report's per-type table shows.

    Columns: ``cells``, ``share`` (of the query), ``mean_confidence``, ``mean_known_prob`` (or the mean of
    the annotation's rejection score), ``unknown`` cells and ``unknown_share`` (of the type's cells); with
    ``reference_counts``, ``reference_cells``; with given labels, ``agrees_with_given`` (the share of the type's
    labeled cells whose given label is the same). Cells flagged unknown are counted under the type they were
    given (and in ``unknown``).
    """
    from ..plotting.annotation import type_order

    pred = predicted_labels(query, label_key, mark_unknown=False)
    frame = pd.DataFrame({"type": pred})
    conf = _column(query, confidence_key(label_key))
    frame["confidence"] = np.nan if conf is None else conf
    score_column = unknown_score_column(query, label_key)
    frame["known"] = np.nan if score_column is None else query.obs[score_column].to_numpy(dtype=float)
    unknown = _column(query, unknown_key(label_key), bool)
    frame["unknown"] = False if unknown is None else unknown
    agg: dict[str, tuple[str, str]] = {"cells": ("confidence", "size"), "mean_confidence": ("confidence", "mean"),
                                       "mean_known_prob": ("known", "mean"), "unknown": ("unknown", "sum")}
    if has_given_labels(query, true_key):
        given = labels_of(query.obs[true_key].to_numpy())
        frame["agrees"] = np.where(pd.isna(given), np.nan, (given == pred).astype(float))
        agg["agrees_with_given"] = ("agrees", "mean")
    table = frame.groupby("type", sort=False).agg(**agg).reindex(type_order(query, label_key))
    table["unknown"] = table["unknown"].astype(int)
    table.insert(1, "share", table["cells"] / max(len(frame), 1))
    table.insert(table.columns.get_loc("unknown") + 1, "unknown_share", table["unknown"] / table["cells"])
    if reference_counts is not None:
        table.insert(1, "reference_cells", [reference_counts.get(t) for t in table.index])
    table.index.name = "predicted type"
    return table


def calibration(query: ad.AnnData, model: "Concerto", label_key: str) -> dict[str, Any] | None:
    """How the unknown threshold used was calibrated, read from the model (never computed here).

    Mapping (and annotation with the ``reference`` score) flags a cell unknown when its known-type probability
    is below a threshold that, by default, :data:`~scconcerto.mapping.label_model.FALSE_REJECTION` of held-out
    reference cells of seen types fall below (:meth:`~scconcerto.Concerto.label_model`); the classifier's own
    scores use ``false_rejection_rate`` of its held-out cells (:attr:`~scconcerto.Concerto.annotation_summary`).

    Returns
    -------
    dict or None
        ``rate`` (share of held-out cells of seen types flagged by the default threshold), ``default`` (that
        threshold, or the pair of a query with and without its own density ratios), ``used`` (the threshold
        recorded in the query), ``is_default`` (whether the two agree), ``held_out`` (what the rate was
        measured on), ``held_out_accuracy`` (of the labels, if recorded) and ``accuracy_of`` (the cells it was
        measured on); ``None`` when the model records no calibration for this key.
    """
    from ..mapping.label_model import FALSE_REJECTION, SEEN_PRIOR, at_seen_prior

    used = unknown_threshold(query, label_key)
    record = annotation_info(query) if not mapping_info(query) else {}
    score = str(record.get("unknown_score", "reference")) if record else "reference"
    if score == "reference":
        space = str(mapping_info(query).get("space", "full"))
        try:
            decision = model.label_model(label_key, space)
        except InputError:
            decision = None
        if decision is None:
            return None
        prior = float((mapping_info(query) or record).get("known_share", SEEN_PRIOR))
        defaults = sorted({round(float(at_seen_prior(t, prior)), 6) for t in (decision.threshold,
                                                                              decision.threshold_small)})
        accuracy, accuracy_of = decision.report.get("held_out_accuracy"), "held-out reference cells"
        if record:  # the classifier gave the labels, mapping's novelty model the unknown flag
            accuracy, accuracy_of = _classifier_calibration(model).get("accuracy"), "the classifier's held-out cells"
        cells = decision.report.get("held_out_cells")
        return {"rate": FALSE_REJECTION, "default": defaults, "used": used,
                "is_default": used is not None and any(abs(used - d) < 1e-5 for d in defaults),
                "held_out": "held-out reference cells", "held_out_cells": None if is_missing(cells) else int(cells),
                "held_out_accuracy": None if is_missing(accuracy) else float(accuracy), "accuracy_of": accuracy_of}
    try:
        summary = model.annotation_summary
    except InputError:
        return None
    report = _classifier_calibration(model)
    default = (summary.get("thresholds") or {}).get(score)
    rate = report.get("false_rejection_rate")
    if is_missing(rate) or is_missing(default):
        return None
    defaults = [round(float(default), 6)]
    return {"rate": float(rate), "default": defaults, "used": used,
            "is_default": used is not None and abs(used - defaults[0]) < 1e-5,
            "held_out": "the classifier's held-out cells",
            "held_out_cells": None if is_missing(report.get("n_cells")) else int(report["n_cells"]),
            "held_out_accuracy": None if is_missing(report.get("accuracy")) else float(report["accuracy"]),
            "accuracy_of": "the classifier's held-out cells"}


def _classifier_calibration(model: "Concerto") -> dict[str, Any]:
    """The classifier's calibration on its held-out cells (empty without a classifier)."""
    try:
        report = model.annotation_summary.get("calibration")
    except InputError:
        return {}
    return dict(report) if isinstance(report, Mapping) else {}


def unknown_facts(query: ad.AnnData, label_key: str, true_key: str | None,
                  model: "Concerto | None" = None) -> dict[str, Any]:
    """What flags a cell unknown, the threshold, its calibration and, with given labels, the rate on seen and
    unseen types of the query.

    Seen types are the given labels the reference has (the posterior's classes); the rate on them is the
    share of known-type cells flagged unknown.
    """
    record = annotation_info(query) if not mapping_info(query) else {}
    column = unknown_score_column(query, label_key)
    unknown = _column(query, unknown_key(label_key), bool)
    out: dict[str, Any] = {"threshold": unknown_threshold(query, label_key),
                           "score": str(record.get("unknown_score", "reference")) if record else "reference",
                           "column": column, "known_prob": column == known_key(label_key),
                           "flagged": None if unknown is None else int(unknown.sum()),
                           "fraction": None if unknown is None or not len(unknown) else float(unknown.mean()),
                           "calibration": None if model is None else calibration(query, model, label_key),
                           "seen": None, "unseen": None, "matched": None}
    if column == unknown_score_key(label_key) and out["score"] == "reference":
        out["known_prob"] = True
    classes = label_classes(query, label_key)
    if unknown is None or classes is None or not has_given_labels(query, true_key):
        return out
    given = labels_of(query.obs[true_key].to_numpy())
    labeled = pd.notna(given)
    seen = labeled & np.isin(given.astype(str), classes)
    unseen = labeled & ~seen
    out["matched"] = bool(seen.any())
    if seen.any():
        out["seen"] = {"cells": int(seen.sum()), "unknown": int(unknown[seen].sum()),
                       "rate": float(unknown[seen].mean())}
    if unseen.any():
        types = source_counts(given[unseen])
        out["unseen"] = {"cells": int(unseen.sum()), "unknown": int(unknown[unseen].sum()),
                         "rate": float(unknown[unseen].mean()), "types": types}
    return out


def low_confidence_types(table: pd.DataFrame, threshold: float = LOW_CONFIDENCE) -> list[dict[str, Any]]:
    """Types of the per-type table whose mean confidence is below ``threshold`` (fewest reference cells first)."""
    low = table[table["mean_confidence"] < threshold]
    rows = [{"type": str(t), "cells": int(r["cells"]), "mean_confidence": float(r["mean_confidence"]),
             "reference_cells": None if is_missing(r.get("reference_cells")) else int(r["reference_cells"]),
             "agrees": None if is_missing(r.get("agrees_with_given")) else float(r["agrees_with_given"])}
            for t, r in low.iterrows()]
    return sorted(rows, key=lambda r: (r["reference_cells"] is None, r["reference_cells"] or 0))


def level_table(query: ad.AnnData, coarse_key: str, fine_key: str) -> pd.DataFrame:
    """Predicted coarse type, the fine types predicted within it, their cells and share of the coarse type."""
    coarse = predicted_labels(query, coarse_key, mark_unknown=False)
    fine = predicted_labels(query, fine_key, mark_unknown=False)
    frame = pd.DataFrame({coarse_key: coarse, fine_key: fine})
    conf = _column(query, confidence_key(fine_key))
    frame["confidence"] = np.nan if conf is None else conf
    table = frame.groupby([coarse_key, fine_key], sort=False).agg(cells=("confidence", "size"),
                                                                  mean_confidence=("confidence", "mean"))
    totals = table.groupby(level=0)["cells"].transform("sum")
    table.insert(1, "share_of_coarse", table["cells"] / totals)
    order = table.assign(total=totals).sort_values(["total", "cells"], ascending=False)
    return order.drop(columns="total")


def predictions_frame(query: ad.AnnData, label_keys: Sequence[str], true_keys: Mapping[str, str | None],
                      source_key: str | None) -> pd.DataFrame:
    """The predictions as one table (a row per cell): the downloadable CSV of the report."""
    columns: dict[str, Any] = {}
    if source_key is not None and source_key in query.obs:
        columns[source_key] = labels_of(query.obs[source_key].to_numpy())
    for key in label_keys:
        true_key = true_keys.get(key)
        if has_given_labels(query, true_key) and true_key not in columns:
            columns[true_key] = labels_of(query.obs[true_key].to_numpy())
        for name in (pred_key(key), confidence_key(key), known_key(key), unknown_key(key), unknown_score_key(key)):
            if name in query.obs and name not in columns:
                values = query.obs[name]
                columns[name] = labels_of(values.to_numpy()) if name == pred_key(key) else values.to_numpy()
    frame = pd.DataFrame(columns, index=pd.Index(query.obs_names.astype(str), name="cell"))
    return frame


def flatten(info: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``{"a.b": "value"}`` strings, arrays shortened, missing values as "–"."""
    out: dict[str, str] = {}
    for key, value in info.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
            continue
        arr = np.asarray(value, dtype=object) if not isinstance(value, str) else None
        if arr is not None and arr.ndim > 0:
            items = [_text(v) for v in arr.ravel()[:20]]
            out[name] = ", ".join(items) + (" …" if arr.size > 20 else "") if items else MISSING
        else:
            out[name] = _text(value)
    return out


def _text(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if is_missing(value):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def timings(query: ad.AnnData, model: "Concerto") -> dict[str, float]:
    """Seconds spent: training (from the model) and each recorded mapping step."""
    out: dict[str, float] = {}
    if model.training_record.seconds is not None:
        out["reference training"] = float(model.training_record.seconds)
    for key, text in flatten(mapping_info(query)).items():
        if any(word in key.lower() for word in ("time", "timing", "second")):
            try:
                seconds = float(text)
            except ValueError:
                continue
            if math.isfinite(seconds):
                out[f"mapping: {key}"] = seconds
    return out


def overlap_facts(query: ad.AnnData, model: "Concerto") -> dict[str, Any] | None:
    """Gene overlap recorded by mapping or annotation; else counted here from gene names."""
    found = gene_overlap(query)
    if found is None:
        found = annotation_info(query).get("gene_overlap")
        found = dict(found) if isinstance(found, Mapping) else None
    if found is not None and all(k in found for k in ("n_shared", "n_vocab", "n_dataset", "overlap")):
        return {**found, "recorded": True}
    vocab = pd.Index(model.setup.genes)
    shared = int(vocab.isin(query.var_names.astype(str)).sum())
    return {"n_shared": shared, "n_vocab": len(vocab), "n_dataset": int(query.n_vars),
            "overlap": round(shared / max(len(vocab), 1), 4), "recorded": False}
