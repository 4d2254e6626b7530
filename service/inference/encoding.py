"""Image encoding: uint8 NHWC arrays -> PNG / JPEG / WebP / GIF bytes. Runs in the encode thread pool."""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
from PIL import Image

StillFormat = Literal["png", "jpeg", "webp"]
AnimationFormat = Literal["gif", "webp"]

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65_535, "webp": 16_383, "gif": 65_535}  # what each format can store


def encode_still(image: np.ndarray, fmt: StillFormat, quality: int, png_level: int = 1) -> bytes:
    """One [H, W, 3] uint8 image. PNG is lossless (zlib level `png_level`); JPEG and WebP use `quality`."""
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, image.shape
    buf = io.BytesIO()
    pil = Image.fromarray(image, "RGB")
    if fmt == "png":
        pil.save(buf, "PNG", compress_level=png_level)
    elif fmt == "jpeg":
        pil.save(buf, "JPEG", quality=quality)
    else:
        pil.save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid holding n images."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def tile(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[N, R, R, 3] -> [rows * R, cols * R, 3], row-major, empty cells black."""
    n, h, w, c = images.shape
    canvas = np.zeros((rows * cols, h, w, c), dtype=np.uint8)
    canvas[:n] = images
    return canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def encode_animation(frames: np.ndarray, fmt: AnimationFormat, fps: int, quality: int) -> bytes:
    """[T, R, R, 3] -> an animated GIF or WebP that loops forever."""
    duration = round(1000 / fps)
    pils = [Image.fromarray(f, "RGB") for f in frames]
    buf = io.BytesIO()
    if fmt == "gif":
        pils[0].save(buf, "GIF", save_all=True, append_images=pils[1:], duration=duration, loop=0)
    else:
        pils[0].save(
            buf, "WEBP", save_all=True, append_images=pils[1:], duration=duration, loop=0, quality=quality
        )
    return buf.getvalue()
