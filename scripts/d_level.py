"""Where a run's saved D puts its scores, and how far they move from one step to the next.

The training log reads D's scores as tick means (`score_real`, `score_fake`: hundreds of steps each). With
WGAN-GP only the drift term (0.001 x real score squared) holds the scores' level, so the level of the D
a checkpoint saves can sit far from the tick means when it swings from step to step; a numerical fault on
the device (the same D scoring differently there) would look the same in the ticks. This script tells the
two apart. It prints two tables:

1. the saved D's mean scores of one fixed minibatch of real faces and of its G's faces, on the CPU in fp32,
   on the device in fp32 and on the device as the run trains (its mixed precision and memory format);
2. `--steps` eager training steps from the checkpoint (its Adam state, learning rate and position), each
   row: the D step's scores of its minibatch, the G step's loss (under WGAN-GP, minus the score of its
   own generated minibatch), and the fixed minibatch's scores after the step.

    python scripts/d_level.py runs/00004-progan-gpu-256 --data faces-178.zip --steps 16

Nothing is written: the run folder stays as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.config import locate, schedule
from trainer.data import DataError, load_images
from trainer.loop import (
    Dist,
    critic_scores,
    fade_reals,
    fixed_reals,
    make_optimizer,
    networks_step_context,
    sample_reals,
    train_step,
)
from trainer.networks import build_networks

POOL = 2048  # reals the steps draw from, on the device (400 MB at 256 px)


def networks(ck: Checkpoint, device: torch.device, channels_last: bool) -> tuple[nn.Module, nn.Module]:
    G, D = build_networks(ck.net)
    G.load_state_dict({k: v.float() for k, v in ck.nets["G"].items()})
    D.load_state_dict({k: v.float() for k, v in ck.nets["D"].items()})
    G.to(device)
    D.to(device)
    if channels_last:
        G.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        D.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return G, D


def fixed_scores(c: Any, reals: Tensor, z: Tensor, res: int, alpha: float) -> tuple[float, float]:
    """Mean scores of the fixed reals and of G(z) (`c`: a step context), one pass as the loop's D step
    scores them."""
    with torch.no_grad(), c.autocast:
        fake = c.G(z.to(c.device), res, alpha)
        real_s, fake_s = critic_scores(c, reals.to(c.device), fake, res, alpha)
    return float(real_s.float().mean()), float(fake_s.float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder or its checkpoint.pt (with its Adam state, as the run left it)")
    ap.add_argument("--data", required=True, help="the faces it trains on (an archive or folder)")
    ap.add_argument("--steps", type=int, default=16, help="eager training steps to follow (default 16)")
    ap.add_argument("--num", type=int, default=64, help="fixed minibatch, a multiple of 4 (default 64)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", help="where decoded images are cached (default: train's)")
    a = ap.parse_args(argv)
    if a.num < 4 or a.num % 4:
        ap.error(f"--num must be a positive multiple of 4 (the minibatch-stddev group), got {a.num}")
    if a.steps < 0:
        ap.error(f"--steps must be 0 or more, got {a.steps}")
    try:
        device = torch.device(a.device)
        ck = Checkpoint.load(a.run)
        if ck.is_model or ck.cur_nimg is None:
            raise CheckpointError(f"{a.run} is not a run's checkpoint (a model folder records no position)")
        images = load_images(  # the faces it trained on: halved from its top resolution
            a.data, ck.res, top=ck.net.max_res, cache_dir=a.cache_dir, allow_upscale=True, progress=False
        )
    except (CheckpointError, DataError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(images) < a.num:
        print(f"error: {a.data} holds {len(images)} faces, fewer than --num {a.num}", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(ck.train, compile=False, cuda_graph=False)
    phases = schedule(ck.net, cfg)
    idx, alpha = locate(phases, ck.cur_nimg)
    phase, res = phases[idx], phases[idx].res
    batch = phase.batch
    reals = fade_reals(fixed_reals(images, a.num, a.seed), alpha)
    z = torch.randn(a.num, ck.net.z_dim, generator=torch.Generator().manual_seed(a.seed))
    gen = torch.Generator(device=device).manual_seed(a.seed + 1)  # the steps: not the fixed z
    cpu = torch.device("cpu")

    print(f"{a.run}: {res}x{res} {phase.kind}, alpha {alpha:.3f}, kimg {ck.cur_nimg / 1000:.2f}, on {device}")
    print(f"the saved D, {a.num} fixed real faces and {a.num} of its G's")
    print("| where | real | generated | gap |")
    print("| --- | --- | --- | --- |")
    forms = [("cpu, fp32, NCHW", cpu, False, False)]
    if device.type != "cpu":
        forms += [(f"{device.type}, fp32, NCHW", device, False, False)]
        if cfg.amp != "off" or cfg.channels_last:
            layout = "NHWC" if cfg.channels_last else "NCHW"
            forms += [(f"{device.type}, as trained ({cfg.amp}, {layout})", device, True, cfg.channels_last)]
    for name, dev, amp, last in forms:
        G, D = networks(ck, dev, last)
        form = cfg if amp else dataclasses.replace(cfg, amp="off")
        r, f = fixed_scores(networks_step_context(G, D, ck.net, form, dev, gen, Dist()), reals, z, res, alpha)
        print(f"| {name} | {r:.3f} | {f:.3f} | {r - f:.3f} |")

    if a.steps == 0:
        return 0
    last = cfg.channels_last and device.type == "cuda"
    G, D = networks(ck, device, last)
    c = networks_step_context(G, D, ck.net, cfg, device, gen, Dist())
    opt_G, opt_D = (
        make_optimizer(G, phase.lr, cfg, ck.net.arch),
        make_optimizer(D, phase.lr, cfg, ck.net.arch),
    )
    own = bool(ck.opt) and ck.opt_phase in (None, idx)  # as a resume of this phase takes Adam on
    if own:
        opt_G.load_state_dict(ck.opt["G"])
        opt_D.load_state_dict(ck.opt["D"])
    for group in (*opt_G.param_groups, *opt_D.param_groups):
        group["capturable"] = False
        group["lr"] = phase.lr
    rng = np.random.default_rng(a.seed + 1)
    pool = torch.from_numpy(np.stack([images[i] for i in rng.choice(len(images), min(POOL, len(images)))]))
    pool = pool.to(device)
    adam = "the run's Adam state" if own else "Adam fresh (a packed checkpoint holds none)"
    precision = cfg.amp if device.type == "cuda" and cfg.amp != "off" else "fp32"
    print(
        f"\n{a.steps} eager steps from the checkpoint (minibatch {batch}, lr {phase.lr:g}, {precision}, {adam})"
    )
    print(
        "| step | D step: real | D step: generated | G step: loss_G | fixed after: real | fixed after: gen. |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for step in range(1, a.steps + 1):
        x = fade_reals(sample_reals(pool, batch, gen, cfg.flips, last), alpha)
        stats = train_step(c, x, res, alpha, opt_G, opt_D)
        r, f = fixed_scores(c, reals, z, res, alpha)
        print(
            f"| {step} | {float(stats['score_real']):.3f} | {float(stats['score_fake']):.3f} | "
            f"{float(stats['loss_G']):.3f} | {r:.3f} | {f:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
