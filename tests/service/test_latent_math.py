"""The documented seed -> z mapping, truncation and interpolation paths (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from contract import z_for_seed
from service.inference.latents import frame_count, interpolation_path, lerp, slerp


def test_z_is_the_documented_numpy_draw() -> None:
    expected = np.random.default_rng(1234).standard_normal(512, dtype=np.float32)
    assert np.array_equal(z_for_seed(1234, 512), expected)
    assert z_for_seed(0, 8).dtype == np.float32
    assert z_for_seed(2**32 - 1, 8).shape == (8,)


def test_truncation_redraws_in_index_order_from_the_same_generator() -> None:
    t = 0.5
    rng = np.random.default_rng(7)
    expected = rng.standard_normal(64, dtype=np.float32)
    mask = np.abs(expected) > t
    while mask.any():
        expected[mask] = rng.standard_normal(int(mask.sum()), dtype=np.float32)
        mask = np.abs(expected) > t
    z = z_for_seed(7, 64, truncation=t)
    assert np.array_equal(z, expected)
    assert np.abs(z).max() <= t
    untouched = np.abs(np.random.default_rng(7).standard_normal(64, dtype=np.float32)) <= t
    assert np.array_equal(
        z[untouched], np.random.default_rng(7).standard_normal(64, dtype=np.float32)[untouched]
    )


def test_slerp_ends_at_the_waypoints_and_keeps_the_norm() -> None:
    a, b = z_for_seed(1, 128).astype(np.float64), z_for_seed(2, 128).astype(np.float64)
    t = np.linspace(0, 1, 9)
    path = slerp(a, b, t)
    assert np.allclose(path[0], a) and np.allclose(path[-1], b)
    norms = np.linalg.norm(path, axis=1)
    assert np.all(norms >= min(np.linalg.norm(a), np.linalg.norm(b)) - 1e-9)  # lerp would dip in between
    assert np.linalg.norm(lerp(a, b, np.array([0.5]))[0]) < norms[4]
    assert np.allclose(slerp(a, a, t), np.tile(a, (9, 1)))  # parallel: falls back to lerp


@pytest.mark.parametrize("loop", [False, True])
def test_path_frame_counts(loop: bool) -> None:
    points = np.stack([z_for_seed(s, 16) for s in (1, 2, 3)])
    path = interpolation_path(points, 4, "slerp", loop)
    assert path.shape == (frame_count(3, 4, loop), 16) and path.dtype == np.float32
    assert len(path) == (12 if loop else 9)
    assert np.allclose(path[0], points[0]) and np.allclose(path[4], points[1], atol=1e-6)
    if not loop:
        assert np.allclose(path[-1], points[-1])
