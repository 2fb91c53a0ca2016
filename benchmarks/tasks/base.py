"""What every task receives (:class:`Context`) and returns (:class:`TaskResult`), and the shared loop
that fits each method on a split and maps its query."""

from __future__ import annotations

import logging
import resource
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..peers import Mapping, Method, Split, make
from ..peers.base import timed_fit_map

log = logging.getLogger("benchmarks")


@dataclass
class Context:
    """Run-wide settings.

    Attributes
    ----------
    data_dir
        Folder of the real data sets (``None``: only simulated data, e.g. the CI smoke run).
    out_dir
        Where JSON, markdown tables and figures are written.
    methods
        Method names to run (see :data:`benchmarks.peers.REGISTRY`).
    epochs
        Training epochs for the trained methods (``None``: each method's own default).
    smoke
        Tiny simulated data instead of the real data sets.
    speed_sizes, speed_cap_s
        Reference sizes of the speed task and its time cap per method and size (``None``: defaults).
    scib_metrics
        Also run the scib-metrics ``Benchmarker`` in the integration task (when installed).
    """

    data_dir: Path | None
    out_dir: Path
    methods: list[str]
    epochs: int | None = None
    seed: int = 0
    smoke: bool = False
    figures: bool = True
    speed_sizes: tuple[int, ...] | None = None
    speed_cap_s: float | None = None
    scib_metrics: bool = True
    cache: dict = field(default_factory=dict)


@dataclass
class TaskResult:
    """Rows of one task's table (one per split x method), plus what was skipped and why."""

    task: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_tables: list[str] = field(default_factory=list)
    seed: int | None = None


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process so far, or of its largest finished child process (MiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Fitted:
    """One method fitted on one split and its query mapping (``mapping`` is ``None`` when it failed)."""

    method: Method | None
    mapping: Mapping | None
    fit_s: float
    map_s: float
    error: str | None = None


def fit_and_map(ctx: Context, name: str, split: Split) -> Fitted:
    """Fit ``name`` on ``split.reference`` and map ``split.query``; errors are caught and reported."""
    try:
        method = make(name, epochs=ctx.epochs, seed=ctx.seed)
        mapping, fit_s, map_s, *_ = timed_fit_map(method, split.reference, split.query, split.label_key,
                                              split.batch_key, split.is_counts)
        return Fitted(method, mapping, fit_s, map_s)
    except Exception as err:  # one method failing must not stop the others
        log.error("%s on %s failed: %s", name, split.name, err)
        log.debug(traceback.format_exc())
        return Fitted(None, None, 0.0, 0.0, f"{type(err).__name__}: {err}")


def for_each_method(ctx: Context, split: Split, fn: Callable[[str, Fitted], dict]) -> list[dict]:
    """Run every method on ``split`` and turn each result into a row with ``fn``."""
    rows = []
    for name in ctx.methods:
        log.info("[%s] %s: %s", split.task, split.name, name)
        fitted = fit_and_map(ctx, name, split)
        row = {"split": split.name, "method": name, "n_ref": split.reference.n_obs,
               "n_query": split.query.n_obs, "n_genes": split.reference.n_vars}
        if fitted.mapping is None:
            row["error"] = fitted.error
        else:
            row.update(fn(name, fitted))
            row.update({"fit_s": round(fitted.fit_s, 2), "map_s": round(fitted.map_s, 2)})
            if (epochs := fitted.method.epochs_text()) is not None:
                row["epochs"] = epochs
        rows.append(row)
        log.info("  %s", {k: v for k, v in row.items() if k not in ("split",)})
    return rows


def annotation_scores(truth: np.ndarray, mapping: Mapping, seen: np.ndarray) -> dict[str, float | int]:
    """Accuracy, macro- and median F1 of ``mapping``'s labels on the ``seen`` query cells, and the AUROC of its
    confidence for telling its right labels from its wrong ones there (``nan`` when all are right or all wrong)."""
    from scconcerto.metrics import annotation_report
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(mapping.labels).astype(str)[seen]
    report = annotation_report(truth[seen], labels)
    right = labels == truth[seen]
    auroc = (float(roc_auc_score(right, np.asarray(mapping.confidence, dtype=float)[seen]))
             if 0 < right.sum() < len(right) else float("nan"))
    return {"acc": report["accuracy"], "macro_f1": report["macro_f1"], "median_f1": report["median_f1"],
            "auroc_right_wrong": auroc, "n_wrong": int((~right).sum()), "n_eval": int(seen.sum())}


def seen_mask(split: Split) -> np.ndarray:
    """Query cells whose true label exists in the reference."""
    ref_labels = set(split.reference.obs[split.label_key].astype(str))
    return split.query.obs[split.label_key].astype(str).isin(ref_labels).to_numpy()
