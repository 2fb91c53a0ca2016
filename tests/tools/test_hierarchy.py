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
