"""The training loop: one function that reads top to bottom, with housekeeping ("ticks") kept apart."""

from __future__ import annotations

import copy
import dataclasses
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
from trainer.data import load_images, load_pyramid
from trainer.networks import build_networks, downsample2x, upsample2x
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


def broadcast_params(module: nn.Module, d: Dist) -> None:
    if d.world > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    for pe, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        pe.lerp_(p.detach(), 1.0 - beta)
    for be, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        be.copy_(b)


def make_optimizer(module: nn.Module, lr: float, cfg: TrainConfig, arch: str) -> torch.optim.Adam:
    betas = (0.5, 0.999) if arch == "dcgan" else cfg.betas
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, eps=cfg.adam_eps)


def git_commit() -> str:
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


def sample_reals(images: np.ndarray, n: int, gen: torch.Generator, flips: bool) -> Tensor:
    """A random minibatch, uint8 [N, 3, R, R], with random horizontal flips."""
    idx = torch.randint(len(images), (n,), generator=gen).numpy()
    batch = torch.from_numpy(np.ascontiguousarray(images[np.sort(idx)])).permute(0, 3, 1, 2)  # [N, 3, R, R]
    if flips:
        flip = torch.rand(n, generator=gen) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return batch


def to_device(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.to(device=device, dtype=torch.float32) / 127.5 - 1.0
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def fade_reals(x: Tensor, alpha: float) -> Tensor:
    """During a fade the reals blend from the upsampled half resolution to full, like G's output."""
    return torch.lerp(upsample2x(downsample2x(x)), x, alpha) if alpha < 1.0 else x


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


def d_step(
    c: StepContext, reals: Tensor, res: int, alpha: float, opt: torch.optim.Optimizer
) -> dict[str, float]:
    n = reals.shape[0]
    z = torch.randn(n, c.net.z_dim, generator=c.gen).to(c.device)
    with c.autocast:
        fake = c.G(z, res, alpha).detach()
        real_score = c.D(reals, res, alpha)
        fake_score = c.D(fake, res, alpha)
    stats: dict[str, float] = {}
    if c.cfg.loss == "wgan-gp" and c.net.arch == "progan":
        eps = torch.rand(n, generator=c.gen).to(c.device)
        gp = losses.gradient_penalty(lambda x: c.D(x, res, alpha), reals, fake, eps, c.cfg.gp_target)
        loss = losses.wgan_d_loss(real_score, fake_score, gp, c.cfg.gp_lambda, c.cfg.drift)
        stats["gp"] = gp.mean().item()
    else:
        loss = losses.logistic_d_loss(real_score, fake_score, c.cfg.label_smoothing)
        if c.net.arch == "progan" and c.cfg.r1_gamma > 0:
            r1 = losses.r1_penalty(lambda x: c.D(x, res, alpha), reals)
            loss = loss + 0.5 * c.cfg.r1_gamma * r1.mean()
            stats["r1"] = r1.mean().item()
    opt.zero_grad(set_to_none=True)
    (c.scaler.scale(loss) if c.scaler else loss).backward()
    allreduce_grads(c.D, c.d)
    if c.scaler:
        c.scaler.step(opt)
    else:
        opt.step()
    stats.update(
        loss_D=loss.item(),
        score_real=real_score.float().mean().item(),
        score_fake=fake_score.float().mean().item(),
    )
    return stats


def g_step(c: StepContext, n: int, res: int, alpha: float, opt: torch.optim.Optimizer) -> dict[str, float]:
    z = torch.randn(n, c.net.z_dim, generator=c.gen).to(c.device)
    with c.autocast:
        fake_score = c.D(c.G(z, res, alpha), res, alpha)
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
    return {"loss_G": loss.item()}


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
    state: dict[str, Any], max_steps: int | None, extend_kimg: float
) -> tuple[NetConfig, TrainConfig]:
    """A checkpoint's own configs win on resume; only the step limit and an extension may change."""
    extra = state["train_cfg"].get("extra_kimg", 0.0) + extend_kimg
    return net_config(state), TrainConfig.from_json(
        {**state["train_cfg"], "max_steps": max_steps, "extra_kimg": extra}
    )


def describe_schedule(net: NetConfig, cfg: TrainConfig) -> str:
    phases = schedule(net, cfg)
    lines = [f"{'phase':>5} {'res':>5} {'kind':>5} {'kimg':>8} {'from kimg':>10} {'batch':>6} {'lr':>8}"]
    start = 0.0
    for i, p in enumerate(phases):
        lines.append(f"{i:>5} {p.res:>5} {p.kind:>5} {p.kimg:>8.1f} {start:>10.1f} {p.batch:>6} {p.lr:>8.5f}")
        start += p.kimg
    lines.append(f"total {start:.1f} kimg")
    return "\n".join(lines)


def train(
    net: NetConfig,
    cfg: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    resume: str | Path | None = None,
    extend_kimg: float = 0.0,
    cache_dir: str | Path | None = None,
    cifar_class: str | None = None,
    allow_upscale: bool = False,
    progress: bool = True,
) -> TrainResult:
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
        state = load_state(resume)
        net, cfg = resumed_configs(state, cfg.max_steps, extend_kimg)
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

    # --- run folder
    if state is not None:
        run_dir = Path(state["path"]).parent
    elif d.main:
        run_dir = next_run_dir(Path(out), f"{net.arch}-{cfg.preset}-{net.max_res}")
    else:
        run_dir = Path(out)
    if d.world > 1:
        obj = [str(run_dir)]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])

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
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)
    cur_nimg, steps, opt_res = 0, 0, -1
    history: list[dict[str, Any]] = []
    opt_G = opt_D = None
    if state is not None:
        try:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            G_ema.load_state_dict(state["G_ema"])
            cur_nimg, steps = int(state["cur_nimg"]), int(state["steps"])
            opt_res = int(state["opt_res"])
            lr = phases[locate(phases, cur_nimg)[0]].lr
            opt_G, opt_D = make_optimizer(G, lr, cfg, net.arch), make_optimizer(D, lr, cfg, net.arch)
            opt_G.load_state_dict(state["opt_G"])
            opt_D.load_state_dict(state["opt_D"])
            gen.set_state(state["rng"]["gen"])
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
        G_step, D_step = torch.compile(G), torch.compile(D)  # type: ignore[assignment]
    ctx = StepContext(G_step, D_step, net, cfg, device, autocast, scaler, gen, d)

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
                },
                indent=2,
            )
        )
        if state is None:
            save_grid(np.asarray(pyramid[net.max_res][:grid_n]), run_dir / "reals.png", cols=cfg.grid_size)
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is optional at run time
            writer = None

    def save_checkpoint(res: int) -> None:
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
            "opt_res": opt_res,
            "res": res,
            "kimg": cur_nimg / 1000,
            "rng": {"gen": gen.get_state(), "torch": torch.get_rng_state()},
            "history": history,
            "data": str(data),
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
    acc: dict[str, list[float]] = defaultdict(list)
    res, alpha = phases[locate(phases, cur_nimg)[0]].res, 1.0
    done = cur_nimg >= total_nimg
    while not done:
        idx, alpha = locate(phases, cur_nimg)
        phase: Phase = phases[idx]
        res = phase.res
        if opt_res != res or opt_G is None or opt_D is None:  # a new resolution: fresh Adam state
            opt_G = make_optimizer(G, phase.lr, cfg, net.arch)
            opt_D = make_optimizer(D, phase.lr, cfg, net.arch)
            opt_res = res
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = phase.lr
        batch = max(phase.batch // d.world, 1)

        reals = fade_reals(
            to_device(sample_reals(pyramid[res], batch, gen, cfg.flips), device, channels_last), alpha
        )
        G.requires_grad_(False)
        D.requires_grad_(True)
        stats = d_step(ctx, reals, res, alpha, opt_D)
        G.requires_grad_(True)
        D.requires_grad_(False)
        stats.update(g_step(ctx, batch, res, alpha, opt_G))
        update_ema(G_ema, G, cfg.ema_beta)
        if not all(math.isfinite(v) for v in stats.values()):
            bad = ", ".join(f"{k}={v}" for k, v in stats.items() if not math.isfinite(v))
            kept = run_dir / "checkpoint.pt"
            raise TrainingError(
                f"non-finite loss at kimg {cur_nimg / 1000:.2f} ({res}x{res}, alpha {alpha:.3f}): {bad}. "
                + (
                    f"The last good checkpoint is {kept}; resume from it with a lower --lr."
                    if kept.exists()
                    else "No checkpoint was written yet; try a lower --lr."
                )
            )
        for k, v in stats.items():
            acc[k].append(v)
        cur_nimg += batch * d.world
        steps += 1
        bar.update(batch * d.world)

        next_idx = locate(phases, cur_nimg)[0]
        done = cur_nimg >= total_nimg or (cfg.max_steps is not None and steps >= cfg.max_steps)
        phase_end = next_idx != idx or cur_nimg >= total_nimg
        tick = cur_nimg - tick_start_nimg >= cfg.tick_kimg * 1000 or phase_end or done
        if not tick:
            continue

        # --- housekeeping
        elapsed = time.time() - tick_start_time
        row = {
            "kimg": cur_nimg / 1000,
            "res": res,
            "phase": phase.kind,
            "alpha": round(alpha, 4),
            "batch": phase.batch,
            "lr": phase.lr,
            "steps": steps,
            "img_s": (cur_nimg - tick_start_nimg) / max(elapsed, 1e-9),
            **{k: float(np.mean(v)) for k, v in acc.items()},
        }
        acc.clear()
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
            save_sample_grid(res, alpha, "end" if phase_end else "tick")
            plot_losses(history, run_dir / "losses.png")
            save_checkpoint(res)
            if phase_end and phase.kind == "stab":
                save_snapshot(res)
    bar.close()
    if writer is not None:
        writer.close()
    if d.world > 1:
        dist.barrier()
    return TrainResult(run_dir, cur_nimg, steps, res, cur_nimg >= total_nimg, history)
