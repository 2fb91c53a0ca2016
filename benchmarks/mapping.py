"""Query-to-reference mapping figures on real and simulated data.

Prints, with ``Concerto.map_query`` at its defaults (k = 5, AdaBN for query sources):

1. ``symphony``: ``symphony_pbmc_3tech`` leave-one-chemistry-out, ``cell_type``: ACC, macro-F1;
2. ``pancreas``: ``scclassify_pancreas_wang_xin`` Wang -> Xin and Xin -> Wang (log-normalized input, the
   genes both measure): ACC and macro-F1 on the types the reference has, and, Xin lacking Wang's
   ductal / stellate / acinar cells, the seen-vs-unseen AUROC of the confidence;
3. ``kang``: ``kang_ifnb_pbmc_scgen`` IFN-beta stimulated cells mapped on a control reference: ACC, macro-F1;
4. ``cbmc``: ``cbmc_citeseq`` without mouse cells (``Unknown`` unlabeled), 80 % RNA + protein reference,
   20 % RNA-only query: Pearson r between imputed and measured (CLR) protein per antibody;
5. ``unseen``: ``symphony_pbmc_3tech`` leave-one-chemistry-out with one type (B, then T_CD8) removed from
   the reference: AUROC of the confidence between seen and unseen query cells, AUROC between right and
   wrong transfers of seen cells, and the unknown rates at the default threshold;
6. ``scale``: seconds to map 10k and 100k simulated query cells onto a 100k-cell reference.

Each split also prints the PCA + k-NN baseline of ``benchmarks/peers/pca_knn.py`` (same genes, same vote).

Usage::

    python benchmarks/mapping.py --data-dir ../shared/data [--only symphony,pancreas,kang,cbmc,unseen,scale]

A data set that is absent is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

FILES = {
    "symphony": "symphony_pbmc_3tech/symphony_pbmc_3tech.h5ad",
    "pancreas": "scclassify_pancreas_wang_xin/scclassify_pancreas_wang_xin.h5ad",
    "kang": "kang_ifnb_pbmc_scgen/kang_ifnb_pbmc_scgen.h5ad",
    "cbmc": "cbmc_citeseq/cbmc_citeseq.h5ad",
}
EXPERIMENTS = ["symphony", "pancreas", "kang", "cbmc", "unseen", "scale"]


def _read(data_dir: Path | None, name: str):
    from scconcerto._io import read_h5ad

    path = None if data_dir is None else data_dir / FILES[name]
    if path is None or not path.exists():
        print(f"skip {name}: {path or 'no --data-dir'} not found", file=sys.stderr)
        return None
    adata = read_h5ad(path)
    adata.obs_names_make_unique()
    return adata


def _scores(truth: np.ndarray, pred: np.ndarray, seen: np.ndarray) -> dict:
    from scconcerto.metrics import annotation_report

    rep = annotation_report(np.asarray(truth, str)[seen], np.asarray(pred, str)[seen])
    return {"acc": round(rep["accuracy"], 4), "macro_f1": round(rep["macro_f1"], 4)}


def _auroc(positive: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, bool)
    return float("nan") if positive.all() or not positive.any() else round(float(roc_auc_score(positive, score)), 4)


def _baseline(ref, query, key: str, is_counts: bool) -> np.ndarray:
    from benchmarks.peers import make

    method = make("pca_knn", seed=0)
    method.fit(ref, key, None, is_counts)
    return np.asarray(method.map(query, None).labels, str)


def map_split(ref, query, key: str, batch_key: str | None, epochs: int | None, seed: int, is_counts: bool = True,
              baseline: bool = True, **map_args) -> dict:
    """Train on ``ref``, map ``query``; scores on the query types the reference has (+ baseline)."""
    from scconcerto import Concerto

    genes = ref.var_names.intersection(query.var_names)
    ref, query = ref[:, genes].copy(), query[:, genes].copy()
    start = time.perf_counter()
    model = Concerto(ref, batch_key=batch_key, label_key=key, seed=seed)
    model.train(epochs=epochs, progress=False)
    t_train = time.perf_counter() - start
    q = query.copy()
    result = model.map_query(q, place=False, **map_args)
    truth = q.obs[key].astype(str).to_numpy()
    pred = q.obs[f"{key}_pred"].astype(str).to_numpy()
    seen = np.isin(truth, model.setup.labels[key])
    conf = q.obs[f"{key}_confidence"].to_numpy()
    unknown = q.obs[f"{key}_unknown"].to_numpy()
    out = {"ref_cells": ref.n_obs, "query_cells": q.n_obs, "genes": len(genes), **_scores(truth, pred, seen),
           "train_s": round(t_train, 1), "map_s": round(result.info["timings"]["total"], 2),
           "auroc_right_vs_wrong": _auroc(pred[seen] == truth[seen], conf[seen]),
           "unknown_rate_seen": round(float(unknown[seen].mean()), 4)}
    if not seen.all():
        out.update({"unseen_cells": int((~seen).sum()), "auroc_seen_vs_unseen": _auroc(seen, conf),
                    "unknown_rate_unseen": round(float(unknown[~seen].mean()), 4)})
    if baseline:
        base = _baseline(ref, query, key, is_counts)
        out["pca_knn"] = _scores(truth, base, seen)
    return out


def symphony(data_dir: Path | None, epochs: int | None, seed: int) -> dict:
    adata = _read(data_dir, "symphony")
    if adata is None:
        return {}
    out = {}
    for held in sorted(adata.obs["batch"].unique()):
        is_q = (adata.obs["batch"] == held).to_numpy()
        out[f"query={held}"] = map_split(adata[~is_q], adata[is_q], "cell_type", "batch", epochs, seed)
        print("symphony", held, json.dumps(out[f"query={held}"]), flush=True)
    out["mean"] = {m: round(float(np.mean([v[m] for v in out.values()])), 4) for m in ("acc", "macro_f1")}
    out["mean_pca_knn"] = {m: round(float(np.mean([v["pca_knn"][m] for k, v in out.items() if k.startswith("query")])),
                                    4) for m in ("acc", "macro_f1")}
    print("symphony mean", out["mean"], "pca_knn", out["mean_pca_knn"], flush=True)
    return out


def pancreas(data_dir: Path | None, epochs: int | None, seed: int) -> dict:
    adata = _read(data_dir, "pancreas")
    if adata is None:
        return {}
    wang = adata[(adata.obs["batch"] == "wang").to_numpy()].copy()
    xin = adata[(adata.obs["batch"] == "xin").to_numpy()].copy()
    # the file is an outer join (zero-filled): keep the genes each study measured
    detected = lambda a: a.var_names[np.asarray((a.X > 0).sum(axis=0)).ravel() > 0]  # noqa: E731
    shared = detected(wang).intersection(detected(xin))
    out = {}
    for name, ref, query in (("wang->xin", wang, xin), ("xin->wang", xin, wang)):
        out[name] = map_split(ref[:, shared], query[:, shared], "cell_type", None, epochs, seed, is_counts=False)
        print("pancreas", name, json.dumps(out[name]), flush=True)
    return out


def kang(data_dir: Path | None, epochs: int | None, seed: int) -> dict:
    adata = _read(data_dir, "kang")
    if adata is None:
        return {}
    stim = (adata.obs["batch"] == "stimulated").to_numpy()
    out = {"control->stimulated": map_split(adata[~stim], adata[stim], "cell_type", None, epochs, seed)}
    print("kang", json.dumps(out["control->stimulated"]), flush=True)
    return out


def cbmc(data_dir: Path | None, epochs: int | None, seed: int) -> dict:
    from scconcerto import Concerto
    from scconcerto.data.setup import normalize_protein

    adata = _read(data_dir, "cbmc")
    if adata is None:
        return {}
    adata = adata[(adata.obs["cell_type"] != "Mouse").to_numpy()].copy()
    labels = adata.obs["cell_type"].astype(str)
    adata.obs["cell_type"] = labels.where(labels != "Unknown").astype("category")
    is_q = np.random.default_rng(seed).random(adata.n_obs) < 0.2
    ref, query = adata[~is_q].copy(), adata[is_q].copy()
    measured = normalize_protein(np.asarray(query.obsm["protein"], np.float32), "clr")
    del query.obsm["protein"], query.obsm["protein_clr_geo"]
    start = time.perf_counter()
    model = Concerto(ref, label_key="cell_type", protein_key="protein", seed=seed).train(epochs=epochs, progress=False)
    t_train = time.perf_counter() - start
    t0 = time.perf_counter()
    model.prepare_mapping(umap=False)
    t_prep = time.perf_counter() - t0
    result = model.map_query(query, place=False)
    imputed = result.protein_imputed
    names = list(query.uns["protein_imputed_names"])
    r = {n: round(float(np.corrcoef(imputed[:, j], measured[:, j])[0, 1]), 4) for j, n in enumerate(names)}
    truth = query.obs["cell_type"].astype(str).to_numpy()
    labeled = query.obs["cell_type"].notna().to_numpy()
    out = {"ref_cells": ref.n_obs, "query_cells": query.n_obs, "space": result.info["space"],
           "pearson_r": r, "median_r": round(float(np.median(list(r.values()))), 4),
           "min_r": round(float(min(r.values())), 4),
           **_scores(truth, query.obs["cell_type_pred"].astype(str).to_numpy(), labeled),
           "train_s": round(t_train, 1), "prepare_s": round(t_prep, 1),
           "map_s": round(result.info["timings"]["total"], 2)}
    print("cbmc", json.dumps(out), flush=True)
    return out


def unseen(data_dir: Path | None, epochs: int | None, seed: int, types: tuple[str, ...] = ("B", "T_CD8")) -> dict:
    adata = _read(data_dir, "symphony")
    if adata is None:
        return {}
    out = {}
    for drop in types:
        for held in sorted(adata.obs["batch"].unique()):
            is_q = (adata.obs["batch"] == held).to_numpy()
            keep = ~is_q & (adata.obs["cell_type"] != drop).to_numpy()
            res = map_split(adata[keep], adata[is_q], "cell_type", "batch", epochs, seed, baseline=False)
            out[f"without {drop}, query={held}"] = res
            print("unseen", drop, held, json.dumps(res), flush=True)
        rows = [v for k, v in out.items() if k.startswith(f"without {drop},")]
        out[f"without {drop}, mean"] = {m: round(float(np.mean([v[m] for v in rows])), 4) for m in
                                        ("auroc_seen_vs_unseen", "auroc_right_vs_wrong", "unknown_rate_seen",
                                         "unknown_rate_unseen", "acc")}
        print("unseen", drop, "mean", out[f"without {drop}, mean"], flush=True)
    return out


def scale(seed: int, n_ref: int = 100_000, n_queries: tuple[int, ...] = (10_000, 100_000),
          n_genes: int = 2000, epochs: int = 1) -> dict:
    """Mapping time only: the reference is trained briefly (training time is not what is measured here)."""
    from scconcerto import Concerto
    from scconcerto.datasets import simulate

    t0 = time.perf_counter()
    adata = simulate(n_ref + max(n_queries), n_genes, n_types=10, n_batches=4, seed=seed)
    # reference: 100k cells of batches 0-2; queries: batch 3 (an unseen source, AdaBN) first, then the
    # cells of batches 0-2 the reference does not hold
    unseen = (adata.obs["batch"] == "batch_3").to_numpy()
    ref_rows = np.flatnonzero(~unseen)[:n_ref]
    rest = np.setdiff1d(np.flatnonzero(~unseen), ref_rows)
    ref, pool = adata[ref_rows].copy(), adata[np.concatenate([np.flatnonzero(unseen), rest])].copy()
    print(f"scale: simulated {adata.n_obs} cells x {n_genes} genes in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    model = Concerto(ref, batch_key="batch", label_key="cell_type", seed=seed).train(epochs=epochs, progress=False)
    out = {"reference_cells": ref.n_obs, "genes": n_genes, "epochs": epochs,
           "train_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    model.prepare_mapping(umap=False)
    out["calibrate_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    model.reference_umap()
    out["reference_umap_s"] = round(time.perf_counter() - t0, 1)
    print(f"scale: reference {json.dumps(out)}", flush=True)
    for n in n_queries:
        for index in ("flat", "ivf"):  # exact (default below a million reference cells) and approximate
            q = pool[:n].copy()
            t0 = time.perf_counter()
            result = model.map_query(q, index=index)
            wall = time.perf_counter() - t0
            right = q.obs["cell_type_pred"].astype(str) == q.obs["cell_type"].astype(str)
            name = f"query_{q.n_obs}_{index}"
            out[name] = {"seconds": round(wall, 1), "acc": round(float(np.mean(right)), 4),
                         **{k: round(v, 1) for k, v in result.info["timings"].items()}}
            print(f"scale: map {q.n_obs} query cells onto {ref.n_obs} ({index}): {json.dumps(out[name])}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None, help="folder of the real data sets (../shared/data)")
    p.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated among {EXPERIMENTS}")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the package's, by size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    chosen = [e.strip() for e in args.only.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiments {unknown}; choose among {EXPERIMENTS}")
    if args.data_dir is None or not args.data_dir.is_dir():
        print(f"skip real data: --data-dir {args.data_dir} is not a folder", file=sys.stderr)
        args.data_dir = None
    figures = {}
    for name in chosen:
        t0 = time.perf_counter()
        figures[name] = scale(args.seed) if name == "scale" else globals()[name](args.data_dir, args.epochs, args.seed)
        print(f"-- {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
