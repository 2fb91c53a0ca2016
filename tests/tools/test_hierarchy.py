"""Hierarchical transfer: each finer level is searched among the reference cells of the predicted parent."""

import numpy as np

from scconcerto.tools import hierarchical_transfer, knn, knn_within_groups, l2_normalize, vote


def test_neighbours_stay_within_the_group_and_short_groups_are_padded():
    reference = l2_normalize(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], dtype=np.float32))
    ref_group = np.array([0, 0, 1, 1, 2])
    query = l2_normalize(np.array([[1, 0.05], [1, 0.05], [0.05, 1]], dtype=np.float32))
    nb = knn_within_groups(query, reference, np.array([1, 2, 0]), ref_group, k=2)
    # query 0 lies next to group 0 but is searched in group 1; query 1 in group 2 (one cell: padded)
    assert set(nb.indices[0]) == {2, 3} and nb.indices[0, 0] == 3
    assert nb.indices[1].tolist() == [4, 4] and nb.similarities[1, 1] == 0.0
    assert nb.indices[2].tolist() == [1, 0]


def test_fine_labels_never_contradict_the_coarse_ones():
    # the query's 3 nearest cells: minor 2 (major 1) closest, but minors 0 and 1 (both major 0) together win major 0
    angles = np.array([0.0, 0.45, -0.45, 0.5, -0.5, 2.0, 2.1])
    reference = np.column_stack([np.cos(angles), np.sin(angles)]).astype(np.float32)
    minor = np.array([2, 0, 1, 0, 1, 3, 3])
    major = np.array([0, 0, 1, 1])[minor]
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    flat = vote(knn(query, reference, k=3), minor, 4)
    (_, major_tr), (nb2, minor_tr) = hierarchical_transfer(query, reference, [major, minor], [2, 4], k=3)
    assert major_tr.codes[0] == 0 and flat.codes[0] == 2  # flat: a minor type of the other major group
    assert minor_tr.codes[0] in (0, 1) and np.all(major[nb2.indices] == 0)


def test_vetoed_rows_get_their_nearest_cells_of_the_new_label():
    from scconcerto.tools.hierarchy import with_neighbors_of_labels

    rng = np.random.default_rng(5)
    ref = l2_normalize(rng.standard_normal((60, 8)))
    ref_codes = np.repeat([0, 1, 2], 20)
    query = l2_normalize(rng.standard_normal((10, 8)))
    nb = knn(query, ref, k=4)
    rows = np.array([2, 7])
    out = with_neighbors_of_labels(nb, rows, query[rows], ref, ref_codes, np.array([1, 2]))
    others = np.setdiff1d(np.arange(10), rows)
    np.testing.assert_array_equal(out.indices[others], nb.indices[others])  # the other rows are untouched
    assert set(ref_codes[out.indices[2]]) == {1} and set(ref_codes[out.indices[7]]) == {2}
    best_of_1 = np.argsort(-(ref[20:40] @ query[2]))[:4] + 20  # by hand: the 4 most similar cells of label 1
    np.testing.assert_array_equal(out.indices[2], best_of_1)
    np.testing.assert_allclose(out.similarities[2], ref[best_of_1] @ query[2], rtol=1e-5)
    # a searched subset, numbered by reference_rows
    sub = np.arange(20, 60)
    moved = with_neighbors_of_labels(nb, rows[:1], query[2:3], ref[sub], ref_codes[sub], np.array([1]),
                                     reference_rows=sub)
    np.testing.assert_array_equal(moved.indices[2], best_of_1)
    assert with_neighbors_of_labels(nb, np.zeros(0, int), query[:0], ref, ref_codes, np.zeros(0, int)) is nb
