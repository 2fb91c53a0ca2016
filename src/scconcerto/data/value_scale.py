"""Putting a dataset's expression values on the reference's scale when the two were normalized differently.

scConcerto normalizes raw counts itself (``log1p`` of counts per 10,000) and takes log-normalized values as
they come. When a model's reference holds values normalized by another pipeline (``log2`` of counts per
million, say: non-zero values around 5-15) and a query holds raw counts (which become values around 1-3), or
the reverse, every gene of every query cell sits at another level than in the reference: the network and the
reference's scaled expression space read the whole query as cells that express little, whatever their type.

The reference keeps a profile of its values (:func:`value_profile`: the percentiles of its normalized non-zero
values). A dataset whose values are of another kind than the reference's (counts against normalized values)
has its non-zero values mapped through the monotone function that gives them the same distribution
(:class:`ValueMap`, quantile matching); zeros stay zeros and each cell keeps the order of its genes. Data of
the reference's own kind are used as they are: both normalized by scConcerto, or both by the user, whose
pipeline may well be the same (their values then differ by biology and depth, which matching would erase).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._random import sample_rows

if TYPE_CHECKING:
    from .cells import CellMatrix

__all__ = ["PROFILE_CELLS", "PROFILE_POINTS", "ValueMap", "check_profile", "matching_map", "needs_matching",
           "value_profile"]

#: Percentiles kept in a profile (0, 1, ..., 100).
PROFILE_POINTS = 101
#: Cells read for a profile at most (a seeded sample): percentiles of values, not sums.
PROFILE_CELLS = 20_000


def value_profile(cells: "CellMatrix", seed: int = 0, max_cells: int = PROFILE_CELLS) -> np.ndarray:
    """``(PROFILE_POINTS,)`` float64: the percentiles of the cells' normalized non-zero values in the model's
    genes (of a seeded sample of ``max_cells`` cells); empty when the cells hold no such value."""
    _, values, _ = cells.rna_rows(sample_rows(cells.n_cells, max_cells, seed))
    values = values[values > 0]
    if values.size == 0:
        return np.zeros(0)
    return np.percentile(values.astype(np.float64), np.linspace(0.0, 100.0, PROFILE_POINTS))


def check_profile(profile: list[float] | np.ndarray) -> np.ndarray:
    """The profile as an array; ``ValueError`` unless it is empty or ``PROFILE_POINTS`` finite, non-negative,
    non-decreasing values."""
    p = np.asarray(profile, dtype=np.float64)
    if p.size == 0:
        return p
    if p.shape != (PROFILE_POINTS,) or not np.all(np.isfinite(p)) or p[0] < 0 or np.any(np.diff(p) < 0):
        raise ValueError(f"a value profile holds {PROFILE_POINTS} finite, non-negative, non-decreasing "
                         f"percentiles; got {p.size} values")
    return p


def needs_matching(kind: str, reference_kind: str) -> bool:
    """Whether values of ``kind`` must be matched to a reference of ``reference_kind``: exactly one of the two
    holds raw counts (normalized by scConcerto), the other values normalized elsewhere."""
    return (kind == "counts") != (reference_kind == "counts")


@dataclass(frozen=True)
class ValueMap:
    """A monotone map of normalized non-zero values: piecewise linear from the ``source`` percentiles to the
    ``target`` percentiles (values beyond the ends are held at the ends' targets)."""

    source: np.ndarray
    target: np.ndarray

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """The mapped values (float32); zeros stay zero."""
        values = np.asarray(values, dtype=np.float32)
        out = np.interp(values, self.source, self.target).astype(np.float32)
        return np.where(values > 0, out, np.float32(0.0))


def matching_map(profile: np.ndarray, reference_profile: np.ndarray) -> ValueMap | None:
    """The :class:`ValueMap` that gives values of ``profile`` the distribution of ``reference_profile``
    (``None`` when either is empty). Ties in ``profile`` (many values equal, as the counts of 1 of a shallow
    dataset) map to the mean of their target percentiles."""
    source, target = check_profile(profile), check_profile(reference_profile)
    if source.size == 0 or target.size == 0:
        return None
    unique, inverse = np.unique(source, return_inverse=True)
    mean_target = np.bincount(inverse, weights=target) / np.bincount(inverse)
    if unique.size == 1:  # every value equal: one point, mapped to the reference's median
        return ValueMap(np.array([unique[0], unique[0] + 1.0]), np.full(2, float(np.median(target))))
    return ValueMap(unique, np.maximum.accumulate(mean_target))
