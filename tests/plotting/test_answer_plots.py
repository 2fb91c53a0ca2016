"""The plots the report opens with: confidence per type, predicted labels on a UMAP, levels, a readable matrix."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import PathPatch, Rectangle

from scconcerto import InputError
from scconcerto import plotting as pl
from scconcerto.plotting._base import BACKGROUND, category_colors
from scconcerto.plotting.annotation import MIN_MATRIX_FONT


def _typed_query(seed=0):
    """60 cells over types a (30), b (20), c (10) with confidences and known-type probabilities."""
    rng = np.random.default_rng(seed)
    pred = np.array(["a"] * 30 + ["b"] * 20 + ["c"] * 10)[rng.permutation(60)]
    known = rng.uniform(0, 1, 60).astype(np.float32)
    obs = pd.DataFrame({"ct_pred": pd.Categorical(pred, categories=["c", "b", "a"]),
                        "ct_confidence": rng.uniform(0, 1, 60).astype(np.float32), "ct_known_prob": known,
                        "ct_unknown": known < 0.25}, index=[f"c{i}" for i in range(60)])
    return ad.AnnData(obs=obs, obsm={"X_umap": rng.normal(size=(60, 2)).astype(np.float32)},
                      uns={"scconcerto_mapping": {"thresholds": {"ct": 0.25}, "classes": {"ct": ["a", "b", "c"]}}})


def test_confidence_by_type_boxes_hold_each_types_cells_most_frequent_on_top():
    q = _typed_query()
    fig = pl.confidence_by_type(q, "ct", max_points=15)
    conf_ax, known_ax = fig.axes
    labels = [t.get_text() for t in conf_ax.get_yticklabels()]
    ticks = conf_ax.get_yticks()
    assert [labels[i] for i in np.argsort(-ticks)] == ["a (30)", "b (20)", "c (10)"]  # top to bottom
    for ax, column in ((conf_ax, "ct_confidence"), (known_ax, "ct_known_prob")):
        medians = q.obs.groupby(q.obs["ct_pred"].astype(str))[column].median()
        # each box's median line sits at its type's median, at its type's height
        lines = [ln for ln in ax.lines if ln.get_color() == "#1f3a5f"]
        found = {round(float(np.mean(ln.get_ydata())), 6): float(ln.get_xdata()[0]) for ln in lines}
        for tick, label in zip(ticks, labels):
            assert found[round(float(tick), 6)] == pytest.approx(medians[label.split(" ")[0]], rel=1e-6)
        dots = sum(len(c.get_offsets()) for c in ax.collections)
        assert dots == 15 + 15 + 10  # at most max_points dots per type
    dashed = [ln.get_xdata()[0] for ln in known_ax.lines if ln.get_linestyle() == "--"]
    assert dashed == [pytest.approx(0.25)]  # the unknown threshold on the score it applies to
    assert known_ax.get_xlabel() == "known-type probability"
    assert len(pl.confidence_by_type(q, "ct", unknown_score=False).axes) == 1


def test_label_umap_draws_each_cell_at_its_coordinates_in_its_labels_colour():
    q = _typed_query()
    fig = pl.label_umap(q, "ct")
    layer = fig.axes[0].collections[0]
    np.testing.assert_allclose(layer.get_offsets(), q.obsm["X_umap"], rtol=1e-6)
    colors = category_colors(["a", "b", "c", "unknown"])  # the recorded classes' order, not the categories'
    pred = np.where(q.obs["ct_unknown"], "unknown", q.obs["ct_pred"].astype(str))
    np.testing.assert_allclose(layer.get_facecolors(), [to_rgba(colors[p]) for p in pred])
    with pytest.raises(InputError, match="X_other"):
        pl.label_umap(q, "ct", basis="X_other")


def test_mapping_umap_with_a_grey_reference(mapped):
    model, query = mapped
    fig = pl.mapping_umap(query, model, color="label", background="grey", max_points=None)
    ref_layer = fig.axes[0].collections[0]
    assert {tuple(c) for c in ref_layer.get_facecolors()} == {to_rgba(BACKGROUND)}
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][0] == "reference cells"
    with pytest.raises(InputError, match="background"):
        pl.mapping_umap(query, model, background="pink")


def test_confusion_matrix_numbers_stay_readable_and_inside_their_cells_at_fourteen_classes():
    names = [f"type_{i:02d}" for i in range(14)]
    rng = np.random.default_rng(0)
    given = rng.choice(names, 700)
    pred = np.where(rng.random(700) < 0.7, given, rng.choice(names, 700))
    q = ad.AnnData(obs=pd.DataFrame({"ct": given, "ct_pred": pred}, index=[f"c{i}" for i in range(700)]))
    fig = pl.confusion_matrix(q, "ct")
    ax = fig.axes[0]
    numbers = [t for t in ax.texts if t.get_text()]
    assert len(numbers) > 14 and all(t.get_fontsize() >= MIN_MATRIX_FONT for t in numbers)
    assert all(t.get_fontsize() >= MIN_MATRIX_FONT for t in ax.get_xticklabels())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    cell = ax.transData.transform([[1, 0]])[0][0] - ax.transData.transform([[0, 0]])[0][0]
    assert max(t.get_window_extent(renderer).width for t in numbers) < 0.9 * cell  # "0.70" fits its cell
    few = pl.confusion_matrix(ad.AnnData(obs=q.obs[q.obs["ct"].isin(names[:3]) & q.obs["ct_pred"].isin(names[:3])]),
                              "ct")
    assert few.axes[0].texts[0].get_fontsize() > numbers[0].get_fontsize()  # the font scales with the classes


def test_level_sankey_groups_fine_labels_under_their_coarse_label():
    coarse = ["T"] * 6 + ["B"] * 4
    fine = ["CD4"] * 3 + ["CD8"] * 3 + ["naive B"] * 3 + ["plasma"]
    obs = pd.DataFrame({"major_pred": coarse, "minor_pred": fine}, index=[f"c{i}" for i in range(10)])
    fig = pl.level_sankey(ad.AnnData(obs=obs), "major", "minor", gap=0.0)
    ax = fig.axes[0]
    assert len([p for p in ax.patches if isinstance(p, PathPatch)]) == 4  # one band per (coarse, fine) pair
    blocks = [p for p in ax.patches if isinstance(p, Rectangle)]
    right = sorted((b for b in blocks if b.get_x() > 0.5), key=lambda b: -b.get_y())
    def names(side):  # block labels, top to bottom: the left column's are right-aligned to its blocks
        align = {"left": "right", "right": "left"}[side]
        texts = sorted((t for t in ax.texts if t.get_ha() == align), key=lambda t: -t.get_position()[1])
        return [t.get_text().split(" (")[0] for t in texts]

    under = {"T": ["CD4", "CD8"], "B": ["naive B", "plasma"]}
    assert names("left") == ["T", "B"]  # the larger coarse label on top
    assert names("right") == [f for c in names("left") for f in under[c]]  # in the order of their coarse label
    heights = dict(zip(names("right"), (b.get_height() for b in right)))
    assert heights == pytest.approx({"CD4": 0.3, "CD8": 0.3, "naive B": 0.3, "plasma": 0.1})
