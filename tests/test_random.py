"""The seeded row sample every subsampling module draws (``scconcerto._random.sample_rows``)."""

import numpy as np
import pytest

from scconcerto._random import sample_rows


@pytest.mark.parametrize("max_rows", [None, 50, 80])
def test_small_inputs_keep_every_row(max_rows):
    assert np.array_equal(sample_rows(50, max_rows, seed=3), np.arange(50))


def test_sample_is_sorted_distinct_in_range_and_seeded():
    rows = sample_rows(1000, 100, seed=7)
    assert rows.shape == (100,) and np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < 1000
    assert np.array_equal(rows, sample_rows(1000, 100, seed=7))
    assert not np.array_equal(rows, sample_rows(1000, 100, seed=8))


def test_sample_spreads_over_all_rows():
    rows = sample_rows(10_000, 1000, seed=0)
    counts = np.bincount(rows // 1000, minlength=10)  # ~100 per tenth of the rows, not the first 1000 rows
    assert counts.min() > 60 and counts.max() < 140
