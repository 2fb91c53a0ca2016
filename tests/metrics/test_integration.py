"""kNN / silhouette integration metrics on hand-made geometries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from scconcerto._errors import InputError
from scconcerto.metrics import (
    batch_entropy,
    clisi,
    cross_batch_accuracy,
    graph_connectivity,
    ilisi,
    isolated_label_score,
    kbet_acceptance,
    knn_label_accuracy,
    silhouette_batch,
    silhouette_label,
)

RNG_SEED = 0


def _blobs(n_per=100, n_blobs=3, dim=10, seed=RNG_SEED, shift=10.0):
    """Gaussian blobs, blob i shifted along axis i (separated in cosine too)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_blobs), n_per)
    x = rng.normal(size=(n_per * n_blobs, dim))
    x[np.arange(len(labels)), labels] += shift
    return x, labels


def _mixed(n=600, dim=10, n_batches=2, seed=RNG_SEED):
    """One isotropic cloud with batches assigned at random: perfect mixing."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.integers(0, n_batches, size=n)


def _hand_case():
    """Two clusters of three cells in 2-d, batches (0, 0, 1) in each.

    Cosine neighbours stay within a cluster; along each cluster the cells are
    ordered 0, 0, 1, so with k = 2:
      the two batch-0 cells see one 0 and one 1 -> p = (1/2, 1/2): LISI 2, entropy 1
      the batch-1 cell sees two 0s              -> p = (1, 0):     LISI 1, entropy 0
    """
    x = np.array([[1.0, 0.01], [1.0, 0.0], [1.0, -0.01], [0.01, 1.0], [0.0, 1.0], [-0.01, 1.0]])
    return x, np.array([0, 0, 1, 0, 0, 1])


# ---------------------------------------------------------------- knn label accuracy


def test_knn_label_accuracy_is_similarity_weighted():
    # unit vectors at these angles; with k = 3 a plain majority vote gets
    # only cells 2 and 3 right (2/6), the similarity-weighted vote all six:
    # cell 0: A cos5=.996 vs B cos70+cos75=.601; cell 4: C .996 vs B (negative -> 0)
    ang = np.deg2rad([0.0, 5.0, 70.0, 75.0, 180.0, 185.0])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    labels = np.array(["A", "A", "B", "B", "C", "C"])
    assert knn_label_accuracy(x, labels, k=3) == pytest.approx(1.0)


def test_knn_label_accuracy_blobs_and_random():
    x, labels = _blobs()
    assert knn_label_accuracy(x, labels, k=5) == 1.0
    rng = np.random.default_rng(1)
    random_labels = rng.integers(0, 4, size=2000)
    acc = knn_label_accuracy(rng.normal(size=(2000, 10)), random_labels, k=5)
    assert abs(acc - 0.25) < 0.05


def test_cross_batch_accuracy_by_hand():
    """Batch A holds labels 0 and 1 in place; batch B the same, one label-1 cell among the 0s, and a
    label-2 cell no other batch has. With k = 3 every A cell is voted right by B's cells (A's 0s see two
    B 0s and the stray 1), B's misplaced cell is voted 0, the label-2 cell is not scored: 11 / 12."""
    a = np.array([[1.0, 0.0], [1.0, 0.02], [1.0, -0.02], [0.0, 1.0], [0.02, 1.0], [-0.02, 1.0]])
    b = np.array([[1.0, 0.1], [1.0, 0.12], [1.0, 0.08], [0.1, 1.0], [0.12, 1.0], [1.0, 0.05], [-1.0, 0.0]])
    x = np.vstack([a, b])
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 2])
    batches = np.array(["A"] * 6 + ["B"] * 7)
    assert cross_batch_accuracy(x, labels, batches, k=3) == pytest.approx(11 / 12)
    # labels that no two batches share cannot be scored
    with pytest.raises(InputError, match="No batch shares"):
        cross_batch_accuracy(x, batches, batches, k=3)
    with pytest.raises(InputError, match="at least 2"):
        cross_batch_accuracy(x, labels, np.zeros(13), k=3)


# ---------------------------------------------------------------- batch mixing


def test_batch_entropy_and_ilisi_by_hand():
    x, batches = _hand_case()
    # entropies 1, 1, 0 per cluster
    assert batch_entropy(x, batches, k=2) == pytest.approx(2 / 3)
    # LISI 2, 2, 1 per cluster -> median 2 -> (2 - 1) / (2 - 1)
    assert ilisi(x, batches, k=2, scale=False) == pytest.approx(2.0)
    assert ilisi(x, batches, k=2) == pytest.approx(1.0)


def test_batch_mixing_mixed_vs_separated():
    x, batches = _mixed()
    assert batch_entropy(x, batches, k=50) > 0.95
    assert ilisi(x, batches, k=90) > 0.9
    xs, blob_batches = _blobs(n_per=200, n_blobs=2)
    assert batch_entropy(xs, blob_batches, k=50) == pytest.approx(0.0)
    assert ilisi(xs, blob_batches, k=90) == pytest.approx(0.0)


def test_kbet_by_hand():
    x, batches = _hand_case()
    # global proportions (2/3, 1/3), k = 2 -> expected counts (4/3, 2/3)
    # batch-0 cells: counts (1, 1) -> chi2 = 1/12 + 1/6 = 0.25
    # batch-1 cells: counts (2, 0) -> chi2 = 1/3 + 2/3 = 1
    p_mixed, p_pure = chi2.sf(0.25, 1), chi2.sf(1.0, 1)
    assert p_pure < 0.5 < p_mixed
    assert kbet_acceptance(x, batches, k=2, alpha=0.5) == pytest.approx(4 / 6)
    assert kbet_acceptance(x, batches, k=2, alpha=0.05) == pytest.approx(1.0)


def test_kbet_mixed_vs_separated():
    x, batches = _mixed()
    assert kbet_acceptance(x, batches, k=50) > 0.85
    xs, blob_batches = _blobs(n_per=200, n_blobs=2)
    assert kbet_acceptance(xs, blob_batches, k=50) == 0.0


def test_silhouette_batch_by_hand():
    # cell type 0 in 1-d: batch 0 at {0, 1}, batch 1 at {10, 11}
    #   s(0) = s(11) = (10.5 - 1) / 10.5, s(1) = s(10) = (9.5 - 1) / 9.5
    # cell type 1 is in a single batch and is skipped
    x = np.array([[0.0], [1.0], [10.0], [11.0], [50.0], [51.0]])
    labels = np.array([0, 0, 0, 0, 1, 1])
    batches = np.array([0, 0, 1, 1, 0, 0])
    s = ((10.5 - 1) / 10.5 + (9.5 - 1) / 9.5) / 2
    assert silhouette_batch(x, labels, batches) == pytest.approx(1 - s)
    assert silhouette_batch(x, labels, batches, rescale=False) == pytest.approx(s)


def test_silhouette_batch_mixed_vs_separated():
    x, labels = _blobs()
    rng = np.random.default_rng(3)
    mixed = silhouette_batch(x, labels, rng.integers(0, 2, size=len(labels)))
    assert mixed > 0.9
    # within each cell type, batch 1 is shifted 20 units away along a free axis
    batches = np.tile(np.repeat([0, 1], 50), 3)
    xs = x.copy()
    xs[:, 9] += np.where(batches == 1, 20.0, 0.0)
    assert silhouette_batch(xs, labels, batches) < 0.5


# ---------------------------------------------------------------- label conservation


def test_silhouette_label_by_hand_and_blobs():
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    s = ((10.5 - 1) / 10.5 + (9.5 - 1) / 9.5) / 2
    assert silhouette_label(x, ["a", "a", "b", "b"]) == pytest.approx((s + 1) / 2)
    assert silhouette_label(x, ["a", "a", "b", "b"], rescale=False) == pytest.approx(s)
    xb, labels = _blobs()
    assert silhouette_label(xb, labels) > 0.75
    rng = np.random.default_rng(4)
    assert silhouette_label(xb, rng.permutation(labels)) == pytest.approx(0.5, abs=0.02)


def test_silhouette_label_subsamples_with_seed():
    xb, labels = _blobs(n_per=400)
    a = silhouette_label(xb, labels, max_cells=300, seed=1)
    assert a == silhouette_label(xb, labels, max_cells=300, seed=1)
    assert a != silhouette_label(xb, labels, max_cells=300, seed=2)
    assert a == pytest.approx(silhouette_label(xb, labels), abs=0.05)


def test_isolated_label_score_by_hand():
    # label a only in batch 0 (isolated), b in both batches
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    s = ((10.5 - 1) / 10.5 + (9.5 - 1) / 9.5) / 2
    score = isolated_label_score(x, ["a", "a", "b", "b"], [0, 0, 0, 1])
    assert score == pytest.approx((s + 1) / 2)


def test_clisi_blobs_vs_random():
    x, labels = _blobs()
    assert clisi(x, labels, k=90) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    assert clisi(x, rng.permutation(labels), k=90) < 0.1


def test_graph_connectivity_split_label():
    # label 0 lives in two far-apart blobs (30 + 15 cells), label 1 in one blob
    rng = np.random.default_rng(6)
    x = rng.normal(size=(75, 10))
    blob = np.repeat([0, 1, 2], [30, 15, 30])
    x[np.arange(75), blob] += 10.0
    labels = np.repeat([0, 0, 1], [30, 15, 30])
    # label 0: 30/45 in the largest component; label 1: 1
    assert graph_connectivity(x, labels, k=5) == pytest.approx((30 / 45 + 1) / 2)
    xb, lb = _blobs()
    assert graph_connectivity(xb, lb, k=15) == pytest.approx(1.0)


# ---------------------------------------------------------------- errors


def test_bad_inputs_raise():
    x, labels = _blobs(n_per=10)
    with pytest.raises(InputError):
        knn_label_accuracy(x, labels[:-1])
    with pytest.raises(InputError):
        batch_entropy(x, labels, k=len(x))  # k too large
    with pytest.raises(InputError):
        ilisi(x, np.zeros(len(x)), k=5)  # a single batch
    with pytest.raises(InputError):
        silhouette_label(x, np.zeros(len(x)))  # a single label
    with pytest.raises(InputError):
        kbet_acceptance(x, labels, k=5, alpha=1.5)
    with pytest.raises(InputError):
        batch_entropy(x, np.array([0.0, np.nan] * 15), k=5)
