"""A mapped query built by hand (embed + kNN vote), with the output names query mapping writes.

Shared by the plotting, report and CLI tests, which load it by file path
(test folders are not packages).
The reference "UMAP" is the first two principal axes of the reference
embedding (fast and deterministic; the plots only need 2-d coordinates) and
the query is projected on the same axes.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

THRESHOLD = 0.7


def pca_axes(embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = embedding.mean(axis=0)
    _, _, vt = np.linalg.svd(embedding - mean, full_matrices=False)
    return mean, vt[:2].T


def build(model, sim, n_query: int = 200, with_protein: bool = True):
    """``(model copy with a reference UMAP, mapped query AnnData)``; ``model`` itself is not changed.

    The query is ``n_query`` cells of ``sim``'s ``batch_1`` presented as a new
    source ``tech_new`` (so the embedding uses AdaBN), mapped by a
    similarity-weighted 10-NN vote against the reference cells of ``batch_0``
    (a quarter of their labels shuffled, so that some votes split).
    """
    from scconcerto.data.setup import normalize_protein
    from scconcerto.tools import knn, vote

    query = sim[sim.obs["batch"] == "batch_1"][:n_query].copy()
    query.obs["batch"] = "tech_new"
    query.obsm["X_concerto"] = model.embed(query, device="cpu")
    ref = model.reference
    mean, axes = pca_axes(ref.embedding)
    mapped_model = copy.copy(model)
    mapped_model.reference = dataclasses.replace(ref, umap=((ref.embedding - mean) @ axes).astype(np.float32))
    query.obsm["X_umap_ref"] = ((query.obsm["X_concerto"] - mean) @ axes).astype(np.float32)
    voters = np.flatnonzero(ref.domains == 0)
    nn = knn(query.obsm["X_concerto"], ref.embedding[voters], k=10)
    cats = np.asarray(model.setup.labels["cell_type"], dtype=object)
    # a quarter of the voters' labels shuffled: votes split for some cells, so "unknown" cells exist to draw
    voter_labels = ref.labels["cell_type"][voters].copy()
    noisy = np.random.default_rng(1).random(len(voters)) < 0.25
    voter_labels[noisy] = np.random.default_rng(2).permutation(voter_labels[noisy])
    transfer = vote(nn, voter_labels, len(cats))
    query.obs["cell_type_pred"] = cats[transfer.codes]
    # the vote's share stands for both probabilities: the known-type one flags unknown cells, as mapping's does
    query.obs["cell_type_confidence"] = (transfer.confidence ** 2).astype(np.float32)
    query.obs["cell_type_known_prob"] = transfer.confidence.astype(np.float32)
    query.obs["cell_type_unknown"] = transfer.confidence < THRESHOLD
    query.uns["scconcerto_mapping"] = {"k": 10, "thresholds": {"cell_type": THRESHOLD},
                                       "classes": {"cell_type": [str(c) for c in cats]},
                                       "gene_overlap": {"n_shared": 300, "n_vocab": 300, "n_dataset": 300,
                                                        "overlap": 1.0},
                                       "timings": {"embed_seconds": 0.25, "vote_seconds": 0.01}}
    if with_protein:  # measured counts and an imputation that equals them up to noise
        rng = np.random.default_rng(0)
        raw = rng.poisson(lam=rng.uniform(1, 40, size=(query.n_obs, 3))).astype(np.float32)
        query.obsm["protein"] = raw
        query.uns["protein_names"] = np.array(["CD3", "CD19", "CD14"])
        query.obsm["protein_imputed"] = normalize_protein(raw, "clr") + rng.normal(0, 0.05, size=raw.shape)
        query.uns["protein_imputed_names"] = np.array(["CD3", "CD19", "CD14"])
        mapped_model.setup = dataclasses.replace(model.setup, protein_key="protein",
                                                 proteins=["CD3", "CD19", "CD14"], protein_norm="clr")
    return mapped_model, query
