"""What the teacher attends to, per cell type, on real data (paper Fig. 3d).

Prints, for ``cbmc_citeseq`` (RNA + 13 proteins), the top proteins per cell
type (expected: CD19 for B, CD16/CD56 for NK, CD4 / CD8 for the T cells, CD14
for CD14+ monocytes, CD34 for progenitors) and, for ``symphony_pbmc_3tech``,
the top genes per type and their overlap with scanpy's expression markers.

Every ranking is also computed with a *uniform-attention control* (each cell's
weight spread evenly over its expressed features, i.e. an attention layer that
learnt nothing): what the trained attention adds is the difference between
the two, not the trained ranking alone.

Usage::

    python benchmarks/attention.py --data-dir /work/shared/data [--out-dir results/attention]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import scconcerto as scc
from scconcerto.model._attention import AttentionWeights

EXPECTED_PROTEINS = {"B": ["CD19"], "NK": ["CD16", "CD56"], "CD4 T": ["CD4"], "CD8 T": ["CD8"],
                     "CD14+ Mono": ["CD14"], "CD34+": ["CD34"]}


def uniform(att: AttentionWeights) -> AttentionWeights:
    """The same cells and features, with each cell's weight spread evenly over its expressed features."""

    def flat(m: sp.csr_matrix | None) -> sp.csr_matrix | None:
        if m is None:
            return None
        n = np.diff(m.indptr)
        out = m.copy()
        out.data = np.repeat(1.0 / np.maximum(n, 1), n).astype(np.float32)
        return out

    return AttentionWeights(flat(att.rna), att.var_names, flat(att.protein), att.protein_names)


def train(adata: ad.AnnData, epochs: int | None, device: str, **setup) -> tuple[scc.Concerto, scc.Concerto]:
    """The trained model, and the same model before training (same seed: its initial weights)."""
    untrained = scc.Concerto(adata, label_key="cell_type", **setup)
    start = time.perf_counter()
    model = scc.Concerto(adata, label_key="cell_type", **setup).train(epochs=epochs, progress=False, device=device)
    print(f"  trained {model.train_config.epochs} epochs on {adata.n_obs} cells in "
          f"{time.perf_counter() - start:.0f} s (final loss {model.history[-1]['loss']:.3f})")
    return model, untrained


def controls(adata: ad.AnnData, model: scc.Concerto, untrained: scc.Concerto,
             device: str) -> dict[str, AttentionWeights]:
    att = model.attention(adata, device=device)
    return {"trained": att, "untrained": untrained.attention(adata, device=device), "uniform": uniform(att)}


def cbmc(data_dir: Path, epochs: int | None, device: str, out_dir: Path | None) -> None:
    print("== cbmc_citeseq: RNA + 13 proteins ==")
    adata = ad.read_h5ad(data_dir / "cbmc_citeseq" / "cbmc_citeseq.h5ad")
    adata = adata[adata.obs["cell_type"] != "Mouse"].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).replace("Unknown", np.nan).astype("category")
    model, untrained = train(adata, epochs, device, protein_key="protein")
    weights = controls(adata, model, untrained, device)
    rows = []
    for name in ("trained", "untrained"):
        ranked = scc.tl.rank_attention(adata, "cell_type", attention=weights[name], modality="protein", n_top=13,
                                       key_added="")
        print(f"  -- top proteins per cell type, {name} network (contrast x100, lift = weight x n attended) --")
        for group, table in ranked.items():
            top = ", ".join(f"{f} ({c * 100:+.2f}, lift {lift:.2f})" for f, c, lift in
                            table[["feature", "contrast", "lift"]].head(3).itertuples(index=False))
            hit = ""
            if group in EXPECTED_PROTEINS:
                ranks = [int(np.flatnonzero(table["feature"] == p)[0]) + 1 for p in EXPECTED_PROTEINS[group]]
                hit = f"   expected {'/'.join(EXPECTED_PROTEINS[group])} at rank {min(ranks)}"
                rows.append({"network": name, "group": group, "best_rank": min(ranks)})
            print(f"  {group:>11}: {top}{hit}")
    summary = pd.DataFrame(rows).pivot(index="group", columns="network", values="best_rank")
    summary.insert(0, "expected", ["/".join(EXPECTED_PROTEINS[g]) for g in summary.index])
    print("  rank of the expected protein among 13 (1 = top):")
    print("    " + summary.to_string().replace("\n", "\n    "))
    flat = scc.tl.rank_attention(adata, "cell_type", attention=weights["uniform"], modality="protein", n_top=None,
                                 key_added="")
    biggest = max(float(np.abs(t["contrast"]).max()) for t in flat.values())
    detected = float(weights["uniform"].protein.getnnz() / np.prod(weights["uniform"].protein.shape))
    print(f"  uniform control: {detected:.1%} of cell x protein entries are non-zero, so uniform attention gives "
          f"max |contrast| x100 = {biggest * 100:.3f}: no protein ranking without learnt weights")
    scc.tl.rank_attention(adata, "cell_type", attention=weights["trained"], n_top=20)
    agreement = scc.tl.attention_marker_agreement(adata, n_top=20)
    print(f"  genes (placeholder names): overlap of top-20 attention vs expression markers, mean over "
          f"{len(agreement)} types: {agreement['overlap'].mean():.1f} (chance {agreement['expected'].mean():.2f})")
    if out_dir is not None:
        scc.pl.attention_heatmap(adata, "cell_type", attention=weights["trained"], modality="protein", n_top=2,
                                 save=out_dir / "cbmc_protein_attention.png", show=False)


def symphony(data_dir: Path, epochs: int | None, device: str, out_dir: Path | None) -> None:
    print("== symphony_pbmc_3tech: RNA, 3 chemistries ==")
    adata = ad.read_h5ad(data_dir / "symphony_pbmc_3tech" / "symphony_pbmc_3tech.h5ad")
    model, untrained = train(adata, epochs, device, batch_key="batch")
    weights = controls(adata, model, untrained, device)
    agreements, rankings = {}, {}
    for name, att in weights.items():
        key = "rank_attention" if name == "trained" else f"rank_attention_{name}"
        rankings[name] = scc.tl.rank_attention(adata, "cell_type", attention=att, n_top=20, key_added=key)
        agreements[name] = scc.tl.attention_marker_agreement(adata, attention_key=key, n_top=20)
    pts = adata.uns["rank_attention"]["pts"]  # the same gene universe attention_marker_agreement uses
    markers = scc.tl.expression_markers(adata, "cell_type", n_top=20, genes=list(pts.index[(pts > 0).any(axis=1)]))
    print("  -- top 6 genes per type: trained attention | uniform control | expression markers (wilcoxon) --")
    for group, table in rankings["trained"].items():
        print(f"  {group:>10} ({int((adata.obs['cell_type'] == group).sum()):>3} cells): "
              f"{', '.join(table['feature'].head(6))} | {', '.join(rankings['uniform'][group]['feature'].head(6))}"
              f" | {', '.join(markers[group][:6])}")
    for name in ("trained", "untrained"):
        lift = np.nanmean([t["lift"].mean() for t in rankings[name].values()])
        print(f"  mean lift of the top-20 genes, {name} network: {lift:.2f} (1 = uniform attention)")
    print(f"  -- overlap of top-20 attention genes with top-20 expression markers (scanpy wilcoxon), "
          f"{agreements['trained'].attrs['n_genes']} genes --")
    table = pd.DataFrame({"n_cells": adata.obs["cell_type"].value_counts(),
                          **{name: a["overlap"] for name, a in agreements.items()},
                          "chance": agreements["trained"]["expected"].round(2),
                          "pval trained": agreements["trained"]["pval"].map(lambda p: f"{p:.1e}")})
    print("    " + table.to_string().replace("\n", "\n    "))
    print("  mean overlap: " + ", ".join(f"{name} {table[name].mean():.2f}" for name in agreements)
          + f", chance {table['chance'].mean():.2f}")
    if out_dir is not None:
        scc.pl.attention_heatmap(adata, "cell_type", attention=weights["trained"], n_top=4,
                                 save=out_dir / "symphony_gene_attention.png", show=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="the shared real-data directory")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: by size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out-dir", type=Path, default=None, help="write the heatmaps here")
    parser.add_argument("--only", choices=["cbmc", "symphony"], default=None)
    args = parser.parse_args()
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    if args.only in (None, "cbmc"):
        cbmc(args.data_dir, args.epochs, args.device, args.out_dir)
    if args.only in (None, "symphony"):
        symphony(args.data_dir, args.epochs, args.device, args.out_dir)


if __name__ == "__main__":
    main()
