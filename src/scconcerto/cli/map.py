"""``scconcerto map``: map a query .h5ad onto a reference model (labels, confidence, unknowns, proteins, UMAP)."""

from __future__ import annotations

import argparse

from ._common import (add_command, add_data, add_model, add_output, add_runtime, check_output_free, emit, read_data,
                      use_protein_key)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "map", help="map query cells onto a reference model",
                    description="Embed a query in the reference space (genes aligned by name, AdaBN per query "
                                   "source, optional fine-tuning), transfer the reference labels by k-NN vote with a "
                                   "calibrated confidence, impute the reference's proteins, place the query on the "
                                   "reference UMAP. Writes a copy of the query with obs['<label>_pred'], "
                                   "obs['<label>_confidence'], obs['<label>_unknown'], obsm['X_concerto'], "
                                   "obsm['X_umap_ref'], obsm['protein_imputed'] and uns['scconcerto_mapping'].")
    add_model(p, "reference model folder written by `scconcerto train`")
    add_data(p, "query cells: raw counts or log-normalized values (never modified)", mudata=True)
    add_output(p, "mapped query .h5ad to write")
    p.add_argument("--protein-key", default=None,
                   help="obsm key of the query's protein counts (default: the model's, or an .h5mu's protein "
                        "modality)")
    p.add_argument("--k", type=int, default=None,
                   help="neighbours that vote for each cell's label, in the embedding and (at most 20) in the "
                        "expression space (default: those the model was calibrated with, 5)")
    p.add_argument("--batch-key", default="__setup__",
                   help="obs column of the query's sources (default: the model's batch key, if the query has it)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="epochs of unsupervised fine-tuning of the query sources' adapters (default: 0, AdaBN only)")
    p.add_argument("--levels", default=None,
                   help="comma-separated label keys, coarse to fine, for hierarchical mapping (e.g. major,minor)")
    p.add_argument("--unknown-threshold", type=float, default=None,
                   help="probability that a cell's type is in the reference (0-1) below which it is unknown "
                        "(default: the value 5 %% of held-out reference cells fall below)")
    p.add_argument("--known-share", type=float, default=None,
                   help="share of the query's cells expected to be of types the reference has: the prior of "
                        "L_known_prob and L_confidence (default: 0.5, even odds); it does not change the "
                        "default unknown flags")
    p.add_argument("--reject", action="store_true", help="write 'unknown' as the prediction of low-confidence cells")
    p.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "hnsw"],
                   help="k-NN index: exact 'flat' (default below a million reference cells) or approximate")
    p.add_argument("--impute-k", type=int, default=20,
                   help="reference neighbours averaged to impute proteins (default: 20)")
    p.add_argument("--no-umap", action="store_true", help="do not place the query on the reference UMAP")
    p.add_argument("--no-label-shift", action="store_true",
                   help="plain AdaBN for unseen query sources, without balancing their statistics for the "
                        "predicted cell-type composition")
    p.add_argument("--adjust-proportions", action="store_true",
                   help="move the label posterior to the query's own label proportions (EM estimate, at most "
                        "half-way), for a query whose cell-type mix differs strongly from the reference's")
    p.add_argument("--min-overlap", type=float, default=0.5,
                   help="smallest fraction of the model's genes the query must have (default: 0.5)")
    p.add_argument("--query-species", choices=["human", "mouse"], default=None,
                   help="the query's species when it is not the model's: genes matched by 1:1 orthologs")
    p.add_argument("--reference", default=None,
                   help="the reference .h5ad the model was trained on; only needed to map RNA-only queries onto an "
                        "RNA + protein model saved without its RNA-only reference embedding")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the model's)")
    add_runtime(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._errors import InputError
    from .._io import write_h5ad
    from ..model import Concerto

    check_output_free(args.out, args.overwrite)
    if args.k is not None and args.k < 1:
        raise InputError(f"--k must be at least 1, got {args.k}.")
    model = Concerto.load(args.model)
    if args.reference is not None:
        model.prepare_mapping(read_data(args, args.reference), umap=False, device=args.device)
    adata = read_data(args)
    use_protein_key(adata, args.protein_key, model.setup.protein_key, args.data)
    result = model.map_query(adata, k=args.k, batch_key=args.batch_key, finetune_epochs=args.finetune_epochs,
                             levels=args.levels, unknown_threshold=args.unknown_threshold, reject=args.reject,
                             known_share=args.known_share,
                             index=args.index, impute_k=args.impute_k, place=not args.no_umap, min_overlap=args.min_overlap,
                             batch_size=args.batch_size or 1024, device=args.device, seed=args.seed,
                             label_shift=not args.no_label_shift, adjust_proportions=args.adjust_proportions,
                             query_species=args.query_species)
    adata.uns["scconcerto_mapping"]["model"] = str(args.model)
    write_h5ad(adata, args.out, overwrite=args.overwrite)
    info = result.info
    summary = {"out": args.out, "cells": adata.n_obs, "gene_overlap": info["gene_overlap"]["overlap"],
               "genes": info["gene_overlap"], "values": info["values"],
               "space": info["space"], "k": info["k"],
               "labels": {key: {"unknown_fraction": round(float(df["unknown"].mean()), 4),
                                "threshold": info["thresholds"][key],
                                "top": df["pred"].astype(str).value_counts().head(5).to_dict()}
                          for key, df in result.predictions.items()},
               "proteins_imputed": 0 if result.protein_imputed is None else int(result.protein_imputed.shape[1]),
               "seconds": info["timings"]["total"]}
    emit(summary)
    return 0
