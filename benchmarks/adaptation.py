"""The classifier with and without domain adaptation on every annotation task, and the collapse guard.

For each task (a labelled reference and an unlabelled target of another technology, condition or
simulated species) and seed: one contrastive pre-training, then the classifier fine-tuned without adapting
to the target (``plain``: weight 0) and adapted to it at each consistency weight (``adapted``), both given the
target, so both learn from the genes it has; the guard's decision
(:func:`scconcerto.model.classifier.adaptation_check`: the adapted target composition's effective
number of classes under ``DEFAULT_COLLAPSE_RATIO`` times the plain one's) gives ``guarded``, what
``fit_classifier(target=...)`` returns. Scores: accuracy and macro-F1 on the target cells whose type the
reference has, the target's effective number of predicted classes, and whether the guard fell back.

The consistency weight and the guard's threshold are chosen on the development tasks only (highest
mean guarded accuracy over tasks and seeds, thresholds ``COLLAPSE_RATIOS``, 0 meaning no guard); the
report shows the test tasks under that choice only.

Usage::

    python -m benchmarks.adaptation --data-dir ../shared/data --seeds 0,1,2 --out benchmarks/ADAPTATION.md

``--part development`` / ``--part test`` run one half (rows in ``OUT.development*.csv`` /
``OUT.test*.csv``), ``--only NAMES`` only these tasks (comma-separated; rows in
``OUT.<part>.<NAME>.csv``), so that parts run in separate processes at once; ``--part report`` writes the
report from all those files.

Budget (a 2-core shared machine): ``--pretrain-epochs`` and ``--epochs`` (classifier) fix the training
length for every task (defaults 20 and 10, below the package defaults; said in the report).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .report import generated_line, markdown
from .tasks.cross_species import as_mouse
from .tasks.data import load, role

log = logging.getLogger("benchmarks")
WEIGHTS = (0.3, 1.0)
#: Thresholds of the guard tried on the development tasks (0: adaptation always kept).
COLLAPSE_RATIOS = (0.0, 0.5, 0.75, 0.9)


def tasks(data_dir: Path, development: bool) -> list[tuple[str, object, object, str | None]]:
    """``(name, reference, target, target_species)`` of the development or of the test tasks."""
    skipped: list[str] = []
    out = []
    if development:
        if (a := load(data_dir, "symphony_pbmc_3tech", skipped)) is not None:
            q = (a.obs["batch"] == "5p").to_numpy()
            out.append(("symphony_pbmc_3tech:3p->5p", a[~q].copy(), a[q].copy(), None))
            out.append(("symphony_pbmc_3tech:3p->5p as mouse", a[~q].copy(), as_mouse(a[q].copy()), "mouse"))
            out.append(("symphony_pbmc_3tech:5p->3p as mouse", a[q].copy(), as_mouse(a[~q].copy()), "mouse"))
        if (a := load(data_dir, "kang_ifnb_pbmc_scgen", skipped)) is not None:
            q = (a.obs["batch"] == "stimulated").to_numpy()
            out.append(("kang_ifnb:control->stimulated", a[~q].copy(), a[q].copy(), None))
            out.append(("kang_ifnb:control->stimulated as mouse", a[~q].copy(), as_mouse(a[q].copy()), "mouse"))
    else:
        from .peers.base import counts

        if (a := load(data_dir, "scclassify_pancreas_wang_xin", skipped)) is not None:
            q = (a.obs["batch"] == "xin").to_numpy()
            out.append(("scclassify_pancreas_wang_xin:wang->xin", a[~q].copy(), a[q].copy(), None))
            c = counts(a, is_counts=False)
            out.append(("scclassify_pancreas_wang_xin:wang->xin as mouse", c[~q].copy(), as_mouse(c[q].copy()),
                        "mouse"))
        ref, query = load(data_dir, "pbmcsca_dropseq_indrops", skipped), load(data_dir, "pbmcsca_celseq2", skipped)
        if ref is not None and query is not None:
            shared = ref.var_names.intersection(query.var_names)  # 336 genes: the classifier needs half the model's
            out.append(("pbmcsca:dropseq+indrops->celseq2", ref[:, shared].copy(), query[:, shared].copy(), None))
        mesc = Path(data_dir) / "scmerge_mesc" / "scmerge_mesc.h5ad"
        if mesc.exists():
            from scconcerto._io import read_h5ad

            a = read_h5ad(mesc)
            q = (a.obs["batch"].astype(str) == "batch3").to_numpy()
            out.append(("scmerge_mesc:batch2->batch3", a[~q].copy(), a[q].copy(), None))
    for msg in skipped:
        log.warning(msg)
    return out


def _scores(model, target, species: str | None, seen_types: set[str]) -> dict:
    from scconcerto.metrics import annotation_report

    truth = target.obs["cell_type"].astype(str).to_numpy()
    pred = model.predict(target.copy(), inplace=False, query_species=species, batch_key=None)
    seen = np.isin(truth, list(seen_types))
    report = annotation_report(truth[seen], pred.labels.astype(str)[seen])
    return {"acc": float(report["accuracy"]), "macro_f1": float(report["macro_f1"])}


def run_task(name: str, ref, target, species: str | None, seed: int, weights: tuple[float, ...],
             pretrain_epochs: int, epochs: int) -> list[dict]:
    """Rows of one task and seed: ``plain``, and ``adapted`` per weight with the guard's composition check."""
    from scconcerto import Concerto
    from scconcerto.model.classifier import adaptation_check

    t0 = time.perf_counter()
    base = Concerto(ref, batch_key="batch", label_key="cell_type", seed=seed)
    base.train(epochs=pretrain_epochs, progress=False, prepare_mapping=False)
    seen = set(ref.obs["cell_type"].astype(str))
    plain = copy.deepcopy(base).fit_classifier(label_key="cell_type", target=target.copy(), target_species=species,
                                               target_batch_key=None, consistency_weight=0.0, epochs=epochs,
                                               seed=seed, progress=False)
    common = {"task": name, "role": role(name), "seed": seed}
    rows = [{**common, "variant": "plain", "weight": 0.0, **_scores(plain, target, species, seen)}]
    classes = plain.annotation_summary["classes"]
    for weight in weights:
        adapted = copy.deepcopy(base).fit_classifier(label_key="cell_type", target=target.copy(),
                                                     target_species=species, target_batch_key=None,
                                                     consistency_weight=weight, collapse_ratio=0.0, epochs=epochs,
                                                     seed=seed, progress=False)
        cells = adapted._prepare(target, batch_key=None, query_species=species).cells
        n_labeled = len(adapted.annotation_summary["domains"]) - len(adapted.annotation_summary["target_sources"])
        cells.domains = np.full(cells.n_cells, n_labeled, dtype=np.int64)
        check = adaptation_check(plain.classifier.network, adapted.classifier.network, cells, classes, 1.0)
        rows.append({**common, "variant": "adapted", "weight": weight, "eff_plain": check["effective_classes_plain"],
                     "eff_adapted": check["effective_classes_adapted"], "ratio": check["ratio"],
                     "largest_adapted": f"{check['largest_class_adapted']} {check['largest_share_adapted']:.2f}",
                     **_scores(adapted, target, species, seen)})
    log.info("%s seed %d: %.0f s", name, seed, time.perf_counter() - t0)
    for r in rows:
        log.info("  %s", r)
    return rows


def guarded(rows: pd.DataFrame, weight: float, collapse_ratio: float) -> pd.DataFrame:
    """What ``fit_classifier(target=...)`` keeps per task and seed: the adapted classifier, or the plain one
    when the ratio of effective predicted classes is under ``collapse_ratio``."""
    plain = rows[rows["variant"] == "plain"].set_index(["task", "seed"])
    adapted = rows[(rows["variant"] == "adapted") & (rows["weight"] == weight)].set_index(["task", "seed"])
    fell = adapted["ratio"] < collapse_ratio
    out = adapted.copy()
    for col in ("acc", "macro_f1"):
        out[col] = np.where(fell, plain.loc[adapted.index, col], adapted[col])
    out["fell_back"] = fell
    out["variant"] = "guarded"
    out["collapse_ratio"] = collapse_ratio
    return out.reset_index()


def choose(dev: pd.DataFrame) -> tuple[float, float, pd.DataFrame]:
    """The weight and threshold of highest mean guarded accuracy on the development rows (then macro-F1), no
    adaptation (weight 0) among the candidates, and the grid."""
    cells = []
    for w in sorted(dev.loc[dev["variant"] == "adapted", "weight"].unique()):
        for r in COLLAPSE_RATIOS:
            kept = guarded(dev, w, r)
            cells.append({"weight": w, "collapse_ratio": r, "acc": kept["acc"].mean(),
                          "macro_f1": kept["macro_f1"].mean(), "fell_back": int(kept["fell_back"].sum())})
    plain = dev[dev["variant"] == "plain"]
    grid = pd.concat([pd.DataFrame([{"weight": 0.0, "collapse_ratio": np.nan, "acc": plain["acc"].mean(),
                                     "macro_f1": plain["macro_f1"].mean(), "fell_back": 0}]), pd.DataFrame(cells)])
    return (*_best(grid), grid)


def best_adapted(grid: pd.DataFrame) -> tuple[float, float]:
    """The weight and threshold of highest mean guarded accuracy among the adapted settings of ``grid``."""
    return _best(grid[grid["weight"] > 0])


def _best(grid: pd.DataFrame) -> tuple[float, float]:
    """The weight and threshold of the row of ``grid`` with the highest accuracy (then macro-F1; the first on ties)."""
    best = grid.sort_values(["acc", "macro_f1"], ascending=False, kind="stable").iloc[0]
    return float(best["weight"]), float(best["collapse_ratio"])


def table(rows: pd.DataFrame, weight: float, collapse_ratio: float) -> pd.DataFrame:
    """Per task: plain, adapted and guarded (mean and sd over seeds) at the chosen weight and threshold."""
    parts = [rows[rows["variant"] == "plain"], rows[(rows["variant"] == "adapted") & (rows["weight"] == weight)],
             guarded(rows, weight, collapse_ratio)]
    both = pd.concat(parts, ignore_index=True)
    order = {t: i for i, t in enumerate(pd.unique(rows["task"]))}
    both = both.sort_values("task", key=lambda c: c.map(order), kind="stable")
    g = both.groupby(["task", "variant"], sort=False)
    out = g[["acc", "macro_f1"]].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["eff_pred_adapted"] = g["eff_adapted"].mean()
    out["eff_pred_plain"] = g["eff_plain"].mean()
    out["fell_back"] = g["fell_back"].apply(lambda s: f"{int(s.eq(True).sum())}/{len(s)}")
    out["seeds"] = g.size()
    out = out.reset_index()
    out.loc[out["variant"] != "guarded", "fell_back"] = ""
    return out


def render(dev: pd.DataFrame, test: pd.DataFrame | None, args: argparse.Namespace, argv: list[str]) -> str:
    """The markdown report: the development grid, then development and test tables under the choice."""
    from scconcerto.model.classifier import DEFAULT_COLLAPSE_RATIO, DEFAULT_CONSISTENCY_WEIGHT

    weight, ratio, grid = choose(dev)
    shown = (weight, ratio) if weight > 0 else best_adapted(grid)
    chosen = (f"Chosen: consistency weight **{weight}**, collapse ratio **{ratio}**." if weight > 0 else
              "Chosen: **no adaptation** (consistency weight 0). The tables below show the best adapted setting "
              f"beside it for comparison: weight {shown[0]}, collapse ratio {shown[1]}.")
    lines = [
        "# Classifier with and without domain adaptation, and the collapse guard", "",
        generated_line(), f"Command: `python -m benchmarks.adaptation {' '.join(argv)}`  ",
        f"Budget: pre-training {args.pretrain_epochs} epochs, classifier {args.epochs} epochs for every task (below "
        "the package defaults, for a 2-core machine shared with other jobs); seeds " + args.seeds + ".", "",
        "`plain`: no adaptation (given the target, so learning from the genes it has, as `adapted` does); "
        "`adapted`: with the target's consistency loss; `guarded`: what "
        "`fit_classifier(target=...)` keeps: the plain classifier when the adapted one's target composition has "
        "fewer than `collapse_ratio` times the plain one's effective number of predicted classes (exp entropy of the "
        "predicted class shares, `eff_pred_*`), else the adapted one. `fell_back`: seeds where the guard kept the "
        "plain classifier. Accuracy and macro-F1 on target cells whose type the reference has. `as mouse`: the "
        "target SIMULATED as mouse (benchmarks/tasks/cross_species.py), predicted with `query_species='mouse'`.", "",
        "## Choice on the development tasks (mean over tasks and seeds)", "", markdown(grid), "",
        chosen + f" The package's defaults: consistency weight {DEFAULT_CONSISTENCY_WEIGHT}, collapse ratio "
        f"{DEFAULT_COLLAPSE_RATIO} (`scconcerto.model.classifier`).", "",
        "## Development tasks", "", markdown(table(dev, *shown)), ""]
    if test is not None and len(test):
        lines += ["## Test tasks (never tuned on)", "", markdown(table(test, *shown)), ""]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _gather(out: Path, part: str) -> pd.DataFrame | None:
    """All rows written for ``part`` (one or several files)."""
    files = sorted(out.parent.glob(f"{out.stem}.{part}*.csv"))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.adaptation", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--part", choices=["all", "development", "test", "report"], default="all")
    p.add_argument("--only", default=None, help="run only the tasks of these names (comma-separated)")
    p.add_argument("--out", type=Path, required=True, help="markdown report to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    for part in ("development", "test"):
        if args.part not in ("all", part):
            continue
        rows: list[dict] = []
        suffix = f".{part}.{_slug(args.only)}.csv" if args.only else f".{part}.csv"
        for name, ref, target, species in tasks(args.data_dir, development=part == "development"):
            if args.only and name not in args.only.split(","):
                continue
            for seed in seeds:
                rows += run_task(name, ref, target, species, seed, WEIGHTS, args.pretrain_epochs, args.epochs)
                pd.DataFrame(rows).to_csv(args.out.with_suffix(suffix), index=False)
    if args.part in ("all", "report"):
        from scconcerto._io import write_atomic_file

        dev, test = (_gather(args.out, part) for part in ("development", "test"))
        text = render(dev, test, args, argv)
        write_atomic_file(args.out, lambda path: path.write_text(text), overwrite=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
