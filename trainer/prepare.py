"""`prepare-data`: one compact zip of square WebP faces at one resolution plus an index (count, resolution,
crop, sources, licence), small enough to carry to a GPU machine. The trainer and the evaluator read it as
a data source (trainer/data.py)."""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from trainer.data import DataError, crop_box, find_source

CROPS = ("celeba", "wide", "centre")
CELEBA_LICENCE = (
    "CelebA (Liu et al., ICCV 2015): non-commercial research purposes only; do not redistribute the images"
)


# WebP quality: the 29,017 faces at 64 px in 33.1 MB, the 20k full-size ones at 128 px in 52.7 MB (as measured
# in docs/evaluation.md)
DEFAULT_QUALITY = 80


def prepare_data(
    sources: list[str | Path],
    res: int,
    out: str | Path,
    *,
    crop: str = "wide",
    quality: int = DEFAULT_QUALITY,
    lossless: bool = False,
    limit: int | None = None,
    licence: str | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Write `out` (a zip) and return its index. Files with a name already taken (the same CelebA id in
    two sets) are kept once, from the first source. `lossless`: WebP's lossless mode (`quality` is then its
    compression effort), the reference that `compare-data` measures a lossy archive against."""
    if crop not in CROPS:
        raise ValueError(f"--crop must be one of {', '.join(CROPS)}, got {crop!r}")
    if res < 4 or res > 1024:
        raise ValueError(f"--res must be between 4 and 1024, got {res}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be 1..100, got {quality}")
    files: dict[str, Path] = {}
    kinds = []
    for s in sources:
        src = find_source(s)
        if src.kind not in ("folder", "celeba"):
            raise DataError(f"{s}: prepare-data reads folders of images, not {src.kind} data")
        kinds.append(src.kind)
        for f in src.files:
            files.setdefault(f.stem, f)
    names = sorted(files)[:limit] if limit else sorted(files)
    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"--out must end in .zip, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    written, skipped, smallest = 0, 0, 10**9
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in tqdm(names, desc=f"{res}px WebP", unit="img", disable=not progress):
                try:
                    with Image.open(files[name]) as im:
                        box = crop_box(
                            *im.size, crop
                        )  # celeba: the face crop; wide, centre: the largest square
                        img = im.convert("RGB").crop(box)
                except (OSError, UnidentifiedImageError) as e:
                    skipped += 1
                    tqdm.write(f"skipping unreadable {files[name]}: {e}")
                    continue
                smallest = min(smallest, img.size[0])
                img = img.resize((res, res), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                img.save(buf, format="WEBP", quality=quality, method=6, lossless=lossless)
                zf.writestr(f"img/{name}.webp", buf.getvalue())
                written += 1
            if written == 0:
                raise DataError(f"none of the {len(names)} files could be read")
            index: dict[str, object] = {
                "count": written,
                "skipped": skipped,
                "resolution": res,
                "crop": crop,
                "smallest_crop_px": smallest,
                "upscaled": smallest < res,
                "format": "webp lossless" if lossless else f"webp q{quality}",
                "sources": [
                    {"path": str(Path(s).resolve().name), "kind": k}
                    for s, k in zip(sources, kinds, strict=True)
                ],
                "licence": licence
                or (
                    CELEBA_LICENCE
                    if "celeba" in kinds or any("celeba" in str(s) for s in sources)
                    else "unknown"
                ),
            }
            zf.writestr("index.json", json.dumps(index, indent=1))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return index


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources", nargs="+", metavar="SRC", help="folders of images (CelebA's img_align_celeba, …)"
    )
    p.add_argument("--res", type=int, required=True, help="resolution of the archive's square images")
    p.add_argument("--out", required=True, help="the zip to write (e.g. faces-64.zip)")
    p.add_argument(
        "--crop",
        choices=CROPS,
        default="wide",
        help="celeba: the usual 140x140 face crop; wide: 178x178 on CelebA (the largest centred square); "
        "centre: the largest centred square (default: wide)",
    )
    p.add_argument(
        "--quality",
        type=int,
        default=DEFAULT_QUALITY,
        help=f"WebP quality 1..100 (default {DEFAULT_QUALITY}: the 29k faces at 64 px in 33.1 MB, the 20k at 128 px "
        "in 52.7 MB)",
    )
    p.add_argument(
        "--lossless",
        action="store_true",
        help="lossless WebP (about 4x larger): the reference to measure a lossy archive against "
        "(python -m trainer compare-data)",
    )
    p.add_argument("--limit", type=int, help="keep only the first N images (by name)")
    p.add_argument("--quiet", action="store_true")


def run(a: argparse.Namespace) -> int:
    index = prepare_data(
        a.sources,
        a.res,
        a.out,
        crop=a.crop,
        quality=a.quality,
        lossless=a.lossless,
        limit=a.limit,
        progress=not a.quiet,
    )
    size = Path(a.out).stat().st_size
    print(
        f"wrote {a.out}: {index['count']} faces at {a.res}px ({index['crop']} crop), "
        f"{size / 2**20:.1f} MiB, {size / max(int(str(index['count'])), 1) / 1024:.2f} KiB each"
    )
    return 0
