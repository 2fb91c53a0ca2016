"""The facts a mapping report states: what was mapped onto what, label tables, unknown cells, proteins, timings."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from ..plotting._base import as_strings
from .._keys import confidence_key, pred_key, unknown_key
from ..plotting._mapped import gene_overlap, mapping_info, predicted_labels, unknown_threshold

if TYPE_CHECKING:
    from ..model import Concerto

VERSIONED_PACKAGES = ("scconcerto", "torch", "lightning", "anndata", "scanpy", "numpy", "scipy", "pandas",
                      "faiss-cpu", "scikit-learn", "matplotlib", "umap-learn", "leidenalg", "jinja2")


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages the result depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def source_counts(names: np.ndarray) -> dict[str, int]:
    """Cells per source, largest first."""
    counts = pd.Series(as_strings(names)).value_counts()
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
        names = np.asarray(list(setup.sources), dtype=object)
        facts["cells"] = int(ref.embedding.shape[0])
        facts["sources"] = source_counts(names[ref.domains])
    history = [h for h in model.history if isinstance(h, Mapping) and "loss" in h]
    if model.train_config is not None:
        facts["epochs"] = int(model.train_config.epochs)
    if history:
        facts["first_loss"] = float(history[0]["loss"])
        facts["final_loss"] = float(history[-1]["loss"])
    if "train_seconds" in model.extra_config:
        facts["train_seconds"] = float(model.extra_config["train_seconds"])
    return facts


def query_facts(query: ad.AnnData, source_key: str | None) -> dict[str, Any]:
    """Size and sources of the query."""
    facts: dict[str, Any] = {"cells": int(query.n_obs), "genes": int(query.n_vars), "source_key": source_key,
                             "sources": {}}
    if source_key is not None and source_key in query.obs:
        facts["sources"] = source_counts(query.obs[source_key].to_numpy())
    return facts


def has_given_labels(query: ad.AnnData, key: str | None) -> bool:
    """Whether ``obs[key]`` exists and holds at least one label."""
    return key is not None and key in query.obs and bool(query.obs[key].notna().any())


def label_summary(query: ad.AnnData, label_key: str, true_key: str | None) -> dict[str, Any]:
    """Counts of unknown cells, the threshold and, with given labels, accuracy and F1 of the predictions."""
    from ..metrics import annotation_report

    n = query.n_obs
    unknown = (query.obs[unknown_key(label_key)].to_numpy(dtype=bool) if unknown_key(label_key) in query.obs
               else np.zeros(n, dtype=bool))
    out: dict[str, Any] = {"cells": n, "unknown": int(unknown.sum()),
                           "unknown_fraction": float(unknown.mean()) if n else 0.0,
                           "threshold": unknown_threshold(query, label_key), "median_confidence": None,
                           "scores": None, "given_key": None, "labeled_cells": 0, "accuracy_of_known": None}
    if confidence_key(label_key) in query.obs:
        conf = query.obs[confidence_key(label_key)].to_numpy(dtype=float)
        out["median_confidence"] = float(np.median(conf)) if n else float("nan")
    if has_given_labels(query, true_key):
        given = as_strings(query.obs[true_key].to_numpy())
        pred = as_strings(query.obs[pred_key(label_key)].to_numpy())
        labeled = given != "nan"
        out["given_key"] = true_key
        out["labeled_cells"] = int(labeled.sum())
        out["scores"] = {k: float(v) for k, v in annotation_report(given[labeled], pred[labeled]).items()}
        known = labeled & ~unknown
        if known.any() and unknown.any():
            out["accuracy_of_known"] = float(np.mean(given[known] == pred[known]))
    return out


def predicted_table(query: ad.AnnData, label_key: str, true_key: str | None) -> pd.DataFrame:
    """One row per predicted label: cells, share, mean and median confidence, unknown cells (and agreement).

    Unknown cells are counted under the label they were closest to and in the
    ``unknown`` column; the last column, with given labels, is the share of the
    label's cells whose given label is the same (precision).
    """
    pred = predicted_labels(query, label_key, mark_unknown=False)
    frame = pd.DataFrame({"predicted": pred})
    frame["confidence"] = (query.obs[confidence_key(label_key)].to_numpy(dtype=float)
                           if confidence_key(label_key) in query.obs else np.nan)
    frame["unknown"] = (query.obs[unknown_key(label_key)].to_numpy(dtype=bool) if unknown_key(label_key) in query.obs
                        else False)
    agg = {"cells": ("confidence", "size"), "mean_confidence": ("confidence", "mean"),
           "median_confidence": ("confidence", "median"), "unknown": ("unknown", "sum")}
    if has_given_labels(query, true_key):
        given = as_strings(query.obs[true_key].to_numpy())
        frame["agrees"] = np.where(given == "nan", np.nan, (given == pred).astype(float))
        agg["agrees_with_given"] = ("agrees", "mean")
    table = frame.groupby("predicted", sort=False).agg(**agg)
    table.insert(1, "share", table["cells"] / max(len(frame), 1))
    table["unknown"] = table["unknown"].astype(int)
    return table.sort_values("cells", ascending=False)


def unknown_given_labels(query: ad.AnnData, label_key: str, true_key: str | None, top: int = 10) -> dict[str, int]:
    """The given labels of the cells called unknown (most frequent first)."""
    if unknown_key(label_key) not in query.obs or not has_given_labels(query, true_key):
        return {}
    unknown = query.obs[unknown_key(label_key)].to_numpy(dtype=bool)
    return source_counts(query.obs[true_key].to_numpy()[unknown]) if unknown.any() else {}


def flatten(info: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping parameters as ``{"a.b": "value"}`` strings, arrays shortened."""
    out: dict[str, str] = {}
    for key, value in info.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            arr = np.asarray(value) if not isinstance(value, str) else None
            if arr is not None and arr.ndim > 0:
                text = ", ".join(map(str, arr.ravel()[:20])) + (" …" if arr.size > 20 else "")
            elif isinstance(value, (float, np.floating)):
                text = f"{float(value):.4g}"
            else:
                text = str(value.item() if isinstance(value, np.generic) else value)
            out[name] = text
    return out


def timings(query: ad.AnnData, model: "Concerto") -> dict[str, float]:
    """Seconds spent: training (from the model) and each mapping step (keys of the mapping info naming time)."""
    out: dict[str, float] = {}
    if "train_seconds" in model.extra_config:
        out["reference training"] = float(model.extra_config["train_seconds"])
    for key, text in flatten(mapping_info(query)).items():
        if any(word in key.lower() for word in ("time", "timing", "second")):
            try:
                out[f"mapping: {key}"] = float(text)
            except ValueError:
                continue
    return out


def overlap_facts(query: ad.AnnData, model: "Concerto") -> dict[str, Any] | None:
    """Gene overlap recorded by mapping; else counted here from gene names."""
    found = gene_overlap(query)
    if found is not None:
        return {**found, "recorded": True}
    vocab = pd.Index(model.setup.genes)
    shared = int(vocab.isin(query.var_names.astype(str)).sum())
    return {"n_shared": shared, "n_vocab": len(vocab), "n_dataset": int(query.n_vars),
            "overlap": round(shared / max(len(vocab), 1), 4), "recorded": False}

