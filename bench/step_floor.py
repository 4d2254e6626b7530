"""The floor of one training step on a GPU, counted op by op without one: FLOPs, bytes moved and kernels of
the full D + G step the trainer runs on CUDA (WGAN-GP with its double backward, bf16 autocast with CUDA's
op policy, fused Adam, the fused up/down-sampling layers), and the share of the bf16 peak that sets as a
ceiling on a named card.

    python -m bench.step_floor [--presets gpu] [--res 64,128,256] [--batch 64] [--alpha 0.5]

How: the step (`trainer.loop.train_step`, the one `train` runs) runs on fake tensors (shapes only, nothing
computed, so a 256 px step at the preset's minibatch counts in seconds on a CPU) under a dispatch mode
that sees every aten op, the backward and double backward included. bf16 autocast is the CPU's (fake
CUDA tensors cannot be indexed without a CUDA build): the same convs and matmuls in bf16; CUDA's
policy would also lift pow, rsqrt and a few reductions to fp32, ops without FLOPs that only the eager
ceiling sees. Per op: FLOPs from
torch's flop registry (multiply-add = 2), bytes as the op's distinct inputs read once plus its outputs
written once (views and allocations move nothing). From these, per card (dense bf16 peak P, HBM
bandwidth W, t_op CPU-side cost of one eager op):

- eager ceiling: the step as eager PyTorch runs it, each op at its own roofline, max(FLOPs / P, bytes / W),
  and never faster than the host can issue the ops (n_ops x t_op);
- fused ceiling: every op without FLOPs (bias, activation, PixelNorm, the equalized-lr scales, casts, the
  optimizer) fused into the convolutions and matmuls around it, so only their traffic counts: what a
  perfect compiler could reach.

Ceilings, not predictions: a convolution with 32-64 channels does not run at the tensor cores' peak even
when it has the arithmetic intensity for it, and caches (50-60 MB of L2) hide some traffic of the small
tensors at low resolutions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from bench.train_throughput import ZOO_BATCH, StepSpec, first_forms, step_gflop, step_parts
from trainer.config import NetConfig, TrainConfig, preset
from trainer.loop import StepContext, train_step


@dataclass(frozen=True)
class Card:
    name: str
    bf16_tflops: float  # dense bf16 tensor-core peak (datasheet, SXM part)
    hbm_tbps: float  # HBM bandwidth (datasheet)


CARDS = {
    "H100": Card("H100 SXM", 989.0, 3.35),
    "H200": Card("H200", 989.0, 4.8),
}
OP_SECONDS = 5e-6  # host-side cost of one eager op (dispatch + launch), the order eager PyTorch pays

# ops that allocate without writing, or only read metadata: they move no bytes
NO_TRAFFIC = {"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"}


def distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor refers to (a broadcast dimension, stride 0, is one element)."""
    n = math.prod(s for s, st in zip(t.shape, t.stride(), strict=True) if st != 0)
    return n * t.element_size()


@dataclass
class OpCount:
    calls: int = 0
    flops: int = 0
    bytes: int = 0


class StepCounter(TorchDispatchMode):
    """Every aten op run under it, with its FLOPs and bytes, by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, OpCount] = defaultdict(OpCount)
        self.per_op: list[tuple[int, int]] = []  # (flops, bytes) of each op in order, for the rooflines

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == "prim":  # device / layout queries
            return out
        packet = func._overloadpacket
        flops = int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0
        moved = 0
        if not func.is_view and packet.__name__ not in NO_TRAFFIC:
            ins = {id(t): t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            moved = sum(map(distinct_bytes, ins.values())) + sum(map(distinct_bytes, outs))
        c = self.ops[str(packet)]
        c.calls += 1
        c.flops += flops
        c.bytes += moved
        self.per_op.append((flops, moved))
        return out


@dataclass
class StepCount:
    batch: int
    ops: dict[str, OpCount]
    per_op: list[tuple[int, int]]

    @property
    def n_ops(self) -> int:
        return len(self.per_op)

    @property
    def flops(self) -> int:
        return sum(f for f, _ in self.per_op)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.per_op)

    @property
    def compute_bytes(self) -> int:
        """Traffic of the ops that do arithmetic (convolutions, matmuls and their backward)."""
        return sum(b for f, b in self.per_op if f > 0)

    def eager_seconds(self, card: Card, op_seconds: float = OP_SECONDS) -> float:
        gpu = sum(max(f / (card.bf16_tflops * 1e12), b / (card.hbm_tbps * 1e12)) for f, b in self.per_op)
        return max(gpu, self.n_ops * op_seconds)

    def fused_seconds(self, card: Card) -> float:
        return sum(
            max(f / (card.bf16_tflops * 1e12), b / (card.hbm_tbps * 1e12)) for f, b in self.per_op if f > 0
        )

    def ceiling(self, card: Card, fused: bool = False) -> float:
        """The largest share of the bf16 peak the step can reach on `card`."""
        seconds = self.fused_seconds(card) if fused else self.eager_seconds(card)
        return self.flops / seconds / (card.bf16_tflops * 1e12)


def step_as_on_cuda(
    s: StepSpec,
) -> tuple[StepContext, torch.Tensor, torch.optim.Optimizer, torch.optim.Optimizer]:
    """`step_parts(s)` on a CPU `s.device`, made to run the ops it runs on CUDA: fused Adam (one kernel for
    all parameters, as make_optimizer gives CUDA) and, with amp "bf16", the CPU's bf16 autocast."""
    ctx, reals, opt_G, opt_D = step_parts(s)
    for opt in (opt_G, opt_D):
        for group in opt.param_groups:
            group["fused"] = True
    if s.amp == "bf16":
        ctx = dataclasses.replace(ctx, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    return ctx, reals, opt_G, opt_D


def count_step(net: NetConfig, cfg: TrainConfig, res: int, batch: int, alpha: float = 1.0) -> StepCount:
    """The ops of one `train_step` at `res` as it runs on CUDA with `cfg.amp` (counted on fake tensors; the
    optimizers' state is made by a first, uncounted step, as in training)."""
    if cfg.amp == "fp16":
        raise ValueError("count the bf16 or fp32 step; fp16's loss scaling needs a real GPU")
    with FakeTensorMode(allow_non_fake_inputs=True):
        ctx, reals, opt_G, opt_D = step_as_on_cuda(
            StepSpec(net, cfg, res, batch, torch.device("cpu"), cfg.amp, False, alpha)
        )
        train_step(ctx, reals, res, alpha, opt_G, opt_D)
        with StepCounter() as counter:
            train_step(ctx, reals, res, alpha, opt_G, opt_D)
    return StepCount(batch, dict(counter.ops), counter.per_op)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="gpu")
    ap.add_argument("--res", default="16,32,64,128,256")
    ap.add_argument("--batch", type=int, help="minibatch instead of the preset's")
    ap.add_argument("--zoo-batch", action="store_true", help="the GAN zoo anchor's minibatch per resolution")
    ap.add_argument("--z-dim", type=int, help="override the preset's latent size")
    ap.add_argument("--fmap-max", type=int, help="override the preset's channel cap")
    ap.add_argument("--alpha", type=float, default=1.0, help="fade alpha of the counted step")
    ap.add_argument(
        "--amp", choices=["bf16", "off"], default="bf16", help="the step's precision (default bf16)"
    )
    ap.add_argument("--card", choices=sorted(CARDS), default="H200")
    ap.add_argument("--ops", type=int, default=0, help="also list the N ops that move the most bytes")
    ap.add_argument(
        "--first-forms",
        action="store_true",
        help="count the step as first written: PixelNorm's autograd backward, the fused layers' kernels "
        "from pad, slices and adds, D's reals and fakes in two passes",
    )
    a = ap.parse_args()
    card = CARDS[a.card]
    print(
        f"card: {card.name} ({card.bf16_tflops:.0f} TFLOP/s dense bf16, {card.hbm_tbps} TB/s HBM, "
        f"{card.bf16_tflops / card.hbm_tbps:.0f} FLOP/B at the ridge); {OP_SECONDS * 1e6:.0f} us per eager op; "
        f"step in {a.amp}, fused layers, fused Adam"
        + (", as first written (PixelNorm, the fused kernels, D's two passes)" if a.first_forms else "")
    )
    head = (
        "| preset | res | batch | GFLOP/img counted | GFLOP/img 4G+13D | GB/img (all ops) | GB/img (conv, mm) "
        "| FLOP/B | ops/step | eager ceiling | fused ceiling |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for pname in a.presets.split(","):
        net_kw, train_kw = preset(pname)
        net_kw.update({k: v for k, v in (("z_dim", a.z_dim), ("fmap_max", a.fmap_max)) if v is not None})
        cfg = dataclasses.replace(TrainConfig(**train_kw), amp=a.amp)
        for res in (int(r) for r in a.res.split(",")):
            net = NetConfig(max_res=res, **{**net_kw, "fused_scale": True})
            batch = a.batch or (ZOO_BATCH[res] if a.zoo_batch else cfg.batch(res))
            with first_forms() if a.first_forms else contextlib.nullcontext():
                c = count_step(net, cfg, res, batch, a.alpha)
            print(
                f"| {pname} | {res} | {batch} | {c.flops / batch / 1e9:.4g} | {step_gflop(net, res, a.alpha):.4g} "
                f"| {c.bytes / batch / 1e9:.4g} | {c.compute_bytes / batch / 1e9:.4g} | {c.flops / c.bytes:.0f} "
                f"| {c.n_ops} | {c.ceiling(card):.2%} | {c.ceiling(card, fused=True):.2%} |",
                flush=True,
            )
            if a.ops:
                top = sorted(c.ops.items(), key=lambda kv: -kv[1].bytes)[: a.ops]
                for name, o in top:
                    print(
                        f"    {name:45s} {o.calls:6d} calls {o.flops / batch / 1e9:8.2f} GFLOP/img "
                        f"{o.bytes / batch / 1e9:7.3f} GB/img"
                    )


if __name__ == "__main__":
    main()
