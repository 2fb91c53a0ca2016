"""Ablations of scConcerto's training on development data: one table per setting.

Usage::

    python -m benchmarks.ablations --data-dir ../shared/data --seeds 0,1,2 --out benchmarks/ABLATIONS.md
    python -m benchmarks.ablations --families views,temperature --seeds 0 --out /tmp/abl.md   # a subset
    python -m benchmarks.ablations --families temperature --datasets kang_ifnb_pbmc_scgen:donors --out /tmp/d.md

Every table varies one setting from the package defaults and keeps the others. Scores are
leave-one-batch-out 5-NN accuracy (:func:`scconcerto.metrics.cross_batch_accuracy`):

* **unsupervised** (every table): the model is trained on all cells without labels, one source per
  batch, and each batch's cells are voted by their 5 nearest cells of the other batches;
* **supervised** (the ``sources``, ``positive_sources``, ``positive_space``, ``positive_rank``, ``genes`` and ``labels``
  tables; real
  data, and the hard world where a table lists it): for each batch, the model is trained with labels on the other batches and the
  held-out batch is mapped (``map_query``: AdaBN statistics for its new source, balanced for its predicted composition);
  its cells are voted by their 5 nearest reference cells.

Only development data are used (:data:`benchmarks.tasks.data.DEVELOPMENT`): PBMC across chemistries
(symphony), a perturbed condition (Kang), clean cell lines (cellbench, gene-selection table only), a
harder simulation (six types in two lineages, three marker genes each; 400 genes), the hard world of
``scconcerto.datasets.simulate_hard`` at seed 1 (``simulated:world``, gene-selection, labels and positive-source
tables: 3,000 genes,
subtypes apart by a handful of genes; supervised too) and adversarial variants with
very different compositions per batch (``:skewed``: each batch keeps half of the types whole and
15 % of the others, the halves swapped between batches; ``:missing``: each batch lacks a third of the
types). Mean and standard deviation over seeds;
``Δ`` is the difference of the mean from the default's on the same data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .report import generated_line, markdown
from .tasks.data import role
from .tasks.donors import DONORS
from .tasks.exclusive import EXCLUSIVE, load_variant

log = logging.getLogger("benchmarks")

REAL = ("symphony_pbmc_3tech", "kang_ifnb_pbmc_scgen")
SIM = "simulated:hard"
#: The hard world of :func:`scconcerto.datasets.simulate_hard` (3,000 genes, 12 types in 4 lineages, three
#: reference batches) drawn at seed 1: development data with many uninformative genes. The scale benchmark's
#: test world is seed 0 (``docs/scale.md``).
WORLD = "simulated:world"
WORLD_SEED = 1
#: The real sets with composition variants (:func:`skewed`, :func:`missing`), and the donor sets with and without
#: a technical effect (:mod:`.tasks.donors`).
SKEWED = tuple(f"{d}:skewed" for d in REAL)
MISSING = tuple(f"{d}:missing" for d in REAL)
DONOR_SETS = (*DONORS, *(f"{d}-shift" for d in DONORS))
#: Where the positives' search is measured: the real and simulated sets, the donor sets and the sets whose
#: myeloid cells are all in one batch, with and without labels.
POSITIVE_SETS = (*REAL, SIM, *DONORS, *EXCLUSIVE, WORLD)
K = 5


@dataclass(frozen=True)
class Variant:
    """One column of an ablation: settings of the model (``model``), its network (``net``) and training
    (``train``), and how the input is normalized (``normalize``)."""

    name: str
    model: dict = field(default_factory=dict)
    net: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    normalize: str | None = None
    epochs_factor: float = 1.0

    def key(self) -> str:
        """The effective settings (the package defaults overridden by the variant's), as a string: variants
        that train the same model share their measurements."""
        base = package_defaults()
        return json.dumps({"model": {**base["model"], **self.model}, "net": {**base["net"], **self.net},
                           "train": {**base["train"], **self.train}, "normalize": self.normalize,
                           "epochs_factor": self.epochs_factor}, sort_keys=True)


def package_defaults() -> dict[str, dict]:
    """The defaults of ``Concerto(...)`` and ``Concerto.train(...)`` that the variants override."""
    import inspect

    from scconcerto import Concerto
    from scconcerto.train import TrainConfig

    init = inspect.signature(Concerto.__init__).parameters
    train = inspect.signature(Concerto.train).parameters
    return {"model": {"batch_key": "batch", "hvg": init["hvg"].default},
            "net": {k: init[k].default for k in ("dim", "out_dim", "dropout")} | {"student": "linear"},
            "train": {k: train[k].default for k in ("max_genes", "gene_dropout", "positive_neighbors",
                                                    "positive_space", "positive_rank", "positive_sources",
                                                    "balance", "source_norm", "label_weight")}
            | {"temperature": TrainConfig().temperature}}


DEFAULT = Variant("default")


@dataclass(frozen=True)
class Family:
    """One ablation table: its variants (the default first), data sets, and whether it has a supervised part."""

    name: str
    question: str
    variants: tuple[Variant, ...]
    datasets: tuple[str, ...] = (*REAL, SIM)
    supervised: bool = False
    unsupervised: bool = True
    mixing: bool = False
    #: Add a table of the technical shift each data set measures (read from the default variant's training).
    shifts: bool = False


def _sweep(label: str, part: str, key: str, values: tuple) -> tuple[Variant, ...]:
    """One variant per value of one setting (``part``: ``model``, ``net`` or ``train``)."""
    shown = {None: "all", 0.0: "0"}
    return tuple(Variant(f"{label} {shown.get(v, v)}", **{part: {key: v}}) for v in values)


FAMILIES = {f.name: f for f in (
    Family("views", "The views: neighbour positives, gene dropout, the teacher's gene cap, network dropout "
                    "(positive_neighbors 0: the paper's two views of the cell itself).",
           (*_sweep("positive_neighbors", "train", "positive_neighbors", (0, 5, 10, 30)),
            *_sweep("gene_dropout", "train", "gene_dropout", (0.0, 0.2, 0.4)),
            *_sweep("max_genes", "train", "max_genes", (256, 512, None)),
            *_sweep("dropout", "net", "dropout", (0.1, 0.3, 0.5)))),
    Family("sources", "Source normalization: one BN per source (DSBN) with plain or balanced statistics "
                      "(:mod:`scconcerto.data.composition`), or one BN for all cells (no batch key).",
           (Variant("DSBN, plain statistics", train={"balance": "none"}),
            Variant("DSBN, balanced by clusters", train={"balance": "clusters"}),
            Variant("DSBN, balanced by labels", train={"balance": "labels"}),
            Variant("one BN (no batch key)", model={"batch_key": None})),
           datasets=(*REAL, *SKEWED, SIM, f"{SIM}:skewed"), supervised=True),
    Family("positive_sources", "Where a cell's neighbour positives come from: its nearest cells of every source "
                               "(any, the default) or of its own source only (same; the package before "
                               "2026-12-07); one BN without a batch key searches all cells too.",
           (Variant("positive_sources same", train={"positive_sources": "same"}),
            Variant("one BN (no batch key)", model={"batch_key": None})),
           datasets=(*REAL, *SKEWED, SIM, f"{SIM}:skewed", *MISSING, f"{SIM}:missing", WORLD), supervised=True),
    Family("source_norm", "How the sources are batch-normalized: apart (one set of statistics per source), together "
                          "(one set), or 'auto', the default: together when mutually nearest cells of different sources "
                          "differ by little common shift (:mod:`scconcerto.data.source_effect`; the last table gives "
                          "each data set's shift). "
                          "``:donors``: one technology split into four donors of very different compositions; "
                          "``:donors-shift``: the same donors with a simulated gene-wise technical effect. With "
                          "labels (held-out batch mapped) the real sets normalize apart under 'auto', as before, so "
                          "the table is unsupervised only.",
           (Variant("source_norm source", train={"source_norm": "source"}),
            Variant("source_norm shared", train={"source_norm": "shared"})),
           datasets=("cellbench_5cl_celseq2_3plates", *REAL, *SKEWED, SIM, f"{SIM}:skewed", *MISSING, f"{SIM}:missing",
                     WORLD, *DONOR_SETS),
           mixing=True, shifts=True),
    Family("genes", "Gene selection: all genes against highly variable genes chosen on the reference ('auto': "
                    "2,000 when the reference has more than 5,000 genes, else all).",
           _sweep("hvg", "model", "hvg", ("auto", None, 2000, 1000)),
           datasets=(*REAL, "cellbench_5cl_celseq2_3plates", SIM, WORLD), supervised=True),
    Family("labels", "The supervised term of label-aware training (its weight; 0: contrastive only); "
                     "without labels it does nothing, so the table is supervised only.",
           _sweep("label_weight", "train", "label_weight", (0.0, 0.3, 1.0, 3.0)), datasets=(*REAL, WORLD),
           supervised=True,
           unsupervised=False),
    Family("temperature", "NT-Xent temperature.", _sweep("temperature", "train", "temperature", (0.05, 0.1, 0.2, 0.5))),
    Family("size", "Embedding and hidden widths.",
           (*_sweep("out_dim", "net", "out_dim", (64, 128, 256)), *_sweep("dim", "net", "dim", (64, 256)))),
    Family("epochs", "Training length (the default picks epochs by data size: about 60k cell visits on small "
                     "references).",
           tuple(Variant(f"epochs x{f:g}", epochs_factor=f) for f in (0.5, 1.0, 2.0))),
    Family("student", "The student's encoder: a dense layer on the sparse cell vector (the paper's) or an "
                      "attention encoder like the teacher's.",
           _sweep("student", "net", "student", ("linear", "attention"))),
    Family("learning_rate", "The optimizer's learning rate (Adam; the default 0.001).",
           (Variant("lr 0.0003", train={"lr": 3e-4}), Variant("lr 0.001"), Variant("lr 0.003", train={"lr": 3e-3})),
           datasets=(*REAL, SIM, *DONORS)),
    Family("batch_size", "Cells per training batch (the negatives of NT-Xent; at a fixed number of cell visits, "
                         "a larger batch takes fewer steps).",
           (Variant("batch_size 128", train={"batch_size": 128}), Variant("batch_size 256"),
            Variant("batch_size 512", train={"batch_size": 512})),
           datasets=(*REAL, SIM, *DONORS)),
    Family("positive_space", "Where neighbour positives are searched: the mean cosine similarity in the centred "
                             "(PCA of the normalized values) and the scaled (z-scored PCA) expression spaces "
                             "(centred, the default), in the uncentred truncated SVD and the scaled space (joint, "
                             "the default before 2026-12-08) or in the uncentred SVD alone (svd).",
           _sweep("positive_space", "train", "positive_space", ("centred", "joint", "svd")), datasets=POSITIVE_SETS,
           supervised=True),
    Family("positive_rank", "How a cell's neighbour positives are chosen: its nearest cells (nearest, the default) "
                            "or the ones of its 30 nearest cells that share most of its nearest cells (shared; "
                            "shared-nearest-neighbour ranking).",
           _sweep("positive_rank", "train", "positive_rank", ("nearest", "shared")), datasets=POSITIVE_SETS,
           supervised=True),
    Family("normalization", "Input normalization: log1p of counts per 10k (the package's) against log1p of "
                            "counts scaled to the median total (scanpy's default), given as log-normalized input; "
                            "on the real sets, their adversarial variants and the donor sets, not only on the "
                            "simulation.",
           (Variant("log1p counts per 10k"), Variant("log1p median-total", normalize="median")),
           datasets=("cellbench_5cl_celseq2_3plates", *REAL, *SKEWED, *MISSING, SIM, *DONOR_SETS)),
)}


# ------------------------------------------------------------------ data


def skewed(adata: ad.AnnData, keep: float = 0.15, seed: int = 0) -> ad.AnnData:
    """Each batch keeps half of the cell types whole and a fraction ``keep`` of the others, the halves
    alternating between batches (types ordered by abundance): compositions as different as the types allow."""
    rng = np.random.default_rng(seed)
    types = adata.obs["cell_type"].astype(str)
    order = {t: i for i, t in enumerate(types.value_counts().index)}
    t = types.map(order).to_numpy()
    b = pd.factorize(adata.obs["batch"].astype(str), sort=True)[0]
    rich = (t % 2) == (b % 2)
    kept = rich | (rng.random(adata.n_obs) < keep)
    return adata[kept].copy()


def missing(adata: ad.AnnData) -> ad.AnnData:
    """Each batch lacks a third of the cell types entirely (types ordered by abundance; type ``t`` is left out
    of batch ``b`` when ``t % 3 == b % 3``), the most abundant type excepted: types held by some sources only."""
    types = adata.obs["cell_type"].astype(str)
    order = {t: i for i, t in enumerate(types.value_counts().index)}
    t = types.map(order).to_numpy()
    b = pd.factorize(adata.obs["batch"].astype(str), sort=True)[0]
    absent = ((t % 3) == (b % 3)) & (t != 0)
    return adata[~absent].copy()


def hard_simulation(seed: int = 0) -> ad.AnnData:
    """Six types in two lineages, three marker genes per type and lineage, two batches (the package's
    simulator; development data)."""
    from scconcerto.datasets import simulate

    return _types_and_batches(simulate(n_cells=2400, n_genes=400, n_types=6, n_batches=2, n_major=2,
                                       markers_per_type=3, batch_effect=0.5, seed=seed))


def hard_world(n_cells: int = 3000) -> ad.AnnData:
    """The reference batches of the hard world at :data:`WORLD_SEED` (development data; 3,000 genes)."""
    from scconcerto.datasets import simulate_hard

    return _types_and_batches(simulate_hard(n_cells, seed=WORLD_SEED))


def _types_and_batches(a: ad.AnnData) -> ad.AnnData:
    """The simulated counts with only ``cell_type`` and ``batch`` (as categories) in ``obs``."""
    obs = pd.DataFrame({"cell_type": a.obs["cell_type"].astype(str).astype("category"),
                        "batch": a.obs["batch"].astype(str).astype("category")}, index=a.obs_names)
    return ad.AnnData(a.X, obs=obs, var=a.var[[]])


def dataset(name: str, data_dir: Path | None, cache: dict) -> tuple[ad.AnnData, bool] | None:
    """``(adata, is_counts)`` of a development data set or variant (cached)."""
    if name in cache:
        return cache[name]
    base = name.split(":", 1)[0]
    transform = {"skewed": skewed, "missing": missing}.get(name.rsplit(":", 1)[-1])
    if base == "simulated":
        adata = hard_world() if name.startswith(WORLD) else hard_simulation()
    else:
        if role(base) != "development":
            raise ValueError(f"{base} is not development data: ablations never look at test data")
        adata = load_variant(data_dir, base if transform else name, [])
        if adata is None:
            cache[name] = None
            return None
    if transform:
        adata = transform(adata)
    cache[name] = (adata, True)
    return cache[name]


def normalized(adata: ad.AnnData, how: str | None) -> ad.AnnData:
    """The input as the variant gives it: counts as they are, or log1p of counts scaled to the median total."""
    if how is None:
        return adata
    import scanpy as sc

    out = adata.copy()
    sc.pp.normalize_total(out)
    sc.pp.log1p(out)
    return out


# ------------------------------------------------------------------ one measurement


def _model(adata: ad.AnnData, variant: Variant, seed: int, label_key: str | None):
    from scconcerto import Concerto
    from scconcerto.nn import ConcertoNetwork

    options = {"batch_key": "batch", **variant.model}
    net = {k: v for k, v in variant.net.items() if k != "student"}
    model = Concerto(adata, label_key=label_key, seed=seed, **options, **net)
    if "student" in variant.net:
        import torch

        model.network_args["student"] = variant.net["student"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.network = ConcertoNetwork(model.setup.n_features, len(model.setup.sources), **model.network_args)
    return model


def _train(model, adata: ad.AnnData, variant: Variant, prepare_mapping: bool | dict = False) -> None:
    from scconcerto.model import default_epochs

    train = dict(variant.train)
    if train.get("balance") == "labels" and not model.setup.label_keys:
        train["balance"] = "clusters"  # unsupervised: no labels to balance with
    epochs = max(1, int(round(default_epochs(adata.n_obs) * variant.epochs_factor)))
    model.train(epochs=epochs, progress=False, prepare_mapping=prepare_mapping, **train)


def unsupervised_scores(adata: ad.AnnData, variant: Variant, seed: int,
                        mixing: bool = False) -> dict[str, float | None]:
    """Trained on all cells without labels: the embedding's leave-one-batch-out 5-NN accuracy (``acc``),
    with ``mixing`` how well its batches mix (``ilisi``, :func:`scconcerto.metrics.ilisi`: 1 perfect, 0 none),
    and the technical shift that training measured between the batches (``shift``,
    ``training_record.source_shift``: ``None`` when it measured none, so that a store tells "not measured" from
    "measured before the shift was kept")."""
    from scconcerto.metrics import cross_batch_accuracy, ilisi

    data = normalized(adata, variant.normalize)
    model = _model(data, variant, seed, None)
    _train(model, data, variant)
    batches = adata.obs["batch"].astype(str).to_numpy()
    out = {"acc": cross_batch_accuracy(model.reference.embedding, adata.obs["cell_type"].astype(str).to_numpy(),
                                       batches, k=K)}
    if mixing:
        out["ilisi"] = ilisi(model.reference.embedding, batches)
    shift = model.training_record.source_shift
    out["shift"] = None if shift is None else float(shift)
    return out


def harmony_mixing(adata: ad.AnnData, seed: int = 0) -> float:
    """iLISI of Harmony on 50 PCs of log-normalized values (the unsupervised benchmark's batch-removal peer)."""
    from scconcerto.metrics import ilisi

    from .tasks.unsupervised import harmony_embedding, pca_embedding

    batches = adata.obs["batch"].astype(str).to_numpy()
    return ilisi(harmony_embedding(pca_embedding(adata, True, seed), batches, seed), batches)


def supervised_accuracy(adata: ad.AnnData, variant: Variant, seed: int) -> float:
    """For each batch: trained with labels on the others, the batch mapped; 5-NN accuracy of its cells among
    the reference cells (cells of a type the reference lacks left out), pooled over batches."""
    from scconcerto.tools.label_transfer import vote
    from scconcerto.search.neighbors import knn

    data = normalized(adata, variant.normalize)
    batches = data.obs["batch"].astype(str).to_numpy()
    right = total = 0
    for held in sorted(set(batches)):
        ref, query = data[batches != held].copy(), data[batches == held].copy()
        model = _model(ref, variant, seed, "cell_type")
        _train(model, ref, variant, prepare_mapping={"umap": False})
        result = model.map_query(query, k=K, impute=False, place=False, min_overlap=0.0, seed=seed)
        names = model.setup.labels["cell_type"]
        codes = model.reference.labels["cell_type"]
        truth = query.obs["cell_type"].astype(str).to_numpy()
        seen = np.isin(truth, names)
        pred = vote(knn(np.asarray(result.embedding)[seen], model.reference.embedding, k=K), codes, len(names)).codes
        right += int(np.sum(np.asarray(names)[pred] == truth[seen]))
        total += int(seen.sum())
    return right / max(total, 1)


# ------------------------------------------------------------------ tables


def run_family(family: Family, seeds: list[int], data_dir: Path | None, data_cache: dict, store: dict,
               save, used: set | None = None, taken: set | None = None) -> list[dict]:
    """Every (mode, data set, variant, seed) of ``family``; results are looked up in / added to ``store``.
    The keys of the measurements read are added to ``used``, those measured in this call to ``taken``."""
    rows = []
    used = set() if used is None else used
    taken = set() if taken is None else taken
    variants = list(family.variants)
    if not any(v.key() == DEFAULT.key() for v in variants):
        variants.insert(0, DEFAULT)
    modes = [*(["unsupervised"] if family.unsupervised else []), *(["supervised"] if family.supervised else [])]
    for mode in modes:
        for name in family.datasets:
            if mode == "supervised" and name not in (*REAL, WORLD):  # one training per held-out batch
                continue
            got = dataset(name, data_dir, data_cache)
            if got is None:
                continue
            adata, _ = got
            for variant in variants:
                if mode == "unsupervised" and variant.train.get("balance") == "labels":
                    continue
                for seed in seeds:
                    key = f"{mode}|{name}|{seed}|{variant.key()}"
                    used.add(key)
                    mixing = family.mixing and mode == "unsupervised"
                    stale = (mixing and "ilisi" not in store.get(key, {})) or (
                        family.shifts and mode == "unsupervised" and variant.key() == DEFAULT.key()
                        and seed == seeds[0] and "shift" not in store.get(key, {}))
                    if key not in store or stale:
                        t0 = time.perf_counter()
                        scores = unsupervised_scores(adata, variant, seed, mixing) if mode == "unsupervised" \
                            else {"acc": supervised_accuracy(adata, variant, seed)}
                        store[key] = {**scores, "seconds": time.perf_counter() - t0}
                        taken.add(key)
                        save()
                        log.info("[ablations] %s %s %s %s seed %d: %.4f (%.0f s)", family.name, mode, name,
                                 variant.name, seed, store[key]["acc"], store[key]["seconds"])
                    shown = f"{variant.name} (default)" if variant.key() == DEFAULT.key() and variant is not DEFAULT \
                        else variant.name
                    rows.append({"family": family.name, "mode": mode, "dataset": name, "variant": shown,
                                 "default": variant.key() == DEFAULT.key(), "seed": seed, **store[key]})
            if family.mixing and mode == "unsupervised":
                key = f"harmony|{name}"
                if key not in store:
                    t0 = time.perf_counter()
                    store[key] = {"ilisi": harmony_mixing(adata), "seconds": time.perf_counter() - t0}
                    taken.add(key)
                    save()
                used.add(key)
                rows.append({"family": family.name, "mode": "mixing peer", "dataset": name,
                             "variant": "Harmony (50 PCs)", "default": False, "seed": 0, **store[key]})
    return rows


def family_table(family: Family, rows: list[dict]) -> str:
    """Markdown: one row per (mode, variant), one column per data set (mean ± sd), the mean over data sets and Δ."""
    df = pd.DataFrame(rows)
    if df.empty:
        return f"## {family.name}\n\nno data\n"
    lines = [f"## {family.name}", "", family.question, ""]
    parts = [(mode, part, "acc") for mode, part in df[df["mode"] != "mixing peer"].groupby("mode", sort=False)]
    if "ilisi" in df.columns and df["ilisi"].notna().any():
        parts.append(("unsupervised", df[df["ilisi"].notna()], "ilisi"))
    for mode, part, metric in parts:
        stats = part.groupby(["variant", "dataset"], sort=False)[metric].agg(["mean", "std", "count"])
        names = list(dict.fromkeys(part["dataset"]))
        default_name = part.loc[part["default"], "variant"].iloc[0] if part["default"].any() else None
        default = stats.loc[default_name]["mean"] if default_name is not None else None
        out = []
        for variant in dict.fromkeys(part["variant"]):
            row = {"variant": variant}
            deltas = []
            for name in names:
                if (variant, name) not in stats.index:
                    row[name] = ""
                    continue
                s = stats.loc[(variant, name)]
                sd = 0.0 if s["count"] < 2 or s["std"] != s["std"] else s["std"]
                row[name] = f"{s['mean']:.3f} ± {sd:.3f}"
                if default is not None and name in default.index:
                    deltas.append(s["mean"] - default[name])
            means = [stats.loc[(variant, n)]["mean"] for n in names if (variant, n) in stats.index]
            row["mean"] = f"{np.mean(means):.3f}" if means else ""
            row["Δ mean"] = f"{np.mean(deltas):+.3f}" if deltas and variant != default_name else ""
            row["seeds"] = int(stats.loc[variant]["count"].min()) if variant in stats.index.get_level_values(0) else 0
            out.append(row)
        what = f"LOO-batch {K}-NN accuracy" if metric == "acc" else \
            "batch mixing, iLISI of the embedding (1: batches fully mixed, 0: apart), Harmony on 50 PCs for scale"
        lines += [f"**{mode}** ({what}; all data sets are development data)", "", markdown(pd.DataFrame(out)), ""]
    return "\n".join(lines) + "\n"


def shift_table(rows: list[dict], seed: int) -> str:
    """Markdown: the technical shift each data set measured when the default variant (``source_norm="auto"``)
    trained on it at ``seed`` (:func:`unsupervised_scores`), and what ``auto`` made of it."""
    from scconcerto.data.source_effect import SHARED_BELOW

    out = [{"data set": r["dataset"], "shift": f"{r['shift']:.3f}",
            "auto normalizes": "together (shared)" if r["shift"] < SHARED_BELOW else "apart (source)"}
           for r in rows if r["mode"] == "unsupervised" and r["default"] and r["seed"] == seed
           and r.get("shift") is not None]
    return "\n".join([f"**the shift each data set measures** (seed {seed}; shared below {SHARED_BELOW})", "",
                      markdown(pd.DataFrame(out)), ""]) + "\n"


def defaults_line() -> str:
    """The package defaults every table starts from."""
    base = package_defaults()
    return ", ".join(f"{k}={v!r}" for part in ("model", "net", "train") for k, v in base[part].items()
                     if k != "batch_key")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablations", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=os.environ.get("SCCONCERTO_DATA"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/ABLATIONS.md"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    p.add_argument("--no-supervised", action="store_true", help="unsupervised tables only")
    p.add_argument("--datasets", default=None,
                   help="comma-separated development data sets that replace every family's own (e.g. the donor sets)")
    p.add_argument("--store", type=Path, default=None,
                   help="JSON file of finished measurements: an interrupted run resumes from it")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (as benchmarks.run)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .run import _quiet_logs, limit_threads, thread_settings_restored

    args = parse_args(argv)
    with thread_settings_restored():
        _quiet_logs()
        limit_threads(args.threads)
        names = [f.strip() for f in args.families.split(",") if f.strip()]
        if unknown := [n for n in names if n not in FAMILIES]:
            print(f"error: unknown famil(ies) {unknown}; choose from {list(FAMILIES)}", file=sys.stderr)
            return 2
        seeds = [int(s) for s in args.seeds.split(",")]
        chosen = None if args.datasets is None else tuple(d.strip() for d in args.datasets.split(",") if d.strip())
        if chosen is not None and (tested := [d for d in chosen if role(d) != "development"]):
            print(f"error: {tested} are test data; ablations choose settings on development data only", file=sys.stderr)
            return 2
        store: dict = {}
        if args.store is not None and args.store.exists():
            store = json.loads(args.store.read_text())

        def save() -> None:
            if args.store is not None:
                from scconcerto._io import write_atomic_file

                write_atomic_file(args.store, lambda p: p.write_text(json.dumps(store)), overwrite=True)

        start = time.perf_counter()
        data_cache: dict = {}
        used: set = set()
        taken: set = set()
        sections = []
        for name in names:
            family = FAMILIES[name]
            if args.no_supervised:
                family = replace(family, supervised=False)
            if chosen is not None:
                family = replace(family, datasets=chosen)
            rows = run_family(family, seeds, args.data_dir, data_cache, store, save, used, taken)
            sections.append(family_table(family, rows))
            if family.shifts:
                sections.append(shift_table(rows, seeds[0]))
        header = [
            "# scConcerto ablations (development data only)", "",
            generated_line(),
            f"Command: `python -m benchmarks.ablations {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
            f"Seeds: {seeds}; package defaults: {defaults_line()}  ",
            f"Machine: {os.cpu_count()} CPU cores, shared with other jobs; wall time "
            f"{math.ceil(time.perf_counter() - start)} s; {len(taken)} measurements taken in this "
            f"run, {len(used - taken)} read from the store of an earlier run of the same command "
            f"({sum(store[k]['seconds'] for k in used):.0f} s of training and scoring in all)", "",
            "Every table" + __doc__.split("Every table", 1)[1].rstrip(), ""]
        from scconcerto._io import write_atomic_file

        write_atomic_file(args.out, lambda p: p.write_text("\n".join(header) + "\n" + "\n".join(sections)),
                          overwrite=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
