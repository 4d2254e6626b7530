"""Networks only: ProGAN G and D (Karras et al. 2018) and the DCGAN baseline. No training logic here."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from trainer.config import NetConfig

# ---------------------------------------------------------------------------- layers


class EqualizedLinear(nn.Module):
    """Dense layer with equalized learning rate: w ~ N(0, 1), scaled by gain / sqrt(fan_in) at run time."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """Conv with equalized learning rate; same padding."""

    taps: Tensor  # buffers of a 3x3 conv (up2 / down2)
    taps_flipped: Tensor

    def __init__(self, in_ch: int, out_ch: int, kernel: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = gain / math.sqrt(in_ch * kernel * kernel)
        self.padding = kernel // 2
        if kernel == 3:  # for up2 / down2; not in the state dict (constants, not weights)
            self.register_buffer("taps", kernel4_taps(False), persistent=False)
            self.register_buffer("taps_flipped", kernel4_taps(True), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)

    def _kernel4(self, flip: bool, gain: float) -> Tensor:
        """The 3x3 kernel summed over its four 1-pixel shifts, times `gain`: a 4x4 kernel that, at stride 2,
        does what nearest up-sampling then the 3x3 conv (transposed), or the 3x3 conv then 2x2 pooling, do;
        with `flip`, rotated by 180 degrees (what the transposed conv takes).

        One matmul by a constant 9x16 map of taps to positions (the flip is a permutation of its columns)
        rather than a pad, four shifted slices, three adds and a flip: 2 kernels rather than ~10 a forward
        and ~7 a backward, for each of the fused layers in every pass of a training step (the H200 step's
        time fits a fixed cost per step, docs/benchmarks.md). In fp32 whatever autocast says, as the adds
        were: the kernel is rounded to bf16 once, by the convolution."""
        taps = self.taps_flipped if flip else self.taps
        w = self.weight.reshape(-1, 9)
        dev = w.device.type
        autocast_on = dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev)
        with torch.autocast(dev, enabled=False) if autocast_on else contextlib.nullcontext():
            k = torch.mm(w, taps)
        return (k * (self.scale * gain)).reshape(self.weight.shape[0], self.weight.shape[1], 4, 4)

    def up2(self, x: Tensor) -> Tensor:
        """conv(upsample2x(x)) as one stride-2 transposed conv: 16 rather than 4 x 9 multiply-adds per input
        pixel and channel pair, and no up-sampled copy of x."""
        return F.conv_transpose2d(x, self._kernel4(True, 1.0).transpose(0, 1), self.bias, stride=2, padding=1)

    def down2(self, x: Tensor) -> Tensor:
        """downsample2x(conv(x)) as one stride-2 conv (a quarter of the output computed, then not pooled)."""
        return F.conv2d(x, self._kernel4(False, 0.25), self.bias, stride=2, padding=1)


def kernel4_taps(flip: bool) -> Tensor:
    """[9, 16] 0/1: tap (i, j) of a 3x3 kernel lands on positions (i + a, j + b), a, b in {0, 1}, of the 4x4
    kernel (position (p, q) -> (3 - p, 3 - q) with `flip`)."""
    taps = torch.zeros(9, 4, 4)
    for i in range(3):
        for j in range(3):
            taps[3 * i + j, i : i + 2, j : j + 2] = 1.0
    return (taps.flip(1, 2) if flip else taps).reshape(9, 16)


def fading(alpha: float | Tensor) -> bool:
    """Whether the fade's blend runs: a float alpha below 1, or any tensor alpha (a 0-d tensor is how a
    compiled step passes the fade's alpha, so that one graph serves every value of it)."""
    return isinstance(alpha, Tensor) or alpha < 1.0


def blend(old: Tensor, new: Tensor, alpha: float | Tensor) -> Tensor:
    """lerp(old, new, alpha) in `old`'s dtype (under autocast the two branches can differ)."""
    return torch.lerp(old, new.to(old.dtype), alpha.to(old.dtype) if isinstance(alpha, Tensor) else alpha)


def pixel_scale(x: Tensor, eps: float) -> Tensor:
    """1 / sqrt(mean over channels of x^2 + eps), [N, 1, ...] in fp32 (fp64 for fp64 x): the mean of squares
    in fp32, where bf16 would round it. (`torch.linalg.vector_norm(x, dtype=fp32)` reads a bf16 x in one
    CUDA kernel, but its CPU kernel along channels measured 30-50x slower than this: unmeasured on CUDA.)"""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.rsqrt(x.to(acc).square().mean(dim=1, keepdim=True) + eps)


class _PixelNormFn(torch.autograd.Function):
    """PixelNorm with its backward written out: dx = s dy - x s^3 mean_c(dy x), with s = pixel_scale(x).

    Autograd's backward of the forward goes back through the multiply, the mean, the square and the fp32
    copy and adds the two paths into x, each an activation-sized pass, in fp32 for half of them; this one
    makes four passes in the activation's dtype (dy x, its channel sum, s dy, the addcmul). Once
    differentiable: the G, where PixelNorm lives, is never double-backwarded (the gradient penalties
    differentiate D)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        s = pixel_scale(x, eps)
        ctx.save_for_backward(x, s)
        return x * s.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None]:
        x, s = ctx.saved_tensors
        t = (dy * x).sum(dim=1, keepdim=True, dtype=s.dtype)  # sum_c dy x, [N, 1, ...]
        k = s.pow(3).mul_(t).mul_(-1.0 / x.shape[1])
        return torch.addcmul(dy * s.to(dy.dtype), x, k.to(x.dtype)), None


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit length (paper, section 4.2)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # The result in the activation's own dtype (CUDA autocast would otherwise hand the next layers fp32
        # activations: a cast and twice the bytes). With the hand-written backward the gpu preset's step
        # moves 13-15 % fewer bytes at 128-256 px than with autograd's (bench/step_floor.py --first-forms
        # counts the step as first written); no grad, the same forward without saving anything.
        if torch.is_grad_enabled() and x.requires_grad:
            return _PixelNormFn.apply(x, self.eps)
        return x * pixel_scale(x, self.eps).to(x.dtype)


class MinibatchStd(nn.Module):
    """Append the mean over features and pixels of the per-group stddev as one extra feature map."""

    def __init__(self, group_size: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g != 0:  # fall back to one group over the whole batch
            g = n
        y = x.reshape(g, -1, c, h, w).float()  # [G, M, C, H, W]; sample i is in group i % M
        y = y - y.mean(dim=0)
        y = (y.pow(2).mean(dim=0) + self.eps).sqrt()  # [M, C, H, W]
        y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # [M]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # [N, 1, H, W]
        return torch.cat([x, y], dim=1)


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x up-sampling: one native kernel eagerly (and ONNX's Resize in an export); under
    torch.compile each pixel broadcast to a 2x2 block, whose backward is a plain sum over it. Inductor lowers
    the native form to an index gather forward and a scatter-add backward, which in bf16 drops the gradient
    of a fade's old branch (the lower resolution's to_rgb and the layers before it; torch 2.13, CPU:
    tests/trainer/test_networks.py checks the compiled fade against the eager one)."""
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        n, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2)


def res_key(res: int) -> str:
    return f"b{res}"


# ---------------------------------------------------------------------------- ProGAN


class GBlock(nn.Module):
    """G block at `res`: (dense to 4x4 | upsample) then 3x3 conv(s), each followed by LReLU + PixelNorm."""

    def __init__(self, res: int, in_ch: int, out_ch: int, fused: bool = False) -> None:
        super().__init__()
        self.res = res
        self.fused = fused  # conv0's up-sampling as a transposed conv (EqualizedConv2d.up2): same output
        self.norm = PixelNorm()
        if res == 4:
            self.dense = EqualizedLinear(in_ch, out_ch * 16, gain=math.sqrt(2) / 4)
            self.conv0: EqualizedConv2d | None = None
        else:
            self.conv0 = EqualizedConv2d(in_ch, out_ch, 3)
        self.conv1 = EqualizedConv2d(out_ch, out_ch, 3)
        self.out_ch = out_ch

    def forward(self, x: Tensor) -> Tensor:
        if self.res == 4:
            x = self.dense(x).reshape(x.shape[0], self.out_ch, 4, 4)  # [N, C, 4, 4]
        else:
            assert self.conv0 is not None
            x = self.conv0.up2(x) if self.fused else self.conv0(upsample2x(x))
        x = self.norm(lrelu(x))
        return self.norm(lrelu(self.conv1(x)))


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, 3, res, res], about [-1, 1]. `res` and `alpha` select depth and fade."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.max_res = cfg.max_res
        self.norm = PixelNorm()
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict()
        in_ch = cfg.z_dim
        for res in cfg.resolutions:
            self.blocks[res_key(res)] = GBlock(res, in_ch, cfg.nf(res), cfg.fused_scale)
            self.to_rgb[res_key(res)] = EqualizedConv2d(cfg.nf(res), 3, 1, gain=1.0)
            in_ch = cfg.nf(res)

    def features(self, z: Tensor, res: int) -> tuple[Tensor, Tensor | None]:
        """Features at `res` and at `res / 2` (None at 4x4)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:  # (no assert: dynamo would format its message)
            raise ValueError(f"z must be [N, {self.z_dim}], got {list(z.shape)}")
        x = self.norm(z)
        prev = None
        for r in self.cfg.resolutions:
            if r > res:
                break
            prev = x if r > 4 else None
            x = self.blocks[res_key(r)](x)
        return x, prev

    def forward(self, z: Tensor, res: int | None = None, alpha: float | Tensor = 1.0) -> Tensor:
        res = res or self.max_res
        assert res in self.cfg.resolutions, f"res {res} not in {self.cfg.resolutions}"
        x, prev = self.features(z, res)
        img = self.to_rgb[res_key(res)](x)
        if prev is not None and fading(alpha):
            old = upsample2x(self.to_rgb[res_key(res // 2)](prev))
            img = blend(old, img, alpha)
        return img


class DBlock(nn.Module):
    """D block at `res` > 4: two 3x3 convs then 2x average pooling."""

    def __init__(self, in_ch: int, out_ch: int, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused  # conv1 + pooling as one stride-2 conv, the activation after it (official fused)
        self.conv0 = EqualizedConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualizedConv2d(in_ch, out_ch, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = lrelu(self.conv0(x))
        if self.fused:
            return lrelu(self.conv1.down2(x))
        return downsample2x(lrelu(self.conv1(x)))


class DOutput(nn.Module):
    """D's last block at 4x4: minibatch stddev, 3x3 conv, dense, dense to one score."""

    def __init__(self, ch: int, group_size: int) -> None:
        super().__init__()
        self.mbstd = MinibatchStd(group_size)
        self.conv = EqualizedConv2d(ch + 1, ch, 3)
        self.dense0 = EqualizedLinear(ch * 16, ch)
        self.dense1 = EqualizedLinear(ch, 1, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = lrelu(self.conv(self.mbstd(x)))
        x = lrelu(self.dense0(x.flatten(1)))
        return self.dense1(x)  # [N, 1]


class Discriminator(nn.Module):
    """image [N, 3, res, res] -> score [N, 1]; mirrors G, with the same `res` / `alpha` fade."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.from_rgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for res in cfg.resolutions:
            self.from_rgb[res_key(res)] = EqualizedConv2d(3, cfg.nf(res), 1)
            if res > 4:
                self.blocks[res_key(res)] = DBlock(cfg.nf(res), cfg.nf(res // 2), cfg.fused_scale)
        self.out = DOutput(cfg.nf(4), cfg.mbstd_group)
        if cfg.spectral_norm:
            for m in self.modules():
                if isinstance(m, EqualizedConv2d | EqualizedLinear):
                    nn.utils.parametrizations.spectral_norm(m, name="weight")

    def forward(self, img: Tensor, res: int | None = None, alpha: float | Tensor = 1.0) -> Tensor:
        res = res or self.cfg.max_res
        if img.shape[-1] != res or img.shape[-2] != res:
            raise ValueError(f"expected {res}x{res} images, got {list(img.shape)}")
        x = lrelu(self.from_rgb[res_key(res)](img))
        if res > 4:
            x = self.blocks[res_key(res)](x)
            if fading(alpha):
                old = lrelu(self.from_rgb[res_key(res // 2)](downsample2x(img)))
                x = blend(old, x, alpha)
            r = res // 2
            while r > 4:
                x = self.blocks[res_key(r)](x)
                r //= 2
        return self.out(x)


# ---------------------------------------------------------------------------- DCGAN baseline


class DCGANGenerator(nn.Module):
    """Radford et al. 2016: z -> 4x4 by a transposed conv, then stride-2 transposed convs, BatchNorm, ReLU, tanh."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.max_res = cfg.max_res
        n_up = int(math.log2(cfg.max_res)) - 2
        ch = cfg.dcgan_width * 2**n_up
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.z_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, z: Tensor, res: int | None = None, alpha: float = 1.0) -> Tensor:
        assert res in (None, self.max_res), f"DCGAN generates only {self.max_res}x{self.max_res}"
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [N, {self.z_dim}], got {list(z.shape)}"
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """Stride-2 convs with BatchNorm (not on the first) and LeakyReLU 0.2, then a 4x4 conv to one score."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_down = int(math.log2(cfg.max_res)) - 2
        ch = cfg.dcgan_width
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(n_down - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, True),
            ]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
        if cfg.spectral_norm:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, img: Tensor, res: int | None = None, alpha: float = 1.0) -> Tensor:
        return self.net(img).flatten(1)  # [N, 1]


def build_networks(cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    if cfg.arch == "dcgan":
        return DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    return Generator(cfg), Discriminator(cfg)


def build_generator(cfg: NetConfig) -> nn.Module:
    return DCGANGenerator(cfg) if cfg.arch == "dcgan" else Generator(cfg)
