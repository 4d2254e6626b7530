"""Typed configs: the network config that rebuilds a model, the training config, presets and the schedule."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Arch = Literal["progan", "dcgan"]
Loss = Literal["wgan-gp", "logistic"]
Amp = Literal["bf16", "fp16", "off"]


def is_pow2(n: int) -> bool:
    return n >= 4 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild G and D; stored in every checkpoint and snapshot."""

    arch: Arch = "progan"
    z_dim: int = 512  # latent size
    max_res: int = 256  # final resolution (power of two)
    fmap_base: int = 8192  # channels at stage s: min(fmap_base / 2**s, fmap_max)
    fmap_max: int = 512
    mbstd_group: int = 4  # minibatch-stddev group size (D)
    spectral_norm: bool = False  # spectral normalisation of D's layers (option, not in the paper)
    dcgan_width: int = 64  # DCGAN baseline: channels of the last G layer / first D layer
    # fused up-sample + conv in G (a 4x4 stride-2 transposed conv: the same function, 2.25x fewer FLOPs) and
    # conv + down-sample in D (a 4x4 stride-2 conv, activation after the pooled conv, as the official code's
    # fused_scale); the same parameters either way
    fused_scale: bool = False

    def __post_init__(self) -> None:
        if not is_pow2(self.max_res):
            raise ValueError(f"max_res must be a power of two >= 4, got {self.max_res}")
        if self.z_dim < 1 or self.fmap_base < 1 or self.fmap_max < 1:
            raise ValueError("z_dim, fmap_base and fmap_max must be positive")

    def nf(self, res: int) -> int:
        """Feature maps of G's block at `res` (and of D's fromRGB at `res`)."""
        stage = int(math.log2(res)) - 1
        return max(1, min(int(self.fmap_base / 2.0**stage), self.fmap_max))

    @property
    def resolutions(self) -> list[int]:
        return [2**k for k in range(2, int(math.log2(self.max_res)) + 1)]


@dataclass(frozen=True)
class Phase:
    """One stretch of the schedule: fade in `res` (alpha 0 -> 1) or stabilise it (alpha 1)."""

    res: int
    kind: Literal["fade", "stab"]
    kimg: float
    batch: int
    lr: float


@dataclass(frozen=True)
class TrainConfig:
    """A resolved training run; dumped as JSON into each run folder."""

    preset: str = "fast"
    start_res: int = 4
    fade_kimg: float = 150.0  # images shown while a new resolution fades in
    stab_kimg: float = 150.0  # images shown at full alpha per resolution
    first_kimg: float | None = None  # kimg at start_res (default: stab_kimg)
    last_kimg: float | None = None  # kimg of the final stabilisation (default: stab_kimg)
    batch_by_res: dict[int, int] = field(default_factory=dict)
    lr_by_res: dict[int, float] = field(default_factory=dict)
    default_batch: int = 16
    default_lr: float = 1e-3
    betas: tuple[float, float] = (0.0, 0.99)  # Adam, as in the paper
    adam_eps: float = 1e-8
    loss: Loss = "wgan-gp"
    gp_lambda: float = 10.0  # WGAN-GP weight
    gp_target: float = 1.0
    drift: float = 1e-3  # epsilon_drift: keeps D(real) near 0
    r1_gamma: float = 10.0  # R1 weight for the logistic loss
    label_smoothing: float = 0.0  # one-sided: real target 1 - label_smoothing (logistic loss only)
    ema_beta: float = 0.999  # G_ema <- beta * G_ema + (1 - beta) * G
    seed: int = 0
    amp: Amp = "bf16"  # CUDA only; CPU runs in fp32
    channels_last: bool = True  # CUDA only
    compile: bool = False
    cuda_graph: bool = False  # each phase's step captured once as a CUDA graph and replayed
    tick_kimg: float = 4.0  # housekeeping (stats, grid, plot) interval
    checkpoint_minutes: float = (
        10.0  # wall-clock checkpoint interval (plus every phase end and the run's end)
    )
    grid_size: int = 8  # grid is grid_size x grid_size fixed latents (fewer if the batch is small)
    flips: bool = True
    max_steps: int | None = None  # stop after this many G steps (tests, smoke runs)
    dcgan_lr: float = 2e-4  # DCGAN baseline: Adam(0.5, 0.999) at this rate, fixed resolution
    total_kimg: float | None = None  # DCGAN baseline budget (default: same as the ProGAN schedule)
    extra_kimg: float = 0.0  # added to the last stabilisation (--resume ... --extend-kimg K)

    def batch(self, res: int) -> int:
        return self.batch_by_res.get(res, self.default_batch)

    def lr(self, res: int) -> float:
        return self.lr_by_res.get(res, self.default_lr)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["batch_by_res"] = {str(k): v for k, v in self.batch_by_res.items()}
        d["lr_by_res"] = {str(k): v for k, v in self.lr_by_res.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["batch_by_res"] = {int(k): v for k, v in d.get("batch_by_res", {}).items()}
        d["lr_by_res"] = {int(k): v for k, v in d.get("lr_by_res", {}).items()}
        d["betas"] = tuple(d.get("betas", (0.0, 0.99)))
        return cls(**d)


def schedule(net: NetConfig, cfg: TrainConfig) -> list[Phase]:
    """The whole run as phases. ProGAN: stabilise start_res, then fade + stabilise each larger one."""
    if net.arch == "dcgan":
        base = dataclasses.replace(cfg, extra_kimg=0.0)
        progan_total = sum(p.kimg for p in schedule(dataclasses.replace(net, arch="progan"), base))
        kimg = (cfg.total_kimg if cfg.total_kimg is not None else progan_total) + cfg.extra_kimg
        return [Phase(net.max_res, "stab", kimg, cfg.batch(net.max_res), cfg.dcgan_lr)]
    if not is_pow2(cfg.start_res) or cfg.start_res > net.max_res:
        raise ValueError(f"start_res must be a power of two in [4, {net.max_res}], got {cfg.start_res}")
    phases = []
    first = cfg.first_kimg if cfg.first_kimg is not None else cfg.stab_kimg
    phases.append(Phase(cfg.start_res, "stab", first, cfg.batch(cfg.start_res), cfg.lr(cfg.start_res)))
    res = cfg.start_res * 2
    while res <= net.max_res:
        phases.append(Phase(res, "fade", cfg.fade_kimg, cfg.batch(res), cfg.lr(res)))
        phases.append(Phase(res, "stab", cfg.stab_kimg, cfg.batch(res), cfg.lr(res)))
        res *= 2
    if cfg.last_kimg is not None and len(phases) > 1:
        phases[-1] = dataclasses.replace(phases[-1], kimg=cfg.last_kimg)
    if cfg.extra_kimg:
        last = phases[-1]
        phases[-1] = dataclasses.replace(last, kimg=last.kimg + cfg.extra_kimg)
    return phases


def locate(phases: list[Phase], nimg: int) -> tuple[int, float]:
    """Phase index and alpha for `nimg` images shown so far. Past the end: the last phase, alpha 1."""
    start = 0.0
    for i, p in enumerate(phases):
        end = start + p.kimg * 1000
        if nimg < end:
            alpha = (nimg - start) / max(end - start, 1.0) if p.kind == "fade" else 1.0
            return i, float(alpha)
        start = end
    return len(phases) - 1, 1.0


def phase_start_nimg(phases: list[Phase], index: int) -> int:
    return int(round(sum(p.kimg for p in phases[:index]) * 1000))


# ---------------------------------------------------------------------------- presets
# paper: Karras et al. 2018, CelebA-HQ: 800k images per fade and per stabilisation, minibatch 16
# up to 128^2 then 14, 6, 3; Adam lr 0.001, betas (0, 0.99); WGAN-GP lambda 10, drift 0.001.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "paper": (
        dict(z_dim=512, fmap_base=8192, fmap_max=512),
        dict(
            fade_kimg=800.0,
            stab_kimg=800.0,
            batch_by_res={256: 14, 512: 6, 1024: 3},
            default_batch=16,
            default_lr=1e-3,
            tick_kimg=20.0,
        ),
    ),
    # fast: the paper's networks and losses on a ~10x shorter schedule with larger early batches.
    "fast": (
        dict(z_dim=512, fmap_base=8192, fmap_max=512),
        dict(
            fade_kimg=150.0,
            stab_kimg=150.0,
            batch_by_res={4: 64, 8: 64, 16: 64, 32: 32, 64: 32, 128: 16, 256: 16, 512: 8, 1024: 4},
            default_lr=1e-3,
            tick_kimg=10.0,
        ),
    ),
    # gpu: one GPU and short leases (minutes, not days). Half the paper's channels (256 at 4..32 px, 128 at
    # 64, 64 at 128, 32 at 256) train ~4x faster per image and fit a resumable fp16 checkpoint of G, D and
    # G_ema in under 40 MB at 256; larger minibatches up to 64 px keep an H100 busy where the step is
    # launch-bound, and 64 at 256 px trains 2.3x the images per second of 16 there on an H200 (its 2,711
    # ops a step cost the host more than their bytes cost the card: docs/benchmarks.md). The fused layers
    # (the official code's fused_scale): the round of 2026-11-29 trained 214 img/s unfused at 256 px,
    # minibatch 64, where the bench of the same H200 lease stepped 460 fused. Meant for `--minutes`, which
    # plans the kimg of every phase (trainer/budget.py).
    "gpu": (
        dict(z_dim=256, fmap_base=4096, fmap_max=256, fused_scale=True),
        dict(
            fade_kimg=100.0,
            stab_kimg=100.0,
            batch_by_res={4: 64, 8: 64, 16: 64, 32: 64, 64: 64, 128: 32, 256: 64},
            default_lr=1e-3,
            tick_kimg=20.0,
            ema_beta=0.995,  # half-life ~9k images at minibatch 64, near the official code's 10k
        ),
    ),
    # cpu: narrow networks (64 channels at 4..16, 16 at 64x64) that two CPU cores train to 64x64 in ~1.5 hours.
    "cpu": (
        dict(z_dim=128, fmap_base=512, fmap_max=64),
        dict(
            fade_kimg=30.0,
            stab_kimg=30.0,
            default_batch=16,
            default_lr=1e-3,
            loss="wgan-gp",
            tick_kimg=2.0,
            amp="off",
            ema_beta=0.995,
        ),
    ),
    # tiny: a CPU smoke run; tiny channels and a few steps per phase.
    "tiny": (
        dict(z_dim=32, fmap_base=64, fmap_max=16, mbstd_group=4, dcgan_width=8),
        dict(
            fade_kimg=0.032,
            stab_kimg=0.032,
            default_batch=8,
            default_lr=2e-3,
            tick_kimg=0.016,
            grid_size=4,
            ema_beta=0.9,
            amp="off",
        ),
    ),
}


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    net, train = PRESETS[name]
    return dict(net), dict(train, preset=name)
