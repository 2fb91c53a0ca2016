"""Concerto.attention: sparse weights from the embedding's code path, in the data's own gene order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scconcerto import InputError
from scconcerto.tools.attention import AttentionWeights


@pytest.fixture(scope="module")
def sim_att(trained_model, sim):
    return trained_model.attention(sim)


@pytest.fixture(scope="module")
def protein_model(sim_protein):
    from scconcerto import Concerto

    return Concerto(sim_protein, batch_key="batch", label_key="cell_type", protein_key="protein").train(
        epochs=4, progress=False, device="cpu")


def _row_sums(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(m.sum(axis=1)).ravel()


def test_rows_sum_to_one_over_exactly_the_expressed_genes(sim_att, sim):
    att = sim_att.rna
    assert isinstance(sim_att, AttentionWeights) and sp.isspmatrix_csr(att) and att.dtype == np.float32
    assert att.shape == sim.shape and sim_att.protein is None and sim_att.modalities == ["rna"]
    np.testing.assert_allclose(_row_sums(att), 1.0, atol=1e-5)
    assert (att.data > 0).all()
    X = sp.csr_matrix(sim.X)
    X.sort_indices()
    # stored entries are exactly the expressed genes: unexpressed genes get zero weight
    np.testing.assert_array_equal(att.indptr, X.indptr)
    np.testing.assert_array_equal(att.indices, X.indices)


def test_weights_are_those_of_the_teacher_forward(trained_model, sim, sim_att):
    rows = np.array([3, 10, 250, 599])
    cells = trained_model._prepare(sim, None).cells
    net = trained_model.network.eval()
    with torch.no_grad():
        _, weights = net.teacher_hidden(cells.batch(rows).teacher)
    view = cells.batch(rows).teacher["rna"]
    var_of_vocab = pd.Index(sim.var_names).get_indexer(trained_model.setup.genes)
    expected = sp.csr_matrix((weights["rna"].numpy(), var_of_vocab[view.indices.numpy()], view.offsets.numpy()),
                             shape=(rows.size, sim.n_vars))
    np.testing.assert_allclose(sim_att.rna[rows].toarray(), expected.toarray(), rtol=1e-5, atol=1e-7)


def test_chunking_cell_subsets_and_sources_do_not_change_weights(trained_model, sim, sim_att):
    small_chunks = trained_model.attention(sim, batch_size=7)
    np.testing.assert_allclose(small_chunks.rna.toarray(), sim_att.rna.toarray(), rtol=1e-5, atol=1e-7)
    subset = sim[::3].copy()
    subset.obs["batch"] = "a_new_source"  # unseen source: attention comes before BN, so nothing changes
    np.testing.assert_allclose(trained_model.attention(subset).rna.toarray(), sim_att.rna[::3].toarray(),
                               rtol=1e-5, atol=1e-7)


def test_weights_follow_the_datas_own_gene_order(trained_model, sim, sim_att):
    order = np.random.default_rng(0).permutation(sim.n_vars)
    shuffled = sim[:, order].copy()
    att = trained_model.attention(shuffled)
    assert list(att.var_names) == list(shuffled.var_names)
    np.testing.assert_allclose(att.rna.toarray(), sim_att.rna[:, order].toarray(), rtol=1e-5, atol=1e-7)


def test_extra_and_missing_genes(trained_model, sim):
    import anndata as ad

    kept = sim[:, 30:].copy()  # 30 model genes missing
    extra = ad.AnnData(X=sp.random(sim.n_obs, 5, density=0.5, format="csr", random_state=1, dtype=np.float32)
                       * 10, obs=sim.obs.copy(), var=pd.DataFrame(index=[f"other_{i}" for i in range(5)]))
    extra.X.data = np.ceil(extra.X.data)
    data = ad.concat([kept, extra], axis=1, merge="first")
    att = trained_model.attention(data)
    assert att.rna.shape == data.shape
    assert att.rna[:, -5:].nnz == 0  # genes the model does not know get no weight
    np.testing.assert_allclose(_row_sums(att.rna), 1.0, atol=1e-5)
    X = sp.csr_matrix(data.X)
    known = np.zeros(data.n_vars, dtype=bool)
    known[:-5] = True
    expressed_known = X[:, known].getnnz(axis=1)
    np.testing.assert_array_equal(att.rna.getnnz(axis=1), expressed_known)


def test_attention_leaves_the_model_unchanged(trained_model, sim):
    before = {k: v.clone() for k, v in trained_model.network.state_dict().items()}
    trained_model.network.train()
    trained_model.attention(sim[:50])
    assert trained_model.network.training  # mode restored
    after = trained_model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trained_model.network.eval()


def test_protein_weights(protein_model, sim_protein):
    att = protein_model.attention(sim_protein)
    assert att.modalities == ["rna", "protein"]
    assert att.protein.shape == (sim_protein.n_obs, 6) and att.protein_names == protein_model.setup.proteins
    np.testing.assert_allclose(_row_sums(att.rna), 1.0, atol=1e-5)
    np.testing.assert_allclose(_row_sums(att.protein), 1.0, atol=1e-5)
    # non-zero exactly where the protein is above its background, fitted on the reference
    from scconcerto.data.setup import normalize_protein

    values = normalize_protein(sim_protein.obsm["protein"], "clr")
    background = np.asarray(protein_model.setup.protein_background)
    assert background.shape == (6,) and (background > 0).all()
    np.testing.assert_array_equal(att.protein.toarray() > 0, values > background)
    assert 0.2 < (values > background).mean() < 0.8  # each protein marks a type or a major group
    assert list(att.feature_names("protein")) == protein_model.setup.proteins


def test_protein_markers_get_the_most_attention(protein_model, sim_protein):
    from scconcerto.tools import rank_attention

    att = protein_model.attention(sim_protein)
    ranked = rank_attention(sim_protein.copy(), "cell_type", attention=att, modality="protein", n_top=2)
    markers = sim_protein.uns["simulation"]["protein_markers"]
    # 6 proteins, 2 markers per type: a random top protein hits with probability 1/3 per type, a random
    # top two with probability 3/5
    top1 = [table["feature"].iloc[0] in markers[g] for g, table in ranked.items()]
    top2 = [set(table["feature"].iloc[:2]) == set(markers[g]) for g, table in ranked.items()]
    assert all(top1) and all(top2)


def test_rna_only_data_and_options(protein_model, sim_protein):
    rna_only = sim_protein.copy()
    del rna_only.obsm["protein"]
    assert protein_model.attention(rna_only).protein is None
    no_prot = protein_model.attention(sim_protein, use_protein=False)
    assert no_prot.protein is None
    with pytest.raises(InputError, match="no protein"):
        no_prot.matrix("protein")
    with pytest.raises(InputError, match="modality"):
        no_prot.matrix("atac")
    with pytest.raises(InputError, match="batch_size"):
        protein_model.attention(sim_protein, batch_size=0)


@pytest.fixture(scope="module")
def sim_background():
    """4 types, one marker protein each; every antibody carries a strong background, and a pan-cell
    antibody (CD45) is high in every cell."""
    from scconcerto.datasets import simulate

    sim = simulate(600, 300, n_types=4, n_batches=2, n_proteins=4, seed=0)
    rng = np.random.default_rng(0)
    capture = np.exp(rng.normal(0, 0.3, (sim.n_obs, 1)))
    counts = sim.obsm["protein"] + rng.poisson(300 * capture, sim.obsm["protein"].shape)
    sim.obsm["protein"] = np.column_stack([counts, rng.poisson(3000 * capture[:, 0])]).astype(np.float32)
    sim.uns["protein_names"] = list(sim.uns["protein_names"]) + ["CD45"]
    return sim


def test_marker_tops_its_type_despite_antibody_background(sim_background):
    """Every antibody is "detected" in every cell; without the fitted background the teacher attends to
    absent antibodies too, and a marker can rank first in a type that lacks it."""
    from scconcerto import Concerto
    from scconcerto.tools import rank_attention

    model = Concerto(sim_background, batch_key="batch", label_key="cell_type", protein_key="protein").train(
        epochs=4, progress=False, device="cpu", prepare_mapping=False)
    ranked = rank_attention(sim_background, "cell_type", model=model, modality="protein", n_top=None, key_added="")
    targets = sim_background.uns["simulation"]["protein_targets"]
    assert {ranked[t]["feature"].iloc[0]: t for t in targets.values()} == targets
    for protein, target in targets.items():
        table = ranked[target].set_index("feature")
        # the pan-cell antibody is attended alike in every type: far below the marker's contrast
        assert abs(table.loc["CD45", "contrast"]) < 0.3 * table.loc[protein, "contrast"]
        assert table.loc[protein, "detection_in"] > 0.9 and table.loc[protein, "detection_out"] < 0.1


def test_training_sharpens_attention_beyond_the_untrained_network(trained_model, sim, sim_att):
    from scconcerto import Concerto

    untrained = Concerto(sim, batch_key="batch", label_key="cell_type").attention(sim).rna  # same seed
    assert (untrained != 0).nnz == (sim_att.rna != 0).nnz  # the same expressed genes are attended

    def spread(m: sp.csr_matrix) -> float:  # sd of weight x number of attended genes (0: uniform)
        n = np.diff(m.indptr)
        return float((m.data * np.repeat(n, n)).std())

    assert spread(sim_att.rna) > 1.2 * spread(untrained)
