"""``scconcerto embed``: write the embedding of an .h5ad file into ``obsm['X_concerto']``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import add_command, add_data, add_model, add_output, add_runtime, check_output_free, emit, read_data

if TYPE_CHECKING:
    from ..model import Concerto


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "embed", help="embed cells with a trained model",
                    description="Embed cells with a trained model; writes a copy of the data with "
                                "obsm['X_concerto'] (the output's folder is created if needed).")
    add_model(p)
    add_data(p, "cells to embed (never modified)", mudata=True)
    add_output(p, ".h5ad to write (the input plus obsm['X_concerto'])")
    p.add_argument("--batch-key", default="__setup__",
                   help="obs column of sources (default: the model's batch key, if the data has it)")
    p.add_argument("--backed", action="store_true",
                   help="stream X from disk (.h5ad or .zarr); the output copies X block by block")
    add_runtime(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._io import write_h5ad
    from ..model import EMBEDDING_KEY, Concerto

    check_output_free(args.out, args.overwrite)
    model = Concerto.load(args.model)
    if args.backed:
        return _run_backed(args, model)
    adata = read_data(args)
    adata.obsm[EMBEDDING_KEY] = model.embed(adata, batch_key=args.batch_key, batch_size=args.batch_size or 1024,
                                            device=args.device)
    adata.uns["scconcerto"] = {"model": str(args.model), "model_id": model.model_id,
                               "gene_overlap": model.last_alignment.summary()}
    write_h5ad(adata, args.out, overwrite=args.overwrite)
    emit({"out": args.out, "cells": int(adata.n_obs), "key": EMBEDDING_KEY,
          "dims": int(adata.obsm[EMBEDDING_KEY].shape[1])})
    return 0


def _run_backed(args: argparse.Namespace, model: Concerto) -> int:
    """Embed a file without loading its X; the output is written block by block."""
    from ..data.backed import read_backed, write_rows_h5ad
    from ..model import EMBEDDING_KEY

    adata = read_backed(args.data)
    emb = model.embed(adata, batch_key=args.batch_key, batch_size=args.batch_size or 1024, device=args.device)
    info = {"scconcerto": {"model": str(args.model), "model_id": model.model_id,
                           "gene_overlap": model.last_alignment.summary()}}
    write_rows_h5ad(args.data, args.out, obsm={EMBEDDING_KEY: emb}, uns=info, overwrite=args.overwrite)
    emit({"out": args.out, "cells": int(adata.n_obs), "key": EMBEDDING_KEY, "dims": int(emb.shape[1])})
    return 0
