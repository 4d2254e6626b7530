"""A data archive decoded into the trainer's cache: straight into the cache file (`trainer.data.load_images`
now) against the form it replaced (decode into memory, then `np.save` the whole array to the cache file), on
the same faces, alternating, in one process, each with an empty cache folder.

    python bench/decode_cache.py .gpu/faces-178.zip [--count 4000] [--res 256] [--reps 2]

--count takes the archive's first faces into a smaller archive first (untimed). A lent GPU's machine does
this before a 256 px round's first step: 20,000 faces at 256 px are 3.9 GB, and round 5's data took 32.5 s
of its 572 s call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer import data  # noqa: E402


def first_faces(archive: Path, count: int, out: Path) -> Path:
    """The archive's first `count` images (and its index, counted anew) as another archive."""
    names = data.zip_members(archive)[:count]
    index = data.zip_index(archive)
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in names:
            dst.writestr(name, src.read(name))
        if index:
            dst.writestr("index.json", json.dumps({**index, "count": len(names)}))
    return out


def in_memory_then_saved(archive: Path, res: int, cache: Path) -> np.ndarray:
    """The replaced form: the whole array decoded into memory, then written out, then mapped."""
    arr, _ = data._decode(data.find_source(archive), res, progress=False)
    path = cache / f"{res}.npy"
    data._atomic_save(path, arr)
    return np.load(path, mmap_mode="r")


def into_the_cache_file(archive: Path, res: int, cache: Path) -> np.ndarray:
    return data.load_images(archive, res, cache_dir=cache, allow_upscale=True, progress=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", type=Path, help="a prepare-data archive (.zip)")
    ap.add_argument("--count", type=int, default=4000, help="faces to decode (0: all)")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    if not a.archive.is_file():
        print(f"error: no archive at {a.archive}", file=sys.stderr)
        return 2
    forms = {"decode, then np.save": in_memory_then_saved, "into the cache file": into_the_cache_file}
    seconds: dict[str, list[float]] = {k: [] for k in forms}
    with tempfile.TemporaryDirectory() as tmp:
        archive = first_faces(a.archive, a.count, Path(tmp) / "faces.zip") if a.count else a.archive
        n = len(data.zip_members(archive))
        got = {}
        for rep in range(a.reps):
            for name, fn in forms.items():
                cache = Path(tmp) / f"cache-{rep}-{len(seconds[name])}"
                t = time.perf_counter()
                arr = fn(archive, a.res, cache)
                seconds[name].append(time.perf_counter() - t)
                got[name] = np.asarray(arr[:: max(n // 64, 1)]).copy()
                del arr
                shutil.rmtree(cache)
        same = np.array_equal(got["decode, then np.save"], got["into the cache file"])
    base = min(seconds["decode, then np.save"])
    gb = n * a.res * a.res * 3 / 1e9
    print(
        f"{n} faces of {a.archive.name} at {a.res}x{a.res} ({gb:.2f} GB), {data.WORKERS} threads, best of {a.reps}"
    )
    print("| form | seconds | faces/s | vs decode, then np.save |")
    print("| --- | --- | --- | --- |")
    for name, s in seconds.items():
        print(f"| {name} | {min(s):.2f} | {n / min(s):.0f} | {base / min(s):.2f}x |")
    print(f"the same pixels: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
