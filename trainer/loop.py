"""The training loop. `_run` sets a run up in named steps that read top to bottom (data, networks, resume,
step context, time budget, run folder); `train_loop` steps through the schedule, with the housekeeping of
each tick (stats, finite check, grids, checkpoints) kept apart from the step. The step itself is
`train_step`: one critic step, one generator step."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from trainer import losses
from trainer.budget import Probe
from trainer.checkpoint import Checkpoint, CheckpointError, RunState, git_commit
from trainer.compile_cache import CompileCache
from trainer.config import NetConfig, Phase, TrainConfig, locate, phase_start_nimg, schedule
from trainer.data import load_images, load_pyramid, zip_index
from trainer.networks import blend, build_networks, downsample2x, fading, res_key, upsample2x
from trainer.viz import plot_losses, save_grid, to_uint8

RECOMPILE_LIMIT = 64  # --compile: forms of G's and of D's forward dynamo keeps (its default is 8)
EXTEND_MIN_S = 5.0  # a planned run whose schedule ends this much before its deadline trains on


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what was kept."""


# ---------------------------------------------------------------------------- small helpers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def allreduce_grads(module: nn.Module, d: Dist) -> None:
    """Average gradients over ranks in one flat all-reduce (works with the double backward of the GP)."""
    if d.world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """Whether `flag` holds on any rank (one small all-reduce; no communication on a single process)."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def past_deadline(deadline: float, d: Dist, device: torch.device) -> bool:
    """Whether time.monotonic() has reached `deadline` on any rank, so that every rank stops together."""
    return any_rank(time.monotonic() >= deadline, d, device)


def rank_rng_states(gen: torch.Generator, d: Dist) -> list[Tensor]:
    """Every rank's generator state, in rank order (one small all-gather; each rank draws its own reals, z,
    mixing factors and flips, so a resume must give each rank its own state back)."""
    if d.world == 1:
        return [gen.get_state()]
    states: list[Any] = [None] * d.world
    dist.all_gather_object(states, gen.get_state())
    return [torch.as_tensor(s) for s in states]


def restore_rank_rng(gen: torch.Generator, rng: dict[str, Any], d: Dist, seed: int, steps: int) -> None:
    """This rank's generator state from a checkpoint's `rng`: its own when the checkpoint has one per rank
    of the same world, else rank 0's on a single process, else a fresh per-rank seed (a different world
    size: draws cannot continue exactly, but ranks must not draw the same images)."""
    per_rank = rng.get("gen_ranks")
    try:
        if per_rank is not None and len(per_rank) == d.world:
            gen.set_state(per_rank[d.rank])
            return
        if d.world == 1:
            gen.set_state(rng["gen"])
            return
    except (RuntimeError, ValueError):  # saved on another device type (a GPU run resumed on CPU)
        pass
    gen.manual_seed(seed * 1000 + d.rank + steps)


def broadcast_params(module: nn.Module, d: Dist) -> None:
    if d.world > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- lerp(G_ema, G, 1 - beta), one foreach kernel per dtype instead of one per tensor. A G gone
    non-finite poisons this in-memory copy for the rest of its tick at most: the tick's check
    (`stop_if_not_finite`) ends the run before any grid, checkpoint, snapshot or export reads it, with no
    per-step guard (a sync, or a `where` per tensor) in the hot loop."""
    ema: list[Tensor] = list(G_ema.parameters())
    cur = [p.detach() for p in G.parameters()]
    torch._foreach_lerp_(ema, cur, 1.0 - beta)
    for be, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        be.copy_(b)


def make_optimizer(module: nn.Module, lr: float, cfg: TrainConfig, arch: str) -> torch.optim.Adam:
    betas = (0.5, 0.999) if arch == "dcgan" else cfg.betas
    fused = next(module.parameters()).is_cuda  # one kernel for every parameter on CUDA
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, eps=cfg.adam_eps, fused=fused or None)


def all_finite(*modules: nn.Module) -> bool:
    """Whether every parameter of `modules` is finite (one device sync)."""
    flags = [torch.isfinite(p).all() for m in modules for p in m.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def next_run_dir(out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ids = [int(p.name.split("-")[0]) for p in out.iterdir() if p.is_dir() and p.name.split("-")[0].isdigit()]
    run = out / f"{max(ids, default=-1) + 1:05d}-{name}"
    run.mkdir()
    return run


def sample_reals(images: Tensor, n: int, gen: torch.Generator, flips: bool, channels_last: bool) -> Tensor:
    """A random minibatch in [-1, 1], [N, 3, R, R], drawn and flipped where `images` ([M, R, R, 3] uint8)
    lives, with `gen` on that device: no host copy, no sync."""
    idx = torch.randint(len(images), (n,), generator=gen, device=images.device)
    x = images[idx].permute(0, 3, 1, 2)  # [N, 3, R, R], channels-last in memory
    if flips:
        flip = torch.rand(n, generator=gen, device=images.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = x.float() / 127.5 - 1.0
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def fixed_reals(images: np.ndarray, n: int, seed: int) -> Tensor:
    """`n` distinct faces of a decoded set ([M, R, R, 3] uint8), picked by `seed` and kept in index order, as
    [n, 3, R, R] in [-1, 1] on the CPU: one minibatch a diagnostic scores again and again
    (scripts/fused_switch.py, scripts/d_level.py)."""
    pick = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    x = torch.from_numpy(np.stack([images[i] for i in pick])).permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1.0


class DeviceImages:
    """The training images of one resolution at a time as one uint8 tensor on the training device
    (29k faces at 64 px are 360 MB, at 128 px 1.4 GB); moving to a new resolution frees the last one."""

    def __init__(self, pyramid: dict[int, np.ndarray], device: torch.device) -> None:
        self.pyramid, self.device = pyramid, device
        self.res, self.images = -1, torch.empty(0)

    def __getitem__(self, res: int) -> Tensor:
        if res != self.res:
            self.images = torch.empty(0)
            self.images = torch.from_numpy(np.array(self.pyramid[res])).to(self.device)
            self.res = res
        return self.images  # [M, R, R, 3] uint8


def fade_reals(x: Tensor, alpha: float | Tensor) -> Tensor:
    """During a fade the reals blend from the upsampled half resolution to full, like G's output (`alpha`
    a float, or a 0-d tensor as a CUDA-graphed fade passes it)."""
    return blend(upsample2x(downsample2x(x)), x, alpha) if fading(alpha) else x


def load_grown(G: nn.Module, D: nn.Module, G_ema: nn.Module, ck: Checkpoint, net: NetConfig) -> None:
    """A model checkpoint's weights into (possibly larger) networks: only the layers of resolutions above
    the model's may be missing, and they keep their fresh initialisation."""
    new = {res_key(r) for r in net.resolutions if r > ck.res}
    for name, module in (("G", G), ("D", D), ("G_ema", G_ema)):
        try:
            missing, unexpected = module.load_state_dict(ck.nets[name], strict=False)
        except RuntimeError as e:  # shapes that differ: strict=False forgives only missing or extra keys
            raise CheckpointError(
                f"{ck.path}: the {name} weights do not fit the network its metadata describes "
                f"({load_error(e)}); the file is damaged or was not written by this trainer's export"
            ) from e
        wrong = [k for k in missing if not any(f".{b}." in f".{k}" for b in new)]
        if unexpected or wrong:
            raise CheckpointError(
                f"{ck.path}: the {name} weights do not fit this network "
                f"(missing {wrong[:3]}, unexpected {unexpected[:3]})"
            )


# ---------------------------------------------------------------------------- the step


@dataclass
class StepContext:
    G: nn.Module
    D: nn.Module
    net: NetConfig
    cfg: TrainConfig
    device: torch.device
    autocast: Any
    scaler: torch.amp.GradScaler | None
    gen: torch.Generator
    d: Dist
    D_eager: nn.Module | None = None  # with --compile: the uncompiled D, for the penalties' double backward

    @property
    def eager_D(self) -> nn.Module:
        """D itself, never its compiled wrapper."""
        return self.D_eager if self.D_eager is not None else self.D

    def penalty_critic(self, res: int, alpha: float | Tensor) -> Any:
        """D as the gradient penalty and R1 call it: never compiled (aot_autograd cannot double-backward)."""
        D = self.eager_D
        return lambda x: D(x, res, alpha)

    def net_alpha(self, alpha: float | Tensor) -> float | Tensor:
        """A compiled G and D take a fade's alpha as a 0-d tensor: one graph for the whole fade rather than a
        recompile for every value (and dynamo's recompile limit after eight)."""
        if isinstance(alpha, Tensor):  # already one (a CUDA-graphed fade)
            return alpha
        return torch.tensor(alpha, device=self.device) if self.cfg.compile and alpha < 1.0 else alpha


def penalty_autocast(c: StepContext) -> Any:
    """The gradient penalties run under bf16 autocast (fp32 range: no scaling needed; their norms are
    taken in fp32); under fp16 they stay in fp32, where a double backward cannot overflow."""
    return c.autocast if c.cfg.amp == "bf16" else nullcontext()


def critic_scores(
    c: StepContext, reals: Tensor, fake: Tensor, res: int, alpha: float | Tensor
) -> tuple[Tensor, Tensor]:
    """D's scores of the reals and of the fakes, in one pass over both where that is the same function as
    two: ProGAN's D treats every sample alone but in its minibatch-stddev layer, which pools over groups
    (sample i of n in group i % (n / g)), so the two batches are interleaved to give each the groups it
    would have alone. One pass issues half the ops of two (the H200 step's time fits a fixed cost per step,
    docs/benchmarks.md) and runs each conv on twice the batch."""
    n = reals.shape[0]
    g = c.net.mbstd_group
    if c.net.arch != "progan" or n < g or n % g != 0:  # the groups would differ: two passes
        return c.D(reals, res, alpha), c.D(fake, res, alpha)
    m = n // g
    # [g][real | fake][m]: group j < m holds the reals' group j, group m + j the fakes'
    pair = [t.reshape(g, m, *t.shape[1:]).to(reals.dtype) for t in (reals, fake)]
    both = torch.stack(pair, 1).reshape(2 * n, *reals.shape[1:])
    if reals.is_contiguous(memory_format=torch.channels_last) and not reals.is_contiguous():
        both = both.contiguous(memory_format=torch.channels_last)
    scores = c.D(both, res, alpha).reshape(g, 2, m, -1)
    return scores[:, 0].reshape(n, -1), scores[:, 1].reshape(n, -1)


def d_step(
    c: StepContext, reals: Tensor, res: int, alpha: float | Tensor, opt: torch.optim.Optimizer
) -> dict[str, Tensor]:
    """One critic step; returns detached device scalars (read once per tick, never per step)."""
    n = reals.shape[0]
    z = torch.randn(n, c.net.z_dim, generator=c.gen, device=c.device)
    a = c.net_alpha(alpha)
    with c.autocast:
        # no_grad, not only G's frozen parameters: dynamo guards on grad mode, but torch 2.11's does not guard
        # on a parameter's requires_grad (pytorch#139476), so a compiled G called here with grad on compiled
        # an inference form that the G step then reused (no grad_fn: the H200 bench of 2026-11-29)
        with torch.no_grad():
            fake = c.G(z, res, a)
        real_score, fake_score = critic_scores(c, reals, fake, res, a)
    stats: dict[str, Tensor] = {}
    if c.cfg.loss == "wgan-gp" and c.net.arch == "progan":
        eps = torch.rand(n, generator=c.gen, device=c.device)
        with penalty_autocast(c):
            gp = losses.gradient_penalty(c.penalty_critic(res, alpha), reals, fake, eps, c.cfg.gp_target)
        loss = losses.wgan_d_loss(real_score, fake_score, gp, c.cfg.gp_lambda, c.cfg.drift)
        stats["gp"] = gp.detach().mean()
    else:
        loss = losses.logistic_d_loss(real_score, fake_score, c.cfg.label_smoothing)
        if c.net.arch == "progan" and c.cfg.r1_gamma > 0:
            with penalty_autocast(c):
                r1 = losses.r1_penalty(c.penalty_critic(res, alpha), reals)
            loss = loss + 0.5 * c.cfg.r1_gamma * r1.mean()
            stats["r1"] = r1.detach().mean()
    opt.zero_grad(set_to_none=True)
    (c.scaler.scale(loss) if c.scaler else loss).backward()
    allreduce_grads(c.D, c.d)
    if c.scaler:
        c.scaler.step(opt)
    else:
        opt.step()
    stats.update(
        loss_D=loss.detach(),
        score_real=real_score.detach().float().mean(),
        score_fake=fake_score.detach().float().mean(),
    )
    return stats


def g_step(
    c: StepContext, n: int, res: int, alpha: float | Tensor, opt: torch.optim.Optimizer
) -> dict[str, Tensor]:
    z = torch.randn(n, c.net.z_dim, generator=c.gen, device=c.device)
    a = c.net_alpha(alpha)
    with c.autocast:
        fake_score = c.D(c.G(z, res, a), res, a)
    loss = (
        losses.wgan_g_loss(fake_score)
        if c.cfg.loss == "wgan-gp" and c.net.arch == "progan"
        else losses.logistic_g_loss(fake_score)
    )
    opt.zero_grad(set_to_none=True)
    (c.scaler.scale(loss) if c.scaler else loss).backward()
    allreduce_grads(c.G, c.d)
    if c.scaler:
        c.scaler.step(opt)
        c.scaler.update()
    else:
        opt.step()
    return {"loss_G": loss.detach()}


def train_step(
    c: StepContext,
    reals: Tensor,
    res: int,
    alpha: float | Tensor,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
) -> dict[str, Tensor]:
    """One D step then one G step on a minibatch of `reals` ([N, 3, R, R] in [-1, 1])."""
    c.G.requires_grad_(False)
    c.D.requires_grad_(True)
    stats = d_step(c, reals, res, alpha, opt_D)
    c.G.requires_grad_(True)
    c.D.requires_grad_(False)
    stats.update(g_step(c, reals.shape[0], res, alpha, opt_G))
    return stats


@dataclass
class LoopStep:
    """One step of the loop in one phase: draw a minibatch of reals where the images live and fade them, a D
    and a G step (`train_step`), then the EMA. The loop calls it eagerly, or `trainer/graphstep.py` replays
    it from a CUDA graph (`--cuda-graph`)."""

    c: StepContext
    G: nn.Module  # the eager G (c.G may be its compiled form), whose weights the EMA follows
    G_ema: nn.Module
    images: Tensor  # [M, R, R, 3] uint8 on the training device
    res: int
    batch: int
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    ema_beta: float
    flips: bool
    channels_last: bool

    def __call__(self, alpha: float | Tensor) -> dict[str, Tensor]:
        x = sample_reals(self.images, self.batch, self.c.gen, self.flips, self.channels_last)
        stats = train_step(self.c, fade_reals(x, alpha), self.res, alpha, self.opt_G, self.opt_D)
        update_ema(self.G_ema, self.G, self.ema_beta)
        return stats


# ---------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    run_dir: Path
    cur_nimg: int
    steps: int
    res: int
    done: bool
    stats: list[dict[str, Any]] = field(default_factory=list)


def resumed_configs(
    ck: Checkpoint,
    max_steps: int | None,
    extend_kimg: float,
    overrides: dict[str, Any] | None = None,
) -> tuple[NetConfig, TrainConfig]:
    """A checkpoint's own configs win on resume; only the step limit, an extension and the run-time
    settings in `overrides` (amp, channels_last, compile, cuda_graph, tick_kimg, checkpoint_minutes, and the
    minibatch) may change. --cuda-graph holds for the command that gives it: a graphed run resumes eagerly
    without it (on a CPU, say)."""
    extra = ck.train_cfg.get("extra_kimg", 0.0) + extend_kimg
    cfg = {**ck.train_cfg, "cuda_graph": False, **(overrides or {})}
    return ck.net, TrainConfig.from_json({**cfg, "max_steps": max_steps, "extra_kimg": extra})


def grown_configs(ck: Checkpoint, net: NetConfig, cfg: TrainConfig) -> tuple[NetConfig, TrainConfig]:
    """Continuing a model folder: its network (grown to `net.max_res`), the given schedule from the
    model's resolution on."""
    have, res = ck.net, ck.res
    if net.max_res < res:
        raise ValueError(f"--max-res {net.max_res} is below the model's {res}x{res}; it can only grow")
    return dataclasses.replace(have, max_res=net.max_res), dataclasses.replace(cfg, start_res=res)


def describe_schedule(net: NetConfig, cfg: TrainConfig, probe: Probe | None = None) -> str:
    """The schedule as a table; with a throughput `probe` (img/s and set-up seconds per resolution) also
    each phase's set-up and expected minutes (its steps and its set-up)."""
    phases = schedule(net, cfg)
    head = f"{'phase':>5} {'res':>5} {'kind':>5} {'kimg':>8} {'from kimg':>10} {'batch':>6} {'lr':>8}"
    lines = [head + (f" {'img/s':>8} {'set-up s':>8} {'minutes':>8}" if probe else "")]
    start, seconds = 0.0, 0.0
    charged = probe.charged(phases) if probe else []
    for i, p in enumerate(phases):
        line = f"{i:>5} {p.res:>5} {p.kind:>5} {p.kimg:>8.1f} {start:>10.1f} {p.batch:>6} {p.lr:>8.5f}"
        if probe:
            t = p.kimg * 1000 / probe.rates[p.res] + charged[i]
            seconds += t
            line += f" {probe.rates[p.res]:>8.0f} {charged[i]:>8.1f} {t / 60:>8.2f}"
        lines.append(line)
        start += p.kimg
    said = f", {seconds / 60:.1f} minutes of steps and set-up" if probe else ""
    lines.append(f"total {start:.1f} kimg{said}")
    return "\n".join(lines)


def train(net: NetConfig, cfg: TrainConfig, data: str | Path, out: str | Path, **kw: Any) -> TrainResult:
    """Train (or resume) a run. With `minutes`, the run stops cleanly at that wall-clock deadline, and a
    fresh run first plans its schedule to fit it (trainer/budget.py). Keywords: see `_run`."""
    result = _run(net, cfg, data, out, dry_run=False, **kw)
    assert isinstance(result, TrainResult)
    return result


def plan_run(net: NetConfig, cfg: TrainConfig, data: str | Path, **kw: Any) -> str:
    """`train --dry-run`: the schedule a run would follow as a table; with `minutes`, the plan it would make
    on this machine (the same data decode and throughput probe, so the expected minutes per phase are this
    machine's), without training or writing anything."""
    result = _run(net, cfg, data, "", dry_run=True, **kw)
    assert isinstance(result, str)
    return result


def resolve_resume(
    ck: Checkpoint,
    net: NetConfig,
    cfg: TrainConfig,
    extend_kimg: float = 0.0,
    overrides: dict[str, Any] | None = None,
) -> tuple[NetConfig, TrainConfig]:
    """The configs a resume trains with, worked out once (by the caller of `train`): a run's checkpoint
    keeps its own (`resumed_configs`); a model folder's grows to `net.max_res` in a new run, its final
    stabilisation `extend_kimg` longer (`grown_configs`)."""
    if ck.is_model:
        net, cfg = grown_configs(ck, net, cfg)
        return net, dataclasses.replace(cfg, extra_kimg=extend_kimg)
    return resumed_configs(ck, cfg.max_steps, extend_kimg, overrides)


def _run(
    net: NetConfig,
    cfg: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    dry_run: bool,
    resume: Checkpoint | None = None,
    cache_dir: str | Path | None = None,
    cifar_class: str | None = None,
    allow_upscale: bool = False,
    progress: bool = True,
    minutes: float | None = None,
    grow_fraction: float = 0.4,
    compile_cache: str | Path | None = None,
) -> TrainResult | str:
    """`resume`: a checkpoint from `Checkpoint.load`, with `net` and `cfg` from `resolve_resume` on it. A
    run's checkpoint continues in its own folder on its own schedule; a model folder's starts a new run.
    `compile_cache`: a file of torch.compile's caches, loaded before anything compiles and written back with
    every checkpoint (trainer/compile_cache.py)."""
    started = time.monotonic()  # the rows' wall_s count from here: loading and the probe included
    cache = CompileCache.open(compile_cache) if compile_cache is not None else None
    deadline = started + minutes * 60 if minutes else None
    d = init_distributed()
    device = training_device(d)
    if cfg.cuda_graph:
        from trainer.graphstep import check_graph_run

        check_graph_run(cfg, device, d.world)
    torch.manual_seed(cfg.seed)
    continuing = resume is not None and not resume.is_model
    phases = schedule(net, cfg)

    setup = SetupClock(started, compile_cache=cache)
    pyramid = load_training_images(
        data,
        net,
        d,
        progress,
        cache_dir,
        cifar_class,
        allow_upscale,
        min_res=cfg.start_res,
        timings=setup.data_parts,
    )
    setup.mark("data")
    s = new_run_state(net, cfg, data, pyramid, device, d)
    if resume is not None:
        restore(s, resume, phases, d)
    ctx = step_context(s, device, d)
    reals_on_device = DeviceImages(pyramid, device)  # one resolution at a time, shared with the probe
    setup.mark("networks")

    probe: Probe | None = None
    if deadline is not None and not continuing and net.arch == "progan":
        probe, cfg = fit_to_deadline(ctx, phases, reals_on_device, deadline, grow_fraction, d, progress)
        phases, s.cfg, ctx = schedule(net, cfg), cfg, dataclasses.replace(ctx, cfg=cfg)
        setup.mark("probe")
        setup.probe_parts = probe.parts
    if dry_run:  # the schedule (and the plan, with `minutes`) this run would follow; nothing written
        return describe_schedule(net, cfg, probe)

    files = RunFiles.open(
        out,
        s,
        d,
        device,
        resumed=resume,
        probe=probe,
        reals=pyramid[net.max_res],
        cifar_class=cifar_class,
    )
    files.compile_cache = cache
    setup.mark("files")
    return train_loop(
        s,
        ctx,
        phases,
        reals_on_device,
        files,
        progress,
        deadline,
        minutes,
        to_deadline=probe is not None,
        started=started,
        setup=setup,
    )


SETUP_STEPS = 4  # SetupClock times steps 2 to 4 apart: with --cuda-graph, the warm-up and the capture


@dataclass
class SetupClock:
    """Where a run's time goes before its first step ends (`setup.json` in the run folder; a lent GPU's
    round spends a minute there): decoding the data, the networks and checkpoint, the throughput probe, the
    run folder, the first step (the images' upload, cuDNN's algorithm search), then steps 2 to 4 (with
    --cuda-graph the rest of the warm-up and the capture with its check; a tick's housekeeping too where
    one ends among them, as in tiny runs), each in seconds. After the total, `probe_parts`: the probe's
    seconds per resolution (budget.Probe.parts), where a fresh process pays its first steps' one-off costs;
    `data_parts`: of the data's seconds, the decode into the cache and the downsampling (none when the
    cache held every resolution); with --compile-cache, `compile_cache`: what the file held and how the
    compiles so far used it."""

    started: float  # time.monotonic() when the command began
    seconds: dict[str, float] = field(default_factory=dict)
    last: float = 0.0
    probe_parts: dict[int, dict[str, float]] = field(default_factory=dict)
    data_parts: dict[str, float] = field(default_factory=dict)  # data.load_images's timings
    compile_cache: CompileCache | None = None

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - (self.last or self.started), 3)
        self.last = now

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.seconds, "total": round(self.last - self.started, 3)}
        if self.probe_parts:
            out["probe_parts"] = {str(r): v for r, v in self.probe_parts.items()}
        if self.data_parts:
            out["data_parts"] = self.data_parts
        if self.compile_cache is not None:
            out["compile_cache"] = self.compile_cache.summary()
        return out


# ---------------------------------------------------------------------------- setting a run up


def training_device(d: Dist) -> torch.device:
    """This rank's GPU (TF32 matmuls and convolutions, cuDNN autotuning), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device(f"cuda:{d.local_rank}")
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return device


def load_training_images(
    data: str | Path,
    net: NetConfig,
    d: Dist,
    progress: bool,
    cache_dir: str | Path | None,
    cifar_class: str | None,
    allow_upscale: bool,
    min_res: int = 4,
    timings: dict[str, float] | None = None,
) -> dict[int, np.ndarray]:
    """Every resolution a run trains at, `min_res` (its start) to net.max_res (uint8 memmaps [M, R, R, 3]):
    rank 0 decodes into the cache first, then the other ranks map it. A run that starts at 256 px (a model
    grown before) builds no lower resolutions. `timings`: data.load_images's."""
    kw: dict[str, Any] = dict(
        cache_dir=cache_dir, cifar_class=cifar_class, allow_upscale=allow_upscale, timings=timings
    )

    def load(show: bool) -> dict[int, np.ndarray]:
        if net.arch == "progan":
            return load_pyramid(data, net.max_res, min_res=min_res, progress=show, **kw)
        return {net.max_res: load_images(data, net.max_res, progress=show, **kw)}

    pyramid = load(progress) if d.main else {}
    if d.world > 1:
        dist.barrier()
    return pyramid if d.main else load(False)


def new_run_state(
    net: NetConfig,
    cfg: TrainConfig,
    data: str | Path,
    pyramid: dict[int, np.ndarray],
    device: torch.device,
    d: Dist,
) -> RunState:
    """Fresh networks (the same on every rank), G_ema as a copy of G, this rank's generator; no optimizers
    yet (the loop makes them at the start of every phase)."""
    G, D = build_networks(net)
    G.to(device)
    D.to(device)
    if cfg.channels_last and device.type == "cuda":
        G.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        D.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    broadcast_params(G, d)
    broadcast_params(D, d)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + d.rank)  # reals, z, eps, flips
    data_index = zip_index(Path(data)) if str(data).endswith(".zip") else {}
    return RunState(net, cfg, G, D, G_ema, gen, str(data), data_index, len(pyramid[net.max_res]))


def restore(s: RunState, ck: Checkpoint, phases: list[Phase], d: Dist) -> None:
    """Put a checkpoint back into `s`: a model folder's weights into the (possibly grown) networks, or a
    run's whole state (weights, Adam, position, every rank's RNG, history) to continue exactly."""
    if ck.is_model:
        load_grown(s.G, s.D, s.G_ema, ck, s.net)
        return
    try:
        s.G.load_state_dict(ck.nets["G"])
        s.D.load_state_dict(ck.nets["D"])
        s.G_ema.load_state_dict(ck.nets["G_ema"])
        if ck.cur_nimg is None:
            raise ValueError("it records no image count")
        s.cur_nimg, s.steps = ck.cur_nimg, ck.steps
        phase, _ = locate(phases, s.cur_nimg)
        s.opt_phase = phase if ck.opt_phase is None else ck.opt_phase
        lr = phases[phase].lr
        s.opt_G, s.opt_D = (
            make_optimizer(s.G, lr, s.cfg, s.net.arch),
            make_optimizer(s.D, lr, s.cfg, s.net.arch),
        )
        if ck.opt:  # a packed checkpoint has none: Adam starts fresh
            s.opt_G.load_state_dict(ck.opt["G"])
            s.opt_D.load_state_dict(ck.opt["D"])
            for group in (*s.opt_G.param_groups, *s.opt_D.param_groups):
                # a --cuda-graph run saves Adam capturable, which a CPU cannot step; a graph sets it again
                group["capturable"] = False
        restore_rank_rng(s.gen, ck.rng, d, s.cfg.seed, s.steps)
        torch.set_rng_state(ck.rng["torch"])
        s.history = list(ck.history)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{ck.path}: cannot resume from it: {load_error(e)}") from e


def load_error(e: BaseException, most: int = 2) -> str:
    """`load_state_dict`'s error in a line: its first `most` mismatches, and how many more there are."""
    lines = [ln.strip().rstrip(".") for ln in str(e).splitlines() if ln.strip()]
    details = [ln for ln in lines if not ln.startswith("Error(s) in loading")] or lines
    details = [d if len(d) <= 200 else d[:200] + " …" for d in details]
    more = f"; {len(details) - most} more" if len(details) > most else ""
    return "; ".join(details[:most]) + more


def step_context(s: RunState, device: torch.device, d: Dist) -> StepContext:
    """What a training step needs: the (compiled) networks, mixed precision, this rank's generator."""
    return networks_step_context(s.G, s.D, s.net, s.cfg, device, s.gen, d)


def networks_step_context(
    G: nn.Module,
    D: nn.Module,
    net: NetConfig,
    cfg: TrainConfig,
    device: torch.device,
    gen: torch.Generator,
    d: Dist,
) -> StepContext:
    """step_context for networks outside a run (bench/train_throughput.py times the step as it trains):
    autocast and the fp16 scaler from cfg.amp on CUDA, G and D compiled with cfg.compile."""
    use_amp = device.type == "cuda" and cfg.amp != "off"
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext()
    scaler = torch.amp.GradScaler("cuda") if use_amp and cfg.amp == "fp16" else None
    G_step, D_step = G, D
    if cfg.compile:
        # every phase compiles G and D anew (its resolution, fade or not, with and without grad): 2 forms
        # each a phase, up to 13 phases from 4 to 256 px, past dynamo's default of 8, after which the rest of
        # the run would train eagerly (with a warning only)
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
        # static shapes and ints: each resolution (and minibatch) is its own graph anyway, and a dynamic
        # `res` would break the graph where the layers are looked up by name
        G_step = torch.compile(G, dynamic=False)  # type: ignore[assignment]
        D_step = torch.compile(D, dynamic=False)  # type: ignore[assignment]
    return StepContext(G_step, D_step, net, cfg, device, autocast, scaler, gen, d, D_eager=D)


def fit_to_deadline(
    ctx: StepContext,
    phases: list[Phase],
    reals: DeviceImages,
    deadline: float,
    grow_fraction: float,
    d: Dist,
    progress: bool = True,
) -> tuple[Probe, TrainConfig]:
    """A fresh run's schedule planned to end by `deadline` from a throughput probe on this machine
    (trainer/budget.py); every rank follows rank 0's plan, to the image, so phases switch together."""
    from trainer.budget import FINAL_SAVE_S, BudgetError, plan_to_fit, probe_throughput

    left = deadline - time.monotonic()
    if past_deadline(deadline - FINAL_SAVE_S, d, ctx.device):
        raise BudgetError(
            f"--minutes leaves no time to train: {max(left, 0.0):.0f} s of it were left once the data had "
            f"loaded, and the final checkpoint keeps {FINAL_SAVE_S:.0f} s, so not even the throughput probe "
            "could run; nothing was trained or written. Give more minutes"
        )
    channels_last = ctx.cfg.channels_last and ctx.device.type == "cuda"
    probe = probe_throughput(ctx, phases, reals, channels_last, deadline=deadline, progress=progress)
    seconds_left = deadline - time.monotonic()
    if d.world > 1:
        shared: list[Any] = [probe, seconds_left]
        dist.broadcast_object_list(shared, src=0)
        probe, seconds_left = shared
    return probe, plan_to_fit(ctx.net, ctx.cfg, probe, seconds_left, grow_fraction)


# ---------------------------------------------------------------------------- what a run writes


@dataclass
class RunFiles:
    """The run folder and everything written into it: config.json, plan.txt, reals.png, stats.jsonl,
    TensorBoard events, loss plot, sample grids, checkpoint.pt and the G_ema snapshots. Only rank 0 writes."""

    dir: Path
    main: bool
    grid_z: Tensor  # [n, z_dim] fixed latents: every grid of a run shows the same faces
    writer: Any = None  # TensorBoard's SummaryWriter, when tensorboard is installed
    compile_cache: CompileCache | None = None  # --compile-cache: written with every checkpoint
    # a continuation's config.json, written with its first checkpoint: one that stops before (out of memory,
    # say) leaves config.json describing checkpoint.pt as it was
    pending_config: dict[str, Any] | None = None

    @classmethod
    def open(
        cls,
        out: str | Path,
        s: RunState,
        d: Dist,
        device: torch.device,
        *,
        resumed: Checkpoint | None,
        probe: Probe | None,
        reals: np.ndarray,
        cifar_class: str | None,
    ) -> RunFiles:
        """A continued run's own folder (`resumed` is its checkpoint), else the next numbered one under `out`
        (a fresh run, or one that grows the model folder `resumed`), with its config."""
        net, cfg = s.net, s.cfg
        continued = resumed is not None and not resumed.is_model
        if continued:
            assert resumed is not None
            run_dir = Path(resumed.path).parent
        elif d.main:
            run_dir = next_run_dir(Path(out), f"{net.arch}-{cfg.preset}-{net.max_res}")
        else:
            run_dir = Path(out)
        if d.world > 1:
            obj = [str(run_dir)]
            dist.broadcast_object_list(obj, src=0)
            run_dir = Path(obj[0])
        grid_n = min(cfg.grid_size**2, 64)
        grid_z = torch.randn(grid_n, net.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345))
        files = cls(run_dir, d.main, grid_z.to(device))
        if d.main:
            files.write_config(s, d, device, resumed, probe, cifar_class)
            if not continued:
                save_grid(np.asarray(reals[:grid_n]), run_dir / "reals.png", cols=cfg.grid_size)
            try:
                from torch.utils.tensorboard import SummaryWriter

                files.writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                pass
        return files

    def write_config(
        self,
        s: RunState,
        d: Dist,
        device: torch.device,
        resumed: Checkpoint | None,
        probe: Probe | None,
        cifar_class: str | None,
    ) -> None:
        cuda = device.type == "cuda"
        where = {
            "commit": git_commit(),
            "torch": torch.__version__,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            "world_size": d.world,
        }
        path = self.dir / "config.json"
        first = read_config(path) if resumed is not None and not resumed.is_model else None
        if first is not None:
            # a continued run keeps what its first start wrote (where it began); its schedule as now, and a
            # line per continuation: from which kimg, on what
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            resumes = [*first.get("resumes", []), {"from_kimg": s.cur_nimg / 1000, **where, "date": when}]
            self.pending_config = {**first, "train": s.cfg.to_json(), "resumes": resumes}
            return  # (and no plan: a continuation keeps its schedule)
        config = {
            "net": dataclasses.asdict(s.net),
            "train": s.cfg.to_json(),
            "data": s.data,
            "num_images": s.num_images,
            "cifar_class": cifar_class,
            **where,
            "data_index": s.data_index,
            "resumed_from": None if resumed is None else resumed.path,
        }
        path.write_text(json.dumps(config, indent=2))
        if probe:
            plan = describe_schedule(s.net, s.cfg, probe)
            (self.dir / "plan.txt").write_text(plan + "\n")
            print(plan, flush=True)

    def write_setup(self, seconds: dict[str, Any]) -> None:
        """setup.json: SetupClock's seconds (a resumed run's last start)."""
        (self.dir / "setup.json").write_text(json.dumps(seconds, indent=1) + "\n")

    def record(self, row: dict[str, Any], cur_nimg: int, history: list[dict[str, Any]]) -> None:
        """One tick's row: stats.jsonl, TensorBoard and the loss plot."""
        with open(self.dir / "stats.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, val in row.items():
                if isinstance(val, int | float):
                    self.writer.add_scalar(f"train/{k}", val, cur_nimg)
            self.writer.flush()
        plot_losses(history, self.dir / "losses.png")

    @torch.no_grad()
    def sample_grid(self, s: RunState, res: int, alpha: float, tag: str, cols: int) -> None:
        imgs = torch.cat([s.G_ema(z, res, alpha).float().cpu() for z in self.grid_z.split(16)])
        name = f"{tag}-res{res:04d}-kimg{s.cur_nimg / 1000:08.2f}.png"
        save_grid(to_uint8(imgs.numpy()), self.dir / "grids" / name, cols=cols)

    def checkpoint(self, s: RunState, res: int, gen_ranks: list[Tensor]) -> None:
        path = self.dir / "checkpoint.pt"
        try:
            s.save(path, res, gen_ranks)
        except OSError as e:
            kept = (
                f"the last good checkpoint {path} is intact"
                if path.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingError(f"could not write a checkpoint ({e}; is the disk full?); {kept}") from e
        if self.pending_config is not None:
            (self.dir / "config.json").write_text(json.dumps(self.pending_config, indent=2))
            self.pending_config = None
        if self.compile_cache is not None:
            self.compile_cache.save()

    def snapshot(self, s: RunState, res: int) -> None:
        try:
            s.save_snapshot(self.dir / f"G_ema-{res:04d}.pt", res)
        except OSError as e:
            raise TrainingError(f"could not write the {res}x{res} snapshot ({e}; is the disk full?)") from e

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_config(path: Path) -> dict[str, Any] | None:
    """A run folder's config.json as written, or None when there is none or it is not a JSON object."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


# ---------------------------------------------------------------------------- the loop


@dataclass
class Tick:
    """The steps since the last housekeeping: their stats stay on the device until the tick ends."""

    start_nimg: int
    start_time: float = field(default_factory=time.time)
    stats: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))

    def add(self, stats: dict[str, Tensor]) -> None:
        for k, v in stats.items():
            self.stats[k].append(v)

    def means(self) -> dict[str, float]:
        """The tick's mean of every stat: the one place the loop waits for the device."""
        means = {k: torch.stack(v).float().mean() for k, v in self.stats.items()}
        return dict(zip(means, torch.stack(list(means.values())).cpu().tolist(), strict=True))


def stop_if_not_finite(
    means: dict[str, float],
    s: RunState,
    tick: Tick,
    res: int,
    alpha: float,
    files: RunFiles,
    ctx: StepContext,
) -> None:
    """TrainingError on every rank when any rank's losses or weights went non-finite in this tick, before
    anything of it is saved (one rank raising alone would leave the others waiting in an all-reduce)."""
    finite_here = all(math.isfinite(v) for v in means.values()) and all_finite(s.G, s.D, s.G_ema)
    if not any_rank(not finite_here, ctx.d, ctx.device):
        return
    bad = ", ".join(f"{k}={v}" for k, v in means.items() if not math.isfinite(v))
    what = "loss" if bad else "weights"
    if finite_here:
        bad = f"on another rank than {ctx.d.rank}"
    bad = bad or "inf or nan gradients with finite losses"
    kept = files.dir / "checkpoint.pt"
    raise TrainingError(
        f"non-finite {what} between kimg {tick.start_nimg / 1000:.2f} and {s.cur_nimg / 1000:.2f} "
        f"({res}x{res}, alpha {alpha:.3f}): {bad}. Nothing from this stretch was saved. "
        + (
            f"The last good checkpoint is {kept}; resume from it with a lower --lr."
            if kept.exists()
            else "No checkpoint was written yet; try a lower --lr."
        )
    )


def is_out_of_memory(e: BaseException) -> bool:
    """torch's out-of-memory errors: CUDA's (torch.OutOfMemoryError) and the CPU allocator's RuntimeError."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


def allocator_said(e: BaseException) -> str:
    """The first line of an out-of-memory error (CUDA's goes on with advice on its allocator's settings),
    without the CPU allocator's "[enforce fail at alloc_cpu.cpp:127] err == 0." before it."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[enforce fail[^]]*\]\s*err == 0\.\s*", "", line)[:240]


def smaller_minibatch(batch: int) -> str:
    """What to try after running out of memory with minibatch `batch`."""
    if batch > 1:
        return f"--batch {batch // 2}"
    return "a smaller network (--fmap-max) or a device with more memory: even a minibatch of 1 does not fit"


def out_of_memory_error(
    e: BaseException, res: int, batch: int, device: torch.device, run_dir: Path, saved_nimg: int | None
) -> TrainingError:
    """The message for a step that ran out of memory: where, what the allocator said, what was kept and the
    command that goes on from it with a smaller minibatch."""
    kept = (
        f"The last checkpoint (kimg {saved_nimg / 1000:.2f}) is in {run_dir}: continue it with a smaller "
        f"minibatch, python -m trainer train --resume {run_dir} {smaller_minibatch(batch)}"
        if saved_nimg is not None
        else f"No checkpoint was written yet: start again with {smaller_minibatch(batch)}"
    )
    return TrainingError(
        f"out of memory at {res}x{res} with minibatch {batch} on {device} ({allocator_said(e)}). "
        f"Nothing since the last checkpoint was saved. {kept}"
    )


def train_loop(
    s: RunState,
    ctx: StepContext,
    phases: list[Phase],
    reals_on_device: DeviceImages,
    files: RunFiles,
    progress: bool,
    deadline: float | None = None,
    minutes: float | None = None,
    to_deadline: bool = False,
    started: float | None = None,
    setup: SetupClock | None = None,
) -> TrainResult:
    """Steps until the schedule ends, `max_steps` or the deadline; every tick (and every phase end) the
    housekeeping: stats, a finite check, the grid, and on an interval or a phase end the checkpoint. With
    `to_deadline` (a schedule planned for the deadline), a schedule that ends early trains its final
    stabilisation on until the deadline (`deadline_extension`). `started`: when the command began (monotonic
    clock), which each row's wall_s counts from."""
    from trainer.budget import FINAL_SAVE_S

    cfg, d = s.cfg, ctx.d
    started = time.monotonic() if started is None else started
    # the steps stop where the last grid, checkpoint and snapshot still end by the deadline
    stop_at = None if deadline is None else deadline - FINAL_SAVE_S
    total_nimg = phase_start_nimg(phases, len(phases))
    bar = tqdm(
        total=total_nimg,
        initial=s.cur_nimg,
        unit="img",
        unit_scale=True,
        disable=not (progress and d.main),
        dynamic_ncols=True,
        desc="training",
    )
    tick = Tick(s.cur_nimg)
    taken = 0  # steps in this process
    step: Any = None  # LoopStep, or GraphedStep with --cuda-graph
    step_phase = -1
    phase_clock = (time.monotonic(), s.cur_nimg)  # when the current phase's step began, at which image
    last_checkpoint = time.monotonic()
    saved_nimg = s.cur_nimg if (files.dir / "checkpoint.pt").exists() else None  # a resume's
    res = phases[locate(phases, s.cur_nimg)[0]].res
    done = s.cur_nimg >= total_nimg
    out_of_time = False
    while not done:
        idx, alpha = locate(phases, s.cur_nimg)
        phase: Phase = phases[idx]
        res = phase.res
        opt_G, opt_D = phase_optimizers(s, idx, phase.lr)
        batch = max(phase.batch // d.world, 1)
        try:
            if step_phase != idx:  # a phase's step (and, with --cuda-graph, its graph)
                step, step_phase = None, idx  # the last phase's graph goes before the next is captured
                step = phase_step(
                    s, ctx, reals_on_device[res], res, batch, opt_G, opt_D, phase.kind == "fade"
                )
                phase_clock = (time.monotonic(), s.cur_nimg)
            tick.add(step(alpha))
        except RuntimeError as e:  # one rank's: torchrun stops the others
            if not is_out_of_memory(e):
                raise
            step = None  # its buffers go before the message
            raise out_of_memory_error(e, res, phase.batch, ctx.device, files.dir, saved_nimg) from e
        taken += 1
        if setup is not None and taken in (1, SETUP_STEPS):  # two device syncs in a run
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            setup.mark("first_step" if taken == 1 else f"steps_2_to_{SETUP_STEPS}")
            if d.main:
                files.write_setup(setup.as_dict())
        s.cur_nimg += batch * d.world
        s.steps += 1
        bar.update(batch * d.world)

        if stop_at is not None and (d.world == 1 or s.steps % 50 == 0):  # ranks agree every 50 steps
            out_of_time = past_deadline(stop_at, d, ctx.device)
        if to_deadline and deadline is not None and s.cur_nimg >= total_nimg and not out_of_time:
            extra = deadline_extension(s, phase_clock, deadline, batch * d.world, d)
            if extra > 0:  # the plan ran faster than probed: the final stabilisation goes on
                s.cfg = dataclasses.replace(s.cfg, extra_kimg=s.cfg.extra_kimg + extra)
                phases = schedule(s.net, s.cfg)
                total_nimg = phase_start_nimg(phases, len(phases))
                bar.total = total_nimg
        max_steps = cfg.max_steps is not None and s.steps >= cfg.max_steps
        done = s.cur_nimg >= total_nimg or max_steps or out_of_time
        phase_end = locate(phases, s.cur_nimg)[0] != idx or s.cur_nimg >= total_nimg
        if not (s.cur_nimg - tick.start_nimg >= cfg.tick_kimg * 1000 or phase_end or done):
            continue

        # --- housekeeping: the only place the loop waits for the device
        means = tick.means()
        stop_if_not_finite(means, s, tick, res, alpha, files, ctx)
        row = tick_row(s, phase, alpha, tick, means, time.monotonic() - started)
        gen_ranks = rank_rng_states(s.gen, d)  # on every rank, every tick: only rank 0 writes checkpoints
        tick = Tick(s.cur_nimg)
        s.history.append(row)
        bar.set_postfix_str(
            f"res={res} {phase.kind} a={alpha:.2f} {row['img_s']:.0f}img/s "
            f"D={row['loss_D']:.3f} G={row['loss_G']:.3f}"
        )
        if d.main:
            files.record(row, s.cur_nimg, s.history)
            files.sample_grid(s, res, alpha, "end" if phase_end or done else "tick", cfg.grid_size)
            if phase_end or done or time.monotonic() - last_checkpoint >= cfg.checkpoint_minutes * 60:
                files.checkpoint(s, res, gen_ranks)
                last_checkpoint, saved_nimg = time.monotonic(), s.cur_nimg
            if (phase_end and phase.kind == "stab") or out_of_time:
                files.snapshot(s, res)
    bar.close()
    if out_of_time and d.main:
        print(f"time budget of {minutes:g} minutes reached: stopped cleanly at kimg {s.cur_nimg / 1000:.2f}")
    if files.compile_cache is not None and d.main:
        c = files.compile_cache
        print(f"compile cache: {c.saved} artifacts in {c.path} ({c.loaded} when the run started)")
    files.close()
    if d.world > 1:
        dist.barrier()
    return TrainResult(files.dir, s.cur_nimg, s.steps, res, s.cur_nimg >= total_nimg, s.history)


def deadline_extension(
    s: RunState, phase_clock: tuple[float, int], deadline: float, step_nimg: int, d: Dist
) -> float:
    """The kimg a planned run's final stabilisation can still train before `deadline` (less the time kept for
    the final save), at the pace of this phase so far (`phase_clock`: when it started, at which image);
    0 when that is under a few seconds or a step. Rank 0 decides for every rank."""
    from trainer.budget import FINAL_SAVE_S

    started, start_nimg = phase_clock
    now = time.monotonic()
    rate = (s.cur_nimg - start_nimg) / max(now - started, 1e-6)
    left = deadline - FINAL_SAVE_S - now
    nimg = int(left * rate) // step_nimg * step_nimg if left >= EXTEND_MIN_S else 0
    if d.world > 1:
        shared = [nimg]
        dist.broadcast_object_list(shared, src=0)
        nimg = shared[0]
    return nimg / 1000


def phase_step(
    s: RunState,
    ctx: StepContext,
    images: Tensor,
    res: int,
    batch: int,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    fade: bool,
) -> Any:
    """The step the loop calls in one phase: a `LoopStep`, and with --cuda-graph that step captured once
    and replayed (trainer/graphstep.py)."""
    layout = s.cfg.channels_last and ctx.device.type == "cuda"  # the reals in the networks' memory format
    step = LoopStep(ctx, s.G, s.G_ema, images, res, batch, opt_G, opt_D, s.cfg.ema_beta, s.cfg.flips, layout)
    if not s.cfg.cuda_graph:
        return step
    from trainer.graphstep import GraphedStep

    return GraphedStep(step, fade, verbose=ctx.d.main)


def phase_optimizers(s: RunState, idx: int, lr: float) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Fresh Adam state at the start of every fade and every stabilisation, as the official code does
    (reset_opt_for_new_lod: lod's floor or ceiling changes at both); the phase's learning rate."""
    if s.opt_phase != idx or s.opt_G is None or s.opt_D is None:
        s.opt_G = make_optimizer(s.G, lr, s.cfg, s.net.arch)
        s.opt_D = make_optimizer(s.D, lr, s.cfg, s.net.arch)
        s.opt_phase = idx
    for opt in (s.opt_G, s.opt_D):
        for group in opt.param_groups:
            group["lr"] = lr
    return s.opt_G, s.opt_D


def tick_row(
    s: RunState, phase: Phase, alpha: float, tick: Tick, means: dict[str, float], wall_s: float
) -> dict[str, Any]:
    """One line of stats.jsonl; `wall_s`: seconds since the command began (data, probe and set-up included,
    so a lease's first row tells what came before the steps)."""
    elapsed = time.time() - tick.start_time
    return {
        "kimg": s.cur_nimg / 1000,
        "res": phase.res,
        "phase": phase.kind,
        "alpha": round(alpha, 4),
        "batch": phase.batch,
        "lr": phase.lr,
        "steps": s.steps,
        "img_s": (s.cur_nimg - tick.start_nimg) / max(elapsed, 1e-9),
        "wall_s": round(wall_s, 2),
        **means,
    }
