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

UNSEEN = "type_0"


def pca_stub(model: Concerto) -> None:
    """Store 2-D PCA coordinates as the reference UMAP (tests skip fitting a real UMAP)."""
    emb = model.reference.embedding
    centred = emb - emb.mean(0)
    model.reference.extra["umap"] = (centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T).astype(np.float32)


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


def test_a_type_missing_from_the_reference_gets_low_confidence(mapped):
    _, query, _ = mapped
    seen = (query.obs["cell_type"] != UNSEEN).to_numpy()
    confidence = query.obs["cell_type_confidence"].to_numpy()
    assert roc_auc_score(seen, confidence) > 0.8
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
    assert conf.min() >= 0 and conf.max() <= 1
    info = query.uns["scconcerto_mapping"]
    assert info["gene_overlap"]["overlap"] == 1.0 and info["k"] == 5 and info["index"] == "flat"
    assert info["thresholds"]["cell_type"] == pytest.approx(model.unknown_thresholds()["cell_type"], abs=1e-6)
    assert info["adabn_sources"] == ["batch_2"] and info["timings"]["total"] > 0
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
    stored = model.extra_config["mapping"]["confidence"]["full"]["cell_type"]["5"]
    used = small.uns["scconcerto_mapping"]["thresholds"]["cell_type"]
    assert used == pytest.approx(stored["threshold_small"], abs=1e-6) and stored["threshold_small"] != stored["threshold"]


def test_save_and_load_keep_what_mapping_needs(held_out, mapped, tmp_path):
    model, query = held_out[0], mapped[1]
    json.dumps(model.extra_config, allow_nan=False)  # plain JSON in config.json
    loaded = Concerto.load(model.save(tmp_path / "model"))
    assert loaded.unknown_thresholds() == model.unknown_thresholds()
    np.testing.assert_array_equal(loaded.reference.extra["umap"], model.reference.extra["umap"])
    again = query.copy()
    loaded.map_query(again, device="cpu")
    assert np.array_equal(again.obs["cell_type_pred"].to_numpy(), query.obs["cell_type_pred"].to_numpy())
    np.testing.assert_allclose(again.obs["cell_type_confidence"], query.obs["cell_type_confidence"], atol=1e-5)
    np.testing.assert_allclose(again.obsm["X_umap_ref"], query.obsm["X_umap_ref"], atol=1e-5)
    # the expression space travels with the model (the loaded one has no reference AnnData)
    assert loaded.reference.extra["expression_loadings"].shape[0] == len(model.setup.genes)
    assert 0 < len(loaded.reference.extra["expression_sample"]) <= 10_000
    np.testing.assert_array_equal(loaded.reference.extra["expression"], model.reference.extra["expression"])
    novelty = loaded.extra_config["mapping"]["confidence"]["full"]["cell_type"]["5"]["novelty"]["features"]
    assert "expression_similarity" in novelty and "log_expression_density_ratio" in novelty


def calibrated_as(model, version: int):
    """A copy of ``model`` whose mapping config says it was calibrated with the rules of ``version`` (2 or 3:
    no scaled expression space; 2: no veto either)."""
    old = copy.deepcopy(model)
    cfg = old.extra_config["mapping"]
    cfg["version"] = version
    for name in ("rare_label_cells", "scaled_expression") + (("expression_veto",) if version == 2 else ()):
        cfg.pop(name)
    return old


def expected_labels(model, query, neighbors, weight: float, veto: bool = True, adjust: bool = False,
                    scaled: bool = True):
    """The mapped labels recomputed by hand from the saved expression coordinates: the embedding vote,
    the scaled space's vote blended into contested cells (the plain space's with ``scaled=False``), the
    plain space's veto where unanimous, a rare label's claim by the scaled space, the proportion adjustment.
    Returns (names, first, blended, final) votes."""
    from scconcerto.data.scaled_space import ScaledSpace
    from scconcerto.tools import adjust_to_proportions, blend_votes, contested_rows, knn, overrule, veto_rows, vote
    from scconcerto.tools.label_transfer import rare_label_rows, rare_labels

    extra = model.reference.extra
    codes, n = model.reference.labels["cell_type"], len(model.setup.labels["cell_type"])
    counts = np.bincount(codes[codes >= 0], minlength=n)
    first = vote(neighbors, codes, n)
    rows = contested_rows(first, weight)
    cells = model._prepare(query, what="the query").cells
    coords = model._query_expression(cells)
    assert extra["expression"].shape == (len(codes), coords.shape[1])
    plain = vote(knn(coords, extra["expression"], k=5), codes, n)
    second = plain
    if scaled:
        space = ScaledSpace(extra["scaled_expression_loadings"], extra["scaled_expression_offset"],
                            extra["scaled_expression_caps"])
        second = vote(knn(space.project(cells), extra["scaled_expression"], k=5), codes, n)
    blended = blend_votes(first, rows, second.take(rows), weight)
    vetoed = veto_rows(blended, plain, counts, 5) if veto else np.zeros(0, dtype=np.int64)
    final = overrule(blended, vetoed, plain)
    claimed = rare_label_rows(final, second, rare_labels(counts, 20)) if scaled else np.zeros(0, dtype=np.int64)
    final = overrule(final, claimed, second)
    if adjust:  # the overruled cells keep their votes
        final = overrule(adjust_to_proportions(final, counts)[0], np.union1d(vetoed, claimed), final)
    return np.asarray(model.setup.labels["cell_type"]), first, blended, final


def test_contested_labels_get_the_expression_space_vote(held_out, mapped):
    """The predicted labels are the embedding vote blended, for contested cells, with the vote of the
    nearest reference cells in the scaled expression space (the plain one for a version-3 config),
    recomputed here from the stored coordinates."""
    from scconcerto.tools import contested_rows

    assert mapped[1].uns["scconcerto_mapping"]["expression_vote"]["weight"] == 0.5  # the default
    result = mapped[2]
    for version in (4, 3):
        model, query = copy.deepcopy(held_out[0]), mapped[1].copy()
        model.prepare_mapping(umap=False, expression_vote=2.0, overwrite=True)  # above 1: every cell is contested
        if version == 3:
            model = calibrated_as(model, 3)
        model.map_query(query, place=False, device="cpu")
        info = query.uns["scconcerto_mapping"]["expression_vote"]
        names, first, blended, final = expected_labels(model, query, result.neighbors, 2.0, scaled=version == 4)
        assert info["weight"] == 2.0 and info["contested_cells"] == len(contested_rows(first, 2.0)) == query.n_obs
        assert info["scaled_space"] == (version == 4)
        np.testing.assert_array_equal(query.obs["cell_type_pred"].astype(str).to_numpy(), names[final.codes])
        assert info["changed"]["cell_type"] == int((final.codes != first.codes).sum()) > 0
        if version == 3:  # the plain space, batch effects and all, disagrees with the embedding on some cells
            assert (blended.codes != first.codes).sum() > 0


def test_a_unanimous_expression_vote_overrules_the_embedding(held_out, mapped):
    """With the default weight, cells whose 5 plain expression-space neighbours all name another label than
    the embedding's winner take that label (recomputed by hand); a model calibrated before the scaled space
    (mapping config version 3) blends the plain space's vote instead, and one calibrated before the veto
    (version 2) keeps the embedding's winner there."""
    model, query, result = held_out[0], mapped[1], mapped[2]
    info = query.uns["scconcerto_mapping"]["expression_vote"]
    names, first, blended, final = expected_labels(model, query, result.neighbors, 0.5)
    np.testing.assert_array_equal(query.obs["cell_type_pred"].astype(str).to_numpy(), names[final.codes])
    assert info["veto"] and info["scaled_space"] and info["rare_label_cells"] == 20
    assert info["vetoed"]["cell_type"] + info["rare_claimed"]["cell_type"] >= int((final.codes != blended.codes).sum())
    for version in (3, 2):
        old = calibrated_as(model, version)
        again = query.copy()
        old.map_query(again, place=False, device="cpu")
        _, _, blended, final = expected_labels(old, again, result.neighbors, 0.5, veto=version == 3, scaled=False)
        np.testing.assert_array_equal(again.obs["cell_type_pred"].astype(str).to_numpy(), names[final.codes])
        report = again.uns["scconcerto_mapping"]["expression_vote"]
        assert report["veto"] == (version == 3) and not report["scaled_space"] and not report["rare_claimed"]


def test_no_second_opinion_when_off_or_calibrated_without_it(held_out, mapped):
    from scconcerto.tools import vote

    model, query, result = copy.deepcopy(held_out[0]), mapped[1].copy(), mapped[2]
    plain = np.asarray(model.setup.labels["cell_type"])[
        vote(result.neighbors, model.reference.labels["cell_type"], len(model.setup.labels["cell_type"])).codes]
    model.prepare_mapping(umap=False, expression_vote=0.0)  # calibrated with 0.5: kept, with a warning
    assert model.extra_config["mapping"]["expression_vote"] == 0.5
    model.prepare_mapping(umap=False, expression_vote=0.0, overwrite=True)
    model.map_query(query, place=False, device="cpu")
    assert "expression_vote" not in query.uns["scconcerto_mapping"]
    np.testing.assert_array_equal(query.obs["cell_type_pred"].astype(str).to_numpy(), plain)
    with pytest.raises(InputError, match="expression_vote"):
        model.prepare_mapping(umap=False, expression_vote=-1.0)
    old = copy.deepcopy(held_out[0])  # a model saved before the second opinion (mapping config version 1)
    del old.extra_config["mapping"]["expression_vote"]
    again = mapped[1].copy()
    old.map_query(again, place=False, device="cpu")
    np.testing.assert_array_equal(again.obs["cell_type_pred"].astype(str).to_numpy(), plain)


def test_votes_adjusted_to_the_query_proportions_on_request(held_out, mapped):
    """With ``adjust_proportions`` the labels are the vote adjusted to the query's EM proportions, save the
    vetoed and claimed cells' (recomputed here); the report names each label's estimated proportion (close to the query's predicted mix) and its
    reference proportion. By default, and for queries under ``MIN_QUERY_CELLS`` cells, the vote is plain."""
    from scconcerto.tools import adjust_to_proportions
    from scconcerto.tools.confidence import MIN_QUERY_CELLS

    model, plain, result = held_out[0], mapped[1], mapped[2]
    assert "label_proportions" not in plain.uns["scconcerto_mapping"]
    query = plain.copy()
    model.map_query(query, device="cpu", place=False, adjust_proportions=True)
    names, _, _, before = expected_labels(model, query, result.neighbors, 0.5)
    adjusted = expected_labels(model, query, result.neighbors, 0.5, adjust=True)[3]  # vetoed, claimed cells kept
    codes, n = model.reference.labels["cell_type"], len(names)
    estimated = adjust_to_proportions(before, np.bincount(codes[codes >= 0], minlength=n))[1]
    np.testing.assert_array_equal(query.obs["cell_type_pred"].astype(str).to_numpy(), names[adjusted.codes])
    report = query.uns["scconcerto_mapping"]["label_proportions"]["cell_type"]
    assert report["changed"] == int((adjusted.codes != before.codes).sum())
    assert report["labels"] == [t for t in names if t in report["labels"]]
    pred = query.obs["cell_type_pred"].astype(str).to_numpy()
    for name, share, reference in zip(report["labels"], report["estimated"], report["reference"]):
        c = list(names).index(name)
        assert share == pytest.approx(estimated[c], abs=1e-4)
        assert share == pytest.approx(np.mean(pred == name), abs=0.05)
        assert reference == pytest.approx(np.mean(codes[codes >= 0] == c), abs=1e-4)
    small = plain[:MIN_QUERY_CELLS - 1].copy()
    model.map_query(small, device="cpu", place=False, adjust_proportions=True)
    assert "label_proportions" not in small.uns["scconcerto_mapping"]


def test_a_reference_read_from_disk_maps_without_expression_features(tmp_path):
    from scconcerto.data.backed import read_backed
    from scconcerto.datasets import simulate_to_h5ad

    path = simulate_to_h5ad(tmp_path / "ref.h5ad", 400, 200, n_types=3, n_batches=2, seed=4)
    model = Concerto(read_backed(path), batch_key="batch", label_key="cell_type").train(epochs=3, progress=False,
                                                                                       device="cpu")
    assert "expression_loadings" not in model.reference.extra  # no expression space without the matrix in memory
    query = simulate(150, 200, n_types=3, n_batches=3, seed=4)
    query = query[(query.obs["batch"] == "batch_2").to_numpy()].copy()
    model.map_query(query, place=False, device="cpu")
    novelty = model.extra_config["mapping"]["confidence"]["full"]["cell_type"]["5"]["novelty"]["features"]
    assert "expression_similarity" not in novelty
    assert query.obs["cell_type_confidence"].between(0, 1).all()


def test_bad_levels_are_a_clear_error(held_out, mapped):
    with pytest.raises(InputError, match="not label keys of the reference"):
        held_out[0].map_query(mapped[1][:40].copy(), levels="major,cell_type", device="cpu")


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
    ref = model.reference.extra["embedding_rna"]
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


def test_every_key_gets_the_expression_spaces_agreement_with_its_label(protein_model):
    """A confidence that reads only the agreement: each key's confidence, the hierarchy's finer level
    included, is that function of the share of the cell's scaled-space neighbours' vote backing its label
    (reference labels made noisy, so that share varies)."""
    from scconcerto.tools import knn, vote
    from scconcerto.tools.confidence import AGREEMENT_FEATURE, ConfidenceModel, LogisticScore
    from scconcerto.tools.label_transfer import share_of

    model = copy.deepcopy(protein_model[0])
    q = protein_model[1].copy()
    del q.obsm["protein"]  # searched in the RNA-only space
    by_agreement = LogisticScore(("vote_share", AGREEMENT_FEATURE), (0.0, 5.0), -2.5)
    always_seen = LogisticScore(("vote_share",), (0.0,), 30.0)
    hand = ConfidenceModel(by_agreement, always_seen, always_seen, threshold=0.5, threshold_small=0.5, k=5)
    rng = np.random.default_rng(0)
    for key, names in model.setup.labels.items():
        model.extra_config["mapping"]["confidence"]["rna_only"][key]["5"] = hand.to_dict()
        codes = model.reference.labels[key]  # a third of the labels shuffled: the two spaces' votes then differ
        noisy = rng.random(len(codes)) < 0.3
        codes[noisy] = rng.integers(0, len(names), noisy.sum())
    model.map_query(q, levels=["cell_type_major", "cell_type"], device="cpu", place=False)

    coords, scaled = model._scaled_expression()
    neighbors = knn(scaled.project(model._prepare(q, use_protein=False).cells), coords, k=5)
    for key, names in model.setup.labels.items():
        given = pd.Categorical(q.obs[f"{key}_pred"].astype(str), categories=names).codes
        agreement = share_of(vote(neighbors, model.reference.labels[key], len(names)), given)
        assert agreement.std() > 0.05  # it varies from cell to cell
        expected = 1.0 / (1.0 + np.exp(-(5.0 * agreement - 2.5))) / (1.0 + np.exp(-30.0))
        np.testing.assert_allclose(q.obs[f"{key}_confidence"].to_numpy(), expected, rtol=1e-4)


def test_rna_only_query_without_an_rna_reference_is_a_clear_error(protein_model):
    model, query = protein_model
    bare = copy.deepcopy(model)
    bare.reference.extra.pop("embedding_rna")
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
    # the labels from the embedding alone: the expression space's veto would rescue plain AdaBN's errors
    model.prepare_mapping(umap=False, expression_vote=0.0, overwrite=True)
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

    assert accuracy(balanced) >= 0.95 and accuracy(balanced) > accuracy(plain)  # measured 1.000 vs 0.804
    # the balanced statistics bring the query's cells closer to their reference neighbours
    sim = {name: float(np.mean(np.sort(a.obsm["X_concerto"] @ model.reference.embedding.T, axis=1)[:, -5:]))
           for name, a in (("plain", plain), ("balanced", balanced))}
    assert sim["balanced"] > sim["plain"]


def test_large_references_store_their_ivf_centroids_and_reuse_them_after_loading(held_out, tmp_path, monkeypatch):
    import copy

    import faiss

    import scconcerto.model._reference as reference_module

    model, query = held_out
    model = copy.deepcopy(model)
    monkeypatch.setattr(reference_module, "APPROXIMATE_MIN_REFERENCE", 100)  # this reference counts as large
    model.prepare_mapping(umap=False)
    stored = model.reference.extra["ivf_centroids.full"]
    assert stored.shape[1] == model.reference.embedding.shape[1]
    first = query.copy()
    model.map_query(first, device="cpu", place=False, index="ivf")
    model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.reference.extra["ivf_centroids.full"], stored)

    def no_kmeans(*args, **kwargs):
        raise AssertionError("k-means ran although the model stores the centroids")

    monkeypatch.setattr(faiss.IndexIVFFlat, "train", no_kmeans)
    again = query.copy()
    loaded.map_query(again, device="cpu", place=False, index="ivf")
    assert np.array_equal(first.obs["cell_type_pred"].to_numpy(), again.obs["cell_type_pred"].to_numpy())
    np.testing.assert_allclose(first.obs["cell_type_confidence"], again.obs["cell_type_confidence"], atol=1e-5)


def test_a_rare_reference_type_claims_its_query_cells():
    """A type with 8 reference cells: the embedding files some of its query cells under other types; its
    majority among their nearest cells in the scaled expression space gives them back (labels recomputed by
    hand). A model calibrated before the claim (version 3) leaves them misfiled."""
    adata = simulate(900, 300, n_types=4, n_batches=3, seed=0)
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    rare = (adata.obs["cell_type"] == UNSEEN).to_numpy()
    rows = np.union1d(np.flatnonzero(~is_query & ~rare), np.flatnonzero(~is_query & rare)[:8])
    model = Concerto(adata[rows].copy(), batch_key="batch", label_key="cell_type").train(
        epochs=30, lr=3e-3, progress=False, device="cpu", prepare_mapping={"umap": False})
    query = adata[is_query].copy()
    result = model.map_query(query, place=False, device="cpu")
    truth = query.obs["cell_type"].astype(str).to_numpy()
    names, _, _, final = expected_labels(model, query, result.neighbors, 0.5)
    pred = query.obs["cell_type_pred"].astype(str).to_numpy()
    np.testing.assert_array_equal(pred, names[final.codes])
    info = query.uns["scconcerto_mapping"]["expression_vote"]
    assert info["rare_claimed"]["cell_type"] > 0
    old = calibrated_as(model, 3)
    before = query.copy()
    old.map_query(before, place=False, device="cpu")
    recall = lambda p: (p[truth == UNSEEN] == UNSEEN).mean()  # noqa: E731
    assert recall(pred) > recall(before.obs["cell_type_pred"].astype(str).to_numpy()) + 0.1
    assert recall(pred) >= 0.95 and (truth[pred == UNSEEN] == UNSEEN).mean() >= 0.95  # and precise


def test_a_model_saved_before_the_scaled_space_gets_it_from_the_reference(held_out, mapped, tmp_path):
    """Loaded without its reference AnnData, a model calibrated with version 3 keeps mapping as calibrated;
    ``prepare_mapping(overwrite=True)`` alone moves it to version 4 without the scaled space (nothing to fit
    it on), and with the reference AnnData it fits the same space the trained model holds."""
    model, query = held_out[0], mapped[1]
    old = calibrated_as(model, 3)
    for name in [n for n in old.reference.extra if n.startswith("scaled_expression")]:
        del old.reference.extra[name]
    loaded = Concerto.load(old.save(tmp_path / "v3"))
    assert loaded.adata is None
    again = query.copy()
    loaded.map_query(again, place=False, device="cpu")
    assert not again.uns["scconcerto_mapping"]["expression_vote"]["scaled_space"]
    loaded.prepare_mapping(umap=False, overwrite=True)
    assert loaded.extra_config["mapping"]["version"] == 4 and not loaded.extra_config["mapping"]["scaled_expression"]
    reference = model.adata
    loaded.prepare_mapping(reference, umap=False, overwrite=True)
    assert loaded.extra_config["mapping"]["scaled_expression"]
    np.testing.assert_allclose(loaded.reference.extra["scaled_expression"], model.reference.extra["scaled_expression"],
                               atol=1e-5)
    again = query.copy()
    loaded.map_query(again, place=False, device="cpu")
    np.testing.assert_array_equal(again.obs["cell_type_pred"].to_numpy(), query.obs["cell_type_pred"].to_numpy())


def test_the_proportion_adjustment_keeps_overruled_cells(held_out):
    """Rows set by a veto or a rare label's claim keep their votes when the rest is adjusted to the
    query's proportions, and the report counts only the cells the adjustment moved."""
    from scconcerto.tools import LabelTransfer, adjust_to_proportions

    model = held_out[0]
    codes = model.reference.labels["cell_type"]
    n = len(model.setup.labels["cell_type"])
    counts = np.bincount(codes[codes >= 0], minlength=n)
    votes = np.zeros((200, n), dtype=np.float32)
    votes[:150, 0] = 1.0  # a query rich in label 0
    votes[150:, 0], votes[150:, 1] = 0.45, 0.55  # near ties that its proportions tip to label 0
    tr = LabelTransfer(codes=votes.argmax(1), confidence=votes.max(1), votes=votes)
    moved = adjust_to_proportions(tr, counts)[0]
    assert (moved.codes[150:] == 0).all()  # the adjustment alone moves every near tie
    out, info = model._to_query_proportions({"cell_type": tr}, {"cell_type": np.array([150, 151])})
    np.testing.assert_array_equal(out["cell_type"].codes[150:152], [1, 1])
    np.testing.assert_array_equal(out["cell_type"].codes[152:], moved.codes[152:])
    assert info["cell_type"]["changed"] == 48
