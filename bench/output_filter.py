"""Would an output filter help? The same generated images measured as they are and resampled through the
training data's native size and back (Lanczos, the path each face of a 178 px archive took to 256 px), which
removes everything above the data's band: the period-2 patterns of `scripts/spectrum.py` included.

    python bench/output_filter.py models/celeba --data .gpu/faces-178.zip --res 256 --via 178 --num 2048

FID and KID of both against `--real-num` real faces (the same subset and cache as `trainer evaluate`, so
10,000 at seed 0 reuses its real statistics); the generated z are `evaluate`'s (seed + 1). FID at 2,048
generated images is biased upwards by a few points: compare the rows, not against evaluate's 10,000.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.data import DataError  # noqa: E402
from trainer.evaluate import Distance, Instruments, Measuring, measure, real_side, resolve_device  # noqa: E402
from trainer.metrics.samplers import ModelError, open_model, sample_batches  # noqa: E402


def round_trip(images: np.ndarray, via: int) -> np.ndarray:
    """uint8 [N, R, R, 3] resized to via x via and back, Lanczos both ways (PIL, as the trainer's decode)."""
    res = images.shape[1]
    lanczos = Image.Resampling.LANCZOS
    return np.stack(
        [
            np.asarray(Image.fromarray(x).resize((via, via), lanczos).resize((res, res), lanczos))
            for x in images
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model folder (manifest.json) or a run folder")
    ap.add_argument("--data", required=True, help="the training faces (an archive)")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--via", type=int, default=178, help="the size the filter resamples through")
    ap.add_argument("--num", type=int, default=2048, help="generated images (FID needs 2,048 or more)")
    ap.add_argument("--real-num", type=int, default=10_000, help="real faces (evaluate's subset)")
    ap.add_argument("--batch", type=int, default=50)
    a = ap.parse_args(argv)
    try:
        if not 8 <= a.via < a.res:
            raise ValueError(f"--via must be between 8 and --res ({a.res}), got {a.via}")
        how = Measuring(batch=a.batch).checked(a.num)
        dev = resolve_device(how.device)
        model = open_model(a.model, dev)
        tools = Instruments.open(how, dev)
        real = real_side(a.data, a.res, a.real_num, how, tools).measures
    except (DataError, ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = np.concatenate(list(sample_batches(model, a.num, a.res, how.batch, seed=how.seed + 1)))
    forms = {"as generated": images, f"through {a.via} px and back": round_trip(images, a.via)}
    print(f"{a.num} generated at {a.res}x{a.res} against {real.num} real faces of {Path(a.data).name}")
    print(
        f"| images | FID | KID x10^3 | MS-SSIM (real {real.ms_ssim:.4f}) | face rate (real {real.face_rate:.1%}) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, arr in forms.items():
        batches = (arr[i : i + how.batch] for i in range(0, len(arr), how.batch))
        m = measure(batches, len(arr), tools, name)
        d = Distance.between(real, m, how.seed, name, "real")
        fid = "-" if d.fid is None else f"{d.fid:.2f}"
        print(
            f"| {name} | {fid} | {d.kid * 1e3:.2f} ± {d.kid_std * 1e3:.2f} | {m.ms_ssim:.4f} | {m.face_rate:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
