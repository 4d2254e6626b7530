"""`python -m trainer compare-data A B --res R`: FID, KID, MS-SSIM and face rate of one image set against
another at the same resolution. Made for what a lossy `prepare-data` archive costs against its lossless
twin (`prepare-data --lossless`): both hold the same faces in the same order, so the same indices are drawn
on both sides and the figures measure the compression alone. Any two data sets work (then the subsets are
independent). `--floor` adds A against a disjoint subset of A: how far two random draws of the same faces
are apart at this size, the yardstick the other figures are read against."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data import Source, zip_index
from trainer.evaluate import (
    Distance,
    Instruments,
    Measuring,
    SetKey,
    add_measuring_arguments,
    load_reals,
    measured_reals,
    resolve_device,
)
from trainer.metrics.face_rate import DetectorParams
from trainer.metrics.fid import FID_MIN_IMAGES
from trainer.metrics.real_cache import SetMeasures

SAME_FACE_PROBE = 64  # image pairs looked at to tell whether A[i] and B[i] are the same face


def same_faces(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether A[i] and B[i] show the same face: each pair much closer than A[i] is to B[i + 1]."""
    n = min(len(a), len(b), SAME_FACE_PROBE)
    if len(a) != len(b) or n < 2:
        return False
    x = np.asarray(a[:n], dtype=np.int16)
    y = np.asarray(b[:n], dtype=np.int16)
    paired = np.abs(x - y).mean(axis=(1, 2, 3))
    shifted = np.abs(x - np.roll(y, 1, axis=0)).mean(axis=(1, 2, 3))
    return bool((paired * 2 < shifted).mean() > 0.9)


def describe_set(data: str, src: Source, images: int, native: int, m: SetMeasures) -> dict[str, Any]:
    path = Path(data).expanduser().resolve()
    out: dict[str, Any] = {
        "data": str(path),
        "kind": src.kind,
        "images": images,
        "native_res": native,
        "ms_ssim": m.ms_ssim,
        "face_rate": m.face_rate,
    }
    if src.kind == "zip":
        index = zip_index(path)
        out["format"] = index.get("format")
        out["crop"] = index.get("crop")
        out["bytes_per_image"] = path.stat().st_size / max(images, 1)
    return out


def compare_data(
    data_a: str,
    data_b: str,
    *,
    res: int,
    num: int = 10_000,
    floor: bool = False,
    how: Measuring = Measuring(),
) -> dict[str, Any]:
    """Every figure as one dict (what `--out` writes). B is measured against A."""
    t0 = time.perf_counter()
    how = how.checked(num)
    reals_a, native_a, src_a = load_reals(data_a, res, how.data_cache_dir, how.progress)
    reals_b, native_b, src_b = load_reals(data_b, res, how.data_cache_dir, how.progress)
    n = min(num, len(reals_a), len(reals_b))
    if floor and 2 * n > len(reals_a):
        raise ValueError(
            f"--floor draws two disjoint sets of {n:,} images from A, which has {len(reals_a):,}: "
            f"use --num {len(reals_a) // 2} or less"
        )
    tools = Instruments.open(how, resolve_device(how.device))

    # the seed's permutation of each set (evaluate's real subset, so its cache is shared): when A and B
    # hold as many images, the same indices, and the same faces when B is A stored another way
    seed = how.seed
    perm_a = np.random.default_rng(seed).permutation(len(reals_a))
    perm_b = np.random.default_rng(seed).permutation(len(reals_b))
    a, file_a = measured_reals(reals_a, perm_a[:n], SetKey(data_a, src_a, res, seed), tools)
    b, file_b = measured_reals(reals_b, perm_b[:n], SetKey(data_b, src_b, res, seed), tools)
    dist = Distance.between(a, b, seed, "B", "A")
    floor_dist = None
    if floor:
        a2, _ = measured_reals(reals_a, perm_a[n : 2 * n], SetKey(data_a, src_a, res, seed, subset=1), tools)
        floor_dist = Distance.between(a, a2, seed, "A (second draw)", "A")
    return {
        "resolution": res,
        "num": n,
        "same_faces": same_faces(reals_a, reals_b),
        "a": describe_set(data_a, src_a, len(reals_a), native_a, a),
        "b": describe_set(data_b, src_b, len(reals_b), native_b, b),
        "b_against_a": dist.as_dict(),
        "floor": floor_dist.as_dict() if floor_dist else None,
        "face_detector": DetectorParams().describe(),
        "inception": tools.inception.describe(),
        "real_caches": [str(file_a), str(file_b)],
        "device": tools.device,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---------------------------------------------------------------------------- report


def _fid_cell(d: dict[str, Any]) -> str:
    return f"{d['fid']:.3f}" if d["fid"] is not None else f"n/a (needs {FID_MIN_IMAGES}+ images a side)"


def _kid_cell(d: dict[str, Any]) -> str:
    return f"{d['kid'] * 1e3:.3f} ± {d['kid_std'] * 1e3:.3f}"


def _format_cell(s: dict[str, Any]) -> str:
    if "bytes_per_image" not in s:
        return f"{s['kind']}, {s['native_res']} px"
    return f"{s['format']}, {s['crop']} crop, {s['bytes_per_image'] / 1024:.2f} KiB an image"


def markdown_table(m: dict[str, Any]) -> str:
    a, b, n = m["a"], m["b"], m["num"]
    how = "the same faces on both sides" if m["same_faces"] else "independent random draws"
    name_a, name_b = Path(a["data"]).name, Path(b["data"]).name
    lines = [
        f"### {name_b} against {name_a} at {m['resolution']}x{m['resolution']}: {n:,} images a side, {how}",
        "",
        f"| | A: `{name_a}` | B: `{name_b}` |",
        "| --- | --- | --- |",
        f"| stored as | {_format_cell(a)} | {_format_cell(b)} |",
        f"| MS-SSIM | {a['ms_ssim']:.4f} | {b['ms_ssim']:.4f} |",
        f"| face rate | {a['face_rate']:.1%} | {b['face_rate']:.1%} |",
        "",
    ]
    d, f = m["b_against_a"], m["floor"]
    if f is None:
        lines += ["| distance | B against A |", "| --- | --- |"]
        lines += [f"| FID ↓ | {_fid_cell(d)} |", f"| KID ×10³ ↓ | {_kid_cell(d)} |"]
    else:
        lines += [
            f"| distance | B against A | floor: A against another {n:,} images of A |",
            "| --- | --- | --- |",
            f"| FID ↓ | {_fid_cell(d)} | {_fid_cell(f)} |",
            f"| KID ×10³ ↓ | {_kid_cell(d)} | {_kid_cell(f)} |",
        ]
    lines += ["", f"{m['seconds']:.0f} s on {m['device']}."]
    if d["fid_note"]:
        lines += ["", d["fid_note"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="the reference images (e.g. a prepare-data --lossless archive)")
    p.add_argument("b", metavar="B", help="the images measured against A (e.g. the lossy archive)")
    p.add_argument("--res", type=int, required=True, help="resolution both sets are compared at")
    p.add_argument("--num", type=int, default=10_000, help="images a side (default 10000)")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also measure A against a second, disjoint draw of A (needs 2 x --num images in A)",
    )
    p.add_argument("--out", help="write the figures to this .json and a .md beside it")
    add_measuring_arguments(p, "which random subsets are drawn (default 0)")


def run(a: argparse.Namespace) -> int:
    if a.out and not a.out.endswith(".json"):
        raise ValueError(f"--out must end in .json (a .md is written beside it), got {a.out}")
    m = compare_data(a.a, a.b, res=a.res, num=a.num, floor=a.floor, how=Measuring.from_args(a))
    table = markdown_table(m)
    print(table)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(m, indent=1))
        out.with_suffix(".md").write_text(table)
        print(f"wrote {out} and {out.with_suffix('.md').name}")
    return 0
