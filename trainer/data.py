"""Data: find images (folders, CelebA, CIFAR-10 batches, .npy/.npz), decode once into a uint8 cache per
resolution (memory-mapped), and draw training batches from it without touching JPEG again."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import json
import logging
import os
import pickle
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp"}
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_ALIASES = {"car": "automobile", "cars": "automobile", "plane": "airplane"}
CELEBA_CROP = 140 / 178  # the usual centred face crop of CelebA's aligned 178x218 images
CACHE_VERSION = 2  # 2: lower resolutions named by the decode they were halved from (level_name)
# what to do about an archive that is cut short or damaged: it is made locally, or carried to a GPU in parts
REMAKE_ARCHIVE = (
    "make it again with prepare-data, or, if it was carried in parts, join every part in order and compare "
    "the joined file's sha256 with the original's"
)


class DataError(ValueError):
    """A problem with the training data that the user can fix."""


_T = TypeVar("_T")
_R = TypeVar("_R")
# threads for image work: PIL releases the GIL while it decodes, resizes and encodes, and numpy in its reductions
WORKERS = min(16, os.cpu_count() or 1)


def threaded_in_order(
    fn: Callable[[_T], _R], items: Iterable[_T], *, chunk: int = 256, workers: int | None = None
) -> Iterator[_R]:
    """fn(item) for each item, in the items' order, computed `chunk` items at a time on a pool of threads
    (`workers`, default WORKERS), so that at most one chunk's results wait in memory. The items are drawn
    on the caller's thread. An exception fn raises reaches the caller at that item."""
    with ThreadPoolExecutor(max_workers=workers or WORKERS) as pool:
        it = iter(items)
        while batch := list(itertools.islice(it, chunk)):
            yield from pool.map(fn, batch)


@dataclass(frozen=True)
class Source:
    """Where the images come from and how to crop them."""

    path: Path
    kind: str  # "folder" | "celeba" | "cifar10" | "array" | "zip"
    files: tuple[Path, ...]  # images, CIFAR batches, or one array or zip file
    cifar_class: str | None = None

    @property
    def key(self) -> str:
        h = hashlib.sha1()
        h.update(
            f"{CACHE_VERSION}|{self.path.resolve()}|{self.kind}|{self.cifar_class}|{len(self.files)}".encode()
        )
        for f in (self.files[0], self.files[-1]):
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{int(st.st_mtime)}".encode())
        return h.hexdigest()[:16]


def find_source(path: str | Path, cifar_class: str | None = None) -> Source:
    """Work out what kind of data `path` holds; raise DataError when there is nothing usable."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if p.is_file():
        if p.suffix in (".npy", ".npz"):
            return Source(p, "array", (p,))
        if p.suffix == ".zip":
            zip_members(p)  # raises DataError for a zip without images
            return Source(p, "zip", (p,))
        raise DataError(
            f"{p} is a file; give a folder of images, a zip from prepare-data, CIFAR-10 batches, "
            "or a .npy/.npz array"
        )
    batches = sorted(p.glob("data_batch_*")) + sorted(p.glob("test_batch"))
    if batches:
        cls = CIFAR_ALIASES.get(cifar_class, cifar_class) if cifar_class else None
        if cls is not None and cls not in CIFAR_CLASSES:
            raise DataError(
                f"unknown CIFAR-10 class {cifar_class!r}; choose one of {', '.join(CIFAR_CLASSES)}"
            )
        return Source(p, "cifar10", tuple(batches), cls)
    files = tuple(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()))
    if not files:
        arrays = sorted(p.glob("*.np[yz]"))
        if arrays:
            return Source(arrays[0], "array", (arrays[0],))
        raise DataError(f"no images (.jpg, .png, .webp) found under {p}")
    kind = (
        "celeba"
        if "img_align_celeba" in str(p) or files[0].parent.name.startswith("img_align_celeba")
        else "folder"
    )
    return Source(p, kind, files)


def open_zip(path: Path) -> zipfile.ZipFile:
    """The archive open for reading; DataError if it is not a zip (a copy cut short reads so)."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip archive ({e}); {REMAKE_ARCHIVE}") from e


def read_member(zf: zipfile.ZipFile, path: Path, name: str) -> bytes:
    """One member's bytes; DataError naming it where the archive is damaged (a bad CRC, a missing part)."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(
            f"{path}: member {name} cannot be read ({e}): the archive is damaged; {REMAKE_ARCHIVE}"
        ) from e


def zip_members(path: Path) -> list[str]:
    """The image entries of a zip archive, sorted; DataError if it is not a zip or holds none."""
    with open_zip(path) as zf:
        names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_EXTS)
    if not names:
        raise DataError(f"{path} holds no images (.jpg, .png, .webp)")
    return names


def zip_index(path: Path) -> dict[str, object]:
    """The archive's index.json (written by prepare-data), or {} for a plain zip of images."""
    with open_zip(path) as zf:
        if "index.json" not in zf.namelist():
            return {}
        try:
            return dict(json.loads(read_member(zf, path, "index.json")))
        except ValueError as e:
            raise DataError(f"{path}: index.json is not a JSON object ({e}); {REMAKE_ARCHIVE}") from e


def _member_rgb(path: Path, name: str, data: bytes) -> Image.Image:
    """One archive image in RGB; DataError naming the member when its bytes are no image PIL reads."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
        why = "is not an image" if isinstance(e, UnidentifiedImageError) else f"cannot be decoded ({e})"
        raise DataError(f"{path}: member {name} {why}; {REMAKE_ARCHIVE}") from e


def zip_member_rgb(
    zf: zipfile.ZipFile, path: Path, name: str, lock: threading.Lock | None = None
) -> Image.Image:
    """One member of the open archive `zf` (at `path`) in RGB; DataError naming it if it is damaged. Threads
    that share `zf` pass one `lock`: ZipFile counts its open members without one. The decode runs outside."""
    with lock or contextlib.nullcontext():
        data = read_member(zf, path, name)
    return _member_rgb(path, name, data)


def _zip_images(path: Path) -> Iterator[tuple[str, Image.Image]]:
    with open_zip(path) as zf:
        for name in zip_members(path):
            yield name, zip_member_rgb(zf, path, name)


def crop_box(w: int, h: int, kind: str) -> tuple[int, int, int, int]:
    """Centred square crop: CelebA's usual face crop, else the largest centred square (for CelebA's
    178x218 images that is the wide 178x178 crop)."""
    side = round(w * CELEBA_CROP) if kind == "celeba" else min(w, h)
    side = min(side, w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def honest_max_res(src: Source, probe: int = 64) -> int:
    """The largest resolution the data gives without upscaling (from the first `probe` images' crops)."""
    if src.kind == "cifar10":
        return 32
    if src.kind == "array":
        arr = load_array(src.files[0])
        return int(min(arr.shape[1], arr.shape[2]))
    if src.kind == "zip":  # square crops already; zip_members made sure there is at least one
        return int(min(min(im.size) for _, im in itertools.islice(_zip_images(src.path), probe)))
    sides = []
    for f in src.files[:probe]:
        try:
            with Image.open(f) as im:
                left, _, right, _ = crop_box(*im.size, src.kind)
                sides.append(right - left)
        except (OSError, UnidentifiedImageError):
            continue
    if not sides:
        raise DataError(f"none of the first {probe} files under {src.path} could be read as an image")
    return int(min(sides))


def check_resolution(src: Source, res: int, allow_upscale: bool) -> None:
    """DataError when `res` is above what `src` gives without upscaling, unless upscaling is allowed."""
    honest = honest_max_res(src)
    if res > honest and not allow_upscale:
        raise DataError(
            f"{res}x{res} is more than {src.path} can honestly give: its crops are {honest}px (the largest "
            f"honest resolution is {1 << (honest.bit_length() - 1)}); pass --allow-upscale to upscale anyway"
        )


def load_array(path: Path) -> np.ndarray:
    arr = np.load(path)
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr = arr[arr.files[0]]
    if arr.ndim != 4:
        raise DataError(f"{path}: expected an array [N, H, W, 3] or [N, 3, H, W], got shape {arr.shape}")
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 if hi <= 1.0 else 1.0
        arr = np.clip(np.round((arr - (lo if lo < 0 else 0)) * (127.5 if lo < 0 else scale)), 0, 255).astype(
            np.uint8
        )
    return arr


def load_cifar(src: Source) -> np.ndarray:
    out = []
    want = CIFAR_CLASSES.index(src.cifar_class) if src.cifar_class else None
    for f in src.files:
        with open(f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        if want is not None:
            x = x[np.asarray(d[b"labels"]) == want]
        out.append(x)
    return np.concatenate(out)


def _resize(arr: np.ndarray, res: int) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(a).resize((res, res), Image.Resampling.LANCZOS)) for a in arr]
    )


def downsample_box(arr: np.ndarray, chunk: int = 256, out: np.ndarray | None = None) -> np.ndarray:
    """2x2 box average of uint8 images [N, H, W, 3], rounded half up (the paper's dataset tool does the same),
    into `out` if given (a cache file's map).

    A chunk of images at a time, on a thread per core (numpy releases the GIL), as four strided adds: a
    memmap is read a chunk at a time, and 30k faces at 256 px take seconds rather than the two minutes of
    one reduction over the whole array (its strided sum and a uint16 copy of everything)."""
    n, h, w, c = arr.shape
    if out is None:
        out = np.empty((n, h // 2, w // 2, c), dtype=np.uint8)
    assert out.shape == (n, h // 2, w // 2, c) and out.dtype == np.uint8

    def one(start: int) -> None:
        x = np.asarray(arr[start : start + chunk], dtype=np.uint16)
        total = x[:, 0::2, 0::2] + x[:, 1::2, 0::2]
        total += x[:, 0::2, 1::2]
        total += x[:, 1::2, 1::2]
        total += 2
        total //= 4
        out[start : start + chunk] = total

    for _ in threaded_in_order(one, range(0, n, chunk)):
        pass
    return out


Alloc = Callable[[int, int], np.ndarray]  # (images, res) -> an empty uint8 [images, res, res, 3] to fill


def _alloc_in_memory(n: int, res: int) -> np.ndarray:
    return np.empty((n, res, res, 3), dtype=np.uint8)


def _decode(src: Source, res: int, progress: bool, alloc: Alloc = _alloc_in_memory) -> tuple[np.ndarray, int]:
    """Decode every image to [N, res, res, 3] uint8 (folders and archives into `alloc`'s array); unreadable
    files are skipped and counted."""
    if src.kind == "cifar10":
        arr = load_cifar(src)
        return (arr if res == 32 else _resize(arr, res)), 0
    if src.kind == "array":
        arr = load_array(src.files[0])
        return (arr if arr.shape[1] == res == arr.shape[2] else _resize(arr, res)), 0
    if src.kind == "zip":
        return _decode_zip(src, res, progress, alloc), 0
    out = alloc(len(src.files), res)
    n, skipped = 0, 0
    decoded = threaded_in_order(functools.partial(_decode_file, kind=src.kind, res=res), src.files)
    for f, arr in tqdm(
        zip(src.files, decoded, strict=True),
        total=len(src.files),
        desc=f"decoding {src.path.name} to {res}x{res}",
        unit="img",
        disable=not progress,
    ):
        if isinstance(arr, Exception):
            skipped += 1
            log.warning("skipping unreadable image %s: %s", f, arr)
        else:
            out[n] = arr
            n += 1
    if skipped:
        log.warning("skipped %d unreadable of %d files under %s", skipped, len(src.files), src.path)
    if n == 0:
        raise DataError(f"none of the {len(src.files)} files under {src.path} could be decoded")
    return (out if n == len(out) else out[:n]), skipped


def _decode_file(f: Path, kind: str, res: int) -> np.ndarray | Exception:
    """One image file cropped (`kind`: crop_box's) and resized to res, or the error that made it unreadable.
    A JPEG twice res or more is decoded at 1/2..1/8 scale in the DCT."""
    try:
        with Image.open(f) as im:
            box = crop_box(*im.size, kind)
            side = box[2] - box[0]
            if im.format == "JPEG" and side >= 2 * res:
                w0 = im.size[0]
                scale = min(side // res, 8)
                im.draft("RGB", (im.size[0] // scale, im.size[1] // scale))
                box = crop_box(*im.size, kind) if im.size[0] != w0 else box
            img = im.convert("RGB").crop(box).resize((res, res), Image.Resampling.LANCZOS)
        return np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return e


def _decode_member(path: Path, name: str, data: bytes, res: int, out: np.ndarray, i: int) -> tuple[int, int]:
    """One archive image's pixels at res into out[i] (on the worker's thread: PIL releases the GIL while it
    decodes and resizes, numpy while it copies); returns its stored size."""
    img = _member_rgb(path, name, data)
    size = img.size
    if size[0] != res:
        img = img.resize((res, res), Image.Resampling.LANCZOS)
    out[i] = np.asarray(img)
    return size


def _decode_zip(src: Source, res: int, progress: bool, alloc: Alloc = _alloc_in_memory) -> np.ndarray:
    """A prepare-data archive holds square crops already: decode, resize only if its size differs.

    Members are read in order and decoded on a thread per core, a chunk at a time (20k faces upscaled to
    256 px take a minute on one core: GPU time on a lent machine)."""
    names = zip_members(src.path)
    out = alloc(len(names), res)
    side = zip_index(src.path).get("resolution")  # every image at the archive's one resolution
    with (
        open_zip(src.path) as zf,
        tqdm(total=len(names), desc=f"decoding {src.path.name}", disable=not progress) as bar,
    ):
        blobs = ((i, n, read_member(zf, src.path, n)) for i, n in enumerate(names))  # a chunk ahead, here
        sizes = threaded_in_order(lambda b: _decode_member(src.path, b[1], b[2], res, out, b[0]), blobs)
        for name, (w, h) in zip(names, sizes, strict=True):
            if w != h:
                raise DataError(f"{src.path}: {name} is {w}x{h}; archive images must be square")
            side = side or w  # a plain zip: the first image's size
            if w != side:
                raise DataError(
                    f"{src.path}: {name} is {w}x{h}, but the archive's images are {side}x{side}: "
                    "one archive holds one resolution (make it again with prepare-data)"
                )
            bar.update()
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("PROGAN_CACHE", Path.home() / ".cache" / "progan")) / "data"


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _cache_file(path: Path) -> Iterator[tuple[Alloc, Callable[[np.ndarray], None]]]:
    """Images decoded (or downsampled) straight into the cache file `path`, with no in-memory copy of them
    and no second pass to write them (3.9 GB for 20k faces at 256 px: seconds of a GPU lease). Yields
    `alloc` (an `Alloc` that maps the new file) and `done(arr)`: given the `alloc` array, the file is
    complete; given another (fewer images, or a source decoded elsewhere), that is saved instead. The
    temporary file becomes `path` only through `done`.
    Like np.save before it, no fsync: the pages reach the disk when the system writes them back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    mapped: list[np.ndarray] = []

    def alloc(n: int, res: int) -> np.ndarray:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, res, res, 3))
        mapped.append(arr)
        return arr

    def done(arr: np.ndarray) -> None:
        if mapped and arr is mapped[0]:
            mapped.clear()  # unmapped when its last reference goes; its pages stay in the page cache
            os.replace(tmp, path)
        else:
            _atomic_save(path, arr)

    try:
        yield alloc, done
    finally:
        mapped.clear()
        tmp.unlink(missing_ok=True)


def level_name(res: int, top: int) -> str:
    """The cache file of `res` px images made from a decode at `top` px: `64.npy` decoded straight to 64 px,
    `16-box64.npy` two 2x box halvings of that. Two names, so that a resolution's pixels depend on how it was
    asked for and never on what the cache happened to hold (a run's 16 px faces are the same on a fresh
    machine as on one that had evaluated at 16 px before)."""
    return f"{res}.npy" if res == top else f"{res}-box{top}.npy"


def load_images(
    path: str | Path,
    res: int,
    *,
    top: int | None = None,
    cache_dir: str | Path | None = None,
    cifar_class: str | None = None,
    allow_upscale: bool = False,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """All images of `path` as a read-only uint8 memmap [N, res, res, 3], decoded once and cached.

    `top` (default `res`): the resolution the source is decoded to; below it, `res` is reached by 2x2 box
    averages, one halving at a time, as in the paper (a training run's lower resolutions, `load_pyramid`).
    `timings`, if given, gets the seconds of the work done here (not when the cache held it): `decode`
    (into the cache file) and `downsample`, added up over calls."""
    top = top or res
    if top < res or top % res or (top // res) & (top // res - 1):
        raise ValueError(f"{res} px is not a power-of-two halving of {top} px")
    kw: dict[str, Any] = dict(cache_dir=cache_dir, cifar_class=cifar_class, allow_upscale=allow_upscale)
    src = find_source(path, cifar_class)
    root = Path(cache_dir or default_cache_dir()) / src.key
    target = root / level_name(res, top)
    if target.exists():
        pass
    elif res < top:
        r = 2 * res  # the nearest level made on the way down from top
        while r < top and not (root / level_name(r, top)).exists():
            r *= 2
        arr = load_images(path, r, top=top, progress=progress, timings=timings, **kw)
        began = time.perf_counter()
        with _cache_file(target) as (alloc, done):
            while r > res:  # the last halving straight into the cache file
                out = alloc(len(arr), r // 2) if r // 2 == res else None
                arr, r = downsample_box(arr, out=out), r // 2
            done(arr)
        del arr  # the map it may be: np.load maps the file anew
        _add_time(timings, "downsample", began)
    else:
        check_resolution(src, res, allow_upscale)
        began = time.perf_counter()
        with _cache_file(target) as (alloc, done):
            arr, skipped = _decode(src, res, progress, alloc)
            done(arr)
        meta = {
            "path": str(src.path.resolve()),
            "kind": src.kind,
            "count": len(arr),
            "skipped": skipped,
            "cifar_class": src.cifar_class,
        }
        (root / "meta.json").write_text(json.dumps(meta, indent=1))
        del arr
        _add_time(timings, "decode", began)
    arr = np.load(target, mmap_mode="r")
    if len(arr) == 0:
        raise DataError(f"no usable images in {path}")
    return arr


def _add_time(timings: dict[str, float] | None, work: str, began: float) -> None:
    if timings is not None:
        timings[work] = round(timings.get(work, 0.0) + time.perf_counter() - began, 3)


def load_pyramid(path: str | Path, max_res: int, min_res: int = 4, **kw: object) -> dict[int, np.ndarray]:
    """load_images at max_res and, halved from it, every power of two below it down to min_res."""
    out = {max_res: load_images(path, max_res, **kw)}  # type: ignore[arg-type]
    rest = {k: v for k, v in kw.items() if k != "progress"}
    r = max_res // 2
    while r >= min_res:
        out[r] = load_images(path, r, top=max_res, progress=False, **rest)  # type: ignore[arg-type]
        r //= 2
    return out
