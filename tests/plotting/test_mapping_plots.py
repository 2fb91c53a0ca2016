import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from scconcerto import InputError
from scconcerto import plotting as pl
from scconcerto.plotting._base import category_colors


def test_query_points_sit_at_their_reference_umap_coordinates_coloured_by_prediction(mapped):
    model, query = mapped
    fig = pl.mapping_umap(query, model, color="label", max_points=None)
    ref_layer, query_layer = fig.axes[0].collections[:2]
    np.testing.assert_allclose(ref_layer.get_offsets(), model.reference.umap, rtol=1e-6)
    np.testing.assert_allclose(query_layer.get_offsets(), query.obsm["X_umap_ref"], rtol=1e-6)
    colors = category_colors(list(model.setup.labels["cell_type"]) + ["unknown"])
    pred = np.where(query.obs["cell_type_unknown"], "unknown", query.obs["cell_type_pred"].astype(str))
    expected = np.array([to_rgba(colors[p]) for p in pred])
    np.testing.assert_allclose(query_layer.get_facecolors(), expected)
    assert query.obs["cell_type_unknown"].any()  # the black "unknown" colour was really exercised
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][-1] == "unknown"


def test_confidence_colouring_uses_the_confidence_values_on_a_0_1_scale(mapped):
    model, query = mapped
    fig = pl.mapping_umap(query, model, color="confidence", max_points=None)
    layer = fig.axes[0].collections[1]
    conf = query.obs["cell_type_confidence"].to_numpy()
    assert layer.get_clim() == (0, 1)
    np.testing.assert_allclose(np.sort(layer.get_array()), np.sort(conf), rtol=1e-6)
    assert len(fig.axes) == 2  # the colour bar


def test_source_colouring_and_subsampling(mapped):
    model, query = mapped
    q = query.copy()
    q.obs["batch"] = np.where(np.arange(q.n_obs) % 2 == 0, "tech_a", "tech_b")
    fig = pl.mapping_umap(q, model, color="source", max_points=50)
    ref_layer, query_layer = fig.axes[0].collections[:2]
    assert len(ref_layer.get_offsets()) == 50 and len(query_layer.get_offsets()) == 50
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["reference", "query: tech_a",
                                                                            "query: tech_b"]
    assert len({tuple(c) for c in query_layer.get_facecolors()}) == 2


def test_mapping_umap_fails_clearly_without_coordinates(mapped):
    model, query = mapped
    bare = ad.AnnData(obs=query.obs.copy())
    with pytest.raises(InputError, match="X_umap_ref"):
        pl.mapping_umap(bare, model)
    no_umap = copy.copy(model)
    no_umap.reference = copy.copy(model.reference)
    no_umap.reference.umap = None
    with pytest.raises(InputError, match="reference UMAP"):
        pl.mapping_umap(query, no_umap)
    with pytest.raises(InputError, match="color"):
        pl.mapping_umap(query, model, color="cluster")


def test_mapping_umap_save_writes_the_file(mapped, tmp_path):
    model, query = mapped
    pl.mapping_umap(query, model, save=tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="extension"):
        pl.mapping_umap(query, model, save=tmp_path / "noext")


def test_source_umap_has_one_panel_per_source_highlighting_its_cells():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"tech": pd.Categorical(["a"] * 30 + ["b"] * 20 + ["c"] * 10),
                        "ct": pd.Categorical(rng.choice(["x", "y"], 60))}, index=[str(i) for i in range(60)])
    xy = rng.normal(size=(60, 2)).astype(np.float32)
    adata = ad.AnnData(obs=obs, obsm={"X_umap": xy})
    fig = pl.source_umap(adata, "tech", color="ct", ncols=2)
    panels = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["a (30 cells)", "b (20 cells)", "c (10 cells)"]
    for panel, tech in zip(panels, "abc"):
        background, highlighted = panel.collections[:2]
        np.testing.assert_allclose(highlighted.get_offsets(), xy[obs["tech"].to_numpy() == tech])
        assert len(background.get_offsets()) == 60 - len(highlighted.get_offsets())
    assert [t.get_text() for t in panels[-1].get_legend().get_texts()] == ["x", "y"]
    with pytest.raises(InputError, match="one axes per source"):
        pl.source_umap(adata, "tech", ax=panels[0])
    with pytest.raises(InputError, match="neither"):
        pl.source_umap(ad.AnnData(obs=obs), "tech")
