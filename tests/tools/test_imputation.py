"""Imputation as the mean of the neighbours' reference profiles."""

import numpy as np
import pytest
import scipy.sparse as sp

from scconcerto import InputError
from scconcerto.tools import NeighborsResults, impute_from_neighbors


@pytest.fixture
def neighbors():
    return NeighborsResults(indices=np.array([[0, 2], [1, 1], [3, 0]]),
                            similarities=np.array([[0.9, 0.3], [0.5, 0.5], [0.0, 0.0]], dtype=np.float32))


def test_mean_of_neighbours_by_hand(neighbors):
    values = np.array([[1.0, 0.0], [2.0, 4.0], [3.0, 8.0], [5.0, 1.0]])
    out = impute_from_neighbors(neighbors, values)
    np.testing.assert_allclose(out, [[2.0, 4.0], [2.0, 4.0], [3.0, 0.5]])
    assert out.dtype == np.float32
    # similarity-weighted: 0.75 / 0.25; all-zero similarities fall back to equal weights
    weighted = impute_from_neighbors(neighbors, values, weighted=True)
    np.testing.assert_allclose(weighted, [[0.75 * 1 + 0.25 * 3, 0.25 * 8], [2.0, 4.0], [3.0, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(impute_from_neighbors(neighbors, sp.csr_matrix(values)), out)


def test_indices_outside_the_reference_are_an_error(neighbors):
    with pytest.raises(InputError, match="reference's rows"):
        impute_from_neighbors(neighbors, np.ones((2, 3)))
