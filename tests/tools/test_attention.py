"""rank_attention: contrast, detection, lift, scanpy layout."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scconcerto import InputError
from scconcerto.tools import rank_attention, ranked_names


@pytest.fixture(scope="module")
def sim_att(trained_model, sim):
    return trained_model.attention(sim)


def _toy() -> tuple[ad.AnnData, sp.csr_matrix]:
    """5 cells (groups a, a, b, b, missing) x 3 genes; gene g0 is attended equally by everyone."""
    weights = np.array([[0.5, 0.5, 0.0],
                        [0.4, 0.0, 0.6],
                        [0.5, 0.0, 0.5],
                        [0.5, 0.0, 0.5],
                        [0.1, 0.9, 0.0]], dtype=np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(weights), var=pd.DataFrame(index=["g0", "g1", "g2"]),
                       obs=pd.DataFrame({"group": pd.Categorical(["a", "a", "b", "b", None])},
                                        index=[f"c{i}" for i in range(5)]))
    return adata, sp.csr_matrix(weights)


def test_statistics_by_hand():
    adata, weights = _toy()
    tables = rank_attention(adata, "group", attention=weights, n_top=None)
    a = tables["a"].set_index("feature")
    # g1 only in group a: mean 0.25 in a, 0 in b (the unlabelled cell counts nowhere)
    assert a.loc["g1", "mean_in"] == pytest.approx(0.25) and a.loc["g1", "mean_out"] == pytest.approx(0.0)
    assert a.loc["g2", "contrast"] == pytest.approx(0.3 - 0.5)
    assert a.loc["g0", "contrast"] == pytest.approx(0.45 - 0.5)
    assert a.loc["g1", "detection_in"] == 0.5 and a.loc["g1", "detection_out"] == 0.0
    assert a.loc["g2", "detection_in"] == 0.5 and a.loc["g0", "detection_out"] == 1.0
    # lift: weight x number of attended genes, averaged over the cells attending it
    assert a.loc["g1", "lift"] == pytest.approx(0.5 * 2)
    assert a.loc["g0", "lift"] == pytest.approx((0.5 * 2 + 0.4 * 2) / 2)
    assert a.loc["g1", "logfoldchange"] > 10  # 0.25 vs 0
    assert np.isnan(a["pval"]).all()
    # ranked by contrast: g1 first; the ubiquitous g0, top by plain mean, is not
    assert list(tables["a"]["feature"]) == ["g1", "g0", "g2"]
    assert list(tables["b"]["feature"])[0] == "g2"


def test_group_sums_do_not_depend_on_the_chunking(sim_att, sim):
    from scconcerto.tools.attention import _group_sums

    codes = sim.obs["cell_type"].cat.codes.to_numpy().copy()
    codes[::7] = -1  # unlabelled cells count nowhere
    whole = _group_sums(sim_att.rna, codes, 4, chunk_nnz=10**9)
    for part, ref in zip(_group_sums(sim_att.rna, codes, 4, chunk_nnz=500), whole):
        np.testing.assert_allclose(part, ref, rtol=1e-10)
    np.testing.assert_allclose(whole[1].sum(), sim_att.rna[codes >= 0].nnz)  # cells attending, counted once


def test_min_detection_groups_and_top():
    adata, weights = _toy()
    tables = rank_attention(adata, "group", attention=weights, n_top=None, groups=["b"], min_detection=0.6)
    assert list(tables) == ["b"] and list(tables["b"]["feature"]) == ["g2", "g0"]  # g1: in no b cell
    assert list(rank_attention(adata, "group", attention=weights, n_top=1, groups=["b"])["b"]["feature"]) == ["g2"]
    tables = rank_attention(adata, "group", attention=weights, n_top=None, min_detection=0.6, key_added="x")
    assert list(tables["a"]["feature"]) == ["g0"]  # g1, g2 are in only half of the a cells
    names = adata.uns["x"]["names"]
    assert list(names["a"]) == ["g0", ""]  # padded to the longest list (b: g2, g0), scanpy layout
    assert ranked_names(adata, "x")["a"] == ["g0"]


def test_wilcoxon_skips_single_cell_groups(caplog):
    adata, weights = _toy()
    adata.obs["group"] = pd.Categorical(["a", "a", "b", "b", "c"])
    tables = rank_attention(adata, "group", attention=weights, n_top=None, method="wilcoxon")
    assert list(tables) == ["a", "b"] and "'c' has 1 cell" in caplog.text
    assert len(tables["b"]) == 3 and tables["b"]["pval"].between(0, 1).all()
    assert set(rank_attention(adata, "group", attention=weights, n_top=1)) == {"a", "b", "c"}  # contrast: all


def test_markers_top_the_attention_lists(sim_att, sim):
    data = sim.copy()
    tables = rank_attention(data, "cell_type", attention=sim_att, n_top=20)
    markers = sim.uns["simulation"]["marker_genes"]
    hits = {g: len(set(t["feature"]) & set(markers[g])) for g, t in tables.items()}
    chance = 20 * 20 / sim.n_vars  # expected overlap of 20 random genes with 20 markers: 1.3
    assert all(h >= 8 for h in hits.values()), hits  # every type at least 6x chance
    assert sum(hits.values()) >= 40, (hits, chance)
    # the contrast matters: ranking by plain mean attention finds fewer markers
    codes = sim.obs["cell_type"].cat.codes.to_numpy()
    plain = 0
    for k, g in enumerate(sim.obs["cell_type"].cat.categories):
        mean = np.asarray(sim_att.rna[codes == k].mean(axis=0)).ravel()
        plain += len(set(sim.var_names[np.argsort(-mean)[:20]]) & set(markers[g]))
    assert sum(hits.values()) > plain + 10


def test_wilcoxon_ranks_markers_with_pvalues(sim_att, sim):
    tables = rank_attention(sim.copy(), "cell_type", attention=sim_att, n_top=20, method="wilcoxon")
    markers = sim.uns["simulation"]["marker_genes"]
    for g, table in tables.items():
        assert len(set(table["feature"]) & set(markers[g])) >= 8
        assert (np.diff(table["score"]) <= 0).all()
        assert table["pval_adj"].between(0, 1).all() and (table["pval_adj"] >= table["pval"] - 1e-12).all()
        assert table["pval_adj"].iloc[0] < 1e-6


def test_stored_in_scanpy_layout_and_survives_h5ad(sim_att, sim, tmp_path):
    import scanpy as sc

    data = sim.copy()
    tables = rank_attention(data, "cell_type", attention=sim_att, n_top=10)
    stored = data.uns["rank_attention"]
    assert stored["params"]["groupby"] == "cell_type" and stored["params"]["modality"] == "rna"
    data.write_h5ad(tmp_path / "ranked.h5ad")
    back = ad.read_h5ad(tmp_path / "ranked.h5ad")
    for g, table in tables.items():
        df = sc.get.rank_genes_groups_df(back, g, key="rank_attention")
        assert list(df["names"]) == list(table["feature"])
        np.testing.assert_allclose(df["scores"], table["score"], rtol=1e-5)
        np.testing.assert_allclose(df["pct_nz_group"], table["detection_in"], rtol=1e-6)
        np.testing.assert_allclose(df["pct_nz_reference"], table["detection_out"], rtol=1e-6)


def test_input_errors(sim_att, sim, trained_model):
    data = sim.copy()
    with pytest.raises(InputError, match="does not exist"):
        rank_attention(data, "no_such_column", attention=sim_att)
    with pytest.raises(InputError, match="model"):
        rank_attention(data, "cell_type")
    with pytest.raises(InputError, match="cells"):
        rank_attention(data[:10].copy(), "cell_type", attention=sim_att)
    with pytest.raises(InputError, match="protein"):
        rank_attention(data, "cell_type", attention=sim_att, modality="protein")
    with pytest.raises(InputError, match="method"):
        rank_attention(data, "cell_type", attention=sim_att, method="t-test")
    with pytest.raises(InputError, match="min_detection"):
        rank_attention(data, "cell_type", attention=sim_att, min_detection=2)
    one_group = data.copy()
    one_group.obs["one"] = "x"
    with pytest.raises(InputError, match="two groups"):
        rank_attention(one_group, "one", attention=sim_att)
    # a model instead of weights gives the same ranking
    via_model = rank_attention(data, "cell_type", model=trained_model, n_top=5, key_added="")
    via_weights = rank_attention(data, "cell_type", attention=sim_att, n_top=5, key_added="")
    assert all(list(via_model[g]["feature"]) == list(via_weights[g]["feature"]) for g in via_weights)
    assert "rank_attention" not in data.uns
