"""Embedding a query in the reference space: genes aligned by name, AdaBN statistics per unseen
query source (balanced for the query's predicted cell-type composition, :mod:`scconcerto.tools.label_shift`),
or fine-tuning of the query sources' adapters from the reference weights."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import torch

from .._errors import InputError
from ..nn.dsbn import MIN_ADAPT_CELLS
from ..tools.label_shift import balancing_weights, subsample_per_group, weighted_moments
from ..tools.label_transfer import label_counts, vote
from ..tools.neighbors import knn
from ._reference import FULL, RNA_ONLY, index_kind, _with_new_domains

if TYPE_CHECKING:
    from ..data.setup import PreparedCells
    from ..nn import ConcertoNetwork

#: Query cells per unseen source whose predicted types balance its AdaBN statistics (a seeded sample above it).
LABEL_SHIFT_CELLS = 20_000
#: Rounds of predict-then-reweight (benchmark label-transfer splits: the second round added up to 0.002 ACC,
#: a third nothing).
LABEL_SHIFT_ROUNDS = 2
#: Reference cells (a seeded sample above it) searched in the predict-and-reweight rounds: composition
#: estimates need no exhaustive search (10k queries among 100k cells: 2.5 s a round exact, 0.5 s among 20k).
LABEL_SHIFT_REFERENCE_CELLS = 20_000


class QueryEmbeddingMixin:
    """Embedding query cells in the reference space.

    Mixed into :class:`~scconcerto.model.Concerto` through :class:`~scconcerto.model._mapping.MappingMixin`.
    """

    # ------------------------------------------------------------------ fine-tuning
    def _finetuned_network(self, prepared: "PreparedCells", new_domains: list[int], epochs: int, seed: int,
                           device: str, options: dict) -> "ConcertoNetwork":
        """A copy of the network whose new sources' DSBN affine (adapters) is trained on the query.

        Unsupervised contrastive training as in pre-training, starting from the
        reference weights; every other parameter is frozen, so the reference
        sources' embedding (and the stored reference embedding) is unchanged.
        """
        from ..train import TrainConfig, fit

        net = copy.deepcopy(self.network).cpu()
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
        base = self.train_config.to_dict() if getattr(self, "train_config", None) else {}
        settings = {"batch_size": base.get("batch_size", 256), "lr": base.get("lr", 1e-3),
                    "max_genes": base.get("max_genes", 512), "gene_dropout": base.get("gene_dropout", 0.0),
                    "temperature": base.get("temperature", 0.1)}
        settings.update(options)
        config = TrainConfig(epochs=epochs, seed=seed, device=device, progress=False, **settings)
        net.train()  # Lightning keeps the modules' mode: dropout (the views) and batch statistics need training mode
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fit(net, prepared.cells, config)
        for hook in hooks:
            hook.remove()
        for p in net.parameters():
            p.requires_grad_(False)
        return net


    def _embed_query(self, adata: ad.AnnData, batch_key: str | None, use_protein: bool | str,
                     finetune_epochs: int, min_overlap: float, batch_size: int, device: str, seed: int,
                     finetune_options: dict | None, timings: dict[str, float], label_shift: bool = False,
                     k: int = 5, index: str = "auto", info: dict | None = None, query_species: str | None = None
                     ) -> tuple[np.ndarray, "PreparedCells", str]:
        """The query embedding in the reference space, its prepared cells, and the space (full / RNA-only)."""
        from ..train import embed_cells

        has_panel = bool(self.setup.proteins) and self.setup.protein_key in adata.obsm
        with_protein = has_panel if use_protein == "auto" else bool(use_protein) and has_panel
        if use_protein is True and not has_panel and self.setup.proteins:
            raise InputError(f"use_protein=True but the query has no `obsm[{self.setup.protein_key!r}]`.")
        space = FULL
        if self.setup.proteins and not with_protein:
            if not self._rna_only_reference(None, batch_size, device):
                raise InputError(
                    f"The query has no proteins (`obsm[{self.setup.protein_key!r}]`) but the model was trained on "
                    "RNA + protein, and its RNA-only reference embedding was not prepared, so the query cannot be "
                    "compared with the reference. Call `model.prepare_mapping(reference_adata)` with the AnnData "
                    "the model was trained on (then save the model; `scconcerto map --reference`), or give the "
                    "query its proteins.")
            space = RNA_ONLY
        prepared = self._prepare(adata, batch_key, min_overlap, what="the query", use_protein=with_protein,
                                 query_species=query_species)
        # RNA-only cells and fine-tuned sources never use a reference source's statistics
        prepared, new_domains = _with_new_domains(prepared, len(self.setup.sources),
                                                  all_new=space == RNA_ONLY or finetune_epochs > 0)
        self.last_alignment = prepared.alignment
        network = self.network
        if finetune_epochs > 0:
            t0 = time.perf_counter()
            network = self._finetuned_network(prepared, new_domains, finetune_epochs, seed, device,
                                              dict(finetune_options or {}))
            timings["finetune"] = time.perf_counter() - t0
        adapt = new_domains or None
        if label_shift and new_domains and finetune_epochs == 0:
            t0 = time.perf_counter()
            balanced = self._balanced_adabn(network, prepared.cells, new_domains, space, k, index, batch_size, device,
                                            seed)
            if balanced is not None:
                network, adapt = balanced[0], None
                if info is not None:
                    info["label_shift"] = balanced[1]
                timings["label_shift"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        embedding = embed_cells(network, prepared.cells, batch_size=batch_size, device=device, adapt_domains=adapt)
        timings["embed"] = time.perf_counter() - t0
        return embedding, prepared, space

    def _balanced_adabn(self, network: "ConcertoNetwork", cells: Any, new_domains: list[int], space: str, k: int,
                        index: str, batch_size: int, device: str, seed: int) -> tuple["ConcertoNetwork", dict] | None:
        """A copy of ``network`` whose BN statistics of the unseen sources ``new_domains`` are AdaBN moments
        reweighted to the reference's cell-type composition (:mod:`scconcerto.tools.label_shift`).

        The types are those predicted for (a sample of at most ``LABEL_SHIFT_CELLS`` cells of) each
        source by the vote of the first label key among (at most ``LABEL_SHIFT_REFERENCE_CELLS`` of) the
        reference cells, with plain AdaBN statistics at first and the
        reweighted ones after each of ``LABEL_SHIFT_ROUNDS`` rounds. ``None`` without a label key of
        at least two types.
        """
        from ..train import embed_hidden, teacher_hidden_states, with_new_domains

        key = next((key for key, names in self.setup.labels.items() if len(names) > 1), None)
        if key is None:
            return None
        ref_codes = self.reference.labels[key]
        n_types = len(self.setup.labels[key])
        counts = label_counts(ref_codes, n_types)
        composition = counts / max(int(counts.sum()), 1)
        rows = np.flatnonzero(np.isin(cells.domains, new_domains))
        rows = rows[subsample_per_group(cells.domains[rows], LABEL_SHIFT_CELLS, seed)]
        net = with_new_domains(network, new_domains).eval()
        hidden = teacher_hidden_states(net, cells, rows, batch_size, device)
        domains = cells.domains[rows]
        ref_emb = self._space_embedding(space)
        if len(ref_emb) > LABEL_SHIFT_REFERENCE_CELLS:
            sample = np.sort(np.random.default_rng(seed).choice(len(ref_emb), LABEL_SHIFT_REFERENCE_CELLS,
                                                                replace=False))
            ref_emb, ref_codes = ref_emb[sample], ref_codes[sample]
            search_in = ref_emb  # knn searches the sample exactly (faiss flat, or the GPU)
        else:
            search_in = self._reference_index(space, ref_emb, index_kind(len(ref_emb), cells.n_cells, index), seed)
        norm = net.teacher_tail.norm
        known = list(range(len(self.setup.sources)))
        weights = None
        for round_ in range(LABEL_SHIFT_ROUNDS + 1):
            for d in new_domains:
                mine = domains == d
                if mine.sum() < MIN_ADAPT_CELLS:  # no statistics of its own: the known sources' mean, as AdaBN
                    norm.use_mean_statistics(d, known)
                    continue
                mean, var = weighted_moments(hidden[mine], None if weights is None else weights[mine])
                norm.set_statistics(d, torch.from_numpy(mean), torch.from_numpy(var))
            if round_ == LABEL_SHIFT_ROUNDS:
                break
            pred = vote(knn(embed_hidden(net, hidden, domains), search_in, k=min(k, len(ref_emb))), ref_codes,
                        n_types).codes
            weights = np.ones(len(rows))
            for d in new_domains:
                mine = domains == d
                weights[mine] = balancing_weights(pred[mine], composition)
        info = {"label_key": key, "rounds": LABEL_SHIFT_ROUNDS, "cells": int(len(rows)),
                "max_weight": round(float(weights.max()), 3) if weights is not None and len(weights) else None}
        return net, info

