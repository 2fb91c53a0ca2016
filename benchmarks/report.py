"""Writing results: one JSON and one markdown table per task, and ``SUMMARY.md``."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pandas as pd

from .tasks.base import TaskResult


#: What the benchmarks write (a run in progress changes them): not counted as uncommitted changes of the code.
OUTPUTS = (":(exclude)benchmarks/report", ":(exclude)benchmarks/*.md", ":(exclude)benchmarks/results")


def commit_id() -> str:
    """The repository's short commit id (``+ uncommitted changes`` when tracked files other than the benchmarks'
    reports differ), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUTS],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def generated_line() -> str:
    """The header line every benchmark report opens with: when, and at which commit (:func:`commit_id`)."""
    return f"Generated: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at commit {commit_id()}  "

#: Paper figures (SPEC.md section 6) shown beside ours where a task has one.
PAPER = {
    "label_transfer": "paper: cross-technology pancreas mapping (inDrop query, 4 other technologies "
                      "as reference) ACC 0.981 — a different, larger pancreas split than ours.",
    "unseen_type": "paper: PBMC160k without CD8 T cells, ACC 0.988 on the seen cells; "
                   "Fig. 2d shows seen/unseen confidence curves separating (no AUROC given).",
    "clustering": "paper: PBMC45k 10x, 11,377 cells, 2,000 HVG: Leiden ARI 0.750.",
    "overcorrection": "paper: human pancreas, beta cells only in CEL-Seq2: beta-cell ASW 0.34 (Harmony 0.29).",
    "speed": "paper: CPU only, reference 100 k cells 1.1 h, query 100 k cells 30 min; "
             "8 GPUs: reference 1 M cells 585 s, query 10 k cells 8 s.",
    "integration": "paper: no single scib table; compare methods here among themselves.",
    "integration_scib_metrics": "the same embeddings scored by the scib-metrics Benchmarker (raw scores; its "
                                "Total = 0.6 bio + 0.4 batch); no paper figure.",
    "cross_species": "paper: no cross-species figure. SIMULATED mouse queries built from human data (orthologs "
                     "renamed, non-1:1 genes dropped, per-gene species factor).",
    "unsupervised": "no label seen in training; scConcerto at the package defaults (one source per batch) "
                    "against 50-PC PCA of log-normalized values (scanpy defaults) and Harmony on it; mean ± sd "
                    "over seeds; role: development data (settings chosen there) or test data (only reported).",
    "imputation": "paper: PBMC160k, 80 % bi-modal reference, 20 % RNA-only query: Pearson r 0.966–0.998 for the "
                  "top 20 proteins (a larger panel and data set than cbmc_citeseq's 13 antibodies).",
}
#: Columns shown per task (the JSON keeps everything).
COLUMNS = {
    "label_transfer": ["split", "method", "acc", "macro_f1", "median_f1", "auroc_right_wrong", "n_wrong", "n_eval",
                       "n_genes", "fit_s", "map_s", "epochs"],
    "unseen_type": ["split", "method", "auroc", "seen_acc", "conf_seen_median", "conf_unseen_median", "n_unseen",
                    "epochs"],
    "integration": ["dataset", "method", "total", "bio", "batch", "nmi", "ari", "silhouette_label", "clisi",
                    "isolated_labels", "silhouette_batch", "ilisi", "kbet", "graph_connectivity", "epochs"],
    "integration_scib_metrics": ["dataset", "method", "Total", "Bio conservation", "Batch correction",
                                 "Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI", "BRAS",
                                 "iLISI", "KBET", "Graph connectivity", "PCR comparison"],
    "cross_species": ["split", "method", "acc", "macro_f1", "median_f1", "auroc_right_wrong", "n_wrong", "n_eval",
                      "n_genes", "fit_s", "map_s", "epochs"],
    "imputation": ["split", "method", "median_r", "min_r", "worst_protein", "n_ref", "n_query", "fit_s", "map_s",
                   "epochs"],
    "unsupervised": ["dataset", "role", "method", "LOO-batch 5-NN acc", "scib bio conservation",
                     "scib batch correction", "n_cells", "n_batches", "seeds", "seconds"],
    "clustering": ["dataset", "method", "best_ari", "median_ari", "best_nmi", "median_nmi"],
    "overcorrection": ["case", "method", "type_asw", "type_knn_purity", "n_type_cells"],
    "speed": ["n_cells", "method", "n_ref", "fit_s", "map_10k_s", "map_100k_s", "peak_rss_mb", "acc_100k",
              "fit_ratio_ours_over_peer", "map_10k_ratio_ours_over_peer", "map_100k_ratio_ours_over_peer",
              "epochs"],
}
#: The score averaged per method under each table (higher is better).
HEADLINE = {"label_transfer": ["acc", "macro_f1", "median_f1", "auroc_right_wrong"],
            "cross_species": ["acc", "macro_f1", "median_f1", "auroc_right_wrong"],
            "unseen_type": ["auroc"],
            "integration": ["total", "bio", "batch"], "clustering": ["best_ari", "median_ari"],
            "overcorrection": ["type_asw"], "imputation": ["median_r", "min_r"],
            "integration_scib_metrics": ["Total", "Bio conservation", "Batch correction"]}


def markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A pipe table (floats with 3 decimals) without the optional ``tabulate`` dependency."""
    if index:
        df = df.reset_index()

    def cell(v) -> str:
        if isinstance(v, float):
            if v != v:
                return ""
            return f"{v:.0f}" if abs(v) >= 100 and v == int(v) else f"{v:.3f}"
        return str(v).replace("|", "/")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def headline_means(df: pd.DataFrame, heads: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Each method's mean of each score in ``heads`` over the splits (first column) where *every* method has
    that score, so that all methods are averaged over the same splits; and how many splits each mean covers."""
    split = df.columns[0]
    methods = list(dict.fromkeys(df["method"]))
    means, counts = {}, {}
    for head in heads:
        wide = df.groupby([split, "method"], sort=False)[head].mean().unstack("method").reindex(columns=methods)
        common = wide.dropna(how="any")
        means[head] = common.mean(axis=0)
        counts[head] = len(common)
    return pd.DataFrame(means).rename_axis("method"), counts


def table(result: TaskResult) -> str:
    """The task's markdown: its table, a per-method mean, errors, skips and figures."""
    lines = [f"## {result.task}", ""]
    if result.task in PAPER:
        lines += [f"*{PAPER[result.task]}*", ""]
    if result.rows:
        df = pd.DataFrame(result.rows)
        cols = [c for c in COLUMNS.get(result.task, df.columns) if c in df.columns]
        if "error" in df.columns:
            cols.append("error")
        lines += [markdown(df[cols]), ""]
        heads = [c for c in HEADLINE.get(result.task, []) if c in df.columns]
        if heads:
            mean, counts = headline_means(df, heads)
            n = df.iloc[:, 0].nunique()
            fewer = {head: c for head, c in counts.items() if c < n}
            where = "" if not fewer else (
                " where every method has the score (" + ", ".join(f"{h}: {c}" for h, c in fewer.items())
                + " splits; a split where a method labels no cell wrong has no right-vs-wrong AUROC, a failed "
                "run no score)")
            lines += [f"Mean over {n} splits/data sets{where}:", "", markdown(mean, index=True), ""]
    lines += [t + "\n" for t in result.extra_tables]
    lines += [f"- note: {n}" for n in result.notes]
    lines += [f"- skipped: {s}" for s in result.skipped]
    lines += [f"- figure: [{f}]({f})" for f in result.figures]
    return "\n".join(lines) + "\n"


def write_task(out_dir: Path, result: TaskResult) -> None:
    """``<task>.json`` (all rows) and ``<task>.md`` (the table)."""
    from scconcerto._io import write_atomic_file

    payload = {"task": result.task, "rows": result.rows, "skipped": result.skipped, "notes": result.notes,
               "figures": result.figures, "extra_tables": result.extra_tables, "seed": result.seed}
    write_atomic_file(out_dir / f"{result.task}.json",
                      lambda p: p.write_text(json.dumps(payload, indent=1, default=float)), overwrite=True)
    write_atomic_file(out_dir / f"{result.task}.md", lambda p: p.write_text(table(result)), overwrite=True)


def write_summary(out_dir: Path, results: list[TaskResult], header: str) -> Path:
    """``SUMMARY.md``: the run's header then every task's table."""
    from scconcerto._io import write_atomic_file

    text = header + "\n" + "\n".join(table(r) for r in results)
    return write_atomic_file(out_dir / "SUMMARY.md", lambda p: p.write_text(text), overwrite=True)


def read_task(out_dir: Path, task: str) -> TaskResult | None:
    """A task's result back from ``<task>.json`` (``None`` when absent)."""
    path = Path(out_dir) / f"{task}.json"
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    return TaskResult(payload["task"], payload.get("rows", []), payload.get("skipped", []),
                      payload.get("figures", []), payload.get("notes", []), payload.get("extra_tables", []),
                      payload.get("seed"))
