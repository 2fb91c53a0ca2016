"""``scconcerto demo``: the main job on real data shipped with scanpy (build a reference, map the rest), next to a
simple baseline on the same split."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import add_command, emit

if TYPE_CHECKING:
    import numpy as np
    from anndata import AnnData

QUERY_FRACTION = 0.3
BASELINE_PCS, BASELINE_K = 50, 5


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", help="build a reference on PBMC 68k (reduced, ships with scanpy) and map held-out "
                                      "cells, next to a PCA + kNN baseline",
                    description="Build a reference on 70 % of scanpy's pbmc68k_reduced cells (700 PBMCs, 765 genes, "
                                "10 bulk-sorted labels), map the other 30 % (a random cut: the file records no donor "
                                "or batch to split by), and print scConcerto's accuracy and macro-F1 next to a "
                                "baseline on the same split: 50-PC PCA of the log-normalized values, fitted on the "
                                "reference, + 5-NN vote. Writes the model, the embedded cells and a UMAP PNG.")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: by size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the model and the UMAP")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.set_defaults(func=run)


def pca_knn_baseline(ref: AnnData, query: AnnData, label_key: str, n_pcs: int = BASELINE_PCS,
                     k: int = BASELINE_K, seed: int = 0) -> np.ndarray:
    """Labels of the query by a ``k``-NN majority vote in the reference's ``n_pcs``-PC PCA space.

    The PCA (centred, as ``scanpy.pp.pca``) is fitted on the reference's values only and the query
    projected onto it; the values are used as given (log-normalized here).
    """
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    def dense(x: object) -> np.ndarray:
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)

    pca = PCA(n_components=min(n_pcs, ref.n_obs - 1, ref.n_vars), random_state=seed).fit(dense(ref.X))
    vote = KNeighborsClassifier(n_neighbors=k).fit(pca.transform(dense(ref.X)), ref.obs[label_key].astype(str))
    return vote.predict(pca.transform(dense(query.X)))


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import scanpy as sc

    from .._io import write_atomic_file, write_h5ad
    from .._keys import pred_key, unknown_key
    from .._settings import quiet_third_party
    from ..metrics import annotation_report
    from ..model import EMBEDDING_KEY, Concerto
    from ..search.knn_graph import FaissKNNTransformer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_third_party():
        full = sc.datasets.pbmc68k_reduced()
    adata = full.raw.to_adata()  # log-normalized values of 765 genes; X of the file is scaled
    adata.obs = full.obs[["bulk_labels"]].copy()
    rng = np.random.default_rng(args.seed)
    is_query = rng.random(adata.n_obs) < QUERY_FRACTION
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    truth = query.obs["bulk_labels"].astype(str).to_numpy()

    t0 = time.perf_counter()
    model = Concerto(ref, label_key="bulk_labels", seed=args.seed)
    model.train(epochs=args.epochs, device=args.device)
    t_train = time.perf_counter() - t0
    model.save(out / "reference_model", overwrite=args.overwrite)

    t0 = time.perf_counter()
    result = model.map_query(query, device=args.device)  # obs: bulk_labels_pred/_confidence/_unknown
    t_map = time.perf_counter() - t0
    ours = annotation_report(truth, query.obs[pred_key("bulk_labels")].astype(str).to_numpy())
    t0 = time.perf_counter()
    baseline = annotation_report(truth, pca_knn_baseline(ref, query, "bulk_labels", seed=args.seed))
    t_baseline = time.perf_counter() - t0

    both = sc.concat({"reference": ref, "query": query}, label="dataset")
    both.obsm[EMBEDDING_KEY] = np.vstack([model.reference.embedding, query.obsm[EMBEDDING_KEY]])
    with quiet_third_party():
        sc.pp.neighbors(both, use_rep=EMBEDDING_KEY, random_state=args.seed,
                        transformer=FaissKNNTransformer(15, "cosine"))
        sc.tl.umap(both, random_state=args.seed)
        fig = sc.pl.umap(both, color=["bulk_labels", "dataset"], show=False, return_fig=True)
    write_atomic_file(out / "umap.png", lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"),
                      overwrite=args.overwrite)
    write_h5ad(both, out / "pbmc68k_embedded.h5ad", overwrite=args.overwrite)
    emit({"out": str(out), "data": "scanpy pbmc68k_reduced (log-normalized), label bulk_labels",
          "split": f"random {QUERY_FRACTION:.0%} of the cells as query (seed {args.seed})",
          "reference_cells": int(ref.n_obs), "query_cells": int(query.n_obs),
          "scconcerto": {**{k: round(float(v), 4) for k, v in ours.items()},
                         "unknown_rate": round(float(query.obs[unknown_key("bulk_labels")].mean()), 4),
                         "train_seconds": round(t_train, 1), "map_seconds": round(t_map, 2)},
          f"baseline_pca{BASELINE_PCS}_knn{BASELINE_K}": {**{k: round(float(v), 4) for k, v in baseline.items()},
                                                           "seconds": round(t_baseline, 2)},
          "gene_overlap": result.info["gene_overlap"]["overlap"],
          "outputs": [str(out / "reference_model"), str(out / "pbmc68k_embedded.h5ad"), str(out / "umap.png")]})
    return 0
