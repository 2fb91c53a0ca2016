"""``scconcerto attention``: the genes and proteins the teacher attends to in each cell group, as a table and a plot."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import add_command, add_data, add_model, add_output, add_runtime, check_output_free, emit

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

    from ..tools.attention import AttentionWeights


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "attention", help="rank the genes/proteins the teacher attends to per cell group",
                    description="Compute the teacher's attention on an .h5ad, rank the features each cell group "
                                   "attends to more than the other cells, and write them as a CSV table "
                                   "(columns: modality, group, rank, feature, score, contrast, mean_in, mean_out, "
                                   "detection_in, detection_out, lift, logfoldchange, pval, pval_adj).")
    add_model(p)
    add_data(p, ".h5ad with the cells (never modified)")
    p.add_argument("--groupby", required=True, help="obs column of the cell groups, e.g. cell_type")
    add_output(p, "CSV table of the top features per group (and modality) to write")
    p.add_argument("--modality", choices=["rna", "protein", "all"], default="all",
                   help="features to rank: genes, proteins, or all (both, when the model has proteins)")
    p.add_argument("--n-top", type=int, default=20, help="features per group in the table")
    p.add_argument("--method", choices=["contrast", "wilcoxon"], default="contrast",
                   help="contrast: mean attention in the group minus elsewhere; wilcoxon: rank-sum test")
    p.add_argument("--min-detection", type=float, default=0.0,
                   help="leave out features expressed in fewer than this fraction of the group's cells")
    p.add_argument("--plot", default=None,
                   help="also write a heatmap (mean attention per group on the top features; one panel per "
                        "modality); the format follows the suffix (.png, .pdf, .svg)")
    p.add_argument("--plot-top", type=int, default=5, help="features per group in the plot")
    p.add_argument("--agreement", default=None,
                   help="also write a CSV comparing each group's top features by attention and by differential "
                        "expression (genes: scanpy rank_genes_groups, wilcoxon; proteins: mean difference of "
                        "normalized values): one row per group and feature in either top list, with found_by "
                        "(both / attention / expression), both ranks and the detection in and out of the group")
    add_runtime(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from .._errors import InputError
    from .._io import read_h5ad, write_atomic_file
    from ..model import Concerto
    from ..tools.attention import rank_attention
    from ..tools.attention_agreement import attention_agreement, attention_vs_expression

    outputs = [args.out] + [p for p in (args.plot, args.agreement) if p]
    if len({str(Path(p).resolve()) for p in outputs}) < len(outputs):
        raise InputError(f"--out, --plot and --agreement must be different files, got {outputs}.")
    for path in outputs:
        check_output_free(path, args.overwrite)
    if args.plot and not Path(args.plot).suffix:
        raise InputError(f"--plot {args.plot!r} has no file extension; give e.g. {args.plot}.png or .pdf.")
    model = Concerto.load(args.model)
    adata = read_h5ad(args.data)
    if args.modality == "protein" and not model.setup.proteins:
        raise InputError(f"The model {args.model!r} was trained without proteins; use --modality rna.")
    att = model.attention(adata, batch_size=args.batch_size or 1024, device=args.device)
    modalities = att.modalities if args.modality == "all" else [args.modality]
    if "protein" in modalities and att.protein is None:
        raise InputError(f"{args.data!r} lacks the model's proteins (obsm[{model.setup.protein_key!r}]); "
                         "use --modality rna.")
    tables = []
    for modality in modalities:
        ranked = rank_attention(adata, args.groupby, attention=att, modality=modality, n_top=args.n_top,
                                method=args.method, min_detection=args.min_detection)
        for group, table in ranked.items():
            tables.append(table.assign(modality=modality, group=group, rank=range(1, len(table) + 1)))
    if not tables:
        raise InputError(f"No group of obs[{args.groupby!r}] could be ranked (too few labelled cells).")
    front = ["modality", "group", "rank"]
    result = pd.concat(tables, ignore_index=True)
    result = result[front + [c for c in result.columns if c not in front]]
    write_atomic_file(args.out, lambda p: result.to_csv(p, index=False), overwrite=args.overwrite)
    summary = {"out": args.out, "groups": int(result["group"].nunique()), "modalities": modalities,
               "n_top": args.n_top}
    agreement, agreement_summary = None, None
    if args.agreement:
        layer = model.setup.layer if model.setup.layer in adata.layers else None
        options = {"model": model, "attention": att, "n_top": args.n_top, "layer": layer}
        agreement = pd.concat([attention_vs_expression(adata, args.groupby, modality=m, **options)
                               for m in modalities], ignore_index=True)
        agreement_summary = pd.concat([attention_agreement(adata, args.groupby, modality=m, **options)
                                       for m in modalities], ignore_index=True)
    figure = _draw_plot(adata, args, att, modalities) if args.plot else None
    if agreement is not None:
        write_atomic_file(args.agreement, lambda p: agreement.to_csv(p, index=False), overwrite=args.overwrite)
        summary["agreement"] = {"out": args.agreement}
        for modality, part in agreement_summary.groupby("modality", sort=False):
            summary["agreement"][modality] = {
                "top": int(part["k"].iloc[0]), "mean_overlap": round(float(part["overlap"].mean()), 2),
                "chance": round(float(part["expected"].mean()), 2),
                "mean_spearman": round(float(part["spearman"].mean()), 2), "features": int(part["n_features"].iloc[0])}
    if figure is not None:
        _save_plot(figure, args.plot, args.overwrite)
        summary["plot"] = args.plot
    emit(summary)
    return 0


def _draw_plot(adata: AnnData, args: argparse.Namespace, att: AttentionWeights, modalities: list[str]) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting.attention import attention_heatmap

    fig, axes = plt.subplots(1, len(modalities), figsize=(7 * len(modalities), 5), squeeze=False)
    for ax, modality in zip(axes[0], modalities):
        attention_heatmap(adata, args.groupby, attention=att, modality=modality, n_top=args.plot_top, ax=ax,
                          title=f"{modality} attention", show=False)
    return fig


def _save_plot(fig: Figure, path: str, overwrite: bool) -> None:
    import matplotlib.pyplot as plt

    from .._io import write_atomic_file

    fmt = Path(path).suffix.lstrip(".").lower()
    try:
        write_atomic_file(path, lambda p: fig.savefig(p, format=fmt, dpi=150, bbox_inches="tight"),
                          overwrite=overwrite)
    finally:
        plt.close(fig)
