"""Image work before training, on one thread against a pool of threads, on the same real faces in the same
process: `prepare-data`'s crop, resize and WebP encode (lossy and lossless, the lossless twin being what
`compare-data` measures an archive against) and `train --data FOLDER`'s JPEG decode, crop and resize.

    python bench/prepare_data.py [--data ../shared/data/celeba/img_align_celeba] [--count 1000]
                                 [--workers N] [--repeat 2]

Each row runs its work on 1 thread, then on --workers (default: trainer.data.WORKERS, one per core up to
16), alternating --repeat times, and keeps each side's fastest; both sides write the same bytes (checked
here and in the tests). PIL releases the GIL while it decodes, resizes and encodes, so the ratio is bounded
by the cores: two on the development VM, sixteen on a lent GPU's machine.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import trainer.data as data  # noqa: E402
from trainer.prepare import prepare_data  # noqa: E402


def members_digest(archive: Path) -> str:
    """sha256 over every member's name and bytes in order (a zip's own timestamps left out)."""
    h = hashlib.sha256()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            h.update(info.filename.encode())
            h.update(zf.read(info))
    return h.hexdigest()


def fastest(fn: Callable[[int], str], workers: int, repeat: int) -> tuple[float, float, bool]:
    """Seconds of fn on 1 thread and on `workers` (each the best of `repeat`, alternating), and whether the
    two wrote the same bytes."""
    best = {1: float("inf"), workers: float("inf")}
    digests: dict[int, set[str]] = {1: set(), workers: set()}
    for _ in range(repeat):
        for w in (1, workers):
            t = time.perf_counter()
            digests[w].add(fn(w))
            best[w] = min(best[w], time.perf_counter() - t)
    return best[1], best[workers], len(digests[1] | digests[workers]) == 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/celeba/img_align_celeba"))
    p.add_argument("--count", type=int, default=1000, help="faces per row")
    p.add_argument("--workers", type=int, default=data.WORKERS)
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args()
    src = Path(a.data)
    if not src.is_dir():
        print(f"no faces at {src} (the shared CelebA folder): pass --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "faces"  # the first --count faces, as links: every row reads the same files
        folder.mkdir()
        for f in sorted(src.iterdir())[: a.count]:
            (folder / f.name).symlink_to(f.resolve())
        n = len(list(folder.iterdir()))

        def archive(res: int, lossless: bool) -> Callable[[int], str]:
            def run(workers: int) -> str:
                out = tmp / f"{res}-{lossless}-{workers}.zip"
                prepare_data([folder], res, out, lossless=lossless, progress=False, workers=workers)
                digest = members_digest(out)
                out.unlink()
                return digest

            return run

        def decode(res: int) -> Callable[[int], str]:
            def run(workers: int) -> str:
                data.WORKERS = workers
                arr = data.load_images(folder, res, cache_dir=tmp / f"cache-{workers}", progress=False)
                for c in (tmp / f"cache-{workers}").rglob("*"):  # decode again next time
                    if c.is_file():
                        c.unlink()
                return hashlib.sha256(arr.tobytes()).hexdigest()

            return run

        rows = [
            ("prepare-data 64 px, WebP q80", archive(64, False)),
            ("prepare-data 178 px, WebP q80", archive(178, False)),
            ("prepare-data 178 px, lossless", archive(178, True)),
            ("train --data FOLDER: decode to 128 px", decode(128)),
        ]
        print(f"{n} real CelebA faces a row; 1 thread against {a.workers}; best of {a.repeat}")
        print()
        print(f"| work | 1 thread img/s | {a.workers} threads img/s | speed-up | same bytes |")
        print("|---|---|---|---|---|")
        for name, fn in rows:
            one, many, same = fastest(fn, a.workers, a.repeat)
            print(f"| {name} | {n / one:.0f} | {n / many:.0f} | {one / many:.2f}x | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
