"""``scconcerto plot``: the mapped query on the reference UMAP, coloured by label, confidence and source."""

from __future__ import annotations

import argparse

from ._common import add_command, add_data, add_model, add_output, check_output_free, emit

PANELS = ("label", "confidence", "source")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "plot", help="plot a mapped query on the reference UMAP",
                    description="Draw the reference UMAP stored with the model and the query cells placed on it "
                                "(obsm['X_umap_ref'], written by `scconcerto map`), one panel per colouring. The "
                                "query must have been mapped onto this model.")
    add_data(p, "mapped query .h5ad written by `scconcerto map` (never modified)")
    add_model(p, "the reference model folder the query was mapped onto", positional=False)
    add_output(p, "figure to write (.png, .pdf or .svg)")
    p.add_argument("--color", default=",".join(PANELS), help=f"comma-separated panels among {', '.join(PANELS)}")
    p.add_argument("--label-key", default=None, help="reference label key to show (default: the first mapped one)")
    p.add_argument("--source-key", default=None,
                   help="obs column of the query's sources (default: the model's batch key)")
    p.add_argument("--max-points", type=int, default=100_000, help="draw at most this many cells of each side")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._errors import InputError
    from .._io import read_h5ad, write_atomic_file
    from ..model import Concerto
    from ..plotting import mapping_umap
    from ..plotting.outputs import check_mapped_onto

    out = args.out
    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in ("png", "pdf", "svg"):
        raise InputError(f"--out {args.out!r} must end in .png, .pdf or .svg.")
    panels = [c.strip() for c in args.color.split(",") if c.strip()]
    bad = [c for c in panels if c not in PANELS]
    if not panels or bad:
        raise InputError(f"--color takes panels among {list(PANELS)}, got {bad or panels}.")
    check_output_free(out, args.overwrite)
    model = Concerto.load(args.model)
    adata = read_h5ad(args.data)
    check_mapped_onto(adata, model)
    model.reference_umap()  # stored with the model, or recomputed exactly as `scconcerto map` did
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), layout="constrained", squeeze=False)
    for ax, color in zip(axes[0], panels):
        mapping_umap(adata, model, color=color, label_key=args.label_key, source_key=args.source_key,
                     max_points=args.max_points, ax=ax, show=False)
    write_atomic_file(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight"),
                      overwrite=args.overwrite)
    plt.close(fig)
    emit({"out": str(out), "panels": panels, "cells": int(adata.n_obs)})
    return 0
