"""Image encoding: the service's PNG writer (Up filter + zlib) against Pillow's (best of five filters per
row), and its animated GIF (a fast-octree palette per frame) against Pillow's own (median cut).

    python bench/encode.py            # faces from the bundled model; prints two tables

Images: 16 generated faces per row of the PNG table, from models/celeba at 64, 128 and 256; for the GIF, a
straight walk of --frames frames at 256 px between two seeds. Same machine, same process,
same images; PNG times are medians of single-image encodes, GIF times the whole animation (one thread).
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

from service.inference.encoding import encode_animation, encode_png  # noqa: E402


def faces(model: Path, res: int, n: int, walk: bool = False) -> np.ndarray:
    """[n, res, res, 3] uint8 from one bundled graph: n random faces, or a straight walk between two."""
    sess = ort.InferenceSession(str(model / f"G_{res}.onnx"), providers=["CPUExecutionProvider"])
    z_dim = sess.get_inputs()[0].shape[1]
    z = np.random.default_rng(0).standard_normal((n, z_dim), dtype=np.float32)
    if walk:
        t = np.linspace(0, 1, n, dtype=np.float32)[:, None]
        z = (1 - t) * z[0] + t * z[-1]
    return np.concatenate(
        [sess.run(None, {sess.get_inputs()[0].name: z[i : i + 16]})[0] for i in range(0, n, 16)]
    )


def pillow_gif(frames: np.ndarray) -> bytes:
    """Pillow picks each frame's palette itself (median cut)."""
    pils = [Image.fromarray(f, "RGB") for f in frames]
    buf = io.BytesIO()
    pils[0].save(buf, "GIF", save_all=True, append_images=pils[1:], duration=83, loop=0)
    return buf.getvalue()


def gif_error(data: bytes, frames: np.ndarray) -> float:
    """Mean absolute difference, in levels of 255, between the decoded GIF and its frames."""
    gif = Image.open(io.BytesIO(data))
    errors = []
    for i, frame in enumerate(frames):
        gif.seek(i)
        errors.append(np.abs(np.asarray(gif.convert("RGB")).astype(np.int16) - frame).mean())
    return float(np.mean(errors))


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
    p.add_argument("--frames", type=int, default=120, help="frames of the 256 px GIF walk")
    args = p.parse_args(argv)

    if not (args.models / "celeba" / "manifest.json").is_file():
        sys.exit(f"{args.models / 'celeba'}: bundled model not found (bench/encode.py encodes its faces)")
    sets = {f"{res} (celeba)": faces(args.models / "celeba", res, args.n) for res in (64, 128, 256)}
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

    walk = faces(args.models / "celeba", 256, args.frames, walk=True)
    print(f"\nAnimated GIF of a {args.frames}-frame walk at 256 px, one encode each\n")
    print("| encoder | s | ms / frame | speed-up | MiB | mean error (levels of 255) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name, fn in (
        ("Pillow (median cut)", pillow_gif),
        ("service (fast octree)", lambda f: encode_animation(f, "gif", 12, 90)),
    ):
        t = time.perf_counter()
        data = fn(walk)
        rows.append((name, time.perf_counter() - t, len(data), gif_error(data, walk)))
    for name, sec, size, err in rows:
        print(
            f"| {name} | {sec:.2f} | {sec / args.frames * 1e3:.1f} | {rows[0][1] / sec:.0f}x | "
            f"{size / 2**20:.2f} | {err:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
