"""Core figures on symphony_pbmc_3tech: leave-one-chemistry-out 5-NN label accuracy of the Concerto
embedding vs a PCA baseline, training time and peak memory.

    python benchmarks/core_symphony.py --data-dir ../shared/data [--epochs N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from sklearn.decomposition import TruncatedSVD

from scconcerto import Concerto
from scconcerto.metrics import annotation_report
from scconcerto.tools import knn, vote


def transfer(query_emb: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray, k: int = 5) -> np.ndarray:
    cats, codes = np.unique(ref_labels, return_inverse=True)
    return cats[vote(knn(query_emb, ref_emb, k), codes, len(cats)).codes]


def pca_baseline(ref: ad.AnnData, query: ad.AnnData, n_comps: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """log1p(CP10K), PCA fitted on the reference only (sparse, no centring densification: truncated SVD)."""
    out = []
    for a in (ref, query):
        a = a.copy()
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        out.append(a.X)
    svd = TruncatedSVD(n_comps, random_state=seed).fit(out[0])
    return svd.transform(out[0]), svd.transform(out[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    path = Path(args.data_dir) / "symphony_pbmc_3tech" / "symphony_pbmc_3tech.h5ad"
    if not path.exists():
        print(f"skipped: {path} not found")
        return 0
    adata = ad.read_h5ad(path)
    rows = []
    for held in sorted(adata.obs["batch"].unique()):
        ref, query = adata[adata.obs["batch"] != held].copy(), adata[adata.obs["batch"] == held].copy()
        t0 = time.perf_counter()
        model = Concerto(ref, batch_key="batch", label_key="cell_type", seed=args.seed)
        model.train(epochs=args.epochs, progress=False)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        q_emb = model.embed(query)
        t_embed = time.perf_counter() - t0
        truth = query.obs["cell_type"].astype(str).to_numpy()
        ours = annotation_report(truth, transfer(q_emb, model.reference.embedding, ref.obs["cell_type"].astype(str).to_numpy()))
        r_pca, q_pca = pca_baseline(ref, query, seed=args.seed)
        base = annotation_report(truth, transfer(q_pca, r_pca, ref.obs["cell_type"].astype(str).to_numpy()))
        rows.append({"held_out": held, "n_ref": ref.n_obs, "n_query": query.n_obs,
                     "concerto_acc": ours["accuracy"], "concerto_macro_f1": ours["macro_f1"],
                     "pca_acc": base["accuracy"], "pca_macro_f1": base["macro_f1"],
                     "epochs": model.train_config.epochs, "train_s": t_train, "embed_s": t_embed})
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("concerto_acc", "concerto_macro_f1", "pca_acc", "pca_macro_f1",
                                                                "train_s")}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mean": {k: round(v, 3) for k, v in mean.items()}, "peak_rss_mb": round(peak_mb)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
