"""What a person looks at: image grids and loss plots (PNG)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (the same mapping the ONNX export bakes in)."""
    x = np.clip(np.rint((img + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """uint8 [N, H, W, 3] -> one PIL image, `cols` columns, optionally upscaled (nearest) for small res."""
    n, h, w, _ = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = im
    out = Image.fromarray(canvas)
    if scale > 1:
        out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    return out


def save_grid(images: np.ndarray, path: Path, cols: int | None = None) -> None:
    h = images.shape[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, cols, scale=max(1, 64 // h)).save(path)


def plot_losses(rows: Sequence[dict], path: Path, keys: Sequence[str] = ("loss_D", "loss_G")) -> None:
    """Loss curves against kimg, with the resolution changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    kimg = [r["kimg"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for k in keys:
        if k in rows[0]:
            ax.plot(kimg, [r[k] for r in rows], label=k)
    for before, r in zip(rows, rows[1:], strict=False):
        if r["res"] != before["res"]:  # the new resolution's fade began where the last row ended
            ax.axvline(before["kimg"], color="grey", lw=0.5, ls="--")
            ax.text(before["kimg"], ax.get_ylim()[1], f"{r['res']}", fontsize=7, va="top")
    ax.set_xlabel("kimg")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
