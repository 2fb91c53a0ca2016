"""Alignment and uniformity (Wang & Isola 2020) against exact values."""

from __future__ import annotations

import numpy as np
import pytest

from scconcerto._errors import InputError
from scconcerto.metrics import alignment, uniformity


def test_alignment_identical_views_is_zero():
    z = np.random.default_rng(0).normal(size=(50, 8))
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-10)
    # rows are normalized first: rescaled views are aligned too
    assert alignment(z, 3.0 * z) == pytest.approx(0.0, abs=1e-10)


def test_alignment_by_hand():
    # orthogonal unit vectors: ||e1 - e2||^2 = 2; antipodal: 4
    assert alignment(np.array([[1.0, 0.0]]), np.array([[0.0, 5.0]])) == pytest.approx(2.0)
    z = np.random.default_rng(1).normal(size=(20, 4))
    assert alignment(z, -z) == pytest.approx(4.0, rel=1e-6)
    # mean of 0 and 2
    z1 = np.array([[1.0, 0.0], [1.0, 0.0]])
    z2 = np.array([[2.0, 0.0], [0.0, 1.0]])
    assert alignment(z1, z2) == pytest.approx(1.0)


def test_uniformity_point_mass_is_zero():
    z = np.tile([[0.3, -1.2, 2.0]], (40, 1))
    assert uniformity(z) == pytest.approx(0.0, abs=1e-12)


def test_uniformity_by_hand():
    # two antipodal points: ||x - y||^2 = 4 -> log exp(-2*4) = -8
    assert uniformity(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-8.0)
    # three points at 120 degrees: chord^2 = 3 for every pair -> -6
    ang = np.deg2rad([0.0, 120.0, 240.0])
    z = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    assert uniformity(z) == pytest.approx(-6.0, rel=1e-6)
    assert uniformity(z, t=1.0) == pytest.approx(-3.0, rel=1e-6)


def test_uniformity_spread_is_negative_and_subsampling_is_seeded():
    z = np.random.default_rng(2).normal(size=(6000, 16))
    u = uniformity(z, max_cells=1000, seed=3)
    assert -8.0 < u < -1.0
    assert uniformity(z, max_cells=1000, seed=3) == u
    # a tight cluster is less uniform than spread points
    tight = np.ones((200, 16)) + 0.01 * z[:200]
    assert uniformity(tight) > u


def test_bad_inputs_raise():
    with pytest.raises(InputError):
        alignment(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(InputError):
        uniformity(np.ones((1, 2)))
