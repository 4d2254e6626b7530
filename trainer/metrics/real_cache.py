"""What the real images give (Inception features, MS-SSIM, face rate), cached per data set, resolution,
number of images and Inception file, so that evaluating another model on the same data skips the reals."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("PROGAN_CACHE", Path.home() / ".cache" / "progan")) / "fid"


@dataclass
class SetMeasures:
    """Per image set: Inception features, mean MS-SSIM over random pairs, share of images with a face."""

    feats: np.ndarray  # [N, 2048]
    ms_ssim: float
    pairs: int
    face_rate: float

    @property
    def num(self) -> int:
        return len(self.feats)


def cache_key(fields: dict[str, Any]) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def load(cache_dir: Path, key: str) -> SetMeasures | None:
    f = cache_dir / f"{key}.npz"
    if not f.is_file():
        return None
    try:
        with np.load(f) as z:
            return SetMeasures(z["feats"], float(z["ms_ssim"]), int(z["pairs"]), float(z["face_rate"]))
    except (OSError, ValueError, KeyError):  # a foreign or truncated file: measure again and overwrite it
        return None


def save(cache_dir: Path, key: str, m: SetMeasures, meta: dict[str, Any]) -> Path:
    """Write atomically (temporary file, then rename), with a readable meta.json beside it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{key}.npz"
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                feats=m.feats.astype(np.float32),
                ms_ssim=m.ms_ssim,
                pairs=m.pairs,
                face_rate=m.face_rate,
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    (cache_dir / f"{key}.json").write_text(json.dumps(meta, indent=1, default=str))
    return target
