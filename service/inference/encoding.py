"""Image encoding: uint8 NHWC arrays -> PNG / JPEG / WebP / GIF bytes. Runs in the encode thread pool."""

from __future__ import annotations

import io
import math
import struct
import zlib
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
    if fmt == "png":
        return encode_png(image, png_level)
    buf = io.BytesIO()
    pil = Image.fromarray(image, "RGB")
    if fmt == "jpeg":
        pil.save(buf, "JPEG", quality=quality)
    else:
        pil.save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """[H, W, 3] uint8 -> an 8-bit RGB PNG: every row with the "Up" filter (row minus the row above, one
    vectorised subtraction), then zlib at `level`.

    Written out because it is the largest CPU cost of a 256x256 request: Pillow tries the five PNG filters
    on every row and keeps the best, which takes twice as long for files only ~5% smaller
    (bench/encode.py). zlib releases the GIL, so the encode threads run beside the event loop."""
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, image.shape
    h, w, _ = image.shape
    rows = image.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)  # each row: its filter type byte, then the filtered bytes
    raw[0, 0], raw[0, 1:] = 0, rows[0]  # first row: no filter
    raw[1:, 0] = 2  # Up
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # wraps modulo 256, as PNG's filters do
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), level)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


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
        # A palette of 256 colours per frame. Left to the GIF writer, Pillow picks it by median cut: ~130 ms a
        # 256 px frame, 15-20 s of a 120-frame walk; the fast octree takes ~3 ms with the writing, and the
        # faces look the same (mean error 3.9 against 3.1 levels of 255; bench/encode.py).
        pils = [p.quantize(256, method=Image.Quantize.FASTOCTREE) for p in pils]
        pils[0].save(buf, "GIF", save_all=True, append_images=pils[1:], duration=duration, loop=0)
    else:
        pils[0].save(
            buf, "WEBP", save_all=True, append_images=pils[1:], duration=duration, loop=0, quality=quality
        )
    return buf.getvalue()
