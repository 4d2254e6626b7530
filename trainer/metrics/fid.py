"""Fréchet Inception Distance (Heusel et al. 2017) between two sets of Inception features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.metrics.inception import FEATURE_DIM

FID_MIN_IMAGES = FEATURE_DIM  # below this the 2048x2048 covariance cannot have full rank


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of features [N, D]."""

    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D, D]
    num: int

    @classmethod
    def of(cls, feats: np.ndarray) -> FeatureStats:
        assert feats.ndim == 2 and len(feats) >= 2, f"need features [N >= 2, D], got {feats.shape}"
        f = feats.astype(np.float64)
        return cls(f.mean(axis=0), np.cov(f, rowvar=False), len(f))


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues cut to 0)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is taken as the sum of square roots of the eigenvalues of the symmetric
    S_a^(1/2) S_b S_a^(1/2), which has the same eigenvalues as S_a S_b: exact for the rank-deficient
    covariances of small sets, where a general matrix square root goes complex."""
    assert a.mu.shape == b.mu.shape, f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}"
    root_a = _sym_sqrt(a.sigma)
    m = root_a @ b.sigma @ root_a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * tr_covmean)


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D]."""
    return frechet_distance(FeatureStats.of(feats_a), FeatureStats.of(feats_b))
