"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 estimate with the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets. Unbiased at any set size, so it
stays meaningful where FID (biased, needs thousands of images) does not."""

from __future__ import annotations

import numpy as np

KID_SUBSETS = 100  # as in the KID paper and StyleGAN2-ADA's metric
KID_SUBSET_SIZE = 1000


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x [m, d] and y [n, d]: the diagonals of k(x, x) and k(y, y) are left out."""
    m, n, d = len(x), len(y), x.shape[1]
    assert m >= 2 and n >= 2, "the unbiased MMD needs at least 2 samples on each side"
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid_plan(n_real: int, n_fake: int) -> tuple[int, int]:
    """(number of subsets, subset size). When a subset is the whole of both sets, one subset says it all."""
    size = min(KID_SUBSET_SIZE, n_real, n_fake)
    return (1 if size == n_real == n_fake else KID_SUBSETS), size


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std over subsets) of the unbiased MMD^2 on random subsets, as planned by kid_plan."""
    assert real.ndim == 2 and real.shape[1:] == fake.shape[1:], (
        f"features differ: {real.shape} vs {fake.shape}"
    )
    num_subsets, size = kid_plan(len(real), len(fake))
    rng = np.random.default_rng(seed)
    vals = [
        polynomial_mmd2(
            real[rng.choice(len(real), size, replace=False)].astype(np.float64),
            fake[rng.choice(len(fake), size, replace=False)].astype(np.float64),
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(vals)), float(np.std(vals))
