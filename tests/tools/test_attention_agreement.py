"""attention_vs_expression / attention_agreement: top lists by attention and by expression, with the evidence."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import hypergeom

from scconcerto import InputError
from scconcerto.tools import attention_agreement, attention_vs_expression, expression_markers, rank_attention


def _toy() -> tuple[ad.AnnData, sp.csr_matrix]:
    """11 cells x 8 genes: groups a (4 cells), b (4), c (2) and one unlabelled cell.

    Every cell expresses g4-g7 (5 counts); a cells g0 (20) and g1 (10), b cells g2 (20) and g3 (10),
    c cells g0 and g2 (5 each); the unlabelled cell g1 alone. The attention of the a cells favours the
    ubiquitous g4, which expression does not rank.
    """
    counts = np.zeros((11, 8), dtype=np.float32)
    counts[:10, 4:] = 5
    counts[:4, 0], counts[:4, 1] = 20, 10
    counts[4:8, 2], counts[4:8, 3] = 20, 10
    counts[8:10, 0], counts[8:10, 2] = 5, 5
    counts[10, 1] = 7
    weights = np.zeros_like(counts)
    weights[:4, [0, 1, 4, 5, 6, 7]] = [0.3, 0.05, 0.5, 0.05, 0.05, 0.05]
    weights[4:8, [2, 3, 4, 5, 6, 7]] = [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]
    weights[8:10, [0, 2, 4, 5, 6, 7]] = [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]
    weights[10, 1] = 1.0
    groups = pd.Categorical(["a"] * 4 + ["b"] * 4 + ["c"] * 2 + [None])
    adata = ad.AnnData(X=sp.csr_matrix(counts), var=pd.DataFrame(index=[f"g{i}" for i in range(8)]),
                       obs=pd.DataFrame({"group": groups}, index=[f"c{i}" for i in range(11)]))
    return adata, sp.csr_matrix(weights)


def test_toy_comparison_by_hand():
    adata, weights = _toy()
    before = adata.X.copy()
    table = attention_vs_expression(adata, "group", attention=weights)
    summary = attention_agreement(adata, "group", attention=weights).set_index("group")
    assert (adata.X != before).nnz == 0 and not adata.uns  # nothing written into the data
    a = table[table["group"] == "a"].set_index("feature")
    # 8 genes compared: k = a quarter of them. Attention top 2 of a: g4 (0.5 - 0.1), g0 (0.3 - 0.1);
    # expression top 2 of a: g1 and g0, the genes only a (and, for g0, c) express
    assert summary.loc["a", "k"] == 2 and summary.loc["a", "n_features"] == 8
    assert a.loc["g4", "attention_score"] == pytest.approx(0.4) and a.loc["g0", "attention_score"] == pytest.approx(0.2)
    assert a.loc["g4", "found_by"] == "attention" and a.loc["g0", "found_by"] == "both"
    assert a.loc["g1", "found_by"] == "expression" and list(a.index) == ["g4", "g0", "g1"]
    assert a.loc["g4", "attention_rank"] == 1 and set(a.loc[["g0", "g1"], "expression_rank"]) == {1, 2}
    # the evidence: g4 is detected in every cell, g0 in all a cells and in the 2 of 6 other labelled cells
    assert a.loc["g4", "detection_in"] == 1.0 and a.loc["g4", "detection_out"] == 1.0
    assert a.loc["g0", "detection_in"] == 1.0 and a.loc["g0", "detection_out"] == pytest.approx(2 / 6)
    assert a.loc["g1", "detection_out"] == 0.0  # the unlabelled cell expressing g1 counts nowhere
    assert a.loc["g0", "mean_in"] == pytest.approx(np.log1p(20 / 50 * 1e4), rel=1e-5)
    assert summary.loc["a", "overlap"] == 1 and summary.loc["a", "expected"] == pytest.approx(0.5)
    assert summary.loc["a", "pval"] == pytest.approx(hypergeom.sf(0, 8, 2, 2))
    assert summary.loc["a", "attention_only"] == "g4" and summary.loc["a", "expression_only"] == "g1"
    assert -1 <= summary.loc["a", "spearman"] <= 1
    # c has 2 cells: attention ranks only, no expression ranking, said so
    c = table[table["group"] == "c"]
    assert len(c) == 2 and (c["found_by"] == "attention").all() and c["expression_rank"].isna().all()
    assert "fewer than 3 cells" in summary.loc["c", "note"] and np.isnan(summary.loc["c", "overlap"])
    assert summary.loc["b", "note"] == ""


def test_tiny_groups_do_not_break_it():
    adata, weights = _toy()
    adata.obs["group"] = pd.Categorical(["a"] * 9 + ["b"] + [None])  # one cell in b
    summary = attention_agreement(adata, "group", attention=weights, min_cells=2).set_index("group")
    assert "fewer than 2 cells" in summary.loc["b", "note"] and summary.loc["a", "note"] == ""
    assert summary.loc["a", "overlap"] >= 0


def test_rna_agreement_on_the_simulator_beats_chance(trained_model, sim):
    att = trained_model.attention(sim)
    summary = attention_agreement(sim, "cell_type", attention=att, n_top=20)
    assert list(summary["group"]) == list(sim.obs["cell_type"].cat.categories)
    assert (summary["overlap"] >= 5 * summary["expected"]).all() and (summary["pval"] < 1e-4).all()
    assert (summary["spearman"] > 0.5).all()
    table = attention_vs_expression(sim, "cell_type", attention=att, n_top=20)
    assert table.groupby("group")["found_by"].apply(lambda s: (s != "expression").sum()).eq(20).all()


def test_protein_comparison_uses_the_models_background(sim_protein):
    from scconcerto import Concerto

    model = Concerto(sim_protein, batch_key="batch", label_key="cell_type", protein_key="protein")
    att = model.attention(sim_protein)  # an untrained network: the expression side does not depend on it
    table = attention_vs_expression(sim_protein, "cell_type", model=model, attention=att, modality="protein")
    markers = sim_protein.uns["simulation"]["protein_markers"]
    best = table[table["expression_rank"] == 1].set_index("group")
    assert len(best) == len(markers) and all(best.loc[g, "feature"] in markers[g] for g in markers)
    assert (best["detection_in"] > 0.8).all() and (best["detection_out"] < 0.5).all()
    # detection is "above background", the very proteins the attention covers
    ranked = rank_attention(sim_protein, "cell_type", attention=att, modality="protein", n_top=None, key_added="")
    for row in table.itertuples():
        attended = ranked[row.group].set_index("feature").loc[row.feature]
        assert row.detection_in == pytest.approx(attended["detection_in"])
        assert row.detection_out == pytest.approx(attended["detection_out"])
    summary = attention_agreement(sim_protein, "cell_type", model=model, attention=att, modality="protein")
    assert summary["k"].eq(1).all()  # 6 proteins: a quarter of them


def test_input_errors(sim_protein):
    adata, weights = _toy()
    with pytest.raises(InputError, match="n_top"):
        attention_agreement(adata, "group", attention=weights, n_top=0)
    with pytest.raises(InputError, match="min_cells"):
        attention_agreement(adata, "group", attention=weights, min_cells=1)
    one = adata.copy()
    one.obs["group"] = "x"
    with pytest.raises(InputError, match="two groups"):
        attention_agreement(one, "group", attention=weights)
    with pytest.raises(InputError, match="does not exist"):
        attention_agreement(adata, "nope", attention=weights)
    from scconcerto import Concerto

    att = Concerto(sim_protein, protein_key="protein").attention(sim_protein)
    with pytest.raises(InputError, match="protein_key"):
        attention_agreement(sim_protein, "cell_type", attention=att, modality="protein")
    with pytest.raises(InputError, match="lacks proteins"):
        bad = sim_protein.copy()
        bad.uns["protein_names"] = [f"other_{i}" for i in range(6)]
        attention_agreement(bad, "cell_type", attention=att, modality="protein", protein_key="protein")


def test_expression_markers_find_the_programs_and_leave_data_alone(sim):
    data = sim.copy()
    before = data.X.copy()
    markers = expression_markers(data, "cell_type", n_top=20)
    truth = sim.uns["simulation"]["marker_genes"]
    assert all(len(set(markers[g]) & set(truth[g])) >= 10 for g in truth)
    assert (data.X != before).nnz == 0 and "rank_genes_groups" not in data.uns
    subset = expression_markers(data, "cell_type", n_top=5, genes=list(sim.var_names[:100]))
    assert all(set(v) <= set(sim.var_names[:100]) for v in subset.values())
