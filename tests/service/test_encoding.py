"""Image encoding: the hand-written PNG writer is a valid PNG that decodes to exactly its input; the animated
GIF of real faces stays close to its frames."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.inference.encoding import encode_animation, encode_png, encode_still


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, checking each CRC on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + length
    return out


@pytest.mark.parametrize("shape", [(1, 1, 3), (16, 16, 3), (7, 300, 3), (256, 256, 3)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_round_trips_exactly(shape: tuple[int, int, int], level: int) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + level)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image[: shape[0] // 2] = np.sort(image[: shape[0] // 2], axis=1)  # smooth part: rows that filter well
    data = encode_png(image, level)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()  # Pillow checks the zlib stream and the CRCs as it decodes
    assert decoded.mode == "RGB" and decoded.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(decoded), image)
    assert [k for k, _ in chunks(data)] == [b"IHDR", b"IDAT", b"IEND"]
    assert encode_still(image, "png", 90, level) == data  # the service's PNG path is this writer


def test_png_of_a_smooth_image_is_small() -> None:
    ramp = np.linspace(0, 255, 256).astype(np.uint8)
    image = np.stack([np.tile(ramp, (256, 1))] * 3, axis=-1)  # each row the same: "Up" leaves zeros
    assert len(encode_png(image, 1)) < 0.02 * image.nbytes


def test_gif_of_real_faces_keeps_every_frame_close(faces_dir: Path) -> None:
    """Each frame gets its own 256-colour palette: decoded, a 128 px face photo is within a few levels of
    the original (a shared or badly chosen palette would miss by far more), and no frame is lost."""
    frames = np.stack(
        [
            np.asarray(Image.open(f).convert("RGB").resize((128, 128)))
            for f in sorted(faces_dir.iterdir())[:12]
        ]
    )
    gif = Image.open(io.BytesIO(encode_animation(frames, "gif", fps=12, quality=90)))
    assert (
        gif.n_frames == len(frames) and gif.info["loop"] == 0 and abs(gif.info["duration"] - 1000 / 12) < 10
    )  # centiseconds in GIF
    errors = []
    for i, frame in enumerate(frames):
        gif.seek(i)
        decoded = np.asarray(gif.convert("RGB")).astype(np.int16)
        errors.append(np.abs(decoded - frame).mean())
    assert max(errors) < 6.0, errors
