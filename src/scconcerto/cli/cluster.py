"""``scconcerto cluster``: Leiden clusters of an embedded .h5ad (kNN graph of ``obsm['X_concerto']``)."""

from __future__ import annotations

import argparse
import math

from ._common import add_command, add_data, add_output, check_output_free, emit


def _resolutions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("give at least one resolution")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "cluster", help="Leiden clustering of an embedded .h5ad",
                    description="Leiden clustering (leidenalg via scanpy) of the kNN graph of an embedding "
                                "(neighbours searched by faiss); writes a copy with obs[KEY] (and, with --sweep, "
                                "one column per resolution and the silhouette of each in uns[KEY_sweep]).")
    add_data(p, "embedded .h5ad (output of `scconcerto embed` or `map`; never modified)")
    add_output(p, ".h5ad to write (the input plus the clusters)")
    p.add_argument("--resolution", type=float, default=None,
                   help="Leiden resolution (default 1.0; with --sweep, default: the best silhouette)")
    p.add_argument("--sweep", type=_resolutions, default=None, metavar="R1,R2,...",
                   help="comma-separated resolutions to try; prints the silhouette and cluster count of each")
    p.add_argument("--use-rep", default="X_concerto", help="obsm key of the embedding")
    p.add_argument("--n-neighbors", type=int, default=15, help="neighbours per cell in the graph")
    p.add_argument("--key-added", default="leiden", help="obs column to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (graph and Leiden)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._io import read_h5ad, write_h5ad
    from ..tools import cluster

    check_output_free(args.out, args.overwrite)
    adata = read_h5ad(args.data)
    resolution = args.resolution if args.resolution is not None or args.sweep else 1.0
    sweep = cluster(adata, resolution=resolution, use_rep=args.use_rep, sweep=args.sweep,
                    n_neighbors=args.n_neighbors, key_added=args.key_added, seed=args.seed)
    write_h5ad(adata, args.out, overwrite=args.overwrite)
    summary = {"out": str(args.out), "cells": int(adata.n_obs), "key": args.key_added,
               "resolution": adata.uns[args.key_added]["resolution"],
               "n_clusters": int(adata.obs[args.key_added].nunique())}
    if sweep is not None:
        summary["sweep"] = [{"resolution": float(r), "n_clusters": int(row["n_clusters"]),
                             "silhouette": None if math.isnan(row["silhouette"]) else round(float(row["silhouette"]), 4)}
                            for r, row in sweep.table.iterrows()]
    emit(summary)
    return 0
