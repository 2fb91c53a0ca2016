"""Query-to-reference mapping on simulated data with a known answer (labels, unseen type, proteins)."""

import copy
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from sklearn.metrics import roc_auc_score

from scconcerto import Concerto, InputError
from scconcerto._io import write_h5ad
from scconcerto.datasets import simulate
from scconcerto.metrics import annotation_report
from scconcerto.model._persistence import model_config

UNSEEN = "type_0"


def pca_stub(model: Concerto) -> None:
    """Store 2-D PCA coordinates as the reference UMAP (tests skip fitting a real UMAP)."""
    emb = model.reference.embedding
    centred = emb - emb.mean(0)
    model.reference.umap = (centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T).astype(np.float32)


@pytest.fixture(scope="module")
def held_out():
    """Reference: batches 0-1 without type_0; query: batch 2 with all types (type_0 unseen)."""
    adata = simulate(900, 300, n_types=4, n_batches=3, seed=0)
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    ref = adata[~is_query & (adata.obs["cell_type"] != UNSEEN).to_numpy()].copy()
    query = adata[is_query].copy()
    model = Concerto(ref, batch_key="batch", label_key="cell_type").train(epochs=30, lr=3e-3, progress=False,
                                                                         device="cpu")
    pca_stub(model)
    model.prepare_mapping(umap=False)
    return model, query


@pytest.fixture(scope="module")
def mapped(held_out):
    model, query = held_out
    query = query.copy()
    result = model.map_query(query, device="cpu")
    return model, query, result


def test_label_transfer_recovers_labels_of_a_held_out_batch(mapped):
    _, query, _ = mapped
    seen = (query.obs["cell_type"] != UNSEEN).to_numpy()
    report = annotation_report(query.obs["cell_type"].astype(str).to_numpy()[seen],
                               query.obs["cell_type_pred"].astype(str).to_numpy()[seen])
    assert report["accuracy"] >= 0.95 and report["macro_f1"] >= 0.95


def test_a_type_missing_from_the_reference_is_told_apart(mapped):
    _, query, _ = mapped
    seen = (query.obs["cell_type"] != UNSEEN).to_numpy()
    assert roc_auc_score(seen, query.obs["cell_type_known_prob"].to_numpy()) > 0.8
    assert roc_auc_score(seen, query.obs["cell_type_confidence"].to_numpy()) > 0.8
    unknown = query.obs["cell_type_unknown"].to_numpy()
    assert unknown[~seen].mean() > unknown[seen].mean() + 0.3


def test_outputs_use_the_stable_names(mapped, tmp_path):
    model, query, result = mapped
    assert query.obsm["X_concerto"].shape == (query.n_obs, 128)
    np.testing.assert_allclose(np.linalg.norm(query.obsm["X_concerto"], axis=1), 1.0, rtol=1e-5)
    assert query.obsm["X_umap_ref"].shape == (query.n_obs, 2)
    assert list(query.obs["cell_type_pred"].cat.categories) == model.setup.labels["cell_type"]
    assert query.obs["cell_type_unknown"].dtype == bool
    conf = query.obs["cell_type_confidence"].to_numpy()
    known = query.obs["cell_type_known_prob"].to_numpy()
    assert conf.min() >= 0 and conf.max() <= 1 and (conf <= known + 1e-6).all()  # P(right) = P(right | seen) P(seen)
    info = query.uns["scconcerto_mapping"]
    decision = model.label_model("cell_type")
    assert info["gene_overlap"]["overlap"] == 1.0 and info["k"] == {"cell_type": decision.posterior.k}
    assert info["index"] == "flat" and info["calibrated"] == {"cell_type": True}
    assert info["thresholds"]["cell_type"] == pytest.approx(decision.threshold, abs=1e-6)
    np.testing.assert_array_equal(query.obs["cell_type_unknown"].to_numpy(), known < decision.threshold)
    assert info["adabn_sources"] == ["batch_2"] and info["timings"]["total"] > 0
    # the posterior: one column per reference label, rows summing to one, its best label the prediction
    proba = query.obsm["cell_type_proba"]
    assert info["classes"]["cell_type"] == model.setup.labels["cell_type"]
    assert proba.shape == (query.n_obs, len(model.setup.labels["cell_type"]))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    names = np.asarray(info["classes"]["cell_type"])
    np.testing.assert_array_equal(names[proba.argmax(axis=1)], query.obs["cell_type_pred"].astype(str).to_numpy())
    np.testing.assert_array_equal(result.probabilities["cell_type"], proba)
    np.testing.assert_array_equal(result.predictions["cell_type"]["unknown"].to_numpy(),
                                  query.obs["cell_type_unknown"].to_numpy())
    write_h5ad(query, tmp_path / "mapped.h5ad")  # every output is writable to .h5ad


def test_gene_order_and_extra_genes_do_not_change_the_result(held_out, mapped):
    model, query = held_out[0], mapped[1]
    order = np.random.default_rng(0).permutation(query.n_vars)
    shuffled = query[:, order].copy()
    model.map_query(shuffled, device="cpu")
    np.testing.assert_allclose(shuffled.obsm["X_concerto"], query.obsm["X_concerto"], atol=1e-5)
    assert np.array_equal(shuffled.obs["cell_type_pred"].to_numpy(), query.obs["cell_type_pred"].to_numpy())

    # log-normalized input (no library size to recompute): extra genes with values are simply ignored
    lognorm = query.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    extra = sp.random(query.n_obs, 40, density=0.3, format="csr", random_state=1, dtype=np.float32) * 3
    wider = ad.AnnData(sp.hstack([lognorm.X, extra], format="csr"), obs=query.obs.copy(),
                       var=pd.DataFrame(index=list(query.var_names) + [f"extra_{i}" for i in range(40)]))
    wider = wider[:, np.random.default_rng(1).permutation(wider.n_vars)].copy()
    model.map_query(lognorm, device="cpu")
    model.map_query(wider, device="cpu")
    np.testing.assert_allclose(wider.obsm["X_concerto"], lognorm.obsm["X_concerto"], atol=1e-5)
    assert np.array_equal(wider.obs["cell_type_pred"].to_numpy(), lognorm.obs["cell_type_pred"].to_numpy())
    np.testing.assert_allclose(wider.obs["cell_type_confidence"], lognorm.obs["cell_type_confidence"], atol=1e-5)
    n_vocab = len(model.setup.genes)  # the reference's genes with counts
    assert wider.uns["scconcerto_mapping"]["gene_overlap"] == {"n_shared": n_vocab, "n_vocab": n_vocab,
                                                               "n_dataset": 340, "overlap": 1.0}


def test_a_query_with_no_shared_genes_is_a_clear_error(held_out):
    model, query = held_out
    other = query[:20].copy()
    other.var_names = [f"ENSG{i:011d}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match=rf"Only 0 of the model's {len(model.setup.genes)} genes .*Ensembl"):
        model.map_query(other, device="cpu")


def test_mapping_and_finetuning_leave_the_reference_unchanged(held_out, mapped):
    model, query = held_out[0], mapped[1].copy()
    embedding = model.reference.embedding.copy()
    weights = {k: v.clone() for k, v in model.network.state_dict().items()}
    model.map_query(query, finetune_epochs=2, device="cpu", place=False)
    np.testing.assert_array_equal(model.reference.embedding, embedding)
    state = model.network.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    assert query.uns["scconcerto_mapping"]["finetune_epochs"] == 2
    assert not np.allclose(query.obsm["X_concerto"], mapped[1].obsm["X_concerto"], atol=1e-4)  # it did train
    seen = (query.obs["cell_type"] != UNSEEN).to_numpy()
    pred, truth = query.obs["cell_type_pred"].astype(str), query.obs["cell_type"].astype(str)
    assert np.mean((pred == truth).to_numpy()[seen]) >= 0.95


def test_reject_and_explicit_thresholds(held_out, mapped):
    model = held_out[0]
    query = mapped[1].copy()
    model.map_query(query, reject=True, place=False, device="cpu")
    np.testing.assert_array_equal(query.obs["cell_type_unknown"].to_numpy(), mapped[1].obs["cell_type_unknown"])
    unknown = query.obs["cell_type_unknown"].to_numpy()
    assert unknown.any() and "unknown" in query.obs["cell_type_pred"].cat.categories
    assert np.array_equal(query.obs["cell_type_pred"].to_numpy() == "unknown", unknown)
    model.map_query(query, unknown_threshold=0.0, place=False, device="cpu")
    assert not query.obs["cell_type_unknown"].any()
    model.map_query(query, unknown_threshold={"cell_type": 1.0}, place=False, device="cpu")
    assert query.obs["cell_type_unknown"].all() and query.uns["scconcerto_mapping"]["thresholds"]["cell_type"] == 1.0
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        model.map_query(query, unknown_threshold=2.0, place=False, device="cpu")


def test_small_query_maps_without_the_density_ratio(held_out, mapped):
    model = held_out[0]
    small = mapped[1][:10].copy()
    model.map_query(small, place=False, device="cpu")
    decision = model.label_model("cell_type")
    used = small.uns["scconcerto_mapping"]["thresholds"]["cell_type"]
    assert used == pytest.approx(decision.threshold_small, abs=1e-6) and decision.threshold_small != decision.threshold
    # the labels do not depend on the query's size: the same cells mapped with the rest get the same labels
    np.testing.assert_array_equal(small.obs["cell_type_pred"].to_numpy(), mapped[1].obs["cell_type_pred"][:10])


def test_mapping_leaves_the_model_unchanged(held_out, mapped):
    """Mapping reads the prepared reference and stores nothing into the model, whatever the options."""
    model, query = held_out[0], mapped[1]
    config = json.dumps(model_config(model), sort_keys=True)
    arrays = {name: value.copy() for name, value in model.reference.to_tensors().items()}
    for options in ({"k": 7}, {"index": "ivf"}, {"adjust_proportions": True}, {"reject": True}):
        model.map_query(query.copy(), place=False, device="cpu", **options)
    assert json.dumps(model_config(model), sort_keys=True) == config
    after = model.reference.to_tensors()
    assert arrays.keys() == after.keys()
    assert all(np.array_equal(arrays[name], after[name]) for name in arrays)


def test_query_proportions_are_estimated_and_move_the_posterior_at_most_half_way(held_out, mapped):
    """A query made mostly of one type: its estimated share of that type rises above the reference's, but at
    most half-way toward the query's own share, and that type's probabilities never fall."""
    model, query = held_out[0], mapped[1]
    truth = query.obs["cell_type"].astype(str).to_numpy()
    rows = np.concatenate([np.flatnonzero(truth == "type_1"), np.flatnonzero(truth != "type_1")[:10]])
    skewed = query[np.sort(rows)].copy()
    plain, adjusted = skewed.copy(), skewed.copy()
    model.map_query(plain, place=False, device="cpu")
    model.map_query(adjusted, place=False, device="cpu", adjust_proportions=True)
    report = adjusted.uns["scconcerto_mapping"]["label_proportions"]["cell_type"]
    i = report["labels"].index("type_1")
    share = float(np.mean(truth[np.sort(rows)] == "type_1"))
    assert report["reference"][i] < report["estimated"][i] <= (report["reference"][i] + share) / 2 + 0.02
    c = model.setup.labels["cell_type"].index("type_1")
    assert (adjusted.obsm["cell_type_proba"][:, c] >= plain.obsm["cell_type_proba"][:, c] - 1e-6).all()
    assert "label_proportions" not in plain.uns["scconcerto_mapping"]


def test_save_and_load_keep_what_mapping_needs(held_out, mapped, tmp_path):
    model, query = held_out[0], mapped[1]
    json.dumps(model.mapper.state.to_dict(), allow_nan=False)  # plain JSON in config.json
    loaded = Concerto.load(model.save(tmp_path / "model"))
    assert loaded.label_model("cell_type").to_dict() == model.label_model("cell_type").to_dict()
    np.testing.assert_array_equal(loaded.reference.umap, model.reference.umap)
    assert loaded.mapper.state.to_dict() == model.mapper.state.to_dict()
    again = query.copy()
    loaded.map_query(again, device="cpu")
    assert np.array_equal(again.obs["cell_type_pred"].to_numpy(), query.obs["cell_type_pred"].to_numpy())
    np.testing.assert_allclose(again.obs["cell_type_confidence"], query.obs["cell_type_confidence"], atol=1e-5)
    np.testing.assert_allclose(again.obsm["X_umap_ref"], query.obsm["X_umap_ref"], atol=1e-5)
    # the expression space travels with the model (the loaded one has no reference AnnData)
    assert loaded.reference.scaled_space.loadings.shape[0] == len(model.setup.genes)
    assert loaded.reference.scaled_space.centring == model.reference.scaled_space.centring == "direction"
    np.testing.assert_array_equal(loaded.reference.scaled_expression, model.reference.scaled_expression)
    assert loaded.label_model("cell_type").uses_expression


def test_a_reference_saved_before_the_centring_was_stored_subtracts_the_average_cell(held_out):
    """A ``reference.safetensors`` without the scaled space's centring (saved before 2026-12-07) projects
    queries as it was fitted (the average cell subtracted); an unknown centring code is refused."""
    from scconcerto import ModelFileError
    from scconcerto.model.storage import SCALED_CENTRING, ReferenceStore

    arrays = held_out[0].reference.to_tensors()
    assert ReferenceStore.from_tensors(arrays).scaled_space.centring == "direction"
    old = {name: value for name, value in arrays.items() if name != f"extra.{SCALED_CENTRING}"}
    assert ReferenceStore.from_tensors(old).scaled_space.centring == "mean"
    with pytest.raises(ModelFileError, match="centring"):
        ReferenceStore.from_tensors({**arrays, f"extra.{SCALED_CENTRING}": np.array([7], dtype=np.uint8)})


def test_a_reference_read_from_disk_keeps_the_expression_features(tmp_path):
    from scconcerto.data.backed import read_backed
    from scconcerto.datasets import simulate_to_h5ad

    path = simulate_to_h5ad(tmp_path / "ref.h5ad", 400, 200, n_types=3, n_batches=2, seed=4)
    model = Concerto(read_backed(path), batch_key="batch", label_key="cell_type").train(epochs=3, progress=False,
                                                                                       device="cpu")
    # the scaled expression space is fitted on a sample and projected block by block, as in memory
    assert model.reference.scaled_expression.shape[0] == 400
    query = simulate(150, 200, n_types=3, n_batches=3, seed=4)
    query = query[(query.obs["batch"] == "batch_2").to_numpy()].copy()
    model.map_query(query, place=False, device="cpu")
    assert model.label_model("cell_type").uses_expression
    assert query.obs["cell_type_confidence"].between(0, 1).all()


def test_bad_levels_are_a_clear_error(held_out, mapped):
    with pytest.raises(InputError, match="not label keys of the reference"):
        held_out[0].map_query(mapped[1][:40].copy(), levels="major,cell_type", device="cpu")
    with pytest.raises(InputError, match="twice"):
        held_out[0].map_query(mapped[1][:40].copy(), levels="cell_type,cell_type", device="cpu")


# ------------------------------------------------------------------------------------ RNA + protein
@pytest.fixture(scope="module")
def protein_model():
    adata = simulate(600, 300, n_types=4, n_batches=2, n_proteins=6, n_major=2, seed=1)
    is_query = np.random.default_rng(0).random(adata.n_obs) < 0.2
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    model = Concerto(ref, batch_key="batch", label_key=["cell_type_major", "cell_type"],
                     protein_key="protein").train(epochs=15, progress=False, device="cpu")
    pca_stub(model)
    model.prepare_mapping(umap=False)  # embeds the reference from RNA alone while its AnnData is attached
    return model, query


def test_rna_only_query_gets_proteins_that_match_the_truth(protein_model):
    model, query = protein_model
    rna_only = query.copy()
    del rna_only.obsm["protein"]
    model.map_query(rna_only, device="cpu", place=False)
    assert rna_only.uns["scconcerto_mapping"]["space"] == "rna_only"
    imputed, truth = rna_only.obsm["protein_imputed"], np.log1p(rna_only.obsm["protein_truth"])
    r = [np.corrcoef(imputed[:, j], truth[:, j])[0, 1] for j in range(truth.shape[1])]
    assert np.median(r) > 0.75 and min(r) > 0.6
    assert list(rna_only.uns["protein_imputed_names"]) == model.setup.proteins
    assert np.mean(rna_only.obs["cell_type_pred"].astype(str) == rna_only.obs["cell_type"].astype(str)) >= 0.9


def test_imputation_averages_the_impute_k_nearest_while_the_vote_uses_k(protein_model):
    from scconcerto.tools import knn

    model, query = protein_model
    rna_only = query.copy()
    del rna_only.obsm["protein"]
    result = model.map_query(rna_only, k=3, impute_k=12, device="cpu", place=False)
    assert rna_only.uns["scconcerto_mapping"]["k"] == {"cell_type_major": 3, "cell_type": 3}
    ref = model.reference.embedding_rna
    nearest = knn(rna_only.obsm["X_concerto"], ref, k=12)
    expected = model.reference.protein[nearest.indices].mean(axis=1)  # equal weights, by hand
    np.testing.assert_allclose(rna_only.obsm["protein_imputed"], expected, rtol=1e-5, atol=1e-6)
    assert result.neighbors.n_neighbors == 3
    np.testing.assert_array_equal(result.neighbors.indices, nearest.indices[:, :3])
    assert rna_only.uns["scconcerto_mapping"]["impute_k"] == 12


def test_hierarchical_levels_are_consistent(protein_model):
    model, query = protein_model
    q = query.copy()
    del q.obsm["protein"]
    model.map_query(q, levels=["cell_type_major", "cell_type"], device="cpu", place=False)
    parent = q.obs[["cell_type", "cell_type_major"]].drop_duplicates().set_index("cell_type")["cell_type_major"]
    implied = parent.astype(str).reindex(q.obs["cell_type_pred"].astype(str)).to_numpy()
    assert np.array_equal(implied, q.obs["cell_type_major_pred"].astype(str).to_numpy())
    assert np.mean(q.obs["cell_type_pred"].astype(str) == q.obs["cell_type"].astype(str)) >= 0.9
    assert q.uns["scconcerto_mapping"]["levels"] == ["cell_type_major", "cell_type"]


def test_rna_only_query_without_an_rna_reference_is_a_clear_error(protein_model):
    model, query = protein_model
    bare = copy.deepcopy(model)
    bare.reference.embedding_rna = None
    bare.adata = None
    q = query[:40].copy()
    del q.obsm["protein"]
    with pytest.raises(InputError, match="prepare_mapping"):
        bare.map_query(q, device="cpu")


def test_a_handful_of_query_cells_maps_like_the_whole_source(held_out, mapped):
    model, query = held_out[0], mapped[1]
    seen = np.flatnonzero((query.obs["cell_type"] != UNSEEN).to_numpy())[:6]
    few = query[seen].copy()
    few.obs["batch"] = [f"sample_{i}" for i in range(few.n_obs)]  # one cell per source: too few for AdaBN
    model.map_query(few, device="cpu", place=False)
    assert np.array_equal(few.obs["cell_type_pred"].astype(str), few.obs["cell_type"].astype(str))
    assert np.unique(few.obsm["X_concerto"].round(4), axis=0).shape[0] == 6  # not collapsed to one point


@pytest.mark.parametrize("reference_cells", [None, 150])
def test_label_shift_balancing_keeps_a_skewed_query_accurate(held_out, reference_cells, monkeypatch):
    """A query source made mostly of one type: plain AdaBN subtracts part of that type's biology as a batch
    effect; the balanced statistics reweight the query to the reference's mix of types. With
    ``reference_cells`` the rounds search a sample of the reference, as for large references."""
    import scconcerto.model._query_embedding as query_embedding

    if reference_cells is not None:
        monkeypatch.setattr(query_embedding, "LABEL_SHIFT_REFERENCE_CELLS", reference_cells)
    model, query = copy.deepcopy(held_out[0]), held_out[1]
    truth = query.obs["cell_type"].astype(str).to_numpy()
    rows = np.concatenate([np.flatnonzero(truth == "type_1"),
                           np.flatnonzero((truth != "type_1") & (truth != UNSEEN))[:12]])
    skewed = query[np.sort(rows)].copy()
    plain, balanced = skewed.copy(), skewed.copy()
    model.map_query(plain, device="cpu", place=False, label_shift=False)
    model.map_query(balanced, device="cpu", place=False)
    assert plain.uns["scconcerto_mapping"]["adabn"] == {"balanced": False}
    info = balanced.uns["scconcerto_mapping"]["adabn"]
    assert info["balanced"] and info["label_key"] == "cell_type" and info["cells"] == skewed.n_obs
    assert info["max_weight"] > 2  # the rare types were weighted up
    assert not np.allclose(plain.obsm["X_concerto"], balanced.obsm["X_concerto"], atol=1e-3)

    def accuracy(a):
        return float((a.obs["cell_type_pred"].astype(str) == a.obs["cell_type"].astype(str)).mean())

    def embedding_accuracy(a):  # the plain 5-NN vote in the embedding, which the balancing moves
        from scconcerto.search.neighbors import exact_search

        _, idx = exact_search(a.obsm["X_concerto"], model.reference.embedding, 5)
        ref_labels = np.asarray(model.setup.labels["cell_type"])[model.reference.labels["cell_type"]]
        voted = [max(set(row), key=list(row).count) for row in ref_labels[idx]]
        return float(np.mean(np.asarray(voted) == a.obs["cell_type"].astype(str).to_numpy()))

    assert accuracy(balanced) >= 0.95 and accuracy(balanced) >= accuracy(plain)  # measured 1.000 and 1.000
    assert embedding_accuracy(balanced) > embedding_accuracy(plain)  # measured 1.000 vs 0.696
    # the balanced statistics bring the query's cells closer to their reference neighbours
    sim = {name: float(np.mean(np.sort(a.obsm["X_concerto"] @ model.reference.embedding.T, axis=1)[:, -5:]))
           for name, a in (("plain", plain), ("balanced", balanced))}
    assert sim["balanced"] > sim["plain"]


def test_large_references_store_their_index_and_reuse_it_after_loading(held_out, tmp_path, monkeypatch):
    import faiss

    import scconcerto.search.neighbors as search_module

    model, query = held_out
    model = copy.deepcopy(model)
    monkeypatch.setattr(search_module, "APPROXIMATE_MIN_REFERENCE", 100)  # this reference counts as large
    model.prepare_mapping(umap=False)
    stored = model.reference.ann_indexes["full"]
    assert stored.dtype == np.uint8
    first = query.copy()
    model.map_query(first, device="cpu", place=False, index="ivf")
    assert first.uns["scconcerto_mapping"]["index"] == "ivf"
    model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.reference.ann_indexes["full"], stored)

    def not_again(*args, **kwargs):
        raise AssertionError("the index was built again although the model stores it")

    monkeypatch.setattr(faiss.IndexIVFFlat, "train", not_again)
    monkeypatch.setattr(faiss.IndexIVFFlat, "add", not_again)
    again = query.copy()
    loaded.map_query(again, device="cpu", place=False, index="ivf")
    assert np.array_equal(first.obs["cell_type_pred"].to_numpy(), again.obs["cell_type_pred"].to_numpy())
    np.testing.assert_allclose(first.obs["cell_type_confidence"], again.obs["cell_type_confidence"], atol=1e-5)


def test_a_damaged_stored_index_is_an_input_error(held_out, monkeypatch):
    import scconcerto.search.neighbors as search_module

    model, query = held_out
    model = copy.deepcopy(model)
    monkeypatch.setattr(search_module, "APPROXIMATE_MIN_REFERENCE", 100)
    model.prepare_mapping(umap=False)
    damaged = model.reference.ann_indexes["full"].copy()
    damaged[: len(damaged) // 2] = 7
    model.reference.ann_indexes["full"] = damaged
    model.mapper._indexes.clear()  # the index built in memory from the saved bytes: read them again
    with pytest.raises(InputError, match="saved search index"):
        model.map_query(query.copy(), device="cpu", place=False, index="ivf")
