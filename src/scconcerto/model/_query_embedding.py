"""Embedding a query in the reference space: genes aligned by name, AdaBN statistics per unseen
query source (balanced for the query's predicted cell-type composition, :mod:`scconcerto.tools.label_shift`),
or fine-tuning of the query sources' adapters from the reference weights.

The groups whose composition is balanced are those the reference's own statistics were balanced by in
training (labels or clusters, :mod:`scconcerto.data.composition`), each query source weighted to the
same equal shares of its groups; a model trained without balancing uses its first label key and the
reference's composition. Query cells' groups are predicted by a vote of their nearest reference cells."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import torch

from .._errors import InputError
from .._random import sample_rows
from ..tools.label_shift import query_balance_weights, set_balanced_moments, subsample_per_group
from ..tools.label_transfer import vote
from ..search.neighbors import knn
from ._reference import FULL, RNA_ONLY, ReferenceSearch, new_query_domains, rna_only_reference

if TYPE_CHECKING:
    from ..data.setup import PreparedCells
    from ..nn import ConcertoNetwork
    from ._mapping import MapOptions

#: Query cells per unseen source whose predicted types balance its AdaBN statistics (a seeded sample above it).
LABEL_SHIFT_CELLS = 20_000
#: Rounds of predict-then-reweight.
LABEL_SHIFT_ROUNDS = 2
#: Reference cells (a seeded sample above it) searched in the predict-and-reweight rounds: composition
#: estimates need no exhaustive search.
LABEL_SHIFT_REFERENCE_CELLS = 20_000


def embed_query(model: Any, search: ReferenceSearch, adata: ad.AnnData, options: "MapOptions",
                timings: dict[str, float], k: int = 5, info: dict | None = None
                ) -> tuple[np.ndarray, "PreparedCells", str]:
    """The query embedding in the reference space, its prepared cells, and the space (full / RNA-only).

    ``options`` are mapping's (its ``seed`` resolved); ``k`` reference cells vote for each query cell's group
    in the balanced AdaBN rounds, whose summary goes into ``info['label_shift']``.
    """
    from ..train import embed_cells

    setup, o = model.setup, options
    has_panel = bool(setup.proteins) and setup.protein_key in adata.obsm
    with_protein = has_panel if o.use_protein == "auto" else bool(o.use_protein) and has_panel
    if o.use_protein is True and not has_panel and setup.proteins:
        raise InputError(f"use_protein=True but the query has no `obsm[{setup.protein_key!r}]`.")
    space = FULL
    if setup.proteins and not with_protein:
        if not rna_only_reference(model, None, o.batch_size, o.device):
            raise InputError(
                f"The query has no proteins (`obsm[{setup.protein_key!r}]`) but the model was trained on "
                "RNA + protein, and its RNA-only reference embedding was not prepared, so the query cannot be "
                "compared with the reference. Call `model.prepare_mapping(reference_adata)` with the AnnData "
                "the model was trained on (then save the model; `scconcerto map --reference`), or give the "
                "query its proteins.")
        space = RNA_ONLY
    prepared = model._prepare(adata, o.batch_key, o.min_overlap, what="the query", use_protein=with_protein,
                              query_species=o.query_species)
    # RNA-only cells and fine-tuned sources never use a reference source's statistics
    prepared, new_domains = new_query_domains(prepared, len(setup.sources),
                                              all_new=space == RNA_ONLY or o.finetune_epochs > 0)
    model.last_alignment = prepared.alignment
    network = model.network
    if o.finetune_epochs > 0:
        t0 = time.perf_counter()
        network = _finetuned_network(model, search, prepared, new_domains, o, space)
        timings["finetune"] = time.perf_counter() - t0
    adapt = new_domains or None
    embedding = None
    if o.label_shift and new_domains and o.finetune_epochs == 0:
        t0 = time.perf_counter()
        balanced = _balanced_adabn(model, search, network, prepared.cells, new_domains, space, k, o)
        if balanced is not None:
            network, adapt = balanced[0], None
            if info is not None:
                info["label_shift"] = balanced[1]
            if len(balanced[2]) == prepared.cells.n_cells:  # every cell was balanced: no second forward pass
                embedding = balanced[3]
            timings["label_shift"] = time.perf_counter() - t0
    if embedding is None:
        t0 = time.perf_counter()
        embedding = embed_cells(network, prepared.cells, batch_size=o.batch_size, device=o.device,
                                adapt_domains=adapt)
        timings["embed"] = time.perf_counter() - t0
    return embedding, prepared, space


def _finetuned_network(model: Any, search: ReferenceSearch, prepared: "PreparedCells", new_domains: list[int],
                       options: "MapOptions", space: str = FULL) -> "ConcertoNetwork":
    """A copy of the network whose new sources' DSBN affine (adapters) is trained on the query.

    Unsupervised contrastive training as in pre-training, starting from the
    reference weights; every other parameter is frozen, so the reference
    sources' embedding (and the stored reference embedding) is unchanged. A model trained with
    balanced statistics balances the query sources' training statistics alike, by the groups
    predicted for their cells under plain AdaBN.
    """
    from ..train import TrainConfig, embed_cells, fit

    seed, device = options.seed, options.device
    net = copy.deepcopy(model.network).cpu()
    n_known = net.teacher_tail.norm.n_domains
    needed = max(new_domains) + 1 - n_known
    for p in net.parameters():
        p.requires_grad_(False)
    hooks = []
    for norm in net.domain_norms():
        norm.add_domains(needed)
        keep = torch.zeros(norm.n_domains, 1)
        keep[n_known:] = 1.0
        for p in (norm.weight, norm.bias):  # only the rows of the query's sources learn
            p.requires_grad_(True)
            hooks.append(p.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype)))
    base = model.train_config.to_dict() if model.train_config else {}
    settings = {"batch_size": base.get("batch_size", 256), "lr": base.get("lr", 1e-3),
                "max_genes": base.get("max_genes", 512), "gene_dropout": base.get("gene_dropout", 0.0),
                "temperature": base.get("temperature", 0.1)}
    settings.update(options.finetune_options or {})
    config = TrainConfig(epochs=options.finetune_epochs, seed=seed, device=device, progress=False, **settings)
    spec = _balance_spec(model)
    if spec is not None and spec[2] == "equal":  # the query sources balanced as the reference's were
        rows = np.flatnonzero(np.isin(prepared.cells.domains, new_domains))
        emb = embed_cells(model.network, prepared.cells, batch_size=1024, device=device,
                          adapt_domains=new_domains)[rows]
        pred = _predicted_groups(search, emb, spec, space, 5, "auto", seed, len(rows))
        weights = np.ones(prepared.cells.n_cells, dtype=np.float32)
        weights[rows] = query_balance_weights(pred, prepared.cells.domains[rows], spec)
        prepared.cells.balance_weights = weights
    net.train()  # Lightning keeps the modules' mode: dropout (the views) and batch statistics need training mode
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fit(net, prepared.cells, config)
    for hook in hooks:
        hook.remove()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _balance_spec(model: Any) -> tuple[np.ndarray, int, str] | None:
    """What query sources are balanced by: ``(reference group codes, number of groups, target)``.

    A model trained with balanced statistics: its training groups, and ``"equal"`` shares of each
    source's groups (as its reference sources); otherwise the first label key with two or more types
    and the reference's composition (``"reference"``); ``None`` without either.
    """
    balanced = model.train_config is not None and model.train_config.balance != "none"
    if balanced and model.reference.balance_groups is not None:
        codes = np.asarray(model.reference.balance_groups, dtype=np.int64)
        codes = np.where(codes < 0, codes.max(initial=-1) + 1, codes)  # unlabeled cells: a group of their own
        return codes, int(codes.max(initial=0)) + 1, "equal"
    key = next((key for key, names in model.setup.labels.items() if len(names) > 1), None)
    if key is None:
        return None
    return model.reference.labels[key], len(model.setup.labels[key]), "reference"


def _predicted_groups(search: ReferenceSearch, emb: np.ndarray, spec: tuple[np.ndarray, int, str], space: str,
                      k: int, index: str, seed: int, n_query: int) -> np.ndarray:
    """The balancing group of each query cell embedded as ``emb``: the vote of its ``k`` nearest reference
    cells (searched exactly among a seeded sample of ``LABEL_SHIFT_REFERENCE_CELLS`` on large references,
    unless the search is approximate anyway, e.g. with an index stored with the reference)."""
    ref_codes, n_groups, _ = spec
    ref_emb = search.embedding(space)
    kind = search.kind(space, len(ref_emb), n_query, index)
    if kind == "flat" and len(ref_emb) > LABEL_SHIFT_REFERENCE_CELLS:
        sample = sample_rows(len(ref_emb), LABEL_SHIFT_REFERENCE_CELLS, seed)
        ref_emb, ref_codes = ref_emb[sample], ref_codes[sample]
        search_in = ref_emb  # knn searches the sample exactly
    else:
        search_in = search.index(space, ref_emb, kind, seed)
    return vote(knn(emb, search_in, k=min(k, len(ref_emb))), ref_codes, n_groups).codes


def _balanced_adabn(model: Any, search: ReferenceSearch, network: "ConcertoNetwork", cells: Any,
                    new_domains: list[int], space: str, k: int, options: "MapOptions"
                    ) -> tuple["ConcertoNetwork", dict, np.ndarray, np.ndarray] | None:
    """A copy of ``network`` whose BN statistics of the unseen sources ``new_domains`` are AdaBN moments
    reweighted to balance their predicted composition (:func:`_balance_spec`).

    The groups are those predicted for (a sample of at most ``LABEL_SHIFT_CELLS`` cells of) each
    source by the vote of (at most ``LABEL_SHIFT_REFERENCE_CELLS`` of) the reference cells, with plain
    AdaBN statistics at first and the reweighted ones after each of ``LABEL_SHIFT_ROUNDS`` rounds; the
    moments are the DSBN's own weighted moments. Returns the network, what was done, the balanced rows of
    ``cells`` and their embedding by the returned network; ``None`` when there is nothing to balance by.
    """
    from ..train import embed_hidden, teacher_hidden_states, with_new_domains

    spec = _balance_spec(model)
    if spec is None:
        return None
    seed = options.seed
    rows = np.flatnonzero(np.isin(cells.domains, new_domains))
    rows = rows[subsample_per_group(cells.domains[rows], LABEL_SHIFT_CELLS, seed)]
    net = with_new_domains(network, new_domains).eval()
    hidden = teacher_hidden_states(net, cells, rows, options.batch_size, options.device)
    domains = cells.domains[rows]
    known = list(range(len(model.setup.sources)))

    def reweight() -> np.ndarray:
        pred = _predicted_groups(search, embed_hidden(net, hidden, domains), spec, space, k, options.index, seed,
                                 cells.n_cells)
        return query_balance_weights(pred, domains, spec)

    weights = set_balanced_moments(net.teacher_tail.norm, hidden, domains, new_domains, known, reweight,
                                   LABEL_SHIFT_ROUNDS)
    key = next((key for key, names in model.setup.labels.items() if len(names) > 1), None)
    by = model.train_config.balance if spec[2] == "equal" else "labels"  # "labels" or "clusters"
    info = {"label_key": key if by == "labels" else None, "groups": by, "target": spec[2],
            "rounds": LABEL_SHIFT_ROUNDS, "cells": int(len(rows)),
            "max_weight": round(float(weights.max()), 3) if weights is not None and len(weights) else None}
    return net, info, rows, embed_hidden(net, hidden, domains)
