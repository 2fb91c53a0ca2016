"""How well mapping's confidence tells right labels from wrong ones, and seen types from unseen ones.

For each label-transfer split (cellbench's are left out: every method labels them all right), each adversarial
variant, each unseen-type case (a type removed from a split's reference) and each seed, one network is trained
at the package's defaults and the query mapped once; the reference's and the query's embeddings and scaled
expression are kept. The label decision (:func:`scconcerto.mapping.fit_label_model`) is then fitted on the
reference four ways and applied to the same query:

* ``unconstrained``: the logistic models fitted without bounds (the package before 2026-12-06, commit 7b0b5f6);
* ``package``: every coefficient held non-negative (:meth:`scconcerto.mapping.LogisticScore.fit`), what
  mapping does now; ``P(right | seen)`` reads the posterior's log odds and the expression agreement
  (``scconcerto.mapping.label_model.RIGHT_FEATURES``);
* ``embedding support``: non-negative, and ``P(right | seen)`` also reads the label's log odds under the
  embedding's own vote (before pooling with the expression space's), measured and not kept;
* ``query share``: the package's, but ``P(seen)`` (fitted with seen and unseen examples weighing the same, so
  at the odds of a query half of whose cells are new) and the unknown threshold moved to the query's own share
  of seen cells, estimated from its cells by EM (:func:`to_query_share`), measured and not kept. It changes no
  ranking of ``P(seen)`` and no unknown flag, only the calibration of ``P(seen)`` and ``L_confidence``;
* ``prior p``: the package's, read at a fixed prior probability ``p`` of a seen type
  (:func:`scconcerto.mapping.label_model.at_seen_prior`; ``prior 0.5``: the even odds the novelty model is fitted
  at, the package before 2026-12-07 night). Like ``query share`` it changes no unknown flag and no ranking of
  ``P(seen)``. The package's prior (:data:`scconcerto.mapping.label_model.SEEN_PRIOR`) is chosen on the
  development rows (:func:`choose_prior`): the lowest mean calibration error of ``L_confidence`` over the two
  development groups among the priors whose AUROCs of ``L_confidence`` (right vs wrong, seen vs unseen) stay
  within :data:`AUROC_TOLERANCE` of even odds'. The ``unconstrained``, ``package`` and ``embedding support``
  rows are at the package's prior.

Columns: right-vs-wrong AUROC of ``L_confidence``, ``P(right | seen)`` and ``P(seen)`` on the query cells of seen types,
seen-vs-unseen AUROC of ``L_confidence`` and of ``P(seen)``, the share of seen and of unseen cells flagged
unknown at the default threshold, and calibration errors (:func:`calibration_error`) on all query cells: of
``L_confidence`` against the label being right (a cell of an unseen type is never right) and of ``P(seen)``
against the cell's type being one the reference has. Labels do not change between the four. Development rows
choose; test rows are reported only.

    python -m benchmarks.confidence --data-dir ../shared/data --seeds 0,1,2 --out benchmarks/CONFIDENCE.md

``--cache DIR`` keeps each trained case's arrays (``.npz``) and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .report import generated_line, markdown
from .tasks.adversarial import variants
from .tasks.data import drop_type, label_transfer_splits, role

#: Unseen-type cases: split name and the types removed from its reference, one at a time.
UNSEEN_CASES = {"symphony_pbmc_3tech:query=3pv1": ("B", "T_CD8"), "symphony_pbmc_3tech:query=3pv2": ("B", "T_CD8"),
                "symphony_pbmc_3tech:query=5p": ("B", "T_CD8"), "kang_ifnb:control->stimulated": ("B", "NK"),
                "scclassify_pancreas_wang_xin:query=xin": ("beta", "alpha")}
#: Fixed priors of a seen type measured (``prior p`` rows); 0.5 is even odds.
PRIORS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95)
DECISIONS = ("unconstrained", "package", "embedding support", "query share", *(f"prior {p:g}" for p in PRIORS))
#: How far below even odds' a development AUROC of ``L_confidence`` may fall for a prior to be chosen.
AUROC_TOLERANCE = 0.01
#: Pseudo-cells of each kind (seen, unseen) behind the ``query share`` estimate (Laplace's rule).
SHARE_PSEUDO_CELLS = 1.0


def cases(data_dir: Path, skipped: list[str]) -> list[tuple[str, object]]:
    """``(group, split)``: label transfer and adversarial variants, then the unseen-type cases."""
    out = [("label transfer", s) for s in label_transfer_splits(data_dir, skipped) if not s.name.startswith("cellbench")]
    out += [("label transfer", s) for s in variants(data_dir, skipped)]
    out += [("unseen type", drop_type(s, t)) for s in label_transfer_splits(data_dir, skipped)
            if s.name in UNSEEN_CASES for t in UNSEEN_CASES[s.name]]
    return out


def trained_arrays(split, seed: int, cache: Path | None) -> dict[str, np.ndarray]:
    """Train on ``split``'s reference, map its query, and keep what a label decision is fitted and applied on."""
    tag = f"{split.name.replace('/', '_').replace(' ', '_')}__s{seed}"
    if cache is not None and (cache / f"{tag}.npz").exists():
        return dict(np.load(cache / f"{tag}.npz", allow_pickle=False))
    import scconcerto.model._mapping as mapping
    from scconcerto import Concerto

    kept: dict[str, np.ndarray] = {}
    decide = mapping.decide_labels

    def keeping(setup, reference, decisions, ks, searched, embedding, ref_emb, expression, *args, **kwargs):
        kept.update(q_emb=np.array(embedding), ref_emb=np.array(ref_emb),
                    q_expr=np.array(expression[0]), ref_expr=np.array(expression[1]),
                    groups=np.zeros(len(embedding)) if kwargs.get("groups") is None else np.asarray(kwargs["groups"]))
        return decide(setup, reference, decisions, ks, searched, embedding, ref_emb, expression, *args, **kwargs)

    key = split.label_key
    model = Concerto(split.reference, batch_key=split.batch_key, label_key=key, seed=seed)
    model.train(progress=False)
    query = split.query.copy()
    mapping.decide_labels = keeping
    try:
        model.map_query(query, batch_key=split.batch_key if split.batch_key in query.obs else None, impute=False,
                        place=False, min_overlap=0.0)
    finally:
        mapping.decide_labels = decide
    if "q_expr" not in kept:
        raise RuntimeError(f"{split.name}: the model keeps no scaled expression space")
    arrays = dict(kept, truth=query.obs[key].astype(str).to_numpy().astype("U"),
                  names=np.asarray(model.setup.labels[key]).astype("U"), codes=model.reference.labels[key],
                  calib=model.reference.calibration_rows)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / f"{tag}.npz", **arrays)
    return arrays


@contextmanager
def decision(name: str):
    """The package's label decision, or one of the earlier ones (see the module docstring)."""
    import scconcerto.mapping.label_model as label_model
    from scconcerto.mapping.scores import LogisticScore

    features, fit = label_model.RIGHT_FEATURES, LogisticScore.__dict__["fit"]

    def unconstrained(cls, x, names, target, weight=None):
        from sklearn.linear_model import LogisticRegression

        z = np.column_stack([np.asarray(x[f], dtype=np.float64) for f in names])
        mean, scale = z.mean(axis=0), z.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        clf = LogisticRegression(C=1.0, max_iter=1000).fit((z - mean) / scale, target, sample_weight=weight)
        coef = clf.coef_[0] / scale
        return cls(tuple(names), tuple(float(c) for c in coef), float(clf.intercept_[0] - coef @ mean))

    if name == "embedding support":
        label_model.RIGHT_FEATURES = features + (label_model.EMBEDDING_SUPPORT,)
    if name == "unconstrained":
        LogisticScore.fit = classmethod(unconstrained)
    try:
        yield
    finally:
        label_model.RIGHT_FEATURES = features
        LogisticScore.fit = fit


def to_query_share(p_seen: np.ndarray, threshold: float) -> tuple[np.ndarray, float, float]:
    """``P(seen)`` and a threshold moved from balanced (1:1) odds to the query's share of seen cells: the EM
    estimate of Saerens et al. (2002) (:func:`scconcerto.mapping.posterior.adjust_to_query_proportions` on the two
    classes, with :data:`SHARE_PSEUDO_CELLS` pseudo-cells of each). Every odds is multiplied by
    ``share / (1 - share)``. Returns the probabilities, the threshold and the share."""
    from scconcerto.mapping.label_model import at_seen_prior
    from scconcerto.mapping.posterior import adjust_to_query_proportions

    p = np.clip(np.asarray(p_seen, dtype=np.float64), 1e-9, 1.0 - 1e-9)
    _, share = adjust_to_query_proportions(np.column_stack([1.0 - p, p]), np.array([0.5, 0.5]),
                                           strength=2.0 * SHARE_PSEUDO_CELLS / max(len(p), 1))
    return at_seen_prior(p, share[1]), float(at_seen_prior(threshold, share[1])), float(share[1])


def calibration_error(probability: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of a probability of a yes/no outcome: ``sum_b (n_b / n) |mean outcome_b -
    mean probability_b|`` over ``n_bins`` equal-width bins of ``[0, 1]``."""
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    bins = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins)
    return float(np.abs(gap).sum() / max(len(p), 1))


def decided(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Fit the label decision on the reference's arrays and apply it to the query's: the posterior,
    ``P(right | seen)``, and ``P(seen)`` and the default threshold at even odds (prior 0.5)."""
    from scconcerto.mapping import fit_label_model, query_features
    from scconcerto.mapping.label_model import neighbour_labels
    from scconcerto.search.neighbors import exact_search, l2_normalize

    names, codes = arrays["names"], arrays["codes"]
    model = fit_label_model(arrays["ref_emb"], codes, list(names), arrays["calib"], arrays["ref_expr"], seed=seed)
    query, reference = l2_normalize(arrays["q_emb"]), l2_normalize(arrays["ref_emb"])
    q_expr, ref_expr = l2_normalize(arrays["q_expr"]), l2_normalize(arrays["ref_expr"])
    sims, rows = exact_search(query, reference, model.posterior.k)
    e_sims, e_rows = exact_search(q_expr, ref_expr, 20)
    labels, e_labels = neighbour_labels(rows, codes), neighbour_labels(e_rows, codes)
    posterior = model.label_posterior(sims, labels, (e_sims, e_labels))
    features = query_features(sims, posterior, query, reference, (q_expr, ref_expr, e_labels),
                              groups=arrays["groups"], embedding_posterior=model.posterior.posterior(sims, labels),
                              seed=seed)
    p_right, p_seen, _, threshold = model.decide(features, posterior, seen_prior=0.5)
    return {"posterior": posterior, "p_right": p_right, "p_seen": p_seen, "threshold": threshold}


def scores(arrays: dict[str, np.ndarray], fitted: dict[str, np.ndarray], query_share: bool = False,
           seen_prior: float | None = None) -> dict[str, float]:
    """Score a decision (:func:`decided`) on the query, with ``P(seen)`` and the threshold read at the prior
    ``seen_prior`` of a seen type (default: the package's) or, with ``query_share``, at the query's estimated share."""
    from sklearn.metrics import roc_auc_score

    from scconcerto.mapping.label_model import SEEN_PRIOR, at_seen_prior

    names, posterior, p_right = arrays["names"], fitted["posterior"], fitted["p_right"]
    if query_share:
        p_seen, threshold, _ = to_query_share(fitted["p_seen"], fitted["threshold"])
    else:
        prior = SEEN_PRIOR if seen_prior is None else seen_prior
        p_seen, threshold = at_seen_prior(fitted["p_seen"], prior), float(at_seen_prior(fitted["threshold"], prior))
    confidence = p_right * p_seen
    truth = arrays["truth"]
    seen = np.isin(truth, names)
    labelled_right = names[posterior.argmax(axis=1)] == truth
    right = labelled_right[seen]

    def auroc(y, score):
        return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")

    out = {"acc": float(right.mean()), "n_wrong": int((~right).sum()),
           "ece_confidence": calibration_error(confidence, seen & labelled_right),
           "ece_p_seen": calibration_error(p_seen, seen),
           "right_vs_wrong": auroc(right, confidence[seen]), "right_vs_wrong_p_right": auroc(right, p_right[seen]),
           "right_vs_wrong_p_seen": auroc(right, p_seen[seen])}
    if (~seen).any():
        flagged = p_seen < threshold
        out.update({"seen_vs_unseen": auroc(seen, confidence), "seen_vs_unseen_p_seen": auroc(seen, p_seen),
                    "flagged_seen": float(flagged[seen].mean()), "flagged_unseen": float(flagged[~seen].mean())})
    return out


COLUMNS = ["right_vs_wrong", "right_vs_wrong_p_right", "right_vs_wrong_p_seen", "seen_vs_unseen", "seen_vs_unseen_p_seen", "flagged_seen",
           "flagged_unseen", "ece_confidence", "ece_p_seen"]


def choose_prior(df: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """The prior of a seen type chosen on the development rows (see the module docstring), and the table it was
    chosen from: per prior, each development group's mean ECE of ``L_confidence`` and AUROCs (mean over cases,
    then over seeds)."""
    dev = df[(df.role == "development") & df.decision.str.startswith("prior ")].copy()
    dev["prior"] = dev.decision.str.split(" ").str[1].astype(float)
    cols = ["ece_confidence", "right_vs_wrong", "seen_vs_unseen"]
    per_seed = dev.groupby(["group", "prior", "seed"])[cols].mean()
    table = per_seed.groupby(["group", "prior"]).mean().unstack("group")
    table.columns = [f"{metric} ({group})" for metric, group in table.columns]
    auroc_cols = [c for c in table.columns if not c.startswith("ece") and table[c].notna().any()]
    even = table.loc[0.5, auroc_cols]
    allowed = (table[auroc_cols] >= even - AUROC_TOLERANCE).all(axis=1)
    table["mean ece_confidence"] = table[[c for c in table.columns if c.startswith("ece")]].mean(axis=1)
    table["AUROCs within tolerance"] = allowed
    chosen = float(table[allowed]["mean ece_confidence"].idxmin())
    return chosen, table.round(3)


def report(df: pd.DataFrame, command: str, seconds: float) -> str:
    from scconcerto.mapping.label_model import SEEN_PRIOR

    cols = [c for c in COLUMNS if c in df]
    per_seed = df.groupby(["group", "role", "decision", "seed"])[cols].mean()
    summary = per_seed.groupby(["group", "role", "decision"]).agg(["mean", "std"])
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    summary = summary.dropna(axis=1, how="all")
    chosen, prior_table = choose_prior(df)
    per_split = df[df.decision.isin(["package", "prior 0.5", "query share"])].groupby(
        ["group", "role", "split", "decision"])[["acc", "n_wrong"] + cols].mean().dropna(axis=1, how="all")
    return "\n".join([
        "# Mapping's confidence: right against wrong labels, seen against unseen types", "",
        generated_line(), f"Command: `{command}`  ", f"Wall time: {seconds:.0f} s", "",
        "Each case trains one network per seed and maps its query once (with `--cache`, a case trained by an earlier "
        "run is read back from the cache); the label decision is then fitted three ways (unconstrained, the "
        "package's, with the embedding's support) on the same reference and applied to the same query, with "
        "`P(seen)` read at the package's prior of a seen type, at a fixed `prior p` or at the query's estimated "
        "share of seen cells (`benchmarks/confidence.py`). Development rows "
        "chose the package's decision; test rows are reported only. Labels are the same under all of them.", "",
        "## The prior of a seen type, chosen on development", "",
        f"Chosen: **{chosen:g}** (the package's `SEEN_PRIOR`: {SEEN_PRIOR:g}). Development rows only; AUROCs of "
        f"`L_confidence`, allowed at most {AUROC_TOLERANCE} below even odds' (0.5).", "",
        markdown(prior_table, index=True), "",
        "## Mean over cases, then mean and sd over seeds", "", markdown(summary, index=True), "",
        "## Per case (mean over seeds)", "", markdown(per_split, index=True), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cache", type=Path, default=None, help="folder that keeps each trained case's arrays")
    p.add_argument("--out", type=Path, default=Path("benchmarks/CONFIDENCE.md"))
    args = p.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    start = time.perf_counter()
    skipped: list[str] = []
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for group, split in cases(args.data_dir, skipped):
            arrays = trained_arrays(split, seed, args.cache)
            fitted = {}
            for fit in ("unconstrained", "package", "embedding support"):
                with decision(fit):
                    fitted[fit] = decided(arrays, seed)
            for name in DECISIONS:
                prior = float(name.split(" ")[1]) if name.startswith("prior ") else None
                rows.append({"group": group, "role": role(split.name), "split": split.name, "seed": seed,
                             "decision": name, **scores(arrays, fitted.get(name, fitted["package"]),
                                                        query_share=name == "query share", seen_prior=prior)})
            print(f"seed {seed}: {split.name}", flush=True)
    command = f"python -m benchmarks.confidence --data-dir {args.data_dir} --seeds {args.seeds} --out {args.out}" + (
        f" --cache {args.cache}" if args.cache is not None else "")
    if skipped:
        print("skipped:", "; ".join(sorted(set(skipped))))
    args.out.write_text(report(pd.DataFrame(rows), command, time.perf_counter() - start))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
