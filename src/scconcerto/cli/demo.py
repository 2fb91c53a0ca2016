"""``scconcerto demo``: the main job on real data shipped with scanpy (build a reference, map the rest)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ._common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", help="build a reference on PBMC 68k (reduced, ships with scanpy) and map held-out cells",
                       description="Build a reference on 70%% of scanpy's pbmc68k_reduced cells, map the other 30%%, "
                                   "print the label-transfer accuracy, write the embedded .h5ad and a UMAP PNG.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import scanpy as sc

    from .._io import write_h5ad
    from .._keys import pred_key, unknown_key
    from ..metrics import annotation_report
    from ..model import EMBEDDING_KEY, Concerto

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = sc.datasets.pbmc68k_reduced()
    adata = full.raw.to_adata()  # log-normalized values of 765 genes; X of the file is scaled
    adata.obs = full.obs[["bulk_labels"]].copy()
    rng = np.random.default_rng(args.seed)
    is_query = rng.random(adata.n_obs) < 0.3
    ref, query = adata[~is_query].copy(), adata[is_query].copy()

    t0 = time.perf_counter()
    model = Concerto(ref, label_key="bulk_labels", seed=args.seed)
    model.train(epochs=args.epochs, device=args.device)
    t_train = time.perf_counter() - t0
    model.save(out / "reference_model", overwrite=args.overwrite)

    t0 = time.perf_counter()
    result = model.map_query(query, device=args.device)  # obs: bulk_labels_pred/_confidence/_unknown
    t_map = time.perf_counter() - t0
    report = annotation_report(query.obs["bulk_labels"].astype(str).to_numpy(),
                               query.obs[pred_key("bulk_labels")].astype(str).to_numpy())

    both = sc.concat({"reference": ref, "query": query}, label="dataset")
    both.obsm[EMBEDDING_KEY] = np.vstack([model.reference.embedding, query.obsm[EMBEDDING_KEY]])
    sc.pp.neighbors(both, use_rep=EMBEDDING_KEY, random_state=args.seed)
    sc.tl.umap(both, random_state=args.seed)
    fig = sc.pl.umap(both, color=["bulk_labels", "dataset"], show=False, return_fig=True)
    fig.savefig(out / "umap.png", dpi=120, bbox_inches="tight")
    write_h5ad(both, out / "pbmc68k_embedded.h5ad", overwrite=args.overwrite)
    summary = {"reference_cells": int(ref.n_obs), "query_cells": int(query.n_obs),
               **{k: round(float(v), 4) for k, v in report.items()},
               "unknown_rate": round(float(query.obs[unknown_key("bulk_labels")].mean()), 4),
               "gene_overlap": result.info["gene_overlap"]["overlap"],
               "train_seconds": round(t_train, 1), "map_seconds": round(t_map, 2),
               "outputs": [str(out / "reference_model"), str(out / "pbmc68k_embedded.h5ad"), str(out / "umap.png")]}
    print(json.dumps(summary, indent=1))
    return 0
