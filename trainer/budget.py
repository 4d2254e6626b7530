"""A time budget: measure this machine's training throughput per resolution, then plan every phase's kimg
so that the whole schedule fits the minutes left.

The plan: every phase but the last (the start resolution's stabilisation, then a fade and a stabilisation
per larger resolution, then the final fade) shows the same number of images K, as in the paper's schedule;
K is chosen so that these phases take `grow_fraction` of the time (default 0.4). The final resolution's
stabilisation gets the rest, which is where image quality is made. A run stops at its deadline in any case,
so a plan that was too hopeful only shortens that last phase, and one that was too cautious lengthens it:
a planned run whose schedule ends early trains its last phase on until the deadline (`train_loop`).

Before any of that, the time a phase's first steps take beyond the steady rate comes off the budget: under
--compile the compilation of the phase's forms of G and D (tens of seconds on a GPU), under --cuda-graph the
warm-up and capture, and cuDNN's search for new shapes. The probe measures it per resolution, and it
already pays it for each resolution's first phase (its compiled forms and cuDNN's choices are kept), so a
plan charges it to every other phase: the stabilisation after each fade."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from tqdm import tqdm

from trainer.config import NetConfig, Phase, TrainConfig

if TYPE_CHECKING:
    from trainer.loop import DeviceImages, StepContext

PLAN_EFFICIENCY = 0.95  # the loop's housekeeping (grids, stats, checkpoints) takes a few percent
FINAL_SAVE_S = 10.0  # kept free at the end for the last grid, checkpoint and snapshot


class BudgetError(ValueError):
    """The time budget cannot hold the schedule."""


@dataclass
class Probe:
    """What `probe_throughput` measured, per resolution."""

    rates: dict[int, float]  # images/s of the steady step
    setup: dict[int, float] = field(default_factory=dict)  # seconds of a phase's first steps beyond that
    # per resolution, where the probe's own seconds went: the images' upload, its first step (cuDNN's
    # search, CUDA's lazy loading, compiling), the rest of the warm-up (with a graph: the capture), the timed steps
    parts: dict[int, dict[str, float]] = field(default_factory=dict)

    def charged(self, phases: list[Phase]) -> list[float]:
        """The set-up seconds each phase will pay: none for each resolution's first phase, whose forms the
        probe compiled (and cuDNN searched), the probe's figure for every later one."""
        firsts = {p.res: i for i, p in reversed(list(enumerate(phases)))}
        return [0.0 if firsts[p.res] == i else self.setup.get(p.res, 0.0) for i, p in enumerate(phases)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_throughput(
    ctx: StepContext,
    phases: list[Phase],
    images: DeviceImages,
    channels_last: bool,
    warmup: int = 3,
    steps: int = 8,
    deadline: float | None = None,
    progress: bool = True,
) -> Probe:
    """Images/s of full training steps at each resolution of `phases` (mid-fade where it fades), and the
    seconds the first `warmup` + 1 steps took beyond that rate, measured on throw-away copies of G and D so
    that the run itself starts untouched. `images` is the run's own device copy of the data, so nothing is
    uploaded twice. Raises BudgetError as soon as `deadline` (time.monotonic(); less the final save) has
    passed: a probe slower than the budget (a large network on a CPU, compiling) stops there, not minutes
    later. A single process checks after every step; ranks agree after each block of steps."""
    from trainer.loop import (
        LoopStep,
        allocator_said,
        is_out_of_memory,
        make_optimizer,
        past_deadline,
        smaller_minibatch,
    )

    began = time.monotonic()

    def check_time(res: int, measured: int, every_step: bool = False) -> None:
        if deadline is None or (every_step and ctx.d.world > 1):
            return
        if past_deadline(deadline - FINAL_SAVE_S, ctx.d, ctx.device):
            raise BudgetError(
                f"--minutes leaves no time to train: the budget ran out {time.monotonic() - began:.0f} s into "
                f"the throughput probe, at {res}x{res} ({measured} of {len(todo)} resolutions measured); "
                "nothing was trained or written. Give more minutes, a higher --start-res or a lower --max-res"
            )

    def timed(step: Any, alpha: float, res: int, n: int) -> float:
        """Seconds of `n` steps to the device's last kernel, the deadline checked as check_time says."""
        t = time.perf_counter()
        for _ in range(n):
            step(alpha)
            check_time(res, len(rates), every_step=True)
        _sync(ctx.device)
        took = time.perf_counter() - t
        check_time(res, len(rates))
        return took

    G = copy.deepcopy(getattr(ctx.G, "_orig_mod", ctx.G))  # the eager module under a compiled one
    D = copy.deepcopy(getattr(ctx.D, "_orig_mod", ctx.D))
    G_ema = copy.deepcopy(G).requires_grad_(False)
    G_step, D_step = (
        (torch.compile(G, dynamic=False), torch.compile(D, dynamic=False)) if ctx.cfg.compile else (G, D)
    )
    probe = dataclasses.replace(
        ctx,
        G=cast(nn.Module, G_step),
        D=cast(nn.Module, D_step),
        D_eager=D,
        gen=torch.Generator(device=ctx.device).manual_seed(987654321),
    )
    rates: dict[int, float] = {}
    setup: dict[int, float] = {}
    parts: dict[int, dict[str, float]] = {}
    first = {p.res: p for p in reversed(phases)}  # each resolution's first phase
    todo = [first[r] for r in sorted(first)]
    bar = tqdm(todo, desc="throughput probe", unit="res", disable=not (progress and ctx.d.main), leave=False)
    for p in bar:
        bar.set_postfix_str(f"{p.res}x{p.res}")
        alpha = 0.5 if p.kind == "fade" else 1.0
        opt_G, opt_D = (make_optimizer(m, p.lr, ctx.cfg, ctx.net.arch) for m in (G, D))
        batch = max(p.batch // ctx.d.world, 1)
        t = time.perf_counter()
        reals = images[p.res]  # the upload (a run at one resolution then finds it done)
        _sync(ctx.device)
        upload = time.perf_counter() - t
        try:
            step: Any = LoopStep(
                probe, G, G_ema, reals, p.res, batch, opt_G, opt_D, ctx.cfg.ema_beta, True, channels_last
            )
            if ctx.cfg.cuda_graph:  # the step the loop will replay: its rate, not the eager one's
                from trainer.graphstep import GraphedStep

                step = GraphedStep(step, p.kind == "fade", warmup=warmup, check=False, verbose=False)
            # with a graph the warm-up steps, then the capture and its first replay
            step1 = timed(step, alpha, p.res, 1)
            warm = step1 + timed(step, alpha, p.res, warmup)
            took = timed(step, alpha, p.res, steps)
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            raise BudgetError(
                f"the throughput probe ran out of memory at {p.res}x{p.res} with minibatch {p.batch} on "
                f"{ctx.device} ({allocator_said(e)}); nothing was trained or written. Start again with "
                f"{smaller_minibatch(p.batch)}"
            ) from e
        rates[p.res] = batch * ctx.d.world * steps / took
        setup[p.res] = max(0.0, warm - (warmup + 1) * took / steps)
        parts[p.res] = {
            k: round(v, 3)
            for k, v in (
                ("upload", upload),
                ("first_step", step1),
                ("warm_up", warm - step1),
                ("steps", took),
            )
        }
        del step, reals
    del probe
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return Probe(rates, setup, parts)


def plan_to_fit(
    net: NetConfig, cfg: TrainConfig, probe: Probe, seconds: float, grow_fraction: float = 0.4
) -> TrainConfig:
    """The config whose schedule fits `seconds` at the measured rates (images/s per resolution), after the
    phases' set-up (`Probe.charged`)."""
    from trainer.config import schedule

    if not 0.0 < grow_fraction < 1.0:
        raise BudgetError(f"--grow-fraction must be between 0 and 1, got {grow_fraction}")
    rates = probe.rates
    phases = schedule(net, dataclasses.replace(cfg, extra_kimg=0.0, last_kimg=None))
    setup = sum(probe.charged(phases))
    usable = (seconds - FINAL_SAVE_S - setup) * PLAN_EFFICIENCY
    if usable <= 0:
        raise BudgetError(
            f"--minutes leaves no time to train (only {seconds:.0f} s after loading and the probe, "
            f"{setup:.0f} s of it for the phases' set-up)"
        )
    if len(phases) == 1:  # start_res == max_res: one stabilisation takes it all
        kimg = usable * rates[phases[0].res] / 1000
        return dataclasses.replace(cfg, first_kimg=kimg, last_kimg=None, extra_kimg=0.0)
    growing = phases[:-1]
    s_per_kimg = sum(1000.0 / rates[p.res] for p in growing)  # seconds for 1 kimg in each growing phase
    k = grow_fraction * usable / s_per_kimg
    last = (1.0 - grow_fraction) * usable * rates[phases[-1].res] / 1000
    need = 4 * max(p.batch for p in phases)  # a handful of steps per phase at the very least
    if k * 1000 < need or last * 1000 < need:
        raise BudgetError(
            f"--minutes is too short for this schedule: each of its {len(growing)} growing phases would get "
            f"{k * 1000:.0f} images (at least {need} are needed); give more minutes, a higher "
            "--start-res or a lower --max-res"
        )
    return dataclasses.replace(
        cfg,
        first_kimg=round(k, 3),
        fade_kimg=round(k, 3),
        stab_kimg=round(k, 3),
        last_kimg=round(last, 3),
        extra_kimg=0.0,
    )
