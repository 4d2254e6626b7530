"""Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) and the ProGAN paper's diversity figure: mean MS-SSIM
over random pairs of images (lower = more diverse; compare with the same figure on real data)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
WINDOW, SIGMA = 11, 1.5
K1, K2, MAX_VAL = 0.01, 0.03, 255.0
MIN_COARSEST = 4  # smallest side allowed at the coarsest scale
MAX_PAIRS = 10_000


def num_scales(side: int) -> int:
    """5 scales (the standard) when the image allows, else as many as keep the coarsest side >= 4 px."""
    if side < MIN_COARSEST:
        raise ValueError(f"MS-SSIM needs images of at least {MIN_COARSEST}x{MIN_COARSEST}, got {side}x{side}")
    return min(len(WEIGHTS), 1 + int(math.log2(side / MIN_COARSEST)))


def scale_weights(levels: int) -> list[float]:
    """The first `levels` standard weights, renormalised to sum to 1."""
    w = WEIGHTS[:levels]
    return [x / sum(w) for x in w]


def _gauss_window(side: int, device: torch.device) -> Tensor:
    """Separable Gaussian [1, 1, k, 1]; at scales smaller than 11 px the window shrinks to the image and
    sigma with it, as in the implementation the ProGAN authors used."""
    k = min(WINDOW, side)
    sigma = k * SIGMA / WINDOW
    x = torch.arange(k, dtype=torch.float64, device=device) - (k - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).view(1, 1, k, 1)


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """'Valid' separable Gaussian filter of [N, C, H, W], channel by channel: a weighted sum of the window's
    shifted slices along H, then along W. The same sums as a depthwise conv2d, but the CPU's float64
    depthwise convolution is slow (MS-SSIM measured 7-9x faster this way, equal to 1e-15:
    bench/evaluate_parts.py)."""
    taps = g.flatten().tolist()
    out = x
    for dim in (-2, -1):
        n = out.shape[dim] - len(taps) + 1
        acc = out.narrow(dim, 0, n) * taps[0]
        for i, w in enumerate(taps[1:], start=1):
            acc.add_(out.narrow(dim, i, n), alpha=w)
        out = acc
    return out


def _ssim_terms(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: mean SSIM and mean contrast-structure term, over pixels and channels."""
    g = _gauss_window(a.shape[-1], a.device)
    c1, c2 = (K1 * MAX_VAL) ** 2, (K2 * MAX_VAL) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim(a: Tensor, b: Tensor, levels: int | None = None) -> Tensor:
    """MS-SSIM of image pairs [N, 3, H, W] (0..255, any float or uint8 dtype) -> [N] in [0, 1].

    Negative contrast-structure terms are cut to 0 before the fractional powers."""
    assert a.shape == b.shape and a.ndim == 4, (
        f"need two equal [N, C, H, W] batches, got {a.shape}, {b.shape}"
    )
    assert a.shape[-1] == a.shape[-2], "square images only"
    levels = levels or num_scales(a.shape[-1])
    w = scale_weights(levels)
    x, y = a.to(torch.float64), b.to(torch.float64)
    out = torch.ones(a.shape[0], dtype=torch.float64, device=a.device)
    for i in range(levels):
        ssim, cs = _ssim_terms(x, y)
        term = ssim if i == levels - 1 else cs
        out = out * term.clamp(min=0.0) ** w[i]
        if i < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return out


def pair_count(n: int, max_pairs: int = MAX_PAIRS) -> int:
    return min(max_pairs, n // 2)


def consecutive_pairs(images: np.ndarray, max_pairs: int, device: str | torch.device = "cpu") -> Tensor:
    """MS-SSIM of pairs (image 2i, image 2i + 1) of a uint8 batch [n, R, R, 3], at most `max_pairs` -> [k].

    With i.i.d. samples (generated images) or a random order (real ones) these are random pairs."""
    k = min(len(images) // 2, max_pairs)
    if k <= 0:
        return torch.zeros(0, dtype=torch.float64)
    x = torch.as_tensor(np.ascontiguousarray(images[: 2 * k]), device=device).permute(0, 3, 1, 2)
    return ms_ssim(x[0::2], x[1::2]).cpu()
