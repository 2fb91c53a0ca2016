"""Whether a reference's sources differ by a technical effect, beyond their cell-type compositions.

Source-specific batch normalization (one set of statistics per source) removes a
technical shift between sources, such as chemistries or technologies. Sources of one
technology (donors, samples, plates) often carry little of it, and then per-source
statistics mostly add the error of estimating them, worst where the sources differ in
composition: a donor holding nearly all cells of a type has that type in its mean.
Such sources are better normalized together, as one.

:func:`source_shift` measures the technical shift in the expression sketch of the
reference from matched cells, as mutual nearest neighbours match them (Haghverdi et
al., 2018): a cell of one source and a cell of the others that are each among the
other's nearest are taken to be of one type. If the sources differ only in which
types they hold, the differences within such pairs point every way and cancel; a
technical effect moves every pair the same way. The shift is the share of the pairs'
mean squared difference that their common difference explains: about ``0`` without a
technical effect, whatever the compositions, and towards ``1`` as the effect outgrows
the spread within types. Training normalizes the sources together below
:data:`SHARED_BELOW` (``source_norm="auto"``, :meth:`scconcerto.Concerto.train`).
"""

from __future__ import annotations

import numpy as np

from .._random import sample_rows

__all__ = ["MAX_SOURCE_PAIRS", "SHARED_BELOW", "SHIFT_CELLS", "SHIFT_NEIGHBORS", "source_shift"]

#: Sources share one normalization below this shift. Chosen on development data only
#: (``benchmarks/ABLATIONS_SOURCE_NORM.md``): single-technology data split into donors without a technical effect
#: measure at most 0.02, and there shared statistics are more accurate and mix as well; from 0.075 up (the same
#: donors with a simulated gene-wise effect, cell-line plates, chemistries, a stimulation) shared statistics
#: leave the sources apart (batch mixing under Harmony's), so 0.05 lies between the two.
SHARED_BELOW = 0.05
#: Nearest cells of the other sources searched per cell (a pair is mutual when each is among the other's).
SHIFT_NEIGHBORS = 5
#: At most this many cells (a seeded sample) are measured: the shift is a ratio of means, not a sum.
SHIFT_CELLS = 20_000
#: At most this many pairs of sources (a seeded sample) are compared.
MAX_SOURCE_PAIRS = 500


def source_shift(components: np.ndarray, domains: np.ndarray, seed: int = 0, k: int = SHIFT_NEIGHBORS,
                 max_cells: int = SHIFT_CELLS) -> float:
    """The share of the difference between matched cells of different sources that is one common shift.

    Each two sources ``a`` and ``b`` are matched: pairs ``(i, j)`` of a cell ``i`` of ``a`` and a cell ``j``
    of ``b``, each among the other's ``k`` nearest of its source (cosine, in ``components``). With ``D``
    their differences ``components[j] - components[i]``, the shift between ``a`` and ``b`` is
    ``|mean(D)|^2 / mean(|D|^2)``; the shifts of all pairs of sources (at most ``MAX_SOURCE_PAIRS``, a seeded
    sample) are averaged, weighted by their matched pairs.

    Parameters
    ----------
    components
        ``(n_cells, c)`` expression components (e.g. :func:`~scconcerto.data.positives.expression_space`).
    domains
        ``(n_cells,)`` source codes.
    seed
        Seed of the samples (above ``max_cells`` cells, ``MAX_SOURCE_PAIRS`` pairs of sources).
    k
        Neighbours searched per cell.
    max_cells
        Cells measured at most.

    Returns
    -------
    float
        From 0 to 1; ``0.0`` for a single source, ``1.0`` when no two sources have a mutual match.
    """
    from ..search.neighbors import knn

    z = np.asarray(components, dtype=np.float32)
    d = np.asarray(domains, dtype=np.int64)
    if z.ndim != 2 or z.shape[0] != d.shape[0]:
        raise ValueError(f"components {z.shape} and domains {d.shape} must have one row per cell")
    if len(z) > max_cells:
        rows = sample_rows(len(z), max_cells, seed)
        z, d = z[rows], d[rows]
    sources = np.unique(d)
    if len(sources) < 2:
        return 0.0
    pairs_of_sources = [(a, b) for n, a in enumerate(sources) for b in sources[n + 1:]]
    if len(pairs_of_sources) > MAX_SOURCE_PAIRS:
        rng = np.random.default_rng(seed)
        pairs_of_sources = [pairs_of_sources[i] for i in np.sort(rng.choice(len(pairs_of_sources),
                                                                             MAX_SOURCE_PAIRS, replace=False))]
    common = spread = 0.0
    pairs = 0
    for a, b in pairs_of_sources:
        mine, others = np.flatnonzero(d == a), np.flatnonzero(d == b)
        kk = int(min(k, len(mine), len(others)))
        forward = knn(z[mine], z[others], k=kk).indices  # (n_mine, kk) rows of `others`
        backward = knn(z[others], z[mine], k=kk).indices  # (n_others, kk) rows of `mine`
        i = np.repeat(np.arange(len(mine)), kk)
        j = forward.ravel()
        mutual = (backward[j] == i[:, None]).any(axis=1)
        if not mutual.any():
            continue
        diff = z[others[j[mutual]]].astype(np.float64) - z[mine[i[mutual]]]
        n = int(mutual.sum())
        common += n * float(np.sum(diff.mean(axis=0) ** 2))
        spread += n * float(np.mean(np.sum(diff**2, axis=1)))
        pairs += n
    if pairs == 0 or spread <= 0:
        return 1.0
    return common / spread
