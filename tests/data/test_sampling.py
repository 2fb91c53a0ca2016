import numpy as np

from scconcerto.data import source_batches, subsample_rows


def test_batches_hold_one_source_cover_every_cell_once_and_have_no_tiny_remainder():
    domains = np.array([0] * 70 + [1] * 33 + [2] * 5)
    for shuffle in (False, True):
        batches = source_batches(domains, batch_size=32, shuffle=shuffle, seed=3)
        allrows = np.concatenate(batches)
        assert sorted(allrows.tolist()) == list(range(len(domains)))
        for b in batches:
            assert len(set(domains[b])) == 1
            assert 2 <= len(b) <= 32
    assert len(source_batches(domains, 32, shuffle=False)) == 3 + 2 + 1


def test_shuffling_is_seeded_and_changes_with_epoch():
    domains = np.repeat([0, 1], 50)
    a = source_batches(domains, 16, True, seed=1, epoch=0)
    b = source_batches(domains, 16, True, seed=1, epoch=0)
    c = source_batches(domains, 16, True, seed=1, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_subsample_rows_caps_each_row_and_keeps_its_entries():
    offsets = np.array([0, 3, 13, 13, 20])
    indices = np.arange(20)
    values = np.arange(20, dtype=np.float32)
    ind, val, off = subsample_rows(indices, values, offsets, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(np.diff(off), [3, 4, 0, 4])
    for r in range(4):
        kept = ind[off[r]:off[r + 1]]
        assert set(kept) <= set(range(offsets[r], offsets[r + 1]))
        assert np.all(np.diff(kept) > 0)  # original order kept
    np.testing.assert_array_equal(val, ind.astype(np.float32))
