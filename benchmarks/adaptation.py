"""The classifier with and without domain adaptation on every annotation task, and the collapse guard.

For each task (a labelled reference and an unlabelled target of another technology, condition or
simulated species) and seed: one contrastive pre-training, then the classifier fine-tuned without the
target (``plain``) and with it at each consistency weight (``adapted``); the guard's decision
(:func:`scconcerto.model._annotation.adaptation_check`: the adapted target composition's effective
number of classes under ``DEFAULT_COLLAPSE_RATIO`` times the plain one's) gives ``guarded``, what
``fit_classifier(target=...)`` returns. Scores: accuracy and macro-F1 on the target cells whose type the
reference has, the target's effective number of predicted classes, and whether the guard fell back.

The consistency weight is chosen on the development tasks only (highest mean guarded accuracy over
tasks and seeds); the test tasks are run with that weight only and never looked at before.

Usage::

    python -m benchmarks.adaptation --data-dir ../shared/data --seeds 0,1,2 --out benchmarks/ADAPTATION.md

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

from .report import markdown
from .tasks.cross_species import as_mouse
from .tasks.data import load, role

log = logging.getLogger("benchmarks")
WEIGHTS = (0.3, 1.0)


def tasks(data_dir: Path, development: bool) -> list[tuple[str, object, object, str | None]]:
    """``(name, reference, target, target_species)`` of the development or of the test tasks."""
    skipped: list[str] = []
    out = []
    if development:
        if (a := load(data_dir, "symphony_pbmc_3tech", skipped)) is not None:
            q = (a.obs["batch"] == "5p").to_numpy()
            out.append(("symphony_pbmc_3tech:3p->5p", a[~q].copy(), a[q].copy(), None))
            out.append(("symphony_pbmc_3tech:3p->5p as mouse", a[~q].copy(), as_mouse(a[q].copy()), "mouse"))
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
            out.append(("pbmcsca:dropseq+indrops->celseq2", ref, query, None))
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
    """Rows (plain, and adapted / guarded per weight) of one task and seed."""
    from scconcerto import Concerto
    from scconcerto.model._annotation import DEFAULT_COLLAPSE_RATIO, adaptation_check

    t0 = time.perf_counter()
    base = Concerto(ref, batch_key="batch", label_key="cell_type", seed=seed)
    base.train(epochs=pretrain_epochs, progress=False, prepare_mapping=False)
    seen = set(ref.obs["cell_type"].astype(str))
    plain = copy.deepcopy(base).fit_classifier(label_key="cell_type", epochs=epochs, seed=seed, progress=False)
    plain_scores = _scores(plain, target, species, seen)
    common = {"task": name, "role": role(name), "seed": seed}
    rows = [{**common, "variant": "plain", "weight": 0.0, **plain_scores}]
    classes = plain.annotation_summary["classes"]
    for weight in weights:
        adapted = copy.deepcopy(base).fit_classifier(label_key="cell_type", target=target.copy(),
                                                     target_species=species, target_batch_key=None,
                                                     consistency_weight=weight, collapse_ratio=0.0, epochs=epochs,
                                                     seed=seed, progress=False)
        cells = adapted._prepare(target, batch_key=None, query_species=species).cells
        n_labeled = len(adapted.annotation_summary["domains"]) - len(adapted.annotation_summary["target_sources"])
        cells.domains = np.full(cells.n_cells, n_labeled, dtype=np.int64)
        check = adaptation_check(plain.classifier, adapted.classifier, cells, classes, DEFAULT_COLLAPSE_RATIO)
        adapted_scores = _scores(adapted, target, species, seen)
        info = {"weight": weight, "eff_plain": check["effective_classes_plain"],
                "eff_adapted": check["effective_classes_adapted"], "ratio": check["ratio"],
                "largest_adapted": f"{check['largest_class_adapted']} {check['largest_share_adapted']:.2f}"}
        rows.append({**common, "variant": "adapted", **info, **adapted_scores})
        rows.append({**common, "variant": "guarded", **info, "fell_back": bool(check["collapsed"]),
                     **(plain_scores if check["collapsed"] else adapted_scores)})
    log.info("%s seed %d: %.0f s", name, seed, time.perf_counter() - t0)
    for r in rows:
        log.info("  %s", r)
    return rows


def render(rows: pd.DataFrame, weight: float, args: argparse.Namespace, argv: list[str]) -> str:
    """The markdown report: per task and variant, mean and sd over seeds; development and test apart."""
    g = rows.groupby(["role", "task", "variant", "weight"], sort=False)
    table = g[["acc", "macro_f1"]].agg(["mean", "std"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    table["eff_pred"] = g["eff_adapted"].mean()
    table["fell_back"] = g["fell_back"].apply(lambda s: f"{int(s.fillna(False).sum())}/{len(s)}")
    table["seeds"] = g.size()
    table = table.reset_index()
    table.loc[table["variant"] == "plain", ["eff_pred", "fell_back"]] = [np.nan, ""]
    table.loc[table["variant"] == "adapted", "fell_back"] = ""
    means = (rows[rows["variant"].isin(["plain", "guarded", "adapted"])]
             .groupby(["role", "variant", "weight"])[["acc", "macro_f1"]].mean().reset_index())
    return "\n".join([
        "# Classifier with and without domain adaptation, and the collapse guard", "",
        f"Command: `python -m benchmarks.adaptation {' '.join(argv)}`  ",
        f"Budget: pre-training {args.pretrain_epochs} epochs, classifier {args.epochs} epochs (below the package "
        "defaults, for a 2-core shared machine); seeds " + args.seeds + ".  ",
        f"Consistency weight chosen on the development tasks: **{weight}** (of {', '.join(map(str, WEIGHTS))}; "
        "highest mean guarded accuracy); the test tasks were run with it only.", "",
        "`plain`: no adaptation; `adapted`: with the target's consistency loss; `guarded`: what "
        "`fit_classifier(target=...)` keeps (the plain classifier when the adapted target composition's effective "
        "number of classes falls under 0.75x the plain one's). `eff_pred`: effective number of predicted target "
        "classes under adaptation (exp entropy of the predicted shares); `fell_back`: seeds where the guard kept "
        "the plain classifier. Scores on target cells whose type the reference has. `as mouse`: the target "
        "SIMULATED as mouse (benchmarks/tasks/cross_species.py), predicted with `query_species='mouse'`.", "",
        markdown(table), "", "Means over tasks and seeds:", "", markdown(means), ""])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.adaptation", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="markdown report to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name, ref, target, species in tasks(args.data_dir, development=True):
        for seed in seeds:
            rows += run_task(name, ref, target, species, seed, WEIGHTS, args.pretrain_epochs, args.epochs)
            pd.DataFrame(rows).to_csv(args.out.with_suffix(".partial.csv"), index=False)
    dev = pd.DataFrame(rows)
    guarded = dev[dev["variant"] == "guarded"].groupby("weight")["acc"].mean()
    weight = float(guarded.idxmax())
    log.info("development, mean guarded accuracy by weight: %s -> %s", guarded.to_dict(), weight)
    for name, ref, target, species in tasks(args.data_dir, development=False):
        for seed in seeds:
            rows += run_task(name, ref, target, species, seed, (weight,), args.pretrain_epochs, args.epochs)
            pd.DataFrame(rows).to_csv(args.out.with_suffix(".partial.csv"), index=False)
    table = pd.DataFrame(rows)
    from scconcerto._io import write_atomic_file

    text = render(table, weight, args, argv)
    write_atomic_file(args.out, lambda path: path.write_text(text), overwrite=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
