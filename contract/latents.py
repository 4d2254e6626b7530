"""The seed -> z rule: how a seed becomes the latent a generator is given. Part of the contract, so a
client, the service, the exporter's figures and the tests all draw the very same z from a seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SEED_MAX = 2**32 - 1
MIN_TRUNCATION = (
    0.1  # the service's and evaluate's least t (below it, nearly every entry is drawn again and again)
)
RNG = "numpy.random.default_rng(seed).standard_normal(z_dim, dtype=numpy.float32)"  # manifest latent.rng
RNG_DOC = f"z = {RNG}"
TRUNCATION_DOC = (
    "with truncation t: while any |z[i]| > t, redraw those entries, in index order, "
    "from the same generator: z[mask] = rng.standard_normal(mask.sum(), dtype=numpy.float32)"
)


def z_for_seed(seed: int, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """The latent a seed maps to, [z_dim] float32; see RNG_DOC and TRUNCATION_DOC."""
    assert 0 <= seed <= SEED_MAX, f"seed {seed} outside 0..{SEED_MAX}"
    rng = np.random.default_rng(seed)
    return truncate(rng.standard_normal(z_dim, dtype=np.float32), rng, truncation)


def truncate(z: np.ndarray, rng: np.random.Generator, truncation: float | None) -> np.ndarray:
    """float32 `z` (any shape) with its entries beyond [-t, t] redrawn from `rng` until none is (TRUNCATION_DOC;
    in place); as it is without truncation."""
    if truncation is not None:
        t = np.float32(min(truncation, float(np.finfo(np.float32).max)))  # compared in z's float32
        mask = np.abs(z) > t
        while mask.any():
            z[mask] = rng.standard_normal(int(mask.sum()), dtype=np.float32)
            mask = np.abs(z) > t
    return z


def z_for_seeds(seeds: Sequence[int], z_dim: int, truncation: float | None = None) -> np.ndarray:
    """[len(seeds), z_dim] float32."""
    return np.stack([z_for_seed(s, z_dim, truncation) for s in seeds])
