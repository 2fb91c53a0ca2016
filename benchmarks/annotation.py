"""Supervised annotation figures on real data.

Prints:

1. 5-fold stratified CV on ``symphony_pbmc_3tech`` (``cell_type``): ACC, macro-F1,
   median per-class F1, with contrastive pre-training and end-to-end (no pre-training).
2. Inter-dataset: train on Drop-seq + inDrops, predict CEL-Seq2 (``pbmcsca_ding2020_subsets``),
   without domain adaptation, with it, and with it restricted to confident target cells
   (``consistency_min_confidence=0.9``), on all reference genes and on the shared genes only;
   the gene overlap; scores on the cell types the reference has, and unknown AUROC of the others.
3. Unknown rejection on ``symphony_pbmc_3tech``: one type held out of training; seen-vs-unseen
   AUROC of each score (calibrated max-softmax, feature kNN, their combination, energy), unknown
   rates at the default (combined) threshold, ECE before/after temperature scaling on test cells.

Usage::

    python benchmarks/annotation.py --data-dir ../shared/data [--only cv,inter,unknown] [--folds 5]

Skips with a message when the data are absent.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

SYMPHONY = "symphony_pbmc_3tech/symphony_pbmc_3tech.h5ad"
DROPSEQ_INDROPS = "pbmcsca_ding2020_subsets/pbmcsca_dropseq_indrops.h5ad"
CELSEQ2 = "pbmcsca_ding2020_subsets/pbmcsca_celseq2.h5ad"


def _read(data_dir: Path, rel: str):
    from scconcerto._io import read_h5ad

    path = data_dir / rel
    if not path.exists():
        print(f"skip: {path} is absent", file=sys.stderr)
        return None
    adata = read_h5ad(path)
    adata.obs_names_make_unique()
    return adata


def cross_validation(data_dir: Path, folds: int, pretrain_epochs: int, epochs: int | None, seed: int) -> dict:
    from scconcerto import Concerto

    adata = _read(data_dir, SYMPHONY)
    if adata is None:
        return {}
    out = {}
    for pretrain in (True, False):
        start = time.perf_counter()
        table = Concerto.cross_validate(adata, "cell_type", folds=folds, batch_key="batch", pretrain=pretrain,
                                        seed=seed, pretrain_kwargs={"epochs": pretrain_epochs}, epochs=epochs,
                                        device="auto", progress=False)
        name = "pretrained" if pretrain else "end-to-end"
        print(f"\n[cv] symphony_pbmc_3tech, {folds}-fold, {name} ({time.perf_counter() - start:.0f} s)")
        print(table[["fold", "n_train", "n_test", "accuracy", "macro_f1", "median_f1"]]
              .to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        means = table[["accuracy", "macro_f1", "median_f1"]].mean()
        print("mean " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()))
        out[name] = {k: round(float(v), 4) for k, v in means.items()}
    return out


def _scores(truth: np.ndarray, pred, seen: set[str]) -> dict:
    from scconcerto.metrics import annotation_report

    known = np.isin(truth, list(seen))
    report = annotation_report(truth[known], pred.labels[known].astype(str))
    out = {f"{k}_seen_types": round(float(v), 4) for k, v in report.items()}
    if (~known).any():
        out.update(_aurocs(pred, ~known))
        out["unknown_rate_unseen"] = round(float(pred.unknown[~known].mean()), 4)
    out["unknown_rate_seen"] = round(float(pred.unknown[known].mean()), 4)
    return out


def _aurocs(pred, unseen: np.ndarray) -> dict:
    """Seen-vs-unseen AUROC of each rejection score of a prediction."""
    from scconcerto.tools.calibration import unknown_auroc

    return {f"auroc_{name}": round(unknown_auroc(getattr(pred, attr), unseen), 4)
            for name, attr in [("max_softmax", "log_odds"), ("knn", "familiarity"), ("combined", "typicality")]}


def inter_dataset(data_dir: Path, pretrain_epochs: int, epochs: int | None, seed: int) -> dict:
    from scconcerto import Concerto

    ref, query = _read(data_dir, DROPSEQ_INDROPS), _read(data_dir, CELSEQ2)
    if ref is None or query is None:
        return {}
    shared = ref.var_names.intersection(query.var_names)
    overlap = {"reference_genes": int(ref.n_vars), "query_genes": int(query.n_vars), "shared_genes": int(len(shared)),
               "fraction_of_reference": round(len(shared) / ref.n_vars, 4)}
    print(f"\n[inter] Drop-seq + inDrops ({ref.n_obs} cells) -> CEL-Seq2 ({query.n_obs} cells); gene overlap {overlap}")
    truth = query.obs["cell_type"].astype(str).to_numpy()
    seen = set(ref.obs["cell_type"].astype(str))
    print(f"reference types {sorted(seen)}; CEL-Seq2 types {query.obs['cell_type'].value_counts().to_dict()}")
    out = {"gene_overlap": overlap}
    for genes in ("all", "shared"):
        r = ref if genes == "all" else ref[:, shared].copy()
        q = query if genes == "all" else query[:, shared].copy()
        base = Concerto(r, batch_key="batch", label_key="cell_type", seed=seed)
        base.train(epochs=pretrain_epochs, progress=False)
        variants = {"no_adaptation": None, "domain_adaptation": 0.0, "domain_adaptation_confident_only": 0.9}
        for variant, min_confidence in variants.items():
            model = copy.deepcopy(base)
            start = time.perf_counter()
            extra = {} if min_confidence is None else {"target": q, "consistency_weight": 1.0,
                                                       "consistency_min_confidence": min_confidence}
            model.fit_classifier(label_key="cell_type", min_overlap=0.1, epochs=epochs, seed=seed, progress=False,
                                 **extra)
            pred = model.predict(q.copy(), inplace=False, min_overlap=0.1)
            res = _scores(truth, pred, seen)
            res["seconds"] = round(time.perf_counter() - start, 1)
            name = f"{genes}_genes/{variant}"
            print(f"{name}: {res}")
            out[name] = res
    return out


def unknown_rejection(data_dir: Path, held_types: list[str], pretrain_epochs: int, epochs: int | None,
                      seed: int) -> dict:
    from scconcerto import Concerto
    from scconcerto.tools.calibration import (energy_confidence, expected_calibration_error,
                                              scaled_probabilities, unknown_auroc)

    adata = _read(data_dir, SYMPHONY)
    if adata is None:
        return {}
    test = np.random.default_rng(seed).random(adata.n_obs) < 0.2
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    out = {}
    print("\n[unknown] symphony_pbmc_3tech, one type held out of training; "
          "test = 20 % of cells + all held-out-type cells")
    for held in held_types:
        train = adata[~test & (truth != held)].copy()
        query_mask = test | (truth == held)
        query = adata[query_mask].copy()
        q_truth = truth[query_mask]
        unseen = q_truth == held
        model = Concerto(train, batch_key="batch", label_key="cell_type", seed=seed)
        model.train(epochs=pretrain_epochs, progress=False)
        model.fit_classifier(label_key="cell_type", epochs=epochs, seed=seed, progress=False)
        pred = model.predict(query, inplace=False)
        logits = model.predict_logits(query)
        s = model.annotation_summary
        codes = np.asarray(pd.Categorical(q_truth[~unseen], categories=s["classes"]).codes)
        kept = codes >= 0  # seen types absent from this training split (tiny classes) have no class to score
        seen_logits, codes = logits[~unseen][kept], codes[kept]
        res = {"n_unseen": int(unseen.sum()), "n_seen": int((~unseen).sum()), **_aurocs(pred, unseen),
               "auroc_energy": round(unknown_auroc(energy_confidence(logits, s["temperature"]), unseen), 4),
               "unknown_score": pred.unknown_score,
               "unknown_rate_unseen": round(float(pred.unknown[unseen].mean()), 4),
               "unknown_rate_seen": round(float(pred.unknown[~unseen].mean()), 4),
               "accuracy_seen": round(float((pred.labels[~unseen] == q_truth[~unseen]).mean()), 4),
               "temperature": round(s["temperature"], 3),
               "ece_test_before": round(expected_calibration_error(scaled_probabilities(seen_logits), codes), 4),
               "ece_test_after": round(expected_calibration_error(
                   scaled_probabilities(seen_logits, s["temperature"]), codes), 4)}
        print(f"held out {held}: {res}")
        out[held] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder of the shared datasets (see its README.md)")
    p.add_argument("--only", default="cv,inter,unknown", help="comma-separated experiments to run")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--pretrain-epochs", type=int, default=30, help="contrastive pre-training epochs per model")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: by size)")
    p.add_argument("--held-out", default="T_CD4,B,NK", help="symphony types to hold out, one at a time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        print(f"skip: data directory {data_dir} does not exist (see ../shared/data/README.md)", file=sys.stderr)
        return 0
    only = set(args.only.split(","))
    figures = {}
    if "cv" in only:
        figures["cv"] = cross_validation(data_dir, args.folds, args.pretrain_epochs, args.epochs, args.seed)
    if "inter" in only:
        figures["inter"] = inter_dataset(data_dir, args.pretrain_epochs, args.epochs, args.seed)
    if "unknown" in only:
        figures["unknown"] = unknown_rejection(data_dir, args.held_out.split(","), args.pretrain_epochs, args.epochs,
                                               args.seed)
    print("\n" + json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
