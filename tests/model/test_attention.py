"""Concerto.attention: sparse weights from the embedding's code path, in the data's own gene order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scconcerto import InputError
from scconcerto.model._attention import AttentionWeights


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
    # zero exactly where the cell has no count of the protein (CLR of 0 is 0)
    counts = sim_protein.obsm["protein"]
    np.testing.assert_array_equal(att.protein.toarray() > 0, counts > 0)
    assert list(att.feature_names("protein")) == protein_model.setup.proteins


def test_protein_markers_get_the_most_attention(protein_model, sim_protein):
    from scconcerto.tools import rank_attention

    att = protein_model.attention(sim_protein)
    ranked = rank_attention(sim_protein.copy(), "cell_type", attention=att, modality="protein", n_top=2)
    markers = sim_protein.uns["simulation"]["protein_markers"]
    # 6 proteins, 2 markers per type: a random top protein hits with probability 1/3 per type, a random
    # top two with probability 3/5. The protein branch sees proteins in half of the training batches
    # (modality dropout), which on this 4-epoch simulation costs one type its top-1 marker.
    top1 = [table["feature"].iloc[0] in markers[g] for g, table in ranked.items()]
    top2 = [bool(set(table["feature"].iloc[:2]) & set(markers[g])) for g, table in ranked.items()]
    assert sum(top1) >= 3 and all(top2)


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
