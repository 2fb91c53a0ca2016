"""The technical shift between sources: near 0 without one whatever the compositions, growing with it."""

import numpy as np
import pytest

from scconcerto.data.source_effect import source_shift


def _blobs(shift: float, n_sources: int = 2, seed: int = 0):
    """Six types in 20 dimensions; sources of very different compositions (a source holds its favoured
    three types nine times as often as the others); source ``s`` moved by ``s * shift`` along one axis."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 20)) * 4
    types, sources = [], []
    for s in range(n_sources):
        for t in range(6):
            n = 180 if (t < 3) == (s % 2 == 0) else 20
            types += [t] * n
            sources += [s] * n
    types, sources = np.array(types), np.array(sources)
    x = centres[types] + rng.normal(size=(types.size, 20))
    x[:, 0] += sources * shift
    return x.astype(np.float32), sources


def test_sources_without_a_technical_effect_show_no_shift_whatever_their_compositions():
    x, sources = _blobs(shift=0.0)
    assert source_shift(x, sources) < 0.05
    assert source_shift(*_blobs(shift=0.0, n_sources=3)) < 0.05


def test_the_shift_grows_with_a_technical_effect():
    shifts = [source_shift(*_blobs(shift=s)) for s in (0.0, 1.0, 3.0, 12.0)]
    assert shifts == sorted(shifts)
    assert shifts[-1] > 0.6
    assert source_shift(*_blobs(shift=12.0, n_sources=3)) > 0.6


def test_codes_need_not_be_contiguous_and_a_sample_measures_alike():
    x, sources = _blobs(shift=3.0)
    full = source_shift(x, sources)
    assert source_shift(x, sources * 7 + 3) == pytest.approx(full)
    assert source_shift(x, sources, max_cells=800) == pytest.approx(full, abs=0.1)


def test_one_source_shows_no_shift_and_mismatched_rows_are_refused():
    x, sources = _blobs(shift=3.0)
    assert source_shift(x, np.zeros(len(x), dtype=int)) == 0.0
    with pytest.raises(ValueError, match="one row per cell"):
        source_shift(x, sources[:-1])
