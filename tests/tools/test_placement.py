"""Placing query cells on the stored reference UMAP."""

import numpy as np
import pytest

from scconcerto.tools import NeighborsResults, place_on_reference, reference_umap


def test_placement_is_the_similarity_weighted_mean_of_neighbour_coordinates():
    coords = np.array([[0.0, 0.0], [4.0, 2.0], [10.0, -10.0]], dtype=np.float32)
    nb = NeighborsResults(indices=np.array([[0, 1], [2, 2]]),
                          similarities=np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(place_on_reference(nb, coords), [[3.0, 1.5], [10.0, -10.0]])


@pytest.mark.slow
def test_reference_umap_is_seeded():
    rng = np.random.default_rng(0)
    directions = np.eye(8)[[0, 1]]
    emb = np.vstack([rng.normal(d, 0.1, (40, 8)) for d in directions]).astype(np.float32)
    a, b = reference_umap(emb, n_neighbors=10, seed=3), reference_umap(emb, n_neighbors=10, seed=3)
    assert a.shape == (80, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # the two groups stay apart: every cell is closer to its group's centre than to the other's
    centres = np.stack([a[:40].mean(0), a[40:].mean(0)])
    own = np.linalg.norm(a[:, None] - centres[None], axis=2).argmin(1)
    assert np.array_equal(own, np.repeat([0, 1], 40))
