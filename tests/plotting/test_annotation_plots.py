import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Rectangle

from scconcerto import InputError
from scconcerto import plotting as pl


def _hand_query():
    """10 cells: given A,A,A,A,B,B,B,C,C,C; predicted A,A,A,B,B,B,C,C,C,A; cell 9 unknown."""
    obs = pd.DataFrame({
        "ct": pd.Categorical(list("AAAABBBCCC")),
        "ct_pred": list("AAABBBCCCA"),
        "ct_confidence": np.array([1.0, 0.9, 0.95, 0.5, 1.0, 0.8, 0.6, 1.0, 0.9, 0.3], dtype=np.float32),
        "ct_known_prob": np.array([0.9, 0.8, 0.9, 0.7, 0.95, 0.6, 0.5, 0.9, 0.8, 0.2], dtype=np.float32),
        "ct_unknown": [False] * 9 + [True],
    }, index=[f"c{i}" for i in range(10)])
    return ad.AnnData(obs=obs, uns={"scconcerto_mapping": {"thresholds": {"ct": 0.4},
                                                           "classes": {"ct": ["A", "B"]}}})


def test_confusion_table_counts_by_hand():
    q = _hand_query()
    table = pl.confusion_table(q.obs["ct"], np.where(q.obs["ct_unknown"], "unknown", q.obs["ct_pred"]))
    assert list(table.index) == ["A", "B", "C"]
    assert list(table.columns) == ["A", "B", "C", "unknown"]
    expected = [[3, 1, 0, 0], [0, 2, 1, 0], [0, 0, 2, 1]]
    np.testing.assert_array_equal(table.to_numpy(), expected)
    frac = pl.confusion_table(q.obs["ct"], q.obs["ct_pred"], normalize=True)
    np.testing.assert_allclose(frac.sum(axis=1), 1.0)
    assert frac.loc["C", "A"] == pytest.approx(1 / 3)


def test_confusion_matrix_image_is_the_row_normalized_table_with_an_unknown_column(tmp_path):
    q = _hand_query()
    fig = pl.confusion_matrix(q, "ct", save=tmp_path / "cm.png")
    assert isinstance(fig, Figure)
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(image, [[0.75, 0.25, 0, 0], [0, 2 / 3, 1 / 3, 0], [0, 0, 2 / 3, 1 / 3]])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["A", "B", "C", "unknown"]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    counts = pl.confusion_matrix(q, "ct", normalize=False, mark_unknown=False).axes[0].images[0].get_array()
    np.testing.assert_array_equal(counts, [[3, 1, 0], [0, 2, 1], [1, 0, 2]])


def test_sankey_draws_one_band_per_label_pair_with_widths_proportional_to_counts():
    q = _hand_query()
    fig = pl.sankey(q, "ct", gap=0.0)
    ax = fig.axes[0]
    bands = [p for p in ax.patches if isinstance(p, PathPatch)]
    blocks = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bands) == 6  # nonzero (given, predicted) pairs: AA AB BB BC CC C-unknown
    assert len(blocks) == 3 + 4  # left: A B C; right: A B C unknown
    # with no gaps each block's height is its share of the 10 cells, and a band's left edge its count / 10
    left = sorted((b.get_height() for b in blocks if b.get_x() == 0.0), reverse=True)
    np.testing.assert_allclose(left, [0.4, 0.3, 0.3])
    heights = sorted(round(float(np.ptp(p.get_path().vertices[[0, 7], 1])), 6) for p in bands)
    np.testing.assert_allclose(heights, [0.1, 0.1, 0.1, 0.2, 0.2, 0.3])


def _dashed(ax):
    return [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]


def test_confidence_histogram_counts_every_cell_and_draws_the_threshold_on_the_score_it_applies_to():
    q = _hand_query()
    fig = pl.confidence_histogram(q, "ct", bins=10)
    ax = fig.axes[0]
    heights = np.array([p.get_height() for p in ax.patches])
    assert heights.sum() == pytest.approx(10)  # right + wrong stacks hold all labeled cells
    assert _dashed(ax) == []  # the recorded threshold flags the known-type probability, not the confidence
    assert "unknown: 1 (10.0%)" in ax.get_title()
    fig2 = pl.confidence_histogram(q, "ct", threshold=0.85)
    assert _dashed(fig2.axes[0]) == [pytest.approx(0.85)]
    known = pl.confidence_histogram(q, "ct", bins=10, score="unknown").axes[0]
    assert _dashed(known) == [pytest.approx(0.4)]
    assert known.get_xlabel() == "known-type probability"
    seen, unseen = known.containers  # cells whose given type the reference has (A, B), and the C cells
    assert sum(p.get_height() for p in seen) == 7
    assert sum(p.get_height() for p in unseen) == pytest.approx(3)
    hist, _ = np.histogram(q.obs["ct_known_prob"][:7], bins=np.linspace(0, 1, 11))
    np.testing.assert_array_equal([p.get_height() for p in seen], hist)


def test_annotation_plots_fail_clearly_without_predictions():
    q = _hand_query()
    with pytest.raises(InputError, match="cell_type_pred"):
        pl.confusion_matrix(q, "cell_type", true_key="ct")
    with pytest.raises(InputError, match="given labels"):
        pl.sankey(q, "ct", true_key="nope")
    with pytest.raises(InputError, match="ct2_confidence"):
        pl.confidence_histogram(q, "ct2")


def test_plots_draw_into_a_given_axes(mapped):
    import matplotlib.pyplot as plt

    _, query = mapped
    fig, axes = plt.subplots(1, 3)
    assert pl.confusion_matrix(query, "cell_type", ax=axes[0]) is fig
    assert pl.sankey(query, "cell_type", ax=axes[1]) is fig
    assert pl.confidence_histogram(query, "cell_type", ax=axes[2]) is fig
    assert axes[0].images and axes[1].patches and axes[2].patches


def test_sankey_labels_of_tiny_blocks_do_not_overlap():
    given = ["big"] * 200 + ["t1", "t2", "t3", "t4"]
    obs = pd.DataFrame({"ct": given, "ct_pred": given}, index=[f"c{i}" for i in range(len(given))])
    fig = pl.sankey(ad.AnnData(obs=obs), "ct")
    ax = fig.axes[0]
    fig.canvas.draw()
    for side in ("right", "left"):
        boxes = [t.get_window_extent() for t in ax.texts if t.get_ha() == side and "(" in t.get_text()]
        assert len(boxes) == 5
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
