"""Figures of an exported model for the docs: a sample grid, an interpolation strip and one seed at every
resolution. Uses the model folder exactly as the service does (onnxruntime, the manifest, the seed RNG).

    python scripts/model_figures.py models/celeba --out docs/figures [--first-seed 0] [--res 64] [--prefix generated]
        [--format jpg]

At 256 px the three PNGs come to ~15 MB; `--format jpg` (quality 88) keeps them near 2 MB for a repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from contract import read_manifest, z_for_seeds
from service.inference.latents import interpolation_path
from trainer.viz import grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--res", type=int, help="resolution of the grid and strip (default: the largest)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument(
        "--prefix", default="generated", help="file names: PREFIX_samples.png, ... (default: generated)"
    )
    ap.add_argument(
        "--format", choices=["png", "jpg"], default="png", help="png (lossless) or jpg (quality 88)"
    )
    a = ap.parse_args()
    m = read_manifest(a.model)
    resolutions = list(m.resolutions)
    res = a.res or resolutions[-1]

    def run(r: int, z: np.ndarray) -> np.ndarray:
        sess = ort.InferenceSession(str(a.model / m.resolutions[r].file), providers=["CPUExecutionProvider"])
        return sess.run(None, {m.input.name: z})[0]

    name, ext = a.prefix, a.format
    a.out.mkdir(parents=True, exist_ok=True)

    def save(img: Image.Image, what: str) -> None:
        path = a.out / f"{name}_{what}.{ext}"
        if ext == "jpg":
            img.save(path, quality=88)
        else:
            img.save(path)

    seeds = list(range(a.first_seed, a.first_seed + 64))
    z = z_for_seeds(seeds, m.z_dim)
    save(grid(run(res, z), 8, scale=max(1, 128 // res)), "samples")

    waypoints = z_for_seeds([seeds[1], seeds[5], seeds[9], seeds[13]], m.z_dim)
    path = interpolation_path(waypoints, 6, "slerp", loop=False)
    save(grid(run(res, path), len(path), scale=max(1, 96 // res)), "interpolation")

    per_res = [run(r, z[:8]) for r in resolutions]
    big = max(resolutions)
    rows = [
        np.stack(
            [np.asarray(Image.fromarray(im).resize((big, big), Image.Resampling.NEAREST)) for im in imgs]
        )
        for imgs in per_res
    ]
    save(grid(np.concatenate(rows), 8), "resolutions")
    print(f"wrote {name}_samples.{ext}, {name}_interpolation.{ext} and {name}_resolutions.{ext} to {a.out}")


if __name__ == "__main__":
    main()
