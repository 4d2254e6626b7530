"""Where `trainer evaluate` spends its time on the generated side, per resolution: generating with the
model's ONNX graph, NVIDIA's Inception features (now: onnxruntime, exported from the TorchScript; before:
the TorchScript), the face detector, and MS-SSIM of consecutive pairs (its Gaussian blur now as separable
shifted sums, before as a float64 depthwise conv2d): before and now in the same process on the same images.

    python -m bench.evaluate_parts                         # models/celeba at 64, 128 and 256, 32 images
    python -m bench.evaluate_parts --res 256 --batch 32 --repeat 3

The real side is measured once per data set and cached (`trainer/metrics/real_cache.py`), so a model's
evaluation costs what this table's generated side costs: the last column projects it to 10,000 samples.
Times are medians of --repeat runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.metrics import ms_ssim as ms  # noqa: E402
from trainer.metrics.face_rate import DetectorParams, FaceDetector  # noqa: E402
from trainer.metrics.inception import Inception, load_inception  # noqa: E402
from trainer.metrics.samplers import Sampler, open_model, sample_batches  # noqa: E402


def depthwise_blur(x: Tensor, g: Tensor) -> Tensor:
    """The blur as first written: the window along H, then along W, as two depthwise conv2d."""
    c = x.shape[1]
    x = F.conv2d(x, g.expand(c, 1, -1, -1), groups=c)
    return F.conv2d(x, g.transpose(2, 3).expand(c, 1, -1, -1), groups=c)


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def row(
    model: Sampler,
    inceptions: tuple[Inception, Inception],
    detector: FaceDetector,
    res: int,
    batch: int,
    repeat: int,
) -> str:
    """One table row: seconds a batch of each part at `res`, before and now timed on the same images."""
    script, exported = inceptions
    images = next(sample_batches(model, batch, res, batch, seed=1))
    gen = median_seconds(lambda: next(sample_batches(model, batch, res, batch, seed=2)), repeat)
    inc_before = median_seconds(lambda: script.features(images), repeat)
    inc_now = median_seconds(lambda: exported.features(images), repeat)
    f_want = script.features(images)
    f_diff = float(np.abs(exported.features(images) - f_want).max()) / max(1.0, float(np.abs(f_want).max()))
    faces = median_seconds(lambda: detector.count(images), repeat)
    pairs = batch // 2
    now_blur = ms._blur
    try:
        ms._blur = depthwise_blur
        before = median_seconds(lambda: ms.consecutive_pairs(images, pairs), repeat)
        want = ms.consecutive_pairs(images, pairs)
    finally:
        ms._blur = now_blur
    now = median_seconds(lambda: ms.consecutive_pairs(images, pairs), repeat)
    diff = float((ms.consecutive_pairs(images, pairs) - want).abs().max())
    per_10k = 10_000 / batch / 60
    rest = gen + faces
    return (
        f"| {res} | {gen:.2f} | {inc_before:.2f} | {inc_now:.2f} | {inc_now / inc_before:.2f}x | {f_diff:.0e} "
        f"| {faces:.2f} | {before:.2f} | {now:.2f} | {now / before:.2f}x | {diff:.0e} "
        f"| {(rest + inc_before + before) * per_10k:.0f} → {(rest + inc_now + now) * per_10k:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "celeba"))
    ap.add_argument("--res", default="64,128,256")
    ap.add_argument("--batch", type=int, default=32, help="images per timed batch (evaluate's default)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    model = open_model(a.model, "cpu")
    inceptions = (load_inception(runtime="torch"), load_inception(runtime="auto"))
    if inceptions[1].session is None:
        raise SystemExit(
            "the Inception network did not run in onnxruntime here (see the log): nothing to compare"
        )
    detector = FaceDetector(DetectorParams())
    threads = torch.get_num_threads()
    print(f"model {a.model}, {a.batch} images a batch, CPU threads {threads}; seconds a batch")
    head = (
        "| res | generate | Inception, TorchScript (before) | Inception, onnxruntime (now) | now / before "
        "| features equal to (relative) | faces | MS-SSIM, conv (before) | MS-SSIM, shifted sums (now) "
        "| now / before | MS-SSIM equal to | 10k samples, minutes before → now |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for res in (int(r) for r in a.res.split(",")):
        print(row(model, inceptions, detector, res, a.batch, a.repeat), flush=True)


if __name__ == "__main__":
    main()
