"""`prepare-data`: one compact zip of square WebP faces at one resolution plus an index (count, resolution,
crop, sources, licence), small enough to carry to a GPU machine. The trainer and the evaluator read it as
a data source (trainer/data.py)."""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from trainer.data import (
    WORKERS,
    DataError,
    Source,
    crop_box,
    find_source,
    load_array,
    load_cifar,
    open_zip,
    threaded_in_order,
    zip_index,
    zip_member_rgb,
    zip_members,
)

CROPS = ("celeba", "wide", "centre")
CELEBA_LICENCE = (
    "CelebA (Liu et al., ICCV 2015): non-commercial research purposes only; do not redistribute the images"
)


# WebP quality: the 29,017 faces at 64 px in 33.1 MB, the 20k full-size ones at 128 px in 52.7 MB (as measured
# in docs/evaluation.md)
DEFAULT_QUALITY = 80
Loader = Callable[[], Image.Image]  # one source image in RGB, read when called


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
    cifar_class: str | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, object]:
    """Write `out` (a zip) and return its index. Files with a name already taken (the same CelebA id in
    two sets) are kept once, from the first source. `lossless`: WebP's lossless mode (`quality` is then its
    compression effort), the reference that `compare-data` measures a lossy archive against. `workers`:
    threads that decode, resize and encode (default: one per core, up to 16); the archive is the same
    whatever the number."""
    if crop not in CROPS:
        raise ValueError(f"--crop must be one of {', '.join(CROPS)}, got {crop!r}")
    if res < 4 or res > 1024:
        raise ValueError(f"--res must be between 4 and 1024, got {res}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be 1..100, got {quality}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"--out must end in .zip, got {out}")
    with ExitStack() as stack:  # a zip source stays open while its members are written
        images: dict[str, Loader] = {}
        kinds, licences = [], []
        for s in sources:
            src = find_source(s, cifar_class)
            kinds.append(src.kind)
            licences.append(source_licence(src))
            for name, load in source_images(src, stack):
                images.setdefault(name, load)
        names = sorted(images)[:limit] if limit else sorted(images)
        about: dict[str, object] = {
            "sources": [
                {"path": str(Path(s).resolve().name), "kind": k} for s, k in zip(sources, kinds, strict=True)
            ],
            "licence": licence
            or (
                CELEBA_LICENCE
                if "celeba" in kinds or any("celeba" in str(s) for s in sources)
                else "; ".join(sorted({lc for lc in licences if lc})) or "unknown"
            ),
        }
        return _write(images, names, res, out, crop, quality, lossless, about, progress, workers)


def _write(
    images: dict[str, Loader],
    names: list[str],
    res: int,
    out: Path,
    crop: str,
    quality: int,
    lossless: bool,
    about: dict[str, object],
    progress: bool,
    workers: int | None,
) -> dict[str, object]:
    """The archive: the images (`names` of `images`, cropped and resized to `res`) and the index (their
    figures and `about`: sources, licence), written to a temporary file renamed to `out` once complete. The
    images are encoded on `workers` threads a chunk at a time and written in `names`' order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    written, skipped, smallest = 0, 0, 10**9
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            encode = functools.partial(
                _encode, images, res=res, crop=crop, quality=quality, lossless=lossless
            )
            done = threaded_in_order(encode, names, workers=workers)
            for name, (side, webp) in tqdm(
                zip(names, done, strict=True),
                total=len(names),
                desc=f"{res}px WebP",
                unit="img",
                disable=not progress,
            ):
                if isinstance(webp, Exception):
                    skipped += 1
                    tqdm.write(f"skipping unreadable {name}: {webp}")
                    continue
                smallest = min(smallest, side)
                zf.writestr(f"img/{name}.webp", webp)
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
                **about,
            }
            zf.writestr("index.json", json.dumps(index, indent=1))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return index


def _encode(
    images: dict[str, Loader], name: str, *, res: int, crop: str, quality: int, lossless: bool
) -> tuple[int, bytes | Exception]:
    """One image cropped, resized to res and WebP-encoded: (the crop's side, the bytes), or (0, the error)
    where it cannot be read."""
    try:
        im = images[name]()
        img = im.crop(crop_box(*im.size, crop))  # celeba: the face crop; else the largest square
    except (OSError, UnidentifiedImageError, DataError) as e:
        return 0, e
    side = img.size[0]
    buf = io.BytesIO()
    img.resize((res, res), Image.Resampling.LANCZOS).save(
        buf, format="WEBP", quality=quality, method=6, lossless=lossless
    )
    return side, buf.getvalue()


def _file_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def source_images(src: Source, stack: ExitStack) -> Iterator[tuple[str, Loader]]:
    """Every image of a data source (whatever `train --data` reads) by name, each loaded in RGB only when
    called: files and archive members from disk (an archive stays open in `stack`), arrays from memory.
    Names: a file's or member's stem (so the same CelebA id in two sets is one face), an array's row as
    <source>-<row>."""
    if src.kind in ("folder", "celeba"):
        for f in src.files:
            yield f.stem, functools.partial(_file_rgb, f)
    elif src.kind == "zip":
        zf = stack.enter_context(open_zip(src.path))
        lock = threading.Lock()  # the loaders run on prepare-data's threads
        for member in zip_members(src.path):
            yield Path(member).stem, functools.partial(zip_member_rgb, zf, src.path, member, lock)
    else:
        arr = load_cifar(src) if src.kind == "cifar10" else load_array(src.path)
        for i, a in enumerate(arr):
            yield f"{src.path.stem}-{i:06d}", functools.partial(Image.fromarray, a)


def source_licence(src: Source) -> str | None:
    """What the source says of its licence: a prepare-data archive's index, CIFAR-10's terms, else None."""
    if src.kind == "zip":
        return str(zip_index(src.path).get("licence") or "") or None
    if src.kind == "cifar10":
        return "CIFAR-10 (Krizhevsky 2009): see the data set's terms"
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="what train --data reads: folders of images (CelebA's img_align_celeba, …), a prepare-data "
        "zip, CIFAR-10 batches, .npy/.npz arrays",
    )
    p.add_argument("--cifar-class", help="CIFAR-10 data: keep one class (e.g. automobile or car)")
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
    p.add_argument(
        "--workers",
        type=int,
        help=f"threads that decode, resize and encode (default {WORKERS}: one per core, up to 16); the "
        "archive is the same whatever the number",
    )
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
        cifar_class=a.cifar_class,
        progress=not a.quiet,
        workers=a.workers,
    )
    size = Path(a.out).stat().st_size
    print(
        f"wrote {a.out}: {index['count']} faces at {a.res}px ({index['crop']} crop), "
        f"{size / 2**20:.1f} MiB, {size / max(int(str(index['count'])), 1) / 1024:.2f} KiB each"
    )
    return 0
