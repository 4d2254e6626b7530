"""A phase's training step captured once as a CUDA graph and replayed (`train --cuda-graph`).

The eager step issues 1,000-1,800 ops (bench/step_floor.py), and the H200's step times fit a fixed ~61 ms a
step at 256 px whatever the minibatch (docs/benchmarks.md, "A fixed cost per step"). A graph replays every
kernel of the step with one launch. Each phase gets its own graph, since each has its own resolution,
minibatch, learning rate and fresh Adam state:

1. The phase's first `warmup` steps run eagerly on a side stream, as PyTorch's capture rules ask (cuDNN's
   autotuning and the allocator settle first). They are real steps: counted, their stats kept.
2. The next step is captured: Adam `capturable` (its step count stays on the device), autocast's weight-cast
   cache off, the run's generator registered with the graph (every replay draws new reals, z, flips and
   penalty mixes), the fade's alpha a device tensor written before each replay, the stats packed into one
   tensor that each replay overwrites and the loop copies.
3. The first replay is checked against the same step run eagerly on copies from the same state (`agreement`):
   the generator's state and Adam's step count must match exactly, the stats to within bf16's noise, and the
   weights of G, D and G_ema must have moved alike. If anything differs, or the capture fails, the copies'
   state (the eager step's) is put back and the phase trains eagerly, with a message: nothing is lost.

With --compile as well, the captured step runs the compiled G and D (fused kernels: fewer of them and fewer
bytes moved, the device's share of the step) and the graph removes what is left of the host's cost per
launch, the penalty's eager double backward and Adam included. The warm-up steps compile every form the step
calls (G with and without grad, D on both batches), so nothing compiles during the capture, which would fail
it; the check's twin runs eagerly, so the compiled and captured step is held to the eager one.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from trainer.config import TrainConfig
from trainer.loop import LoopStep, make_optimizer

STATS_RTOL = 0.03  # of the larger score: bf16 rounds to 0.4 %, and a loss is a difference of scores
MOVED_RTOL = 0.5  # |graph's update - eager update| / |eager update|: a missing or doubled update is >= 1


def check_graph_run(cfg: TrainConfig, device: torch.device, world: int) -> None:
    """ValueError for a run whose step cannot be captured (nothing is loaded or written before this)."""
    if device.type != "cuda":
        raise ValueError("--cuda-graph needs a CUDA GPU (this run would train on the CPU)")
    if world > 1:
        raise ValueError(
            "--cuda-graph trains on one GPU; under torchrun drop it (each rank would all-reduce)"
        )
    if cfg.amp == "fp16":
        raise ValueError(
            "--cuda-graph cannot capture --amp fp16 (its loss scaler reads the device every step): "
            "use --amp bf16 or off"
        )


def networks(step: LoopStep) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The three networks a step changes: G, D and G_ema, each the eager module (under --compile, c.G and c.D
    are compiled wrappers around the first two)."""
    return step.G, step.c.eager_D, step.G_ema


def twin_step(step: LoopStep) -> LoopStep:
    """`step` on copies of its networks, Adam state and generator: running it leaves `step`'s own untouched.
    The copies run eagerly even under --compile: the twin is the reference a compiled, captured step is held
    to."""
    G, D, G_ema = (copy.deepcopy(m) for m in networks(step))
    gen = torch.Generator(device=step.c.device)
    gen.set_state(step.c.gen.get_state())
    c = dataclasses.replace(step.c, G=G, D=D, D_eager=D, gen=gen)
    opts = []
    for module, opt in ((G, step.opt_G), (D, step.opt_D)):
        twin = make_optimizer(module, opt.param_groups[0]["lr"], c.cfg, c.net.arch)
        # load_state_dict keeps tensors already on the right device: copy them, or both would step one state
        twin.load_state_dict(copy.deepcopy(opt.state_dict()))
        opts.append(twin)
    return dataclasses.replace(step, c=c, G=G, G_ema=G_ema, opt_G=opts[0], opt_D=opts[1])


def flat_weights(step: LoopStep) -> list[Tensor]:
    """G's, D's and G_ema's parameters, each network as one fp32 vector (a copy)."""
    return [torch.cat([p.detach().float().flatten() for p in m.parameters()]) for m in networks(step)]


def adam_steps(step: LoopStep) -> list[float]:
    """Adam's step count of each optimizer (its first parameter's; they all step together)."""
    out = []
    for opt in (step.opt_G, step.opt_D):
        state = opt.state[opt.param_groups[0]["params"][0]]
        out.append(float(state["step"]) if "step" in state else 0.0)
    return out


def agreement(
    step: LoopStep,
    stats: dict[str, Tensor],
    twin: LoopStep,
    twin_stats: dict[str, Tensor],
    before: list[Tensor],
) -> list[str]:
    """What differs between `step` and `twin` after each took one step from the same state (`before`:
    `flat_weights` then): empty when they agree."""
    why = []
    if not torch.equal(step.c.gen.get_state(), twin.c.gen.get_state()):
        why.append("the generator's state (the random draws)")
    counts, twin_counts = adam_steps(step), adam_steps(twin)
    if counts != twin_counts:
        why.append(f"Adam's step count ({counts} against {twin_counts})")
    got = {k: float(v) for k, v in stats.items()}
    want = {k: float(v) for k, v in twin_stats.items()}
    if got.keys() != want.keys():
        why.append(f"the stats ({sorted(got)} against {sorted(want)})")
    else:
        scale = max([1.0] + [abs(v) for v in (*got.values(), *want.values())])
        why += [
            f"{k} {got[k]:.5g} against {want[k]:.5g}"
            for k in got
            if abs(got[k] - want[k]) > STATS_RTOL * scale
        ]
    for name, b, now, then in zip(
        ("G", "D", "G_ema"), before, flat_weights(step), flat_weights(twin), strict=True
    ):
        moved, eager = now - b, then - b
        off = float((moved - eager).norm()) / max(float(eager.norm()), 1e-12)
        if off > MOVED_RTOL or not torch.isfinite(moved).all():
            why.append(f"{name}'s update ({off:.2f} of the eager update apart)")
    return why


@torch.no_grad()
def adopt(step: LoopStep, twin: LoopStep) -> None:
    """Put `twin`'s state (weights, Adam, generator) into `step`'s own tensors."""
    for mine, theirs in zip(networks(step), networks(twin), strict=True):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True):
            a.copy_(b)
    step.opt_G.load_state_dict(copy.deepcopy(twin.opt_G.state_dict()))
    step.opt_D.load_state_dict(copy.deepcopy(twin.opt_D.state_dict()))
    step.c.gen.set_state(twin.c.gen.get_state())


class GraphedStep:
    """`step` (one phase's `LoopStep`) as a CUDA graph: eager warm-up calls, then a capture checked against
    the eager step, then one replay per call; eager for the rest of the phase if the capture fails or the
    check finds a difference (`fallback` says why)."""

    def __init__(self, step: LoopStep, fade: bool, warmup: int = 3, check: bool = True, verbose: bool = True):
        if step.c.device.type != "cuda":
            raise ValueError("a CUDA graph needs a CUDA device")
        for opt in (step.opt_G, step.opt_D):
            for group in opt.param_groups:
                group["capturable"] = True  # Adam's step count on the device, read there
        if step.c.cfg.amp == "bf16":  # autocast's cache of cast weights cannot live across a capture
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
            step = dataclasses.replace(step, c=dataclasses.replace(step.c, autocast=autocast))
        self.step, self.fade, self.warmup, self.check, self.verbose = step, fade, warmup, check, verbose
        self.alpha = torch.ones((), device=step.c.device)  # the fade's alpha, written before each replay
        self.side = torch.cuda.Stream(step.c.device)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.packed = torch.empty(0)
        self.keys: list[str] = []
        self.fallback: str | None = None

    def __call__(self, alpha: float) -> dict[str, Tensor]:
        self.calls += 1
        if self.fallback is not None:
            return self.step(alpha)
        if self.graph is not None:
            return self._replay(alpha)
        if self.calls <= self.warmup:
            return self._warm(alpha)
        return self._capture(alpha)

    def _warm(self, alpha: float) -> dict[str, Tensor]:
        here = torch.cuda.current_stream()
        self.side.wait_stream(here)
        with torch.cuda.stream(self.side):
            stats = self.step(alpha)
            stats = {k: v.clone() for k, v in stats.items()}
        here.wait_stream(self.side)
        return stats

    def _capture(self, alpha: float) -> dict[str, Tensor]:
        twin = twin_step(self.step) if self.check else None
        before = flat_weights(self.step) if self.check else []
        try:
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.step.c.gen)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                stats = self.step(self.alpha if self.fade else 1.0)
                self.keys = list(stats)
                self.packed = torch.stack([v.float() for v in stats.values()])
            self.graph = graph
        except RuntimeError as e:  # CUDA's errors and running out of memory included
            said = (str(e).splitlines() or [""])[0]
            self._go_eager(f"the capture failed ({type(e).__name__}: {said})")
            return self.step(alpha)  # nothing of the capture ran: the state is the warm-up's
        got = self._replay(alpha)
        if twin is None:
            return got
        want = twin(alpha)
        why = agreement(self.step, got, twin, want, before)
        if why:
            adopt(self.step, twin)  # the eager step's result stands
            self._go_eager("the first replay differs from the eager step: " + "; ".join(why))
            return want
        return got

    def _replay(self, alpha: float) -> dict[str, Tensor]:
        assert self.graph is not None
        if self.fade:
            self.alpha.fill_(alpha)
        self.graph.replay()
        return dict(zip(self.keys, self.packed.clone().unbind(0), strict=True))

    def _go_eager(self, why: str) -> None:
        """The rest of the phase runs the eager step."""
        self.fallback, self.graph, self.packed = why, None, torch.empty(0)
        if self.verbose:
            res = self.step.res
            print(f"--cuda-graph at {res}x{res}: {why}; this phase trains eagerly", flush=True)
