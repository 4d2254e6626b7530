"""Interpolation paths between latents (the seed -> z rule itself is part of the contract: contract/latents.py)."""

from __future__ import annotations

from typing import Literal

import numpy as np

Method = Literal["slerp", "lerp"]


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation of direction, linear of length; a, b [z_dim], t [T] -> [T, z_dim]."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return lerp(a, b, t)
    cos = np.clip(np.dot(a / na, b / nb), -1.0, 1.0)
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:  # (anti)parallel: the great circle is undefined
        return lerp(a, b, t)
    t = t[:, None]
    direction = (np.sin((1 - t) * omega) * a / na + np.sin(t * omega) * b / nb) / np.sin(omega)
    return direction * ((1 - t) * na + t * nb)


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[:, None]
    return (1 - t) * a + t * b


def interpolation_path(waypoints: np.ndarray, steps: int, method: Method, loop: bool) -> np.ndarray:
    """[W, z_dim] waypoints -> [frames, z_dim] float32: `steps` frames per segment, then the end point.

    With `loop`, the path returns to the first waypoint and the end point is left out, so the frames
    repeat seamlessly: frames = W * steps; otherwise frames = (W - 1) * steps + 1.
    """
    points = np.concatenate([waypoints, waypoints[:1]]) if loop else waypoints
    step = slerp if method == "slerp" else lerp
    t = np.arange(steps, dtype=np.float64) / steps
    pieces = [
        step(points[i].astype(np.float64), points[i + 1].astype(np.float64), t)
        for i in range(len(points) - 1)
    ]
    for piece, start in zip(pieces, points, strict=False):
        piece[0] = start  # exact: a waypoint's frame is the very image its seed or latent gives
    if not loop:
        pieces.append(points[-1:].astype(np.float64))
    return np.concatenate(pieces).astype(np.float32)


def frame_count(n_waypoints: int, steps: int, loop: bool) -> int:
    return n_waypoints * steps if loop else (n_waypoints - 1) * steps + 1
