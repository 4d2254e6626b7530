"""Networks and losses against hand-computed values (CPU, tiny, fixed seeds)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.train_throughput import first_pixel_norm
from trainer.config import NetConfig
from trainer.losses import gradient_penalty, logistic_d_loss, wgan_d_loss
from trainer.networks import (
    DCGANDiscriminator,
    DCGANGenerator,
    Discriminator,
    EqualizedConv2d,
    EqualizedLinear,
    Generator,
    MinibatchStd,
    PixelNorm,
)

CFG = NetConfig(z_dim=16, max_res=32, fmap_base=64, fmap_max=16)


@pytest.fixture(scope="module")
def nets() -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator(CFG).eval(), Discriminator(CFG).eval()


@pytest.mark.parametrize("res", [4, 8, 16, 32])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_shapes_at_every_resolution_and_alpha(nets, res: int, alpha: float) -> None:
    G, D = nets
    z = torch.randn(4, CFG.z_dim)
    img = G(z, res, alpha)
    assert img.shape == (4, 3, res, res)
    assert D(img, res, alpha).shape == (4, 1)


@pytest.mark.parametrize("res", [8, 16, 32])
def test_fresh_resolution_at_alpha0_is_previous_output_upsampled(nets, res: int) -> None:
    G, D = nets
    z = torch.randn(4, CFG.z_dim)
    grown = G(z, res, 0.0)
    previous = F.interpolate(G(z, res // 2, 1.0), scale_factor=2, mode="nearest")
    assert torch.equal(grown, previous)
    img = torch.randn(4, 3, res, res)
    assert torch.equal(D(img, res, 0.0), D(F.avg_pool2d(img, 2), res // 2, 1.0))


def test_channels_follow_fmap_base_and_max() -> None:
    paper = NetConfig(max_res=1024)
    assert [paper.nf(r) for r in paper.resolutions] == [512, 512, 512, 512, 256, 128, 64, 32, 16]


def test_equalized_lr_scales_at_run_time() -> None:
    lin = EqualizedLinear(4, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    assert lin(torch.ones(1, 4)).item() == pytest.approx(4 * math.sqrt(2) / math.sqrt(4))
    conv = EqualizedConv2d(2, 1, 3, gain=1.0)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.ones(1, 2, 5, 5))
    assert out[0, 0, 2, 2].item() == pytest.approx(18 / math.sqrt(18))  # 2*3*3 taps, fan_in 18
    assert torch.allclose(EqualizedLinear(512, 8).weight.std(), torch.tensor(1.0), atol=0.05)  # N(0, 1) init


def test_pixel_norm_hand_computed() -> None:
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    y = PixelNorm()(x)
    assert torch.allclose(y.flatten(), torch.tensor([3.0, 4.0]) / math.sqrt(12.5 + 1e-8))


def test_pixel_norm_keeps_bf16_and_sums_in_fp32() -> None:
    """bf16 activations stay bf16 (no fp32 activations for the next layer under autocast), and their norm is
    taken in fp32: the result is the fp32 computation rounded once, not bf16 rounding at every sum."""
    x = torch.randn(4, 512, 8, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = PixelNorm()(x)
    assert out.dtype == torch.bfloat16
    scale = torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + 1e-8).bfloat16()
    assert torch.equal(out, x * scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert PixelNorm()(x).dtype == torch.bfloat16


def test_pixel_norm_backward_is_the_derivative() -> None:
    """The hand-written backward against finite differences (fp64) and against autograd's backward of the
    first form (fp32), for feature maps and for the latent's [N, C] form; no grad, the same output."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(PixelNorm(), (x,))
    for shape in ((4, 16, 8, 8), (4, 32)):
        x = torch.randn(*shape, generator=g, requires_grad=True)
        dy = torch.randn(*shape, generator=g)
        (got,) = torch.autograd.grad(PixelNorm()(x), x, dy)
        (want,) = torch.autograd.grad(first_pixel_norm(x), x, dy)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(PixelNorm()(x), first_pixel_norm(x), rtol=1e-5, atol=1e-6)


def test_pixel_norm_backward_under_bf16_autocast() -> None:
    """Under autocast the gradient keeps the activation's dtype and is no further from the fp32 one than
    autograd's own backward of the bf16 computation is."""
    g = torch.Generator().manual_seed(2)
    x32 = torch.randn(8, 64, 8, 8, generator=g)
    dy = torch.randn(8, 64, 8, 8, generator=g).bfloat16()
    (ref,) = torch.autograd.grad(first_pixel_norm(x32.requires_grad_(True)), x32, dy.float())
    x = x32.detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = PixelNorm()(x)
    assert y.dtype == torch.bfloat16
    (got,) = torch.autograd.grad(y, x, dy)
    assert got.dtype == torch.bfloat16
    xb = x32.detach().bfloat16().requires_grad_(True)
    (theirs,) = torch.autograd.grad(first_pixel_norm(xb), xb, dy)
    err, err_theirs = ((t.float() - ref).abs().mean().item() for t in (got, theirs))
    assert err <= err_theirs * 1.05 and err < 0.01 * ref.abs().mean().item()


def test_minibatch_stddev_hand_computed() -> None:
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 2).contiguous()
    y = MinibatchStd(group_size=4)(x)
    assert y.shape == (4, 3, 2, 2)
    assert torch.allclose(y[:, 2], torch.full((4, 2, 2), math.sqrt(1.25 + 1e-8)))
    # two groups of 2: sample i belongs to group i % 2 -> {0, 2} and {1, 3}: std 1 each
    y2 = MinibatchStd(group_size=2)(x)
    assert torch.allclose(y2[:, 2], torch.ones(4, 2, 2), atol=1e-6)


def test_gradient_penalty_known_answer() -> None:
    w = torch.zeros(1, 3, 2, 2)
    w[0, 0, 0, 0], w[0, 1, 1, 1] = 2.0, math.sqrt(5)  # ||w|| = 3

    def critic(x: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1, keepdim=True)

    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    gp = gradient_penalty(critic, real, fake, torch.rand(5))
    assert torch.allclose(gp, torch.full((5,), 4.0))  # (3 - 1)^2
    loss = wgan_d_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([4.0]), 10.0, 0.001)
    assert loss.item() == pytest.approx(0.5 - 1.0 + 40.0 + 0.001)


def test_one_sided_label_smoothing_moves_only_the_real_target() -> None:
    zero = torch.zeros(3)
    assert logistic_d_loss(zero, zero, 0.1).item() == pytest.approx(2 * math.log(2))
    big = torch.full((3,), 20.0)
    assert logistic_d_loss(big, -big, 0.0).item() < 1e-6
    assert logistic_d_loss(big, -big, 0.1).item() > 1.0  # smoothing punishes over-confident reals


def test_spectral_norm_option_builds_and_runs() -> None:
    D = Discriminator(NetConfig(z_dim=8, max_res=8, fmap_base=32, fmap_max=8, spectral_norm=True))
    assert D(torch.randn(4, 3, 8, 8), 8).shape == (4, 1)


def test_dcgan_baseline_shapes() -> None:
    cfg = NetConfig(arch="dcgan", z_dim=16, max_res=32, dcgan_width=8)
    G, D = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    img = G(torch.randn(4, 16))
    assert img.shape == (4, 3, 32, 32) and img.abs().max() <= 1
    assert D(img).shape == (4, 1)


def test_fused_up_and_down_convs_equal_the_plain_layers() -> None:
    """The 4x4 stride-2 kernels (the official code's fused_scale) against nearest up-sampling then the 3x3
    conv, and the 3x3 conv then 2x2 average pooling: the same numbers to float64 rounding."""
    torch.manual_seed(0)
    conv = EqualizedConv2d(5, 7, 3).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    up = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert conv.up2(x).shape == up.shape == (2, 7, 16, 16)
    assert torch.allclose(conv.up2(x), up, rtol=0, atol=1e-12)
    down = F.avg_pool2d(conv(x), 2)
    assert conv.down2(x).shape == down.shape == (2, 7, 4, 4)
    assert torch.allclose(conv.down2(x), down, rtol=0, atol=1e-12)


@pytest.mark.parametrize("res", [8, 16, 32])
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_fused_generator_is_the_same_function(nets, res: int, alpha: float) -> None:
    """G with fused up-sampling convs, given the plain G's weights, draws the same images: a model trained
    either way can be served either way (the export writes the plain form)."""
    G, _ = nets
    fused = Generator(dataclasses.replace(CFG, fused_scale=True)).double().eval()
    fused.load_state_dict(G.state_dict())
    plain = Generator(CFG).double().eval()
    plain.load_state_dict(G.state_dict())
    z = torch.randn(3, CFG.z_dim, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(fused(z, res, alpha), plain(z, res, alpha), rtol=0, atol=1e-10)


def test_fused_discriminator_block_pools_before_its_activation() -> None:
    """D's fused block is lrelu(pool(conv1(...))), as the official fused_scale (pooling and leaky ReLU do
    not commute, so this is a choice of network, kept in NetConfig and every checkpoint)."""
    from trainer.networks import DBlock

    torch.manual_seed(1)
    block = DBlock(4, 6, fused=True).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    h = F.leaky_relu(block.conv0(x), 0.2)
    want = F.leaky_relu(F.avg_pool2d(block.conv1(h), 2), 0.2)
    assert torch.allclose(block(x), want, rtol=0, atol=1e-12)
    D = Discriminator(dataclasses.replace(CFG, fused_scale=True))
    assert D.state_dict().keys() == Discriminator(CFG).state_dict().keys()  # the same parameters


def fade_grads(G: Generator, D: Discriminator, g: nn.Module, d: nn.Module, bf16: bool) -> dict[str, Tensor]:
    """Every parameter's gradient of D's mean score of G's fakes at 8 px mid-fade, run through `g` and `d`
    (G and D, or their compiled forms)."""
    G.zero_grad(set_to_none=True)
    D.zero_grad(set_to_none=True)
    z = torch.randn(8, G.cfg.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        score = d(g(z, 8, torch.tensor(0.5)), 8, torch.tensor(0.5))
    score.float().mean().backward()
    named = [*G.named_parameters(prefix="G"), *D.named_parameters(prefix="D")]
    return {k: p.grad.clone() for k, p in named if p.grad is not None}


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor on the CPU needs a C++ compiler"
)
@pytest.mark.parametrize("fused", [False, True])
def test_compiled_fade_trains_every_layer_under_bf16(fused: bool) -> None:
    """G and D compiled with inductor (as `train --compile` compiles them) in a fade under bf16 autocast give
    every parameter its gradient as closely as the eager networks do (each against the fp32 gradient; bf16
    alone is 3-27 % off for this tiny network's parameters): in torch 2.13 inductor's form of nearest
    up-sampling dropped the gradient of G's old branch (the 4 px to_rgb got none), which `upsample2x`'s
    compiled form avoids. Unfused G (up-sample then conv) and fused (transposed conv) both."""
    net = NetConfig(max_res=8, z_dim=32, fmap_base=64, fmap_max=32, fused_scale=fused)
    torch.manual_seed(0)
    G, D = Generator(net), Discriminator(net)
    fp32, eager = fade_grads(G, D, G, D, False), fade_grads(G, D, G, D, True)
    compiled = fade_grads(G, D, torch.compile(G, dynamic=False), torch.compile(D, dynamic=False), True)
    torch._dynamo.reset()
    assert compiled.keys() == fp32.keys() and "G.to_rgb.b4.weight" in fp32
    off = {k: [float((got[k] - fp32[k]).norm() / fp32[k].norm()) for got in (compiled, eager)] for k in fp32}
    assert not {k: v for k, v in off.items() if v[0] > 2 * v[1] + 0.1}


def test_gradient_penalty_under_bf16_autocast_keeps_its_norm_in_fp32() -> None:
    """The step runs the WGAN-GP penalty under bf16 autocast (penalty_autocast): D's convolutions in bf16,
    the gradient it takes and that gradient's norm in fp32, and the double backward reaches D's weights."""
    from types import SimpleNamespace

    from trainer.loop import penalty_autocast

    torch.manual_seed(0)
    D = Discriminator(NetConfig(z_dim=8, max_res=16, fmap_base=64, fmap_max=16))
    real, fake, eps = torch.rand(8, 3, 16, 16) * 2 - 1, torch.rand(8, 3, 16, 16) * 2 - 1, torch.rand(8)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    step = SimpleNamespace(cfg=SimpleNamespace(amp="bf16"), autocast=autocast)
    assert penalty_autocast(step) is autocast
    assert (
        penalty_autocast(SimpleNamespace(cfg=SimpleNamespace(amp="fp16"), autocast=autocast)) is not autocast
    )

    def critic(x: Tensor) -> Tensor:
        return D(x, 16)

    want = gradient_penalty(critic, real, fake, eps)
    with penalty_autocast(step):
        seen: list[torch.dtype] = []
        hook = D.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        gp = gradient_penalty(critic, real, fake, eps)
        hook.remove()
    assert seen == [torch.bfloat16]  # D ran in bf16
    assert gp.dtype == torch.float32 and torch.isfinite(gp).all()
    assert torch.allclose(gp, want, rtol=0.05, atol=0.02)  # bf16's noise on an fp32 norm
    gp.mean().backward()
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_ema_is_a_lerp_toward_g_and_copies_its_buffers() -> None:
    from trainer.loop import update_ema

    G, G_ema = (Generator(NetConfig(z_dim=8, max_res=8, fmap_base=32, fmap_max=8)) for _ in range(2))
    before = [p.detach().clone() for p in G_ema.parameters()]
    for b in G.buffers():
        b.add_(1.0)
    update_ema(G_ema, G, 0.9)
    for e, b, g in zip(G_ema.parameters(), before, G.parameters(), strict=True):
        assert torch.allclose(e, 0.9 * b + 0.1 * g, atol=1e-6)
    for be, bg in zip(G_ema.buffers(), G.buffers(), strict=True):
        assert torch.equal(be, bg)
