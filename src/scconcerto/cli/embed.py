"""``scconcerto embed``: write the embedding of an .h5ad file into ``obsm['X_concerto']``."""

from __future__ import annotations

import argparse

from ._common import add_output, add_runtime, check_output_free


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed cells with a trained model",
                       description="Embed an .h5ad with a trained model; writes a copy with obsm['X_concerto'].")
    p.add_argument("model", help="model directory written by `scconcerto train`")
    p.add_argument("data", help=".h5ad to embed (never modified)")
    add_output(p, ".h5ad to write (the input plus obsm['X_concerto'])")
    p.add_argument("--batch-key", default="__setup__",
                   help="obs column of sources (default: the model's batch key, if the data has it)")
    p.add_argument("--backed", action="store_true",
                   help="stream X from disk (.h5ad or .zarr); the output copies X block by block")
    add_runtime(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._io import read_h5ad, write_h5ad
    from ..model import EMBEDDING_KEY, Concerto

    check_output_free(args.out, args.overwrite)
    model = Concerto.load(args.model)
    if args.backed:
        return _run_backed(args, model)
    adata = read_h5ad(args.data)
    adata.obsm[EMBEDDING_KEY] = model.embed(adata, batch_key=args.batch_key, batch_size=args.batch_size or 1024,
                                            device=args.device)
    adata.uns["scconcerto"] = {"model": str(args.model), "gene_overlap": model.last_alignment.summary()}
    write_h5ad(adata, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {adata.n_obs} cells, obsm[{EMBEDDING_KEY!r}] {adata.obsm[EMBEDDING_KEY].shape}")
    return 0


def _run_backed(args: argparse.Namespace, model: "Concerto") -> int:  # noqa: F821 - imported lazily
    """Embed a file without loading its X; the output is written block by block."""
    from ..data.backed import read_backed, write_rows_h5ad
    from ..model import EMBEDDING_KEY

    adata = read_backed(args.data)
    emb = model.embed(adata, batch_key=args.batch_key, batch_size=args.batch_size or 1024, device=args.device)
    info = {"scconcerto": {"model": str(args.model), "gene_overlap": model.last_alignment.summary()}}
    write_rows_h5ad(args.data, args.out, obsm={EMBEDDING_KEY: emb}, uns=info, overwrite=args.overwrite)
    print(f"wrote {args.out}: {adata.n_obs} cells, obsm[{EMBEDDING_KEY!r}] {emb.shape}")
    return 0
