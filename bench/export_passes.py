"""The torch passes of `trainer export` on the CPU: what fitting the lower resolutions' heads and measuring
their consistency compute for a set of latents (the top images, and the features at every lower
resolution), as it was and as it is, in one process on the same latents.

    python -m bench.export_passes                      # models/celeba's checkpoint, 128 latents
    python -m bench.export_passes --num 64 --model models/celeba

Rows:
- before: 128 images at once with G's plain up-sampling, the top pass, then G cut at each lower resolution
  and run again for its features (what export did until 2026-11-29);
- tapped: one top pass whose blocks' outputs are caught on the way (trainer.export.TopPass);
- one at a time (CPU_CHUNK): activations small enough for glibc's heap, not a fresh mmap each;
- fused up-sampling: each block's up-sample and conv as one stride-2 transposed conv (what the graphs run).
Wall, user and system seconds and minor page faults come from getrusage; the last columns give how far the
top images and the features at the highest lower resolution are from the before row's.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.checkpoint import load_generator  # noqa: E402
from trainer.export import CPU_CHUNK, TopPass, fold_equalized_scales, with_up  # noqa: E402
from trainer.networks import Generator  # noqa: E402


@dataclass
class Timed:
    wall: float
    user: float
    sys: float
    faults: int
    top: Tensor  # the first latents' top images
    feat: Tensor  # and their features at the highest lower resolution


def measured(run: Callable[[], tuple[Tensor, Tensor]]) -> Timed:
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    top, feat = run()
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return Timed(
        w1 - w0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt, top, feat
    )


@torch.no_grad()
def cut_and_rerun(G: Generator, top: int, alpha: float, num: int, lower: list[int]) -> tuple[Tensor, Tensor]:
    """As export did: 128 latents at a time through the top network, then G cut at each lower resolution."""
    z = torch.randn(num, G.z_dim, generator=torch.Generator().manual_seed(0))
    imgs = torch.cat([G(zc, top, alpha) for zc in z.split(128)])
    feats = {}
    for r in lower:
        feats[r] = torch.cat([G.features(zc, r)[0] for zc in z.split(128)])
    return imgs[:4].clone(), feats[lower[-1]][:4].clone()


def tapped_pass(
    G: Generator, top: int, alpha: float, num: int, lower: list[int], chunk: int
) -> tuple[Tensor, Tensor]:
    """The export's pass now: the top network once, each lower resolution's features caught on the way."""
    imgs: list[Tensor] = []
    feats: list[Tensor] = []
    for img, f in TopPass(G, top, alpha, chunk=chunk).run(num, 0, lower):
        if len(imgs) * len(img) < 4:
            imgs.append(img[:4].clone())
            feats.append(f[lower[-1]][:4].clone())
    return torch.cat(imgs)[:4], torch.cat(feats)[:4]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "celeba" / "checkpoint.safetensors"))
    ap.add_argument("--num", type=int, default=128, help="latents each row computes for")
    a = ap.parse_args()

    lg = load_generator(a.model)
    G = fold_equalized_scales(lg.G.float())
    assert isinstance(G, Generator)
    top, alpha = lg.res, 1.0
    lower = [r for r in G.cfg.resolutions if r < top]
    plain, fused = with_up(G, False), with_up(G, True)
    rows = [
        (
            "before: cut and rerun, 128 at once, plain up",
            lambda: cut_and_rerun(plain, top, alpha, a.num, lower),
        ),
        ("tapped, 128 at once, plain up", lambda: tapped_pass(plain, top, alpha, a.num, lower, 128)),
        (
            f"tapped, {CPU_CHUNK} at once, plain up",
            lambda: tapped_pass(plain, top, alpha, a.num, lower, CPU_CHUNK),
        ),
        (
            f"tapped, {CPU_CHUNK} at once, fused up (now)",
            lambda: tapped_pass(fused, top, alpha, a.num, lower, CPU_CHUNK),
        ),
    ]
    print(
        f"{a.model}: top {top} px, lower resolutions {lower}, {a.num} latents a row, "
        f"CPU threads {torch.get_num_threads()}"
    )
    head = (
        "| pass | wall s | user s | system s | minor page faults | wall / before "
        f"| top images vs before (max abs) | {lower[-1]} px features vs before (max abs) |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    base = None
    for label, run in rows:
        t = measured(run)
        base = base or t
        print(
            f"| {label} | {t.wall:.1f} | {t.user:.1f} | {t.sys:.1f} | {t.faults / 1e6:.2f} M "
            f"| {t.wall / base.wall:.2f}x | {(t.top - base.top).abs().max():.1e} "
            f"| {(t.feat - base.feat).abs().max():.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
