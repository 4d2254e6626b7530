"""The training data's resolution pyramid: the 2x2 box average `trainer.data.downsample_box` now computes (a
chunk of images at a time on a thread per core, four strided adds) against the form it replaced (one
reduction over the whole array), on the same real faces in the same process, level by level from the top.

    python bench/pyramid.py [--data ../shared/data/celeba/img_align_celeba] [--count 2048] [--res 256]

The faces are decoded once into a cache (untimed; CelebA's 140 px crops upscaled for --res 256, as a 256 px
run of the 178 px archive upscales). Both forms give the same bytes (checked here and in the tests). A
lent GPU's machine builds this pyramid before a round's first step: round 3 (20k faces at 256 px) spent
2.8 of its 9.3 minutes before and around the steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.data import downsample_box, load_images  # noqa: E402


def one_reduction(arr: np.ndarray) -> np.ndarray:
    """The form the trainer used before: the whole array widened to uint16 and summed over the 2x2 axes."""
    n, h, w, c = arr.shape
    x = arr.reshape(n, h // 2, 2, w // 2, 2, c).astype(np.uint16).sum(axis=(2, 4))
    return ((x + 2) // 4).astype(np.uint8)


def timed(fn: Callable[[np.ndarray], np.ndarray], arr: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn(arr)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/celeba/img_align_celeba"))
    ap.add_argument("--count", type=int, default=2048, help="faces (the first ones of --data)")
    ap.add_argument("--res", type=int, default=256, help="the top of the pyramid")
    ap.add_argument("--cache-dir", default="/tmp/progan-bench-pyramid")
    a = ap.parse_args()
    src = Path(a.data)
    if not src.is_dir():
        sys.exit(f"{src}: no such folder of faces (the shared CelebA images; see ../shared/data/README)")
    subset = Path(a.cache_dir) / f"faces-{a.count}"
    if not subset.exists():  # the first --count faces, linked: the decode cache is keyed by folder
        subset.mkdir(parents=True)
        for name in sorted(os.listdir(src))[: a.count]:
            (subset / name).symlink_to(src / name)
    top = np.asarray(load_images(subset, a.res, cache_dir=a.cache_dir, allow_upscale=True))
    print(f"{len(top)} real faces, {top.nbytes / 2**20:.0f} MiB at {a.res} px; {os.cpu_count()} CPUs")
    print("| level | one reduction s | chunked, threaded s | speed-up | same bytes |")
    print("|---|---|---|---|---|")
    arr, res, total = top, a.res, [0.0, 0.0]
    while res > 4:
        old, t_old = timed(one_reduction, arr)
        new, t_new = timed(downsample_box, arr)
        total[0] += t_old
        total[1] += t_new
        same = np.array_equal(old, new)
        print(f"| {res} -> {res // 2} | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.1f}x | {same} |")
        arr, res = new, res // 2
    print(f"| all | {total[0]:.2f} | {total[1]:.2f} | {total[0] / total[1]:.1f}x | |")


if __name__ == "__main__":
    main()
