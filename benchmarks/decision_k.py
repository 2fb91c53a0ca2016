"""Choose the number of candidates ``k`` of mapping's label vote on development data, and show it on test data.

For each label-transfer split and adversarial variant and each seed, one network is trained; the label
decision is then prepared for each ``k`` and the query mapped. Rows: accuracy and macro-F1 of mapping's
labels and of the plain 5-NN vote on the same query embedding, right-vs-wrong AUROC of ``L_confidence``.
The default is the ``k`` with the best mean development accuracy (ties: macro-F1); test rows are only
reported.

    python -m benchmarks.decision_k --data-dir ../shared/data --seeds 0,1,2 --out benchmarks/DECISION.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .report import commit_id
from .tasks.adversarial import variants
from .tasks.data import label_transfer_splits, role

KS = (5, 10, 20, 40)


def evaluate(split, seed: int, ks: tuple[int, ...]) -> list[dict]:
    from sklearn.metrics import f1_score, roc_auc_score

    from scconcerto import Concerto
    from scconcerto.tools import knn, vote

    key = split.label_key
    model = Concerto(split.reference, batch_key=split.batch_key, label_key=key, seed=seed)
    model.train(progress=False, prepare_mapping=False)
    rows = []
    for k in ks:
        prepared = copy.deepcopy(model)
        prepared.adata = model.adata
        prepared.prepare_mapping(k=k, umap=False)
        query = split.query.copy()
        prepared.map_query(query, batch_key=split.batch_key if split.batch_key in query.obs else None,
                           impute=False, place=False, min_overlap=0.0)
        names = np.asarray(prepared.setup.labels[key])
        truth = query.obs[key].astype(str).to_numpy()
        seen = np.isin(truth, names)
        pred = query.obs[f"{key}_pred"].astype(str).to_numpy()
        plain = names[vote(knn(query.obsm["X_concerto"], prepared.reference.embedding, k=5),
                           prepared.reference.labels[key], len(names)).codes]
        right = pred == truth
        labels = np.unique(truth[seen])
        rows.append({"split": split.name, "role": role(split.name),
                     "seed": seed, "k": k, "acc": float(right[seen].mean()),
                     "macro_f1": float(f1_score(truth[seen], pred[seen], average="macro", labels=labels)),
                     "plain_5nn_acc": float((plain == truth)[seen].mean()),
                     "auroc_right_vs_wrong": float(roc_auc_score(right[seen], query.obs[f"{key}_confidence"][seen]))
                     if 0 < right[seen].mean() < 1 else float("nan")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, default=Path("benchmarks/DECISION.md"))
    args = p.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    skipped: list[str] = []
    splits = list(label_transfer_splits(args.data_dir, skipped)) + list(variants(args.data_dir, skipped))
    rows = [row for seed in (int(s) for s in args.seeds.split(",")) for split in splits
            for row in evaluate(split, seed, KS)]
    df = pd.DataFrame(rows)
    means = df.groupby(["role", "k"])[["acc", "macro_f1", "plain_5nn_acc", "auroc_right_vs_wrong"]].agg(["mean", "std"])
    dev = df[df.role == "development"].groupby("k")[["acc", "macro_f1"]].mean()
    best = int(dev.sort_values(["acc", "macro_f1"], ascending=False).index[0])
    commit = commit_id()
    per_split = df.groupby(["role", "split", "k"])[["acc", "plain_5nn_acc", "macro_f1"]].mean().round(3)
    text = [f"# Candidates of mapping's label vote (`k`)", "",
            f"Made by `python -m benchmarks.decision_k --data-dir ... --seeds {args.seeds}` on "
            f"{datetime.date.today().isoformat()} at commit {commit}. Development rows choose: `k = {best}` has the "
            f"best mean development accuracy ({dev.loc[best, 'acc']:.4f}; `k = 5`, the paper's and the package's: "
            f"{dev.loc[5, 'acc']:.4f}); test rows are reported only.", "",
            "## Mean (sd) over splits and seeds", "", _markdown(means.round(4)), "",
            "## Per split (mean over seeds)", "", _markdown(per_split), ""]
    if skipped:
        text += ["Skipped: " + "; ".join(skipped), ""]
    args.out.write_text("\n".join(text))
    print(f"best development k: {best}; wrote {args.out}")
    return 0


def _markdown(df: pd.DataFrame) -> str:
    from .report import markdown

    flat = df.copy()
    flat.columns = [" ".join(c) if isinstance(c, tuple) else c for c in flat.columns]
    return markdown(flat.reset_index())


if __name__ == "__main__":
    raise SystemExit(main())
