"""Figures of the benchmark: confusion matrices, UMAP grids, speed plots (PNG, written atomically)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _save(fig, out_dir: Path, name: str) -> str:
    """Write ``fig`` to ``out_dir/figures/<name>.png`` atomically; return the path relative to ``out_dir``."""
    from scconcerto._io import write_atomic_file

    path = Path(out_dir) / "figures" / f"{_slug(name)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"),
                      overwrite=True)
    plt.close(fig)
    return str(path.relative_to(out_dir))


def confusion_matrices(out_dir: Path, split: str, truth: np.ndarray, predictions: dict[str, np.ndarray]) -> str:
    """Row-normalized confusion matrix of each method on one split, side by side."""
    classes = sorted(set(truth) | {p for v in predictions.values() for p in set(v)})
    index = {c: i for i, c in enumerate(classes)}
    fig, axes = plt.subplots(1, len(predictions), figsize=(3.2 * len(predictions), 3.4), squeeze=False)
    t = np.array([index[c] for c in truth])
    for ax, (method, pred) in zip(axes[0], predictions.items()):
        m = np.zeros((len(classes), len(classes)))
        np.add.at(m, (t, np.array([index[c] for c in pred])), 1)
        rows = m.sum(1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), classes if ax is axes[0][0] else [], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("true", fontsize=7)
    fig.suptitle(split, fontsize=9)
    return _save(fig, out_dir, f"confusion_{split}")


def umap_grid(out_dir: Path, dataset: str, embeddings: dict[str, np.ndarray], labels: np.ndarray,
              batches: np.ndarray, seed: int = 0) -> str:
    """UMAP of each method's embedding (rows), coloured by label and by batch (columns)."""
    import umap

    fig, axes = plt.subplots(len(embeddings), 2, figsize=(7, 3.2 * len(embeddings)), squeeze=False)
    for row, (method, emb) in zip(axes, embeddings.items()):
        xy = umap.UMAP(n_neighbors=15, random_state=seed, n_jobs=1).fit_transform(emb)
        for ax, values, what in ((row[0], labels, "label"), (row[1], batches, "batch")):
            cats, codes = np.unique(values, return_inverse=True)
            cmap = plt.get_cmap("tab20", max(len(cats), 2))
            for i, c in enumerate(cats):
                sel = codes == i
                ax.scatter(xy[sel, 0], xy[sel, 1], s=2, color=cmap(i), label=c, rasterized=True)
            ax.set_title(f"{method} · {what}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if method == next(iter(embeddings)):
                ax.legend(fontsize=5, markerscale=3, loc="best", frameon=False)
    fig.suptitle(dataset, fontsize=10)
    return _save(fig, out_dir, f"umap_{dataset}")


def speed_plot(out_dir: Path, rows: list[dict]) -> str:
    """Reference build time and 100k-cell query mapping time vs reference cells, log-log, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key, title in ((axes[0], "fit_s", "reference build (s)"), (axes[1], "map_100k_s", "map 100k query (s)")):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["n_cells"], r[key]) for r in rows if r["method"] == method and r.get(key))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("reference cells")
        ax.set_ylabel(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "speed_vs_cells")
