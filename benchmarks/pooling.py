"""Which neighbours decide a query cell's label: the embedding's, the scaled expression space's, or both.

For each label-transfer split, each adversarial variant and each seed, one network is trained at the
package's defaults and the query mapped. Rows (seen types of the query only):

* ``mapping``: the package's labels, the calibrated vote in the embedding pooled with the calibrated vote in
  the reference's scaled expression space (:mod:`scconcerto.mapping.label_model`);
* ``embedding``: the similarity-weighted 5-NN vote on the query's embedding alone (what mapping gave before
  the votes were pooled);
* ``expression``: the same vote in the scaled expression space alone;
* ``concatenated``: the same vote in one space made of both (each L2-normalized, side by side), the
  alternative way to use both;
* ``pca_knn``: the peer baseline (50-PC truncated SVD of log1p CP10K + 5-NN, ``benchmarks.peers.pca_knn``).

The way of deciding is chosen by its mean accuracy over the development splits (macro-F1 breaks ties); test
rows are reported only.

    python -m benchmarks.pooling --data-dir ../shared/data --seeds 0,1,2 --out benchmarks/POOLING.md
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .report import generated_line, markdown
from .tasks.adversarial import variants
from .tasks.data import label_transfer_splits, role

METHODS = ("mapping", "embedding", "expression", "concatenated", "pca_knn")
K = 5


def _vote(query: np.ndarray, reference: np.ndarray, codes: np.ndarray, n_labels: int) -> np.ndarray:
    from scconcerto.tools import knn, vote

    return vote(knn(np.ascontiguousarray(query, dtype=np.float32), np.ascontiguousarray(reference, dtype=np.float32),
                    k=K), codes, n_labels).codes


def evaluate(split, seed: int) -> list[dict]:
    """One row per method: accuracy and macro-F1 of the query's seen types."""
    from sklearn.metrics import f1_score

    from scconcerto import Concerto
    from scconcerto.data.setup import prepare_cells
    from scconcerto.search.neighbors import l2_normalize

    from .peers.pca_knn import PcaKnnMethod

    key = split.label_key
    batch_key = split.batch_key if split.batch_key in split.query.obs else None
    model = Concerto(split.reference, batch_key=split.batch_key, label_key=key, seed=seed)
    model.train(progress=False, prepare_mapping={"umap": False})
    query = split.query.copy()
    result = model.map_query(query, batch_key=batch_key, impute=False, place=False, min_overlap=0.0)
    names = np.asarray(model.setup.labels[key])
    codes = np.asarray(model.reference.labels[key])
    ref_expr, space = model.reference.scaled_expression, model.reference.scaled_space
    query_expr = space.project(prepare_cells(split.query, model.setup, batch_key=batch_key, min_overlap=0.0,
                                             what="the query").cells)
    ref_emb, query_emb = model.reference.embedding, result.embedding
    pca = PcaKnnMethod(seed=seed, k=K)
    pca.fit(split.reference, key, split.batch_key, split.is_counts)
    predictions = {
        "mapping": query.obs[f"{key}_pred"].astype(str).to_numpy(),
        "embedding": names[_vote(query_emb, ref_emb, codes, len(names))],
        "expression": names[_vote(query_expr, ref_expr, codes, len(names))],
        "concatenated": names[_vote(np.hstack([l2_normalize(query_emb), l2_normalize(query_expr)]),
                                    np.hstack([l2_normalize(ref_emb), l2_normalize(ref_expr)]), codes, len(names))],
        "pca_knn": pca.map(split.query, batch_key).labels,
    }
    truth = query.obs[key].astype(str).to_numpy()
    seen = np.isin(truth, names)
    labels = np.unique(truth[seen])
    return [{"split": split.name, "role": role(split.name), "seed": seed, "method": method,
             "acc": float((pred == truth)[seen].mean()),
             "macro_f1": float(f1_score(truth[seen], pred[seen], average="macro", labels=labels))}
            for method, pred in predictions.items()]


def report(df: pd.DataFrame, command: str, seconds: float, skipped: list[str]) -> str:
    """The markdown report of the rows of :func:`evaluate`."""
    per_split = df.groupby(["role", "split", "method"])[["acc", "macro_f1"]].mean()
    by_role = per_split.groupby(["role", "method"]).mean().unstack("role")
    dev = by_role.xs("development", axis=1, level="role").loc[list(METHODS)]
    by_role.columns = [f"{metric} ({kind})" for metric, kind in by_role.columns]
    chosen = dev.sort_values(["acc", "macro_f1"], ascending=False).index[0]
    wide = df.pivot_table(index=["role", "split", "seed"], columns="method", values="acc")
    gain = (wide["mapping"] - wide["embedding"]).groupby(["role", "seed"]).mean().unstack("seed")
    worst = (wide["mapping"] - wide["embedding"]).groupby(["role", "split"]).mean()
    spread = df.groupby(["role", "split", "method"])["acc"].agg(["mean", "std"]).round(3)
    spread = spread["mean"].map("{:.3f}".format) + " ± " + spread["std"].fillna(0).map("{:.3f}".format)
    lines = [
        "# Which neighbours decide the label: embedding, expression, or both", "",
        generated_line(),
        f"Command: `{command}`  ",
        f"Seeds: {', '.join(str(s) for s in sorted(df.seed.unique()))}; wall time {seconds:.0f} s  ",
        "Roles: the way of deciding is chosen on the development rows (mean accuracy, then macro-F1); "
        "test rows are reported only.", "",
        f"Chosen on development: **{chosen}** (development accuracy {dev.loc[chosen, 'acc']:.4f}, macro-F1 "
        f"{dev.loc[chosen, 'macro_f1']:.4f}).", "",
        "## Mean over splits (each split's mean over seeds)", "",
        markdown(by_role.round(4).reset_index()), "",
        "## mapping minus embedding, mean accuracy over each role's splits, per seed", "",
        markdown(gain.round(4).reset_index()), "",
        "## mapping minus embedding per split (mean over seeds); do no harm asks for at least -0.01", "",
        markdown(worst.round(4).rename("difference").reset_index()), "",
        "## Accuracy per split (mean ± sd over seeds)", "",
        markdown(spread.unstack("method")[list(METHODS)].reset_index()), "",
        "## Macro-F1 per split (mean over seeds)", "",
        markdown(df.groupby(["role", "split", "method"])["macro_f1"].mean().round(3).unstack("method")[
            list(METHODS)].reset_index()), ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--smoke", action="store_true", help="the simulated splits only (no data directory needed)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, default=Path("benchmarks/POOLING.md"))
    args = p.parse_args(argv)
    if args.data_dir is None and not args.smoke:
        p.error("--data-dir is required (or --smoke for the simulated splits)")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    start = time.perf_counter()
    skipped: list[str] = []
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        splits = list(label_transfer_splits(args.data_dir, skipped, smoke=args.smoke))
        splits += [] if args.smoke else list(variants(args.data_dir, skipped))
        for split in splits:
            rows += evaluate(split, seed)
            print(f"seed {seed}: {split.name}", flush=True)
    command = "python -m benchmarks.pooling " + (f"--data-dir {args.data_dir}" if not args.smoke else "--smoke") + \
        f" --seeds {args.seeds} --out {args.out}"
    args.out.write_text(report(pd.DataFrame(rows), command, time.perf_counter() - start, sorted(set(skipped))))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
