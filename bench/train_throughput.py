"""Images/s of one full training step (D step with WGAN-GP + G step) per resolution, for the `gpu` network
(the default model's) and the `paper` one by default (any presets with --presets), on CPU and on CUDA when
present. Each row times the fast configuration (fused_scale; on CUDA also bf16 autocast, channels_last,
TF32) and, in the same process, the plain step (fp32 with TF32 off, NCHW, unfused), so the speed-up shows
as a ratio; GFLOP per image is counted, so the achieved TFLOP/s and on CUDA the share of the bf16 peak
follow.

    python bench/train_throughput.py [--res 4,8,16,32,64,128,256] [--steps 5] [--presets gpu,paper] [--cpu]

`--compile` adds, in the same process, the fast configuration with G and D compiled as `train --compile`
runs them (the penalty's double backward through the eager D) and the seconds its compilation took;
`--batch 16,32,64` gives a row per minibatch (what a larger minibatch buys at a resolution);
`--cuda-graph` adds the step `train --cuda-graph` replays from one capture (no host cost per op), and with
`--compile` also that step with G and D compiled (`train --compile --cuda-graph`: fused kernels, replayed);
`--first-forms` adds the fast step as first written: PixelNorm's autograd backward (of an fp32 copy,
square and mean), the fused layers' kernels from pad, slices and adds, D's reals and fakes in two passes,
in place of the trainer's hand-written backward, one matmul and one pass: what those rewrites buy;
`--profile N`
prints after each row the N kernels the fast step spends most time in and how busy the device was
(bench/step_floor.py gives the ceilings the same step's FLOPs and bytes allow).

Beside the GAN zoo's PGAN (../shared/anchors/anchor_pgan_bench.py, fmap_max 256, latent 512, its minibatch
table, mid-fade), at the same network size and batch:

    python bench/train_throughput.py --presets paper --fmap-max 256 --z-dim 512 --zoo-batch --alpha 0.5 \
        --res 64,128,256 --steps 20 --no-baseline
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from trainer import loop
from trainer.config import Amp, NetConfig, TrainConfig, preset
from trainer.graphstep import GraphedStep
from trainer.loop import Dist, LoopStep, StepContext, make_optimizer, networks_step_context, train_step
from trainer.networks import EqualizedConv2d, PixelNorm, build_networks

# the GAN zoo anchor's minibatch (../shared/anchors/anchor_pgan_bench.py: the official one-GPU table)
ZOO_BATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}


# dense bf16 tensor-core peak (datasheets, SXM parts); the share of it a step reaches is the floor's measure
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def step_gflop(net: NetConfig, res: int, alpha: float) -> float:
    """GFLOP of one trained image in a full D + G step, as 4 G forwards + 13 D forwards (the G forward in the
    D step, the D forwards on reals, fakes and the penalty's mix with their backward passes, the penalty's
    double backward, the G step's forward and backward through D and G). The counter cannot follow the
    penalty's double backward itself, so the forwards are counted (batch 2, on the meta device: shapes
    only, nothing computed) and weighted."""
    with torch.device("meta"):
        G, D = build_networks(net)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            img = G(torch.randn(2, net.z_dim, device="meta"), res, alpha)
        g = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            D(img, res, alpha)
        d = fc.get_total_flops()
    return (4 * g + 13 * d) / 2 / 1e9


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def first_pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """PixelNorm as the trainer first computed it: an fp32 copy, its square, a channel mean and a multiply,
    for autograd to differentiate (the baseline of its hand-written backward; tests compare against it)."""
    return x * torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + eps).to(x.dtype)


@contextlib.contextmanager
def first_forms() -> Iterator[None]:
    """Inside: the three rewrites of the eager step undone, the baseline they are measured against (the
    same functions): PixelNorm as an fp32 copy, its square, a mean and a multiply that autograd
    differentiates; the fused layers' 4x4 kernel as a pad, four shifted slices, three adds (and a flip);
    D's scores of the reals and the fakes in two passes."""

    def pixel_norm(self: PixelNorm, x: torch.Tensor) -> torch.Tensor:
        return first_pixel_norm(x, self.eps)

    def kernel4(self: EqualizedConv2d, flip: bool, gain: float) -> torch.Tensor:
        w = F.pad(self.weight * self.scale, (1, 1, 1, 1))
        k = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
        k = k.flip(2, 3) if flip else k
        return k * gain if gain != 1.0 else k

    def critic_scores(
        c: StepContext, reals: torch.Tensor, fake: torch.Tensor, res: int, alpha: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return c.D(reals, res, alpha), c.D(fake, res, alpha)

    mine = PixelNorm.forward, EqualizedConv2d._kernel4, loop.critic_scores
    PixelNorm.forward, EqualizedConv2d._kernel4 = pixel_norm, kernel4  # type: ignore[method-assign]
    loop.critic_scores = critic_scores
    try:
        yield
    finally:
        PixelNorm.forward, EqualizedConv2d._kernel4, loop.critic_scores = mine  # type: ignore[method-assign]


@dataclass(frozen=True)
class StepSpec:
    """One configuration of the full G+D step: the network, the schedule's settings, the resolution and
    minibatch, the device, the precision and layout, and the fade's alpha."""

    net: NetConfig
    cfg: TrainConfig
    res: int
    batch: int
    device: torch.device
    amp: Amp
    channels_last: bool
    alpha: float = 1.0


def step_parts(
    s: StepSpec, compile: bool = False
) -> tuple[StepContext, torch.Tensor, torch.optim.Optimizer, torch.optim.Optimizer]:
    """What `train_step` takes for `s`, as `train` sets it up: the step context (bf16 autocast with amp
    "bf16" on CUDA, G and D compiled with `compile`) around fresh networks, a minibatch of reals and the
    two optimizers."""
    with s.device:  # built where they run (and, on fake tensors, never moved)
        G, D = build_networks(s.net)
    if s.channels_last:
        G.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        D.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt_G, opt_D = make_optimizer(G, 1e-3, s.cfg, "progan"), make_optimizer(D, 1e-3, s.cfg, "progan")
    cfg = dataclasses.replace(s.cfg, amp=s.amp, compile=compile)
    gen = torch.Generator(device=s.device).manual_seed(0)
    ctx = networks_step_context(G, D, s.net, cfg, s.device, gen, Dist())
    reals = torch.randn(s.batch, 3, s.res, s.res, device=s.device)
    if s.channels_last:
        reals = reals.contiguous(memory_format=torch.channels_last)
    return ctx, reals, opt_G, opt_D


def step_setup(s: StepSpec, compile: bool = False) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two callables: one full G+D step of `step_parts(s, compile)`, and a device sync."""
    ctx, reals, opt_G, opt_D = step_parts(s, compile)

    def step() -> None:
        train_step(ctx, reals, s.res, s.alpha, opt_G, opt_D)

    def sync() -> None:
        if s.device.type == "cuda":
            torch.cuda.synchronize()

    return step, sync


def graph_step_setup(
    s: StepSpec, warmup: int = 3, compile: bool = False
) -> tuple[Callable[[], None], Callable[[], None], GraphedStep]:
    """The step `train --cuda-graph` replays (trainer/graphstep.py) for `s`: the same G+D step with its reals
    drawn from a device copy of 512 random images and the EMA after it (a few ops more than the eager row's
    step), captured after `warmup` eager steps, its first replay checked against the eager step; with
    `compile`, G and D compiled as `train --compile --cuda-graph` runs them (the warm-up compiles). A step
    callable, a device sync, and the GraphedStep (`fallback` says why it went eager, if it did)."""
    if s.device.type != "cuda":
        raise ValueError("a CUDA graph needs a CUDA device")
    ctx, _, opt_G, opt_D = step_parts(s, compile)
    images = torch.randint(
        0, 256, (512, s.res, s.res, 3), dtype=torch.uint8, device=s.device, generator=ctx.gen
    )
    G = getattr(ctx.G, "_orig_mod", ctx.G)  # the eager G, whose weights the EMA follows
    G_ema = copy.deepcopy(G).requires_grad_(False)
    step = LoopStep(
        ctx, G, G_ema, images, s.res, s.batch, opt_G, opt_D, s.cfg.ema_beta, True, s.channels_last
    )
    graphed = GraphedStep(step, fade=s.alpha < 1.0, warmup=warmup)
    for _ in range(warmup + 1):  # the eager warm-up, then the capture, its check and first replay
        graphed(s.alpha)

    def replay() -> None:
        graphed(s.alpha)

    return replay, torch.cuda.synchronize, graphed


def timed_rate(
    step: Callable[[], None], sync: Callable[[], None], batch: int, steps: int
) -> tuple[float, float]:
    """Images per second of `steps` calls of `step`, and the seconds of the two untimed calls before them."""

    def timed(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return time.perf_counter() - t

    warm = timed(2)
    return batch * steps / timed(steps), warm


def graph_rate(s: StepSpec, steps: int, compile: bool = False) -> tuple[float, float, str | None]:
    """Images per second of the graphed step (`graph_step_setup`), the seconds its warm-up (with `compile`,
    compilation), capture and check took, and why it fell back to the eager step (None when the replay
    passed its check)."""
    t = time.perf_counter()
    step, sync, graphed = graph_step_setup(s, compile=compile)
    sync()
    setup = time.perf_counter() - t
    rate, warm = timed_rate(step, sync, s.batch, steps)
    return rate, setup + warm, graphed.fallback


def step_rate(s: StepSpec, steps: int, compile: bool = False) -> tuple[float, float]:
    """Images per second of `steps` full G+D steps, and the seconds of the two warm-up steps before them
    (with `compile`, mostly compilation)."""
    step, sync = step_setup(s, compile)
    return timed_rate(step, sync, s.batch, steps)


def profile_step(s: StepSpec, rows: int = 15, steps: int = 3) -> str:
    """Where one step's time goes: torch.profiler over `steps` steps after two warm-up ones, the `rows`
    kernels (ops on a CPU) with the most self time, and how busy the device was: device time against wall
    time per step tells a launch-bound step (the device waits on the host) from a kernel-bound one."""
    step, sync = step_setup(s)
    for _ in range(2):
        step()
    sync()
    cuda = s.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = (time.perf_counter() - t) / steps
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    busy = sum(getattr(e, key) for e in events) / steps / 1e6  # seconds of kernels (or ops) per step
    n_kernels = sum(e.count for e in events if getattr(e, key) > 0) / steps
    table = events.table(sort_by=key, row_limit=rows)
    return (
        f"{table}\nper step: wall {wall * 1e3:.1f} ms, {'device' if cuda else 'op'} busy {busy * 1e3:.1f} ms "
        f"({busy / wall:.0%}), {n_kernels:.0f} {'kernels' if cuda else 'ops'}"
    )


def minibatches(text: str) -> list[int]:
    """--batch: one minibatch or a comma-separated list of them."""
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give minibatch sizes as positive integers, e.g. 16,32,64"
        )
    return sizes


def strict_fp32_rate(s: StepSpec, steps: int) -> float:
    """The baseline: fp32 with TF32 off on CUDA, NCHW, `s.net` as given (unfused): the step as first written."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return step_rate(dataclasses.replace(s, amp="off", channels_last=False), steps)[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", default="4,8,16,32,64,128,256")
    ap.add_argument(
        "--presets",
        default="gpu,paper",
        help="comma-separated presets (default: gpu,paper: the default model's network and the paper's)",
    )
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--batch",
        type=minibatches,
        help="minibatch instead of the preset's; a list (16,32,64) gives a row each",
    )
    ap.add_argument("--cpu", action="store_true", help="stay on CPU even when CUDA is present")
    ap.add_argument("--z-dim", type=int, help="override the preset's latent size")
    ap.add_argument("--fmap-max", type=int, help="override the preset's channel cap")
    ap.add_argument(
        "--zoo-batch",
        action="store_true",
        help="the GAN zoo anchor's minibatch per resolution (the official one-GPU table), to run beside "
        "../shared/anchors/anchor_pgan_bench.py at the same network size",
    )
    ap.add_argument(
        "--alpha", type=float, default=1.0, help="fade alpha of the timed steps (the anchor: 0.5)"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain baseline rows")
    ap.add_argument("--no-fused", action="store_true", help="time the fast configuration without fused_scale")
    ap.add_argument(
        "--compile", action="store_true", help="also time the fast configuration with G and D compiled"
    )
    ap.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time the fast step captured once as a CUDA graph and replayed (CUDA only)",
    )
    ap.add_argument(
        "--first-forms",
        action="store_true",
        help="also time the fast step as first written (PixelNorm, the fused kernels, D's two passes)",
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after each row, profile the fast step: its N costliest kernels and device busy / wall time",
    )
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.cpu
    if a.cuda_graph and not cuda:
        ap.error("--cuda-graph needs a CUDA device (none here, or --cpu given)")
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    fused = not a.no_fused
    fast_name = ("bf16+CL+TF32" if cuda else "fp32") + ("+fused" if fused else "")
    print(f"device: {name}; torch {torch.__version__}; {a.steps} timed steps per row")
    head = f"| preset | res | batch | img/s ({fast_name}) |"
    if a.compile:
        head += " img/s (the same, compiled) | compiled / not | compile s |"
    if a.cuda_graph:
        head += " img/s (the same, CUDA graph) | graph / eager | capture s |"
    if a.cuda_graph and a.compile:
        head += " img/s (compiled + CUDA graph) | over eager | compile + capture s |"
    if a.first_forms:
        head += " img/s (first forms) | rewrites' speed-up |"
    if not a.no_baseline:
        head += f" img/s ({'fp32 NCHW' if cuda else 'fp32'}, unfused) | speed-up |"
    peak = bf16_peak(name) if cuda else None
    head += " GFLOP/img | TFLOP/s |" + (f" share of bf16 peak ({peak:.0f}) |" if peak else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for pname in a.presets.split(","):
        net_kw, train_kw = preset(pname)
        net_kw.update({k: v for k, v in (("z_dim", a.z_dim), ("fmap_max", a.fmap_max)) if v is not None})
        cfg = TrainConfig(**train_kw)
        for res in (int(r) for r in a.res.split(",")):
            plain = NetConfig(max_res=res, **{**net_kw, "fused_scale": False})  # the baseline: unfused
            net = dataclasses.replace(plain, fused_scale=fused)
            gflop = step_gflop(net, res, a.alpha)
            batches = [ZOO_BATCH[res] if a.zoo_batch else cfg.batch(res)]
            for batch in a.batch or batches:
                spec = StepSpec(net, cfg, res, batch, device, "bf16", cuda, a.alpha)
                fast, _ = step_rate(spec, a.steps)
                row = f"| {pname} | {res} | {batch} | {fast:.1f} |"
                if a.compile:
                    comp, warm = step_rate(spec, a.steps, compile=True)
                    row += f" {comp:.1f} | {comp / fast:.2f}x | {warm:.0f} |"
                for compiled in (False, True) if a.cuda_graph else ():
                    if compiled and not a.compile:
                        continue
                    try:
                        graphed, warm, fallback = graph_rate(spec, a.steps, compile=compiled)
                        said = " (eager: the graph fell back)" if fallback else ""
                        row += f" {graphed:.1f}{said} | {graphed / fast:.2f}x | {warm:.0f} |"
                    except (RuntimeError, ValueError, AttributeError) as e:  # the row's other figures stand
                        what = "compiled + CUDA graph" if compiled else "CUDA graph"
                        print(f"{what} at {res} px, batch {batch}: {e}", flush=True)
                        row += " failed | – | – |"
                if a.first_forms:
                    with first_forms():
                        old, _ = step_rate(spec, a.steps)
                    row += f" {old:.1f} | {fast / old:.2f}x |"
                if not a.no_baseline:
                    base = strict_fp32_rate(dataclasses.replace(spec, net=plain), a.steps)
                    row += f" {base:.1f} | {fast / base:.2f}x |"
                row += f" {gflop:.1f} | {gflop * fast / 1000:.2f} |"
                row += f" {gflop * fast / 1000 / peak:.1%} |" if peak else ""
                print(row, flush=True)
                if a.profile:
                    print(profile_step(spec, a.profile), flush=True)


if __name__ == "__main__":
    main()
