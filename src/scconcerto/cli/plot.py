"""``scconcerto plot``: the mapped query on the reference UMAP, coloured by label, confidence and source."""

from __future__ import annotations

import argparse

PANELS = ("label", "confidence", "source")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot a mapped query on the reference UMAP",
                       description="Draw the reference UMAP stored with the model and the query cells placed on it "
                                   "(obsm['X_umap_ref'], written by `scconcerto map`), one panel per colouring.")
    p.add_argument("data", help="mapped query .h5ad written by `scconcerto map` (never modified)")
    p.add_argument("--model", required=True, help="the reference model directory the query was mapped onto")
    p.add_argument("--out", required=True, help="figure to write (.png, .pdf or .svg)")
    p.add_argument("--overwrite", action="store_true", help="replace the figure if it exists")
    p.add_argument("--color", default=",".join(PANELS),
                   help=f"comma-separated panels among {', '.join(PANELS)} (default: all three)")
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
    from .._io import check_output, read_h5ad, write_atomic_file
    from ..model import Concerto
    from ..plotting import mapping_umap

    out = check_output(args.out, args.overwrite)
    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in ("png", "pdf", "svg"):
        raise InputError(f"--out {args.out!r} must end in .png, .pdf or .svg.")
    panels = [c.strip() for c in args.color.split(",") if c.strip()]
    bad = [c for c in panels if c not in PANELS]
    if not panels or bad:
        raise InputError(f"--color takes panels among {list(PANELS)}, got {bad or panels}.")
    model = Concerto.load(args.model)
    adata = read_h5ad(args.data)
    model.reference_umap()  # stored with the model, or recomputed exactly as `scconcerto map` did
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), layout="constrained", squeeze=False)
    for ax, color in zip(axes[0], panels):
        mapping_umap(adata, model, color=color, label_key=args.label_key, source_key=args.source_key,
                     max_points=args.max_points, ax=ax, show=False)
    write_atomic_file(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight"),
                      overwrite=args.overwrite)
    plt.close(fig)
    print(f"wrote {out}: panels {panels}")
    return 0
