"""The one exact-vs-approximate rule (``index_kind``), and that every search that chooses an index follows it."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from scconcerto.data.positives import PositiveSearch
from scconcerto.search import NeighborsResults, index_kind, neighbors
from scconcerto.search.ann import ann_index, neighbor_recall, recall_at_k
from scconcerto.search.knn_graph import knn_distances
from scconcerto.tools.placement import reference_umap


@pytest.mark.parametrize("n_base, n_query, expected", [
    (1_000, 1_000, "flat"),
    (99_999, 10**7, "flat"),          # below the smallest approximate reference, whatever the queries
    (100_000, 10, "flat"),            # a large reference searched by few queries: exact is cheaper
    (100_000, 20_000, "ivf"),         # 2e9 query x base pairs
    (100_000, 100_000, "ivf"),        # the kNN graph of 100k cells
    (1_000_000, 1, "ivf"),            # an atlas, even for one query
])
def test_the_rule_by_sizes(n_base, n_query, expected):
    assert index_kind(n_base, n_query) == expected
    assert index_kind(n_base, n_query, approximate="hnsw") == ("hnsw" if expected == "ivf" else "flat")


@pytest.mark.parametrize("n_base, n_query, expected", [
    (100_000, 999, "flat"),           # under 1e8 pairs: exact costs about a second at most
    (100_000, 1_000, "ivf"),
    (99_999, 10**6, "flat"),          # below the smallest approximate reference
])
def test_a_prebuilt_index_is_used_from_less_work(n_base, n_query, expected):
    assert index_kind(n_base, n_query, prebuilt=True) == expected
    assert index_kind(100_000, 1_000) == "flat"  # the same search, the index still to build: exact


def test_a_named_index_is_kept():
    assert index_kind(10, 10, "ivf") == "ivf"
    assert index_kind(10**7, 10**7, "flat") == "flat"


@pytest.fixture()
def small_thresholds(monkeypatch):
    """Thresholds of a few hundred cells, so that small data takes the approximate path."""
    monkeypatch.setattr(neighbors, "APPROXIMATE_MIN_REFERENCE", 200)
    monkeypatch.setattr(neighbors, "APPROXIMATE_WORK", 200 * 200)
    monkeypatch.setattr(neighbors, "APPROXIMATE_FROM", 10**9)


@pytest.fixture()
def built_kinds(monkeypatch):
    """The kinds of the faiss indexes ``knn`` builds."""
    kinds: list[str] = []
    build = neighbors.build_index

    def spy(reference, kind="flat", *args, **kwargs):
        kinds.append(kind)
        return build(reference, kind, *args, **kwargs)

    monkeypatch.setattr(neighbors, "build_index", spy)
    return kinds


def _points(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_ann_index_auto_follows_the_rule(small_thresholds):
    ref = _points(400)
    assert isinstance(ann_index(ref, "auto"), faiss.IndexIVFFlat)  # 400 x 400 pairs: approximate
    assert isinstance(ann_index(ref, "auto", n_query=10), faiss.IndexFlatIP)  # few queries: exact
    assert isinstance(ann_index(ref[:150], "auto"), faiss.IndexFlatIP)  # below the smallest approximate base


def test_graph_searches_follow_the_rule(small_thresholds, built_kinds):
    x = _points(400)
    knn_distances(x, 10)
    assert built_kinds == ["hnsw"]
    built_kinds.clear()
    knn_distances(x[:150], 10)
    assert built_kinds == []  # exact (a small exact search needs no index)
    PositiveSearch(k=3, components=x).among(np.arange(400), np.zeros(400, dtype=np.int64))
    assert built_kinds == ["hnsw"]


def test_umap_graph_follows_the_rule(small_thresholds, built_kinds):
    pytest.importorskip("umap")
    reference_umap(_points(300), n_neighbors=5)
    assert built_kinds == ["hnsw"]


def test_neighbor_recall_by_hand():
    exact = NeighborsResults(np.array([[0, 1, 2], [3, 4, 5]]), np.zeros((2, 3), np.float32))
    approx = NeighborsResults(np.array([[2, 1, 9], [3, 4, 5]]), np.zeros((2, 3), np.float32))
    assert neighbor_recall(approx, exact) == pytest.approx(5 / 6)


def test_ivf_recall_on_clustered_cells_is_high():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16)) * 5
    ref = (centers[rng.integers(0, 20, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    queries = (centers[rng.integers(0, 20, 300)] + rng.normal(size=(300, 16))).astype(np.float32)
    report = recall_at_k(ref, queries, k=5, kind="ivf", nprobe=8)
    assert report.n_reference == 4000 and report.n_query == 300
    assert 0.8 < report.recall <= 1.0
    assert recall_at_k(ref, queries, k=5, kind="flat").recall == pytest.approx(1.0)
