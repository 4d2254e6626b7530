"""The training loop: one function that reads top to bottom, with housekeeping ("ticks") kept apart."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import subprocess
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
from trainer.checkpoint import FORMAT_VERSION, CheckpointError, atomic_torch_save, load_state, net_config
from trainer.config import NetConfig, Phase, TrainConfig, locate, schedule
from trainer.data import load_images, load_pyramid, zip_index
from trainer.networks import build_networks, downsample2x, res_key, upsample2x
from trainer.viz import plot_losses, save_grid, to_uint8


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
    """G_ema <- lerp(G_ema, G, 1 - beta), one foreach kernel per dtype instead of one per tensor."""
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


@functools.cache
def git_commit() -> str:
    """The checkout's commit, asked of git once per process (checkpoints record it; no subprocess per save)."""
    if os.environ.get("PROGAN_COMMIT"):  # machines that get a copy of the tree without .git
        return os.environ["PROGAN_COMMIT"]
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


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


def fade_reals(x: Tensor, alpha: float) -> Tensor:
    """During a fade the reals blend from the upsampled half resolution to full, like G's output."""
    return torch.lerp(upsample2x(downsample2x(x)), x, alpha) if alpha < 1.0 else x


def load_grown(G: nn.Module, D: nn.Module, G_ema: nn.Module, state: dict[str, Any], net: NetConfig) -> None:
    """A model checkpoint's weights into (possibly larger) networks: only the layers of resolutions above
    the model's may be missing, and they keep their fresh initialisation."""
    res = int(state["res"])
    new = {res_key(r) for r in net.resolutions if r > res}
    for name, module in (("G", G), ("D", D), ("G_ema", G_ema)):
        missing, unexpected = module.load_state_dict(state[name], strict=False)
        wrong = [k for k in missing if not any(f".{b}." in f".{k}" for b in new)]
        if unexpected or wrong:
            raise CheckpointError(
                f"{state['path']}: the {name} weights do not fit this network "
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

    def penalty_critic(self, res: int, alpha: float) -> Any:
        """D as the gradient penalty and R1 call it: never compiled (aot_autograd cannot double-backward)."""
        D = self.D_eager if self.D_eager is not None else self.D
        return lambda x: D(x, res, alpha)

    def net_alpha(self, alpha: float) -> float | Tensor:
        """A compiled G and D take a fade's alpha as a 0-d tensor: one graph for the whole fade rather than a
        recompile for every value (and dynamo's recompile limit after eight)."""
        return torch.tensor(alpha, device=self.device) if self.cfg.compile and alpha < 1.0 else alpha


def penalty_autocast(c: StepContext) -> Any:
    """The gradient penalties run under bf16 autocast (fp32 range: no scaling needed; their norms are
    taken in fp32); under fp16 they stay in fp32, where a double backward cannot overflow."""
    return c.autocast if c.cfg.amp == "bf16" else nullcontext()


def d_step(
    c: StepContext, reals: Tensor, res: int, alpha: float, opt: torch.optim.Optimizer
) -> dict[str, Tensor]:
    """One critic step; returns detached device scalars (read once per tick, never per step)."""
    n = reals.shape[0]
    z = torch.randn(n, c.net.z_dim, generator=c.gen, device=c.device)
    a = c.net_alpha(alpha)
    with c.autocast:
        fake = c.G(z, res, a).detach()
        real_score = c.D(reals, res, a)
        fake_score = c.D(fake, res, a)
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


def g_step(c: StepContext, n: int, res: int, alpha: float, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
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
    alpha: float,
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
    state: dict[str, Any],
    max_steps: int | None,
    extend_kimg: float,
    overrides: dict[str, Any] | None = None,
) -> tuple[NetConfig, TrainConfig]:
    """A checkpoint's own configs win on resume; only the step limit, an extension and the run-time
    settings in `overrides` (amp, channels_last, compile, tick_kimg, checkpoint_minutes) may change."""
    extra = state["train_cfg"].get("extra_kimg", 0.0) + extend_kimg
    return net_config(state), TrainConfig.from_json(
        {**state["train_cfg"], **(overrides or {}), "max_steps": max_steps, "extra_kimg": extra}
    )


def grown_configs(state: dict[str, Any], net: NetConfig, cfg: TrainConfig) -> tuple[NetConfig, TrainConfig]:
    """Continuing a model folder: its network (grown to `net.max_res`), the given schedule from the
    model's resolution on."""
    have = net_config(state)
    res = int(state["res"])
    if net.max_res < res:
        raise ValueError(f"--max-res {net.max_res} is below the model's {res}x{res}; it can only grow")
    return dataclasses.replace(have, max_res=net.max_res), dataclasses.replace(cfg, start_res=res)


def describe_schedule(net: NetConfig, cfg: TrainConfig, rates: dict[int, float] | None = None) -> str:
    """The schedule as a table; with measured `rates` (img/s per resolution) also the expected minutes."""
    phases = schedule(net, cfg)
    head = f"{'phase':>5} {'res':>5} {'kind':>5} {'kimg':>8} {'from kimg':>10} {'batch':>6} {'lr':>8}"
    lines = [head + (f" {'img/s':>8} {'minutes':>8}" if rates else "")]
    start, seconds = 0.0, 0.0
    for i, p in enumerate(phases):
        line = f"{i:>5} {p.res:>5} {p.kind:>5} {p.kimg:>8.1f} {start:>10.1f} {p.batch:>6} {p.lr:>8.5f}"
        if rates:
            t = p.kimg * 1000 / rates[p.res]
            seconds += t
            line += f" {rates[p.res]:>8.0f} {t / 60:>8.2f}"
        lines.append(line)
        start += p.kimg
    lines.append(f"total {start:.1f} kimg" + (f", {seconds / 60:.1f} minutes of steps" if rates else ""))
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


def _run(
    net: NetConfig,
    cfg: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    dry_run: bool,
    resume: str | Path | None = None,
    resume_state: dict[str, Any] | None = None,
    extend_kimg: float = 0.0,
    cache_dir: str | Path | None = None,
    cifar_class: str | None = None,
    allow_upscale: bool = False,
    progress: bool = True,
    minutes: float | None = None,
    grow_fraction: float = 0.4,
    overrides: dict[str, Any] | None = None,
) -> TrainResult | str:
    """`resume_state`: the checkpoint at `resume` when the caller has loaded it already (the CLI does, to
    check the command line against it), so it is read once."""
    started = time.monotonic()
    deadline = started + minutes * 60 if minutes else None
    d = init_distributed()
    device = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)

    # --- resume: the checkpoint's configs win; the run folder is the checkpoint's
    state = None
    if resume is not None:
        state = resume_state if resume_state is not None else load_state(resume)
        if state.get("model_checkpoint"):
            net, cfg = grown_configs(state, net, cfg)
        else:
            net, cfg = resumed_configs(state, cfg.max_steps, extend_kimg, overrides)
    continuing = state is not None and not state.get("model_checkpoint")  # same run folder, same schedule
    phases = schedule(net, cfg)
    total_nimg = int(round(sum(p.kimg for p in phases) * 1000))

    # --- data: decode once (rank 0 first), then every rank maps the cache
    kw: dict[str, Any] = dict(cache_dir=cache_dir, cifar_class=cifar_class, allow_upscale=allow_upscale)
    if d.main:
        pyramid = (
            load_pyramid(data, net.max_res, progress=progress, **kw)
            if net.arch == "progan"
            else {net.max_res: load_images(data, net.max_res, progress=progress, **kw)}
        )
    if d.world > 1:
        dist.barrier()
    if not d.main:
        pyramid = (
            load_pyramid(data, net.max_res, progress=False, **kw)
            if net.arch == "progan"
            else {net.max_res: load_images(data, net.max_res, progress=False, **kw)}
        )
    num_images = len(pyramid[net.max_res])

    data_index = zip_index(Path(data)) if str(data).endswith(".zip") else {}

    # --- networks, EMA, optimizers
    G, D = build_networks(net)
    G.to(device)
    D.to(device)
    channels_last = cfg.channels_last and cuda
    if channels_last:
        G.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        D.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    broadcast_params(G, d)
    broadcast_params(D, d)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + d.rank)  # reals, z, eps, flips
    cur_nimg, steps, opt_phase = 0, 0, -1
    history: list[dict[str, Any]] = []
    opt_G = opt_D = None
    if state is not None and not continuing:
        load_grown(G, D, G_ema, state, net)
    elif state is not None:
        try:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            G_ema.load_state_dict(state["G_ema"])
            cur_nimg, steps = int(state["cur_nimg"]), int(state["steps"])
            opt_phase = int(state.get("opt_phase", locate(phases, cur_nimg)[0]))
            lr = phases[locate(phases, cur_nimg)[0]].lr
            opt_G, opt_D = make_optimizer(G, lr, cfg, net.arch), make_optimizer(D, lr, cfg, net.arch)
            if state["opt_G"] and state["opt_D"]:  # a packed checkpoint has none: Adam starts fresh
                opt_G.load_state_dict(state["opt_G"])
                opt_D.load_state_dict(state["opt_D"])
            restore_rank_rng(gen, state["rng"], d, cfg.seed, steps)
            torch.set_rng_state(state["rng"]["torch"])
            history = list(state.get("history", []))
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{state['path']}: cannot resume from it: {e}") from e

    use_amp = cuda and cfg.amp != "off"
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext()
    scaler = torch.amp.GradScaler("cuda") if use_amp and cfg.amp == "fp16" else None
    G_step, D_step = G, D
    if cfg.compile:
        # static shapes and ints: each resolution (and minibatch) is its own graph anyway, and a dynamic
        # `res` would break the graph where the layers are looked up by name
        G_step = torch.compile(G, dynamic=False)  # type: ignore[assignment]
        D_step = torch.compile(D, dynamic=False)  # type: ignore[assignment]
    ctx = StepContext(G_step, D_step, net, cfg, device, autocast, scaler, gen, d, D_eager=D)

    reals_on_device = DeviceImages(pyramid, device)  # one resolution at a time, shared with the probe

    # --- a time budget: plan a fresh run's schedule from a throughput probe on this machine
    rates: dict[int, float] | None = None
    if deadline is not None and not continuing and net.arch == "progan":
        from trainer.budget import plan_to_fit, probe_throughput

        rates = probe_throughput(ctx, phases, reals_on_device, channels_last)
        seconds_left = deadline - time.monotonic()
        if d.world > 1:  # every rank follows rank 0's plan, to the image: phases must switch together
            shared: list[Any] = [rates, seconds_left]
            dist.broadcast_object_list(shared, src=0)
            rates, seconds_left = shared
        cfg = plan_to_fit(net, cfg, rates, seconds_left, grow_fraction)
        phases = schedule(net, cfg)
        total_nimg = int(round(sum(p.kimg for p in phases) * 1000))
        ctx = dataclasses.replace(ctx, cfg=cfg)

    if dry_run:  # the schedule (and the plan, with `minutes`) this run would follow; nothing written
        return describe_schedule(net, cfg, rates)

    # --- run folder
    if continuing:
        assert state is not None
        run_dir = Path(state["path"]).parent
    elif d.main:
        run_dir = next_run_dir(Path(out), f"{net.arch}-{cfg.preset}-{net.max_res}")
    else:
        run_dir = Path(out)
    if d.world > 1:
        obj = [str(run_dir)]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])

    if d.main and rates:
        plan = describe_schedule(net, cfg, rates)
        (run_dir / "plan.txt").write_text(plan + "\n")
        print(plan, flush=True)

    # --- fixed latents for the grids
    grid_n = min(cfg.grid_size**2, 64)
    grid_z = torch.randn(grid_n, net.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345)).to(
        device
    )

    writer = None
    if d.main:
        (run_dir / "config.json").write_text(
            json.dumps(
                {
                    "net": dataclasses.asdict(net),
                    "train": cfg.to_json(),
                    "data": str(data),
                    "num_images": num_images,
                    "cifar_class": cifar_class,
                    "commit": git_commit(),
                    "torch": torch.__version__,
                    "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
                    "world_size": d.world,
                    "data_index": data_index,
                    "resumed_from": None if state is None else state["path"],
                },
                indent=2,
            )
        )
        if not continuing:
            save_grid(np.asarray(pyramid[net.max_res][:grid_n]), run_dir / "reals.png", cols=cfg.grid_size)
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is optional at run time
            writer = None

    def save_checkpoint(res: int, gen_ranks: list[Tensor]) -> None:
        snap = {
            "format": FORMAT_VERSION,
            "net_cfg": dataclasses.asdict(net),
            "train_cfg": cfg.to_json(),
            "G": G.state_dict(),
            "D": D.state_dict(),
            "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict() if opt_G else {},
            "opt_D": opt_D.state_dict() if opt_D else {},
            "cur_nimg": cur_nimg,
            "steps": steps,
            "opt_phase": opt_phase,
            "res": res,
            "kimg": cur_nimg / 1000,
            "rng": {"gen": gen_ranks[0], "gen_ranks": gen_ranks, "torch": torch.get_rng_state()},
            "history": history,
            "data": str(data),
            "data_index": data_index,
            "num_images": num_images,
            "commit": git_commit(),
        }
        path = run_dir / "checkpoint.pt"
        try:
            atomic_torch_save(snap, path)
        except OSError as e:
            kept = (
                f"the last good checkpoint {path} is intact"
                if path.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingError(f"could not write a checkpoint ({e}; is the disk full?); {kept}") from e

    def save_snapshot(res: int) -> None:
        snap = {
            "format": FORMAT_VERSION,
            "net_cfg": dataclasses.asdict(net),
            "G_ema": G_ema.state_dict(),
            "res": res,
            "kimg": cur_nimg / 1000,
            "train_cfg": cfg.to_json(),
            "data": str(data),
            "commit": git_commit(),
        }
        try:
            atomic_torch_save(snap, run_dir / f"G_ema-{res:04d}.pt")
        except OSError as e:
            raise TrainingError(f"could not write the {res}x{res} snapshot ({e}; is the disk full?)") from e

    @torch.no_grad()
    def save_sample_grid(res: int, alpha: float, tag: str) -> None:
        imgs = torch.cat([G_ema(z, res, alpha).float().cpu() for z in grid_z.split(16)])
        save_grid(
            to_uint8(imgs.numpy()),
            run_dir / "grids" / f"{tag}-res{res:04d}-kimg{cur_nimg / 1000:08.2f}.png",
            cols=cfg.grid_size,
        )

    # --- the loop
    bar = tqdm(
        total=total_nimg,
        initial=cur_nimg,
        unit="img",
        unit_scale=True,
        disable=not (progress and d.main),
        dynamic_ncols=True,
        desc="training",
    )
    tick_start_nimg, tick_start_time = cur_nimg, time.time()
    last_checkpoint = time.monotonic()
    acc: dict[str, list[Tensor]] = defaultdict(list)
    res, alpha = phases[locate(phases, cur_nimg)[0]].res, 1.0
    done = cur_nimg >= total_nimg
    out_of_time = False
    while not done:
        idx, alpha = locate(phases, cur_nimg)
        phase: Phase = phases[idx]
        res = phase.res
        if opt_phase != idx or opt_G is None or opt_D is None:
            # fresh Adam state at the start of every fade and every stabilisation, as the official code
            # does (reset_opt_for_new_lod: lod's floor or ceiling changes at both)
            opt_G = make_optimizer(G, phase.lr, cfg, net.arch)
            opt_D = make_optimizer(D, phase.lr, cfg, net.arch)
            opt_phase = idx
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = phase.lr
        batch = max(phase.batch // d.world, 1)

        reals = fade_reals(sample_reals(reals_on_device[res], batch, gen, cfg.flips, channels_last), alpha)
        stats = train_step(ctx, reals, res, alpha, opt_G, opt_D)
        update_ema(G_ema, G, cfg.ema_beta)
        for k, v in stats.items():
            acc[k].append(v)
        cur_nimg += batch * d.world
        steps += 1
        bar.update(batch * d.world)

        next_idx = locate(phases, cur_nimg)[0]
        if deadline is not None and (d.world == 1 or steps % 50 == 0):  # ranks agree every 50 steps
            out_of_time = any_rank(time.monotonic() >= deadline, d, device)
        done = cur_nimg >= total_nimg or (cfg.max_steps is not None and steps >= cfg.max_steps) or out_of_time
        phase_end = next_idx != idx or cur_nimg >= total_nimg
        tick = cur_nimg - tick_start_nimg >= cfg.tick_kimg * 1000 or phase_end or done
        if not tick:
            continue

        # --- housekeeping: the only place the loop waits for the device
        elapsed = time.time() - tick_start_time
        means = {k: torch.stack(v).float().mean() for k, v in acc.items()}
        flat = torch.stack(list(means.values())).cpu().tolist()
        row = {
            "kimg": cur_nimg / 1000,
            "res": res,
            "phase": phase.kind,
            "alpha": round(alpha, 4),
            "batch": phase.batch,
            "lr": phase.lr,
            "steps": steps,
            "img_s": (cur_nimg - tick_start_nimg) / max(elapsed, 1e-9),
            **dict(zip(means, flat, strict=True)),
        }
        finite_here = all(math.isfinite(v) for v in flat) and all_finite(G, D, G_ema)
        # every rank learns when any rank went non-finite, so that all stop with the message (one rank
        # raising alone would leave the others waiting in their next all-reduce)
        if any_rank(not finite_here, d, device):
            bad = ", ".join(f"{k}={v}" for k, v in zip(means, flat, strict=True) if not math.isfinite(v))
            what = "loss" if bad else "weights"
            if finite_here:
                bad = f"on another rank than {d.rank}"
            bad = bad or "inf or nan gradients with finite losses"
            kept = run_dir / "checkpoint.pt"
            raise TrainingError(
                f"non-finite {what} between kimg {tick_start_nimg / 1000:.2f} and {cur_nimg / 1000:.2f} "
                f"({res}x{res}, alpha {alpha:.3f}): {bad}. Nothing from this stretch was saved. "
                + (
                    f"The last good checkpoint is {kept}; resume from it with a lower --lr."
                    if kept.exists()
                    else "No checkpoint was written yet; try a lower --lr."
                )
            )
        acc.clear()
        gen_ranks = rank_rng_states(gen, d)  # on every rank, every tick: only rank 0 writes checkpoints
        tick_start_nimg, tick_start_time = cur_nimg, time.time()
        history.append(row)
        bar.set_postfix_str(
            f"res={res} {phase.kind} a={alpha:.2f} {row['img_s']:.0f}img/s "
            f"D={row['loss_D']:.3f} G={row['loss_G']:.3f}"
        )
        if d.main:
            with open(run_dir / "stats.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if writer is not None:
                for k, val in row.items():
                    if isinstance(val, int | float):
                        writer.add_scalar(f"train/{k}", val, cur_nimg)
                writer.flush()
            save_sample_grid(res, alpha, "end" if phase_end or done else "tick")
            plot_losses(history, run_dir / "losses.png")
            if phase_end or done or time.monotonic() - last_checkpoint >= cfg.checkpoint_minutes * 60:
                save_checkpoint(res, gen_ranks)
                last_checkpoint = time.monotonic()
            if (phase_end and phase.kind == "stab") or out_of_time:
                save_snapshot(res)
    bar.close()
    if out_of_time and d.main:
        print(f"time budget of {minutes:g} minutes reached: stopped cleanly at kimg {cur_nimg / 1000:.2f}")
    if writer is not None:
        writer.close()
    if d.world > 1:
        dist.barrier()
    return TrainResult(run_dir, cur_nimg, steps, res, cur_nimg >= total_nimg, history)
