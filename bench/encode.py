"""PNG encoding: the service's writer (Up filter + zlib) against Pillow's (best of five filters per row).

    python bench/encode.py            # faces from the bundled models; prints a table

Images: 16 generated faces per row of the table, from models/celeba at 64 and 128, and those 128 faces
upscaled 2x (bicubic) for 256, as no bundled model reaches 256 yet. Same machine, same
process, same images; times are medians of single-image encodes (one thread).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.inference.encoding import encode_png  # noqa: E402


def faces(model: Path, res: int, n: int) -> np.ndarray:
    """[n, res, res, 3] uint8 from one bundled graph."""
    sess = ort.InferenceSession(str(model / f"G_{res}.onnx"), providers=["CPUExecutionProvider"])
    z_dim = sess.get_inputs()[0].shape[1]
    z = np.random.default_rng(0).standard_normal((n, z_dim), dtype=np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: z})[0]


def pillow_png(image: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def median_ms(fn: Callable[[np.ndarray], bytes], images: np.ndarray, repeats: int) -> tuple[float, float]:
    """(median ms per image, mean bytes)."""
    times, sizes = [], []
    for _ in range(repeats):
        for image in images:
            t = time.perf_counter()
            data = fn(image)
            times.append(time.perf_counter() - t)
            sizes.append(len(data))
    return float(np.median(times)) * 1e3, float(np.mean(sizes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--n", type=int, default=16, help="faces per resolution")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--level", type=int, default=1, help="zlib level (the service's FACES_PNG_LEVEL)")
    args = p.parse_args(argv)

    if not (args.models / "celeba" / "manifest.json").is_file():
        sys.exit(f"{args.models / 'celeba'}: bundled model not found (bench/encode.py encodes its faces)")
    sets = {
        "64 (celeba)": faces(args.models / "celeba", 64, args.n),
        "128 (celeba)": faces(args.models / "celeba", 128, args.n),
    }
    sets["256 (128 upscaled)"] = np.stack(
        [
            np.asarray(Image.fromarray(f).resize((256, 256), Image.Resampling.BICUBIC))
            for f in sets["128 (celeba)"]
        ]
    )
    print(f"PNG, zlib level {args.level}, median of {args.repeats} x {args.n} single-image encodes\n")
    print("| images | Pillow ms | service ms | speed-up | Pillow KiB | service KiB | size ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, images in sets.items():
        for image in images:  # the writer must give the same pixels back
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(image, args.level)))), image)
        t_pil, b_pil = median_ms(lambda x: pillow_png(x, args.level), images, args.repeats)
        t_own, b_own = median_ms(lambda x: encode_png(x, args.level), images, args.repeats)
        print(
            f"| {name} | {t_pil:.2f} | {t_own:.2f} | {t_pil / t_own:.2f}x | {b_pil / 1024:.1f} | "
            f"{b_own / 1024:.1f} | {b_own / b_pil:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
