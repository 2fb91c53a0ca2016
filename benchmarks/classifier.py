"""The classifier's fine-tuning learning rate, its expression vote and the target's genes, chosen on the
development tasks.

For each annotation task of :mod:`benchmarks.adaptation` (a labelled reference and an unlabelled target of
another technology, condition or simulated species) and seed: one contrastive pre-training at the package
defaults, then the classifier fine-tuned at each learning rate of ``LEARNING_RATES`` (no adaptation, the
package default), once on every gene of the model and once on the genes the target has (``target genes``:
``fit_classifier(target=..., shared_genes=True)``), and predicted twice: from its own posterior
(``expression_vote`` off: the argmax of ``predict_logits``) and from its posterior pooled with the expression
vote (on: ``predict``). Mapping (``map_query``) on the same pre-trained model is shown beside them, and the
simplest thing both stand on: the similarity-weighted vote of a cell's 5 nearest reference cells in the
pre-trained embedding (``5-NN on the embedding``). Scores: accuracy and macro-F1 on the target cells whose type
the reference has.

The setting with the highest mean accuracy over the development tasks and seeds is chosen; the test tasks
are only reported.

Unseen types: on the real-data cases of :mod:`benchmarks.tasks.unseen` (a type removed from the reference,
kept in the query), the classifier at the package defaults, fitted for the query, flags unknown cells; the
AUROC of its default score (mapping's probability of a known type, ``"reference"``) and of its own
``"combined"`` typicality for seen against unseen query cells, the share of each flagged, and mapping's
``known_prob`` beside them.

Usage::

    python -m benchmarks.classifier --data-dir ../shared/data --seeds 0,1,2 --out benchmarks/CLASSIFIER.md
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

from .adaptation import tasks
from .report import generated_line, markdown
from .tasks.data import role

log = logging.getLogger("benchmarks")
#: Initial fine-tuning learning rates tried.
LEARNING_RATES = (1e-3, 3e-4, 1e-4)
#: (split, type removed from its reference): the real-data cases of benchmarks/tasks/unseen.py.
UNSEEN_CASES = (("symphony_pbmc_3tech:query=5p", "B"), ("scclassify_pancreas_wang_xin:query=xin", "beta"))


def _scores(truth: np.ndarray, pred: np.ndarray, seen: np.ndarray) -> dict[str, float]:
    from scconcerto.metrics import annotation_report

    report = annotation_report(truth[seen], np.asarray(pred).astype(str)[seen])
    return {"acc": float(report["accuracy"]), "macro_f1": float(report["macro_f1"])}


def _embedding_vote(model, query_embedding: np.ndarray) -> np.ndarray:
    """Labels of the 5-NN similarity-weighted vote of the query embedding among the model's stored reference
    embedding."""
    from scconcerto.search import knn
    from scconcerto.tools.label_transfer import vote

    classes = np.asarray(model.setup.labels["cell_type"], dtype=object)
    found = knn(query_embedding, model.reference.embedding, k=5)
    return classes[vote(found, model.reference.labels["cell_type"], len(classes)).codes]


def run_task(name: str, ref, target, species: str | None, seed: int) -> list[dict]:
    """Rows of one task and seed: mapping, and the classifier at each learning rate with and without the vote."""
    from scconcerto import Concerto

    t0 = time.perf_counter()
    truth = target.obs["cell_type"].astype(str).to_numpy()
    seen = np.isin(truth, list(set(ref.obs["cell_type"].astype(str))))
    base = Concerto(ref, batch_key="batch", label_key="cell_type", seed=seed)
    base.train(progress=False)
    common = {"task": name, "role": role(name), "seed": seed}
    mapped = base.map_query(target.copy(), query_species=species, batch_key=None)
    rows = [{**common, "method": method, "lr": np.nan, "expression_vote": "", "target_genes": "",
             **_scores(truth, pred, seen)}
            for method, pred in (("map_query", mapped.predictions["cell_type"]["pred"]),
                                 ("5-NN on the embedding", _embedding_vote(base, mapped.embedding)))]
    for lr in LEARNING_RATES:
        for target_genes in (False, True):
            extra = {"target": target.copy(), "target_species": species} if target_genes else {}
            model = copy.deepcopy(base).fit_classifier(label_key="cell_type", lr=lr, seed=seed, progress=False,
                                                       **extra)
            pooled = model.predict(target.copy(), inplace=False, query_species=species, batch_key=None)
            own = model.classifier.predict_logits(target.copy(), batch_key=None, query_species=species)
            classes = np.asarray(pooled.classes, dtype=object)
            for vote, pred in ((False, classes[own.argmax(axis=1)]), (True, pooled.labels)):
                rows.append({**common, "method": "classifier", "lr": lr, "expression_vote": vote,
                             "target_genes": target_genes, **_scores(truth, pred, seen)})
    log.info("%s seed %d: %.0f s", name, seed, time.perf_counter() - t0)
    return rows


def unseen_cases(data_dir: Path) -> list:
    """The splits of :data:`UNSEEN_CASES` with their type removed from the reference."""
    from .tasks.data import drop_type, label_transfer_splits

    wanted, skipped = dict(UNSEEN_CASES), []
    out = [drop_type(split, wanted[split.name]) for split in label_transfer_splits(data_dir, skipped)
           if split.name in wanted]
    for reason in skipped:
        log.info("skipped: %s", reason)
    return out


def unseen_rows(case, seed: int) -> list[dict]:
    """Seen-vs-unseen AUROC of the classifier's unknown scores and of mapping's ``known_prob`` on one case."""
    from sklearn.metrics import roc_auc_score

    from scconcerto import Concerto

    key = case.label_key
    truth = case.query.obs[key].astype(str).to_numpy()
    seen = np.isin(truth, list(set(case.reference.obs[key].astype(str))))
    base = Concerto(case.reference, batch_key=case.batch_key, label_key=key, seed=seed)
    base.train(progress=False)
    mapped = base.map_query(case.query.copy(), batch_key=None).predictions[key]
    model = copy.deepcopy(base).fit_classifier(label_key=key, target=case.query.copy(), seed=seed, progress=False)
    pred = model.predict(case.query.copy(), inplace=False, batch_key=None)
    common = {"case": case.name, "role": role(case.name), "seed": seed, "n_unseen": int((~seen).sum())}
    scores = {"classifier (reference)": (pred.known_prob, pred.unknown, pred.labels),
              "classifier (combined)": (pred.typicality,
                                        pred.typicality < model.classifier.state.thresholds["combined"], pred.labels),
              "map_query": (mapped["known_prob"].to_numpy(), mapped["unknown"].to_numpy(dtype=bool),
                            mapped["pred"].astype(str).to_numpy())}
    return [{**common, "score": name, "auroc": float(roc_auc_score(seen, score)),
             "flagged_unseen": float(flag[~seen].mean()), "flagged_seen": float(flag[seen].mean()),
             "seen_acc": float((np.asarray(labels).astype(str)[seen] == truth[seen]).mean())}
            for name, (score, flag, labels) in scores.items()]


def unseen_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per case and score."""
    return (rows.groupby(["case", "role", "score"], sort=False)
            .agg(auroc_mean=("auroc", "mean"), auroc_sd=("auroc", "std"), flagged_unseen=("flagged_unseen", "mean"),
                 flagged_seen=("flagged_seen", "mean"), seen_acc=("seen_acc", "mean"), n_unseen=("n_unseen", "first"),
                 seeds=("seed", "nunique")).reset_index().round(3))


def choose(dev: pd.DataFrame) -> tuple[pd.DataFrame, float, bool, bool]:
    """The classifier settings by mean development accuracy, best first, and the best one (learning rate,
    expression vote, target genes)."""
    grid = (dev[dev["method"] == "classifier"].groupby(["lr", "expression_vote", "target_genes"], as_index=False)
            .agg(acc=("acc", "mean"), macro_f1=("macro_f1", "mean"))
            .sort_values("acc", ascending=False, kind="stable"))
    best = grid.iloc[0]
    shown = grid.assign(lr=grid["lr"].map(lambda v: f"{v:g}")).round(3)
    return shown, float(best["lr"]), bool(best["expression_vote"]), bool(best["target_genes"])


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per task and setting."""
    rows = rows.assign(setting=np.where(rows["method"] != "classifier", rows["method"],
                                        "classifier lr " + rows["lr"].map(lambda v: f"{v:g}") + ", vote "
                                        + rows["expression_vote"].astype(str) + ", target genes "
                                        + rows["target_genes"].astype(str)))
    out = (rows.groupby(["task", "setting"], sort=False)
           .agg(acc_mean=("acc", "mean"), acc_sd=("acc", "std"), macro_f1_mean=("macro_f1", "mean"),
                macro_f1_sd=("macro_f1", "std"), seeds=("seed", "nunique")).reset_index())
    return out.round(3)


def render(dev: pd.DataFrame, test: pd.DataFrame | None, argv: list[str], seconds: float,
           unseen: pd.DataFrame | None = None) -> str:
    from scconcerto._defaults import DEFAULT_CLASSIFIER_LR

    grid, lr, vote, target_genes = choose(dev)
    lines = [
        "# Classifier: fine-tuning learning rate, expression vote and the target's genes", "",
        generated_line(), f"Command: `python -m benchmarks.classifier {' '.join(argv)}`  ",
        f"Wall time: {seconds:.0f} s (2-core machine); pre-training and fine-tuning at the package defaults otherwise.",
        "",
        "`vote True`: the classifier's calibrated posterior pooled with the vote of the cell's nearest labeled cells in "
        "the reference's scaled expression space (`fit_classifier(expression_vote=True)`); `vote False`: its own "
        "posterior. `target genes True`: fitted with the target (`fit_classifier(target=...)`, no adaptation), so "
        "that it learns from the model's genes the target has (`shared_genes=True`); `False`: from every gene of "
        "the model. Accuracy and macro-F1 on target cells whose type the reference has; `as mouse`: the target "
        "SIMULATED as mouse (benchmarks/tasks/cross_species.py), predicted with `query_species='mouse'`. "
        "`map_query`: mapping with the same pre-trained model, for comparison; `5-NN on the embedding`: the "
        "similarity-weighted vote of the 5 nearest reference cells in the pre-trained embedding, the simplest thing "
        "both replace.", "",
        "## Choice on the development tasks (mean over tasks and seeds)", "", markdown(grid), "",
        f"Chosen: learning rate **{lr:g}**, expression vote **{vote}**, target genes **{target_genes}**. The "
        f"package's defaults: learning rate {DEFAULT_CLASSIFIER_LR:g} (`scconcerto._defaults.DEFAULT_CLASSIFIER_LR`), "
        "expression vote on (`fit_classifier(expression_vote=True)`), a target's genes only when a target is given "
        "(`fit_classifier(target=..., shared_genes=True)`).", "",
        "## Development tasks", "", markdown(table(dev)), ""]
    if test is not None and len(test):
        lines += ["## Test tasks (never tuned on)", "", markdown(table(test)), ""]
    if unseen is not None and len(unseen):
        lines += ["## Unseen types: the classifier's unknown flag (package defaults, fitted for the query)", "",
                  "AUROC for seen (positive) against unseen query cells; `flagged_*`: share of each called unknown "
                  "at the default threshold; `seen_acc`: accuracy on seen cells. `classifier (reference)` is the "
                  "classifier's default score, mapping's probability of a known type.", "",
                  markdown(unseen_table(unseen)), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.classifier", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, required=True, help="markdown report to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "scconcerto"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    parts: dict[str, pd.DataFrame] = {}
    for part in ("development", "test"):
        rows: list[dict] = []
        for name, ref, target, species in tasks(args.data_dir, development=part == "development"):
            for seed in seeds:
                rows += run_task(name, ref, target, species, seed)
        parts[part] = pd.DataFrame(rows)
    unseen = pd.DataFrame([row for case in unseen_cases(args.data_dir) for seed in seeds
                           for row in unseen_rows(case, seed)])
    if parts["development"].empty:
        log.error("No development task could be built from %s: nothing to choose on.", args.data_dir)
        return 1
    from scconcerto._io import write_atomic_file

    text = render(parts["development"], parts["test"], argv, time.perf_counter() - start, unseen)
    write_atomic_file(args.out, lambda path: path.write_text(text), overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
