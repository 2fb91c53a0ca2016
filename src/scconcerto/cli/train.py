"""``scconcerto train``: build a reference model from an .h5ad file."""

from __future__ import annotations

import argparse

from ._common import add_command, add_data, add_hvg, add_output, add_runtime, check_output_free, emit, read_data


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", help="train a reference model on an .h5ad (or .h5mu) file",
                    description="Contrastive pre-training of a Concerto reference model; writes a model folder.")
    add_data(p, "reference cells: raw counts or log-normalized values", mudata=True)
    add_output(p, "model folder to write")
    p.add_argument("--batch-key", default=None, help="obs column of the source/batch of each cell")
    p.add_argument("--label-key", default=None, action="append",
                   help="obs column of labels to store for transfer (repeat for several levels)")
    p.add_argument("--protein-key", default=None,
                   help="obsm key of protein counts, names in uns['protein_names'] (default: none; .h5mu input: "
                        "the protein modality)")
    p.add_argument("--layer", default=None, help="layer holding the values (default: X)")
    add_hvg(p)
    p.add_argument("--epochs", type=int, default=None, help="passes over the data (default: by size)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--positive-neighbors", type=int, default=10,
                   help="draw the student view from one of this many nearest cells (default: 10; 0: the paper's "
                        "views of the cell itself)")
    p.add_argument("--no-label-positives", action="store_true",
                   help="neighbour positives ignore the labels (default: with --label-key they share the labels)")
    p.add_argument("--positive-space", choices=("centred", "joint", "svd"), default="centred",
                   help="where neighbour positives are searched: 'centred' (default) averages the cosine "
                        "similarity of the centred (PCA) and scaled (z-scored PCA) expression spaces; 'joint': of "
                        "the uncentred SVD and the scaled space (models trained before 2026-12-08); 'svd': the "
                        "uncentred SVD alone")
    p.add_argument("--positive-rank", choices=("nearest", "shared"), default="nearest",
                   help="how neighbour positives are chosen: a cell's nearest cells ('nearest', default) or those "
                        "of its 30 nearest that share most of its nearest cells ('shared')")
    p.add_argument("--positive-sources", choices=("any", "same"), default="any",
                   help="which sources a cell's neighbour positives come from: 'any' (default; its nearest cells "
                        "of every source) or 'same' (its own source, as models trained before 2026-12-07)")
    p.add_argument("--balance", choices=("auto", "labels", "clusters", "none"), default=None,
                   help="per-source batch-norm statistics balanced for cell-type composition: by the label "
                        "groups, by clusters found across sources, 'auto' (labels when given, else clusters) or "
                        "'none' (default: 'auto'; how it was chosen: README, training defaults)")
    p.add_argument("--source-norm", choices=("auto", "source", "shared"), default="auto",
                   help="batch-normalize each --batch-key source with its own statistics ('source'), all sources "
                        "together ('shared'), or 'auto' (default): together when matched cells of different sources "
                        "differ by little common shift, as donors of one technology")
    p.add_argument("--gene-dropout", type=float, default=None,
                   help="share of a cell's expressed genes hidden in each training view (default: the package's, "
                        "0.2); 0 when types differ by a handful of genes (docs/limits.md)")
    p.add_argument("--label-weight", type=float, default=None,
                   help="with --label-key: weight of the supervised term (each labeled cell's cross-entropy "
                        "against one learned direction per label) added to the contrastive loss (default: the "
                        "package's); 0: contrastive only")
    p.add_argument("--modality-dropout", type=float, default=0.5,
                   help="RNA + protein: share of training batches whose teacher sees RNA only (default: 0.5)")
    p.add_argument("--checkpoint-dir", default=None, help="write a checkpoint every epoch here")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    p.add_argument("--backed", action="store_true",
                   help="stream X from disk instead of loading it (.h5ad or .zarr; memory follows the read window)")
    p.add_argument("--devices", type=int, default=1, help="data-parallel processes (one per GPU, or CPU processes)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy for --devices > 1 (auto: ddp)")
    p.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed on GPUs")
    add_runtime(p, training=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.backed import read_backed
    from ..data.readers import PROTEIN_KEY
    from ..model import Concerto
    from ..train import is_global_zero

    check_output_free(args.out, args.overwrite, kind="model")
    adata = read_backed(args.data) if args.backed else read_data(args)
    protein_key = args.protein_key
    if protein_key is None and str(args.data).lower().endswith(".h5mu") and PROTEIN_KEY in adata.obsm:
        protein_key = PROTEIN_KEY  # the MuData's protein modality
    label = args.label_key[0] if args.label_key and len(args.label_key) == 1 else args.label_key
    model = Concerto(adata, batch_key=args.batch_key, label_key=label, protein_key=protein_key,
                     layer=args.layer, hvg=args.hvg, seed=args.seed)
    options = {} if args.balance is None else {"balance": args.balance}
    if args.gene_dropout is not None:
        options["gene_dropout"] = args.gene_dropout
    if args.label_weight is not None:
        options["label_weight"] = args.label_weight
    model.train(epochs=args.epochs, batch_size=args.batch_size or 256, lr=args.lr, device=args.device,
                checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                positive_neighbors=args.positive_neighbors, label_positives=not args.no_label_positives,
                positive_space=args.positive_space, positive_rank=args.positive_rank,
                positive_sources=args.positive_sources,
                source_norm=args.source_norm, modality_dropout=args.modality_dropout, devices=args.devices,
                strategy=args.strategy, precision=args.precision, **options)
    if not is_global_zero():  # data-parallel run: rank 0 writes the model
        return 0
    model.save(args.out, overwrite=args.overwrite)
    last = model.history[-1] if model.history else {}
    shift = model.training_record.source_shift
    emit({"out": args.out, "cells": adata.n_obs, "genes": len(model.setup.genes),
          "proteins": len(model.setup.proteins), "epochs": model.train_config.epochs,
          "final_loss": round(last.get("loss", float("nan")), 4),
          "train_seconds": round(model.training_record.seconds or 0.0, 1),
          "source_norm": model.train_config.source_norm, "source_shift": None if shift is None else round(shift, 3)})
    return 0
