"""Losses as plain functions: WGAN-GP with drift (paper default), non-saturating logistic with R1."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Critic = Callable[[Tensor], Tensor]


def gradient_penalty(D: Critic, real: Tensor, fake: Tensor, eps: Tensor, target: float = 1.0) -> Tensor:
    """Per-sample (||grad_x D(x_hat)||_2 - target)^2 / target^2 at x_hat = lerp(real, fake, eps); [N]."""
    x_hat = torch.lerp(real.detach().float(), fake.detach().float(), eps.view(-1, 1, 1, 1)).requires_grad_(
        True
    )
    score = D(x_hat)
    (grad,) = torch.autograd.grad(score.float().sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return (norm - target).pow(2) / target**2


def r1_penalty(D: Critic, real: Tensor) -> Tensor:
    """Per-sample squared gradient norm of D at the real images; [N]."""
    x = real.detach().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).float().sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1)


def wgan_d_loss(real_score: Tensor, fake_score: Tensor, gp: Tensor, gp_lambda: float, drift: float) -> Tensor:
    """WGAN-GP critic loss with the paper's drift term eps * D(real)^2."""
    rs, fs = real_score.float().flatten(), fake_score.float().flatten()
    return (fs - rs + gp_lambda * gp + drift * rs.pow(2)).mean()


def wgan_g_loss(fake_score: Tensor) -> Tensor:
    return -fake_score.float().mean()


def logistic_d_loss(real_score: Tensor, fake_score: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Non-saturating logistic D loss; one-sided label smoothing moves only the real target to 1 - s."""
    rs, fs = real_score.float().flatten(), fake_score.float().flatten()
    real_target = torch.full_like(rs, 1.0 - label_smoothing)
    return F.binary_cross_entropy_with_logits(rs, real_target) + F.softplus(fs).mean()


def logistic_g_loss(fake_score: Tensor) -> Tensor:
    return F.softplus(-fake_score.float()).mean()
