"""Where a model's images differ from the training faces in spatial frequency: the cross-hatched texture
of the sample grids, as numbers.

A 2x nearest-neighbour up-sampling followed by a 3x3 convolution (ProGAN's G, fused or not) can leave a
pattern that repeats every 2 pixels of its output, and the up-sampling before it one every 4. In the power
spectrum (grey levels, each image's mean removed, a Hann window) such patterns are spikes on the lines
f = 1/2 and f = 1/4 cycles per pixel. This script prints, per model, the mean power in radial frequency
bands and at those points, each as a multiple of the real faces' power there (1.00: as the real faces),
and with --plot draws the radially averaged spectra.

    python scripts/spectrum.py models/celeba /tmp/celeba-r4 --data .gpu/faces-178.zip --res 256 --num 384

The real faces are the archive's first --num at --res (a 178 px archive upscaled to 256 has next to no
power above 178/256 x 1/2 = 0.35 cycles per pixel). Models are model folders (ONNX) or run folders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.data import DataError, load_images  # noqa: E402
from trainer.metrics.samplers import ModelError, open_model, sample_batches  # noqa: E402

BANDS = [(0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.35), (0.35, 0.4), (0.4, 0.45), (0.45, 0.5)]
# (cycles per pixel along y, along x): the periods a 2x up-sampling and the one before it leave
POINTS = {
    "period 2 along x": (0.0, 0.5),
    "period 2 along y": (0.5, 0.0),
    "period 2 along both": (0.5, 0.5),
    "period 4 along x": (0.0, 0.25),
    "period 4 along y": (0.25, 0.0),
}


def power_spectrum(images: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Mean power spectrum [R, R] (zero frequency at the centre) of uint8 images [N, R, R, 3] in grey."""
    n, res = len(images), images.shape[1]
    window = np.outer(np.hanning(res), np.hanning(res))
    total = np.zeros((res, res))
    for i in range(0, n, chunk):
        grey = images[i : i + chunk].astype(np.float64).mean(axis=-1)  # [n, R, R]
        grey -= grey.mean(axis=(1, 2), keepdims=True)
        total += (np.abs(np.fft.fft2(grey * window)) ** 2).sum(axis=0)
    return np.fft.fftshift(total / n)


def frequencies(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Cycles per pixel along y and x of each entry of a centred [res, res] spectrum."""
    f = np.fft.fftshift(np.fft.fftfreq(res))
    return np.meshgrid(f, f, indexing="ij")


def relative(spec: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Power in each band and at each point as a multiple of the real faces' there."""
    fy, fx = frequencies(len(spec))
    radius = np.hypot(fy, fx)
    out = {}
    for lo, hi in BANDS:
        band = (radius >= lo) & (radius < hi)
        out[f"band {lo:.2f}-{hi:.2f}"] = float(spec[band].mean() / real[band].mean())
    for name, (y, x) in POINTS.items():
        at = (np.isclose(np.abs(fy), y)) & (
            np.isclose(np.abs(fx), x)
        )  # both signs: the spectrum is symmetric
        out[name] = float(spec[at].mean() / real[at].mean())
    return out


def radial_profile(spec: np.ndarray, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    fy, fx = frequencies(len(spec))
    radius = np.hypot(fy, fx).ravel()
    edges = np.linspace(0.0, 0.5, bins + 1)
    which = np.digitize(radius, edges) - 1
    keep = (which >= 0) & (which < bins)
    power = np.bincount(which[keep], spec.ravel()[keep], bins) / np.maximum(
        np.bincount(which[keep], None, bins), 1
    )
    return (edges[:-1] + edges[1:]) / 2, power


def plot(spectra: dict[str, np.ndarray], path: Path, res: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, spec in spectra.items():
        f, power = radial_profile(spec)
        ax.semilogy(f, power, label=name, lw=2.2 if name == "real faces" else 1.4)
    ax.set_xlabel("spatial frequency (cycles per pixel)")
    ax.set_ylabel("mean power (grey levels², log)")
    ax.set_title(f"Radially averaged power spectra at {res}x{res}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model folders (manifest.json) or run folders")
    ap.add_argument("--data", required=True, help="the training faces: an archive or anything --data reads")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--num", type=int, default=384, help="images per set (default 384)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, help="also draw the radially averaged spectra into this PNG")
    ap.add_argument(
        "--labels", nargs="+", help="a name per model for the table and plot (default: the paths)"
    )
    a = ap.parse_args(argv)
    try:
        if a.labels and len(a.labels) != len(a.models):
            raise ValueError(f"--labels names {len(a.labels)} models, but {len(a.models)} are given")
        if a.num < 8:
            raise ValueError(f"--num must be at least 8, got {a.num}")
        reals = load_images(a.data, a.res, allow_upscale=True, progress=False)
        if len(reals) < a.num:
            raise DataError(f"{a.data} holds {len(reals)} faces, fewer than --num {a.num}")
        spectra = {"real faces": power_spectrum(np.asarray(reals[: a.num]))}
        for m, label in zip(a.models, a.labels or a.models, strict=True):
            model = open_model(m)
            images = np.concatenate(list(sample_batches(model, a.num, a.res, batch=16, seed=a.seed)))
            spectra[label] = power_spectrum(images)
    except (DataError, ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    real = spectra.pop("real faces")
    rows = {m: relative(s, real) for m, s in spectra.items()}
    print(
        f"power relative to {a.num} real faces at {a.res}x{a.res} ({a.num} images per model, seed {a.seed})"
    )
    print("| where | " + " | ".join(rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for key in next(iter(rows.values())):
        print(f"| {key} | " + " | ".join(f"{r[key]:.2f}" for r in rows.values()) + " |")
    if a.plot:
        plot({"real faces": real, **spectra}, a.plot, a.res)
        print(f"wrote {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
