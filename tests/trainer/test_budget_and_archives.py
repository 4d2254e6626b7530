"""GPU-lease features on CPU: prepare-data archives, the --minutes planner and deadline, model checkpoints
that grow, the packed checkpoint that a lease brings back, and bf16 autocast through a fade."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, free_port
from trainer.budget import BudgetError, Probe, plan_to_fit
from trainer.checkpoint import MODEL_CHECKPOINT, Checkpoint
from trainer.cli import main
from trainer.config import NetConfig, TrainConfig, phase_start_nimg, preset, schedule
from trainer.data import DataError, find_source, load_images
from trainer.networks import build_networks

# ---------------------------------------------------------------------------- archives


def test_archive_holds_the_folder_faces(faces_zip: Path, faces_dir: Path, tmp_path: Path) -> None:
    index = json.loads(zipfile.ZipFile(faces_zip).read("index.json"))
    assert index["count"] == 512 and index["resolution"] == 32 and index["crop"] == "celeba"
    assert "non-commercial" in index["licence"] and not index["upscaled"]
    assert find_source(faces_zip).kind == "zip"
    from_zip = load_images(faces_zip, 32, cache_dir=tmp_path, progress=False).astype(np.int16)
    from_folder = load_images(faces_dir, 32, cache_dir=tmp_path, progress=False).astype(np.int16)
    assert from_zip.shape == from_folder.shape == (512, 32, 32, 3)
    # the same faces in the same order and crop: WebP's 4:2:0 chroma (~3.5 grey levels at 32 px) and the
    # folder's reduced-scale JPEG decode tell them apart, a different face is much further away
    diff = np.abs(from_zip - from_folder).mean(axis=(1, 2, 3))
    assert diff.max() < 16.0 and diff.mean() < 9.0
    shuffled = np.abs(from_zip - from_folder[::-1]).mean(axis=(1, 2, 3))
    assert (shuffled > 2 * diff).mean() > 0.95


def test_images_decode_straight_into_their_cache_file(faces_zip: Path, tmp_path: Path) -> None:
    """The decode writes into the cache file itself (no in-memory copy, no second pass), and so does the
    last halving of a lower resolution: the same pixels as in memory; `timings` gets the work done."""
    from trainer import data

    cache, timings = tmp_path / "c", dict[str, float]()
    top = load_images(faces_zip, 32, cache_dir=cache, progress=False, timings=timings)
    assert isinstance(top, np.memmap) and list(timings) == ["decode"] and timings["decode"] > 0
    in_memory, skipped = data._decode(find_source(faces_zip), 32, False)
    assert skipped == 0 and not isinstance(in_memory, np.memmap) and np.array_equal(top, in_memory)
    low = load_images(faces_zip, 8, top=32, cache_dir=cache, progress=False, timings=timings)
    assert set(timings) == {"decode", "downsample"}
    assert np.array_equal(low, data.downsample_box(data.downsample_box(in_memory)))
    cached: dict[str, float] = {}
    assert np.array_equal(
        load_images(faces_zip, 8, top=32, cache_dir=cache, progress=False, timings=cached), low
    )
    assert cached == {} and not any(cache.rglob("*.tmp"))


def test_prepare_data_reads_what_train_data_reads(faces_zip: Path, tmp_path: Path) -> None:
    """prepare-data takes every source `train --data` takes: an archive (smaller again, its licence kept),
    a .npy of faces, CIFAR-10 batches (one class); each archive holds those images at the new size."""
    import pickle

    small = tmp_path / "faces-16.zip"
    assert main(["prepare-data", str(faces_zip), "--res", "16", "--out", str(small), "--quiet"]) == 0
    index = json.loads(zipfile.ZipFile(small).read("index.json"))
    assert index["count"] == 512 and index["sources"] == [{"path": faces_zip.name, "kind": "zip"}]
    assert "non-commercial" in index["licence"]
    want = load_images(faces_zip, 16, cache_dir=tmp_path / "c", progress=False).astype(np.int16)
    got = load_images(small, 16, cache_dir=tmp_path / "c", progress=False).astype(np.int16)
    # the same faces in the same order, WebP-encoded once more (4:2:0 chroma at 16 px): a different face is
    # much further away
    diff = np.abs(got - want).mean(axis=(1, 2, 3))
    assert diff.mean() < 8.0 and (np.abs(got - want[::-1]).mean(axis=(1, 2, 3)) > 2 * diff).mean() > 0.95

    faces = load_images(faces_zip, 32, cache_dir=tmp_path / "c", progress=False)[:20]
    np.save(tmp_path / "faces.npy", faces)
    arr = tmp_path / "from-npy.zip"
    argv = ["prepare-data", str(tmp_path / "faces.npy"), "--res", "32", "--out", str(arr), "--quiet"]
    assert main([*argv, "--lossless"]) == 0
    index = json.loads(zipfile.ZipFile(arr).read("index.json"))
    assert index["count"] == 20 and index["sources"][0]["kind"] == "array"
    assert np.array_equal(load_images(arr, 32, cache_dir=tmp_path / "c", progress=False), faces)

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    rows = faces.transpose(0, 3, 1, 2).reshape(20, 3072)  # CIFAR's layout: 1024 R, then G, then B
    batch = {b"data": rows, b"labels": [1, 3] * 10}
    (cifar / "data_batch_1").write_bytes(pickle.dumps(batch))
    cars = tmp_path / "cars.zip"
    argv = ["prepare-data", str(cifar), "--cifar-class", "car", "--res", "32", "--out", str(cars)]
    assert main([*argv, "--lossless", "--quiet"]) == 0
    index = json.loads(zipfile.ZipFile(cars).read("index.json"))
    assert index["count"] == 10 and index["licence"].startswith("CIFAR-10")
    assert np.array_equal(load_images(cars, 32, cache_dir=tmp_path / "c", progress=False), faces[::2])


def test_bad_archives_get_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no faces here")
    with pytest.raises(DataError, match="holds no images"):
        find_source(empty)
    assert main(["train", "--data", str(empty), "--preset", "tiny", "--quiet"]) == 2
    assert "holds no images" in capsys.readouterr().err
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really")
    with pytest.raises(DataError, match="not a readable zip"):
        find_source(broken)
    from PIL import Image

    wide = tmp_path / "wide.zip"
    img = tmp_path / "w.png"
    Image.new("RGB", (40, 20)).save(img)
    with zipfile.ZipFile(wide, "w") as zf:
        zf.write(img, "img/0.png")
    with pytest.raises(DataError, match="must be square"):
        load_images(wide, 16, cache_dir=tmp_path / "c", progress=False)


def test_threaded_in_order_keeps_order_and_draws_a_chunk_ahead() -> None:
    """Results in the items' order; the items are drawn a chunk at a time (never all at once: 30k decoded
    faces would not fit); an item's exception reaches the caller at that item."""
    import time

    from trainer.data import threaded_in_order

    drawn: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10):
            drawn.append(i)
            yield i

    def slow_square(i: int) -> int:
        time.sleep(0.01 * (i % 3))  # later items finish first inside a chunk
        if i == 7:
            raise ValueError("item 7")
        return i * i

    got = threaded_in_order(slow_square, items(), chunk=3, workers=4)
    assert [next(got) for _ in range(4)] == [0, 1, 4, 9] and drawn == [0, 1, 2, 3, 4, 5]
    assert [next(got), next(got), next(got)] == [16, 25, 36]
    with pytest.raises(ValueError, match="item 7"):
        next(got)


def test_archives_and_decodes_are_the_same_on_any_number_of_threads(
    faces_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare-data encodes and load_images decodes on a pool of threads, a chunk at a time: the archive
    (every member's bytes, in order, and the index) and the decoded array are those of one thread, an
    unreadable file among the faces skipped at its place in both."""
    import trainer.data as data

    folder = tmp_path / "faces"
    folder.mkdir()
    for f in sorted(faces_dir.iterdir())[:300]:
        (folder / f.name).symlink_to(f)
    (folder / f"{sorted(faces_dir.iterdir())[150].stem}b.jpg").write_bytes(b"not a jpeg")
    archives = []
    for workers in ("1", "3"):
        out = tmp_path / f"w{workers}.zip"
        argv = ["prepare-data", str(folder), "--res", "32", "--out", str(out), "--quiet"]
        assert main([*argv, "--workers", workers]) == 0
        with zipfile.ZipFile(out) as zf:
            archives.append([(i.filename, zf.read(i)) for i in zf.infolist()])
    assert archives[0] == archives[1] and len(archives[0]) == 301  # 300 faces and the index
    index = json.loads(archives[0][-1][1])
    assert index["count"] == 300 and index["skipped"] == 1
    decoded, threaded = [], data.threaded_in_order
    for workers, chunk in ((1, 256), (3, 7)):  # one thread, and three on chunks that cut the files unevenly
        monkeypatch.setattr(data, "WORKERS", workers)
        monkeypatch.setattr(data, "threaded_in_order", functools.partial(threaded, chunk=chunk))
        decoded.append(load_images(folder, 16, cache_dir=tmp_path / f"c{workers}", progress=False))
    assert decoded[0].shape == (300, 16, 16, 3) and np.array_equal(decoded[0], decoded[1])


def test_prepare_data_bad_input(faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare-data", str(faces_dir), "--res", "32", "--out", str(tmp_path / "x.tar")]) == 2
    assert "must end in .zip" in capsys.readouterr().err
    assert (
        main(["prepare-data", str(tmp_path / "nowhere"), "--res", "32", "--out", str(tmp_path / "x.zip")])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    argv = ["prepare-data", str(faces_dir), "--res", "32", "--out", str(tmp_path / "x.zip")]
    assert main([*argv, "--workers", "0"]) == 2
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()


def _damage(archive: Path, how: str) -> str:
    """Damage a copy of a prepare-data archive in place as `how` says; return what its error must say."""
    if how.startswith("non-image"):
        name = "img/000000.webp" if how == "non-image first" else "img/zz-notes.webp"  # sorts first, last
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr(name, "notes, not a face")
        return f"member {name} is not an image"
    data = bytearray(archive.read_bytes())
    if how == "bad CRC":  # past the 64 members honest_max_res opens: the threaded decode reads it
        info = sorted(zipfile.ZipFile(archive).infolist(), key=lambda i: i.filename)[100]
        at = info.header_offset
        name_len, extra_len = struct.unpack("<HH", data[at + 26 : at + 30])  # the local header's
        data[at + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
        archive.write_bytes(data)
        return f"member {info.filename} cannot be read (Bad CRC-32"
    if how == "first part missing":  # a split archive joined without its first part
        archive.write_bytes(data[len(data) // 2 :])
        return "cannot be read"
    archive.write_bytes(data[: len(data) // 2])  # cut short: its last part missing
    return "is not a readable zip archive"


@pytest.mark.parametrize(
    "how", ["non-image first", "non-image past the probe", "bad CRC", "first part missing", "cut short"]
)
def test_a_damaged_archive_gets_a_clear_error(
    how: str, faces_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "faces.zip"
    shutil.copy(faces_zip, archive)
    says = _damage(archive, how)
    out, cache = tmp_path / "runs", tmp_path / "cache"
    argv = ["train", "--data", str(archive), "--preset", "tiny", "--max-res", "16", "--quiet"]
    assert main([*argv, "--out", str(out), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {archive}") and says in err, err
    assert "make it again with prepare-data" in err and "sha256" in err  # what to do about it
    assert not out.exists() and not any(cache.rglob("*.npy"))  # no run folder, no half-decoded cache
    assert not any(cache.rglob("*.tmp"))  # nor the file it was decoding into


def test_an_archive_below_max_res_needs_allow_upscale(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "faces-16.zip"
    argv = ["prepare-data", str(faces_dir), "--res", "16", "--limit", "16", "--out", str(small), "--quiet"]
    assert main(argv) == 0
    out = tmp_path / "runs"
    argv = [
        "train",
        "--data",
        str(small),
        "--preset",
        "tiny",
        "--max-res",
        "32",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"32x32 is more than {small} can honestly give: its crops are 16px" in err, err
    assert "--allow-upscale" in err and not out.exists()


# ---------------------------------------------------------------------------- the planner


def test_plan_fits_the_budget_and_gives_the_rest_to_the_last_phase() -> None:
    net_kw, train_kw = preset("gpu")
    net, cfg = NetConfig(max_res=64, **net_kw), TrainConfig(**train_kw)
    rates = {4: 5000.0, 8: 4000.0, 16: 2500.0, 32: 1500.0, 64: 600.0}
    planned = plan_to_fit(net, cfg, Probe(rates), seconds=500.0, grow_fraction=0.4)
    phases = schedule(net, planned)
    seconds = [p.kimg * 1000 / rates[p.res] for p in phases]
    usable = (500.0 - 10.0) * 0.95
    assert sum(seconds) == pytest.approx(usable, rel=1e-3)
    assert seconds[-1] == pytest.approx(0.6 * usable, rel=1e-3)
    assert len({round(p.kimg, 3) for p in phases[:-1]}) == 1  # equal kimg for every growing phase
    with pytest.raises(BudgetError, match="too short"):
        plan_to_fit(net, cfg, Probe(rates), seconds=12.0)
    with pytest.raises(BudgetError, match="grow-fraction"):
        plan_to_fit(net, cfg, Probe(rates), seconds=500.0, grow_fraction=1.5)


def test_plan_charges_each_phase_its_set_up() -> None:
    """A phase's first steps cost more than the steady rate (--compile compiles its forms of G and D, a
    --cuda-graph captures): the probe ran each resolution's first phase, whose forms are then kept, so
    every later phase (the stabilisation after each fade) pays the probe's figure out of the budget."""
    net_kw, train_kw = preset("gpu")
    net, cfg = NetConfig(max_res=64, **net_kw), TrainConfig(**train_kw)
    rates = {4: 5000.0, 8: 4000.0, 16: 2500.0, 32: 1500.0, 64: 600.0}
    probe = Probe(rates, {4: 3.0, 8: 5.0, 16: 7.0, 32: 11.0, 64: 13.0})
    phases = schedule(net, cfg)
    assert [(p.res, p.kind) for p in phases][:3] == [(4, "stab"), (8, "fade"), (8, "stab")]
    assert probe.charged(phases) == [0.0, 0.0, 5.0, 0.0, 7.0, 0.0, 11.0, 0.0, 13.0]
    planned = schedule(net, plan_to_fit(net, cfg, probe, seconds=500.0))
    steps = sum(p.kimg * 1000 / rates[p.res] for p in planned)
    assert steps == pytest.approx((500.0 - 10.0 - 36.0) * 0.95, rel=1e-3)
    with pytest.raises(BudgetError, match="36 s of it for the phases' set-up"):
        plan_to_fit(net, cfg, probe, seconds=40.0)


def test_minutes_run_plans_and_stops_at_its_deadline(
    faces_zip: Path, cache_dir: Path, tmp_path: Path
) -> None:
    import time

    args = ["train", "--data", str(faces_zip), "--preset", "tiny", "--max-res", "16", "--quiet"]
    t = time.monotonic()
    rc = main(
        [
            *args,
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(cache_dir),
            "--minutes",
            "0.75",
            "--tick-kimg",
            "0.5",
        ]
    )
    took = time.monotonic() - t
    assert rc == 0
    assert took < 45 + 15  # the budget, plus the last save and process noise
    (run,) = tmp_path.iterdir()
    plan = (run / "plan.txt").read_text()
    assert "img/s" in plan and "minutes" in plan
    ck = Checkpoint.load(run)  # a valid checkpoint wherever it stopped (a busy machine may not reach 16x16)
    res = ck.res
    assert (run / f"G_ema-{res:04d}.pt").exists() and any((run / "grids").glob(f"end-res{res:04d}-*.png"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data_index"]["resolution"] == 32 and cfg["train"]["last_kimg"] > cfg["train"]["fade_kimg"]
    # a deadline cuts a resumed run short, cleanly
    assert main(["train", "--quiet", "--resume", str(run), "--extend-kimg", "1000", "--minutes", "0.1"]) == 0
    after = Checkpoint.load(run)
    assert after.cur_nimg > ck.cur_nimg and (run / f"G_ema-{after.res:04d}.pt").exists()
    assert main([*args, "--out", str(tmp_path), "--minutes", "-1"]) == 2


def test_a_plan_that_ends_early_trains_on_to_its_deadline(
    faces_zip: Path,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A probe that under-rates the machine (a busy moment, forms the run then finds compiled) plans a
    schedule that ends long before the deadline: the final stabilisation trains on at its own pace until
    the deadline, less the time kept for the final save, and the checkpoint's schedule says how far
    (extra_kimg), so that it resumes as any other run."""
    import time

    import trainer.budget as budget
    from tests.trainer.under_rated import under_rated

    monkeypatch.setattr(budget, "probe_throughput", under_rated)
    args = ["train", "--data", str(faces_zip), "--preset", "tiny", "--max-res", "8", "--quiet"]
    t = time.monotonic()
    argv = [*args, "--out", str(tmp_path), "--cache-dir", str(cache_dir), "--minutes", "0.75"]
    assert main([*argv, "--tick-kimg", "0.5"]) == 0
    took = time.monotonic() - t
    (run,) = tmp_path.iterdir()
    ck = Checkpoint.load(run)

    def end_kimg(
        train: TrainConfig,
    ) -> float:  # where the loop ends the schedule (plan.txt rounds to 0.1 kimg)
        phases = schedule(ck.net, train)
        return phase_start_nimg(phases, len(phases)) / 1000

    planned, extended = end_kimg(dataclasses.replace(ck.train, extra_kimg=0.0)), end_kimg(ck.train)
    extra, done = ck.train.extra_kimg, (ck.cur_nimg or 0) / 1000
    # trained on past the plan (at a quarter of the probed rates, it ends long before the deadline), and
    # stopped by the deadline or at the end of the schedule as extended; the extension is the last phase's
    # pace times the time left, so a machine that slows down after it (other work on its cores) stops at
    # the deadline short of that end, as any run does
    assert extra > 0 and done > planned
    stopped = capsys.readouterr().out
    assert "time budget of 0.75 minutes reached" in stopped or done >= extended
    # the schedule's end moves to within a few seconds of the deadline less the final save's time
    assert 45 - budget.FINAL_SAVE_S - 10 < took < 45 + 15
    wall = [json.loads(x)["wall_s"] for x in (run / "stats.jsonl").read_text().splitlines()]
    assert wall[0] > 0 and wall == sorted(wall) and wall[-1] < took  # seconds since the command began
    setup = json.loads((run / "setup.json").read_text())
    assert list(setup)[:3] == ["data", "networks", "probe"]
    # the probe's seconds per resolution, in the parts a fresh process pays once and the timed steps
    parts = setup["probe_parts"]
    assert sorted(parts, key=int) == [str(r) for r in sorted({p.res for p in schedule(ck.net, ck.train)})]
    assert all(list(v) == ["upload", "first_step", "warm_up", "steps"] for v in parts.values())
    assert 0 < sum(x for v in parts.values() for x in v.values()) <= setup["probe"]


def test_dry_run_with_minutes_prints_this_machines_plan(
    faces_zip: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(faces_zip), "--preset", "tiny", "--max-res", "16", "--quiet"]
    out = tmp_path / "runs"
    assert main([*args, "--out", str(out), "--cache-dir", str(cache_dir), "--dry-run", "--minutes", "2"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("phase   res") :].splitlines()
    assert "img/s" in table[0] and "minutes" in table[0]
    rows = [line.split() for line in table[1:-1]]
    assert [r[1] for r in rows] == ["4", "8", "8", "16", "16"]
    assert all(float(r[-1]) > 0 and float(r[-3]) > 0 for r in rows)  # img/s and minutes per phase
    # set-up: none where the probe ran a resolution's first phase, its figure for the stabilisations after
    assert [float(rows[i][-2]) for i in (0, 1, 3)] == [0, 0, 0] and min(float(r[-2]) for r in rows) >= 0
    planned = float(table[-1].split(",")[1].split()[0])  # "total … kimg, M minutes of steps and set-up"
    assert 1.0 < planned < 2.0  # the steps fit the budget, less set-up and the final save
    assert not out.exists()  # a dry run writes no run folder


def test_minutes_too_short_for_the_first_phase(
    faces_zip: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(faces_zip), "--preset", "tiny", "--max-res", "16", "--quiet"]
    out = tmp_path / "runs"
    assert main([*args, "--out", str(out), "--cache-dir", str(cache_dir), "--minutes", "0.002"]) == 2
    err = capsys.readouterr().err
    assert "--minutes" in err and ("too short" in err or "no time to train" in err)
    assert not out.exists() or not any(out.glob("*/checkpoint.pt"))


def test_a_probe_slower_than_the_budget_stops_at_the_deadline(
    faces_zip: Path,
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe that takes longer than --minutes (a large network on a CPU, compiling on a GPU) stops when
    the time is up with the message, rather than finishing every resolution first and then saying so."""
    import time

    import trainer.budget as budget
    from trainer.loop import LoopStep

    step = LoopStep.__call__

    def slow(self: LoopStep, alpha: float) -> object:
        time.sleep(1.0)
        return step(self, alpha)

    monkeypatch.setattr(LoopStep, "__call__", slow)  # 12 steps a resolution: 36 s for 4, 8 and 16 px
    monkeypatch.setattr(budget, "FINAL_SAVE_S", 0.0)
    args = ["train", "--data", str(faces_zip), "--preset", "tiny", "--max-res", "16", "--quiet"]
    out = tmp_path / "runs"
    began = time.monotonic()
    assert main([*args, "--out", str(out), "--cache-dir", str(cache_dir), "--minutes", "0.1"]) == 2
    took = time.monotonic() - began
    err = capsys.readouterr().err
    assert "no time to train" in err and "into the throughput probe" in err, err
    assert "throughput probe:" not in err  # --quiet: no probe bar either
    assert took < 20, took  # the 6 s budget and a step past it, not the whole probe
    assert not out.exists()


def test_two_ranks_share_one_plan_and_one_deadline(faces_dir: Path, tmp_path: Path) -> None:
    """Under DDP every rank follows rank 0's plan and all stop at the same step when time is up (a rank
    that stopped alone would leave the others hanging in an all-reduce); with a probe that under-rates the
    machine, the plan ends early and both ranks train on to the deadline by rank 0's reckoning. Its own
    decode cache: an 8x8 cache decoded directly differs from one box-downscaled from 16x16, and the
    shared one must hold the latter for the exact-resume test."""
    cache_dir = tmp_path / "cache"
    out = tmp_path / "runs"
    import os

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
        str(REPO / "tests/trainer/under_rated.py"), "train", "--data", str(faces_dir), "--preset", "tiny",
        "--max-res", "8", "--out", str(out), "--cache-dir", str(cache_dir), "--quiet", "--minutes", "0.5",
        "--tick-kimg", "0.5",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = out.iterdir()
    ck = Checkpoint.load(run)
    assert (run / "plan.txt").exists() and ck.res == 8
    assert ck.train.extra_kimg > 0  # the final stabilisation went on past the plan


# ---------------------------------------------------------------------------- models that train further


def test_a_grown_model_decodes_no_resolution_below_its_start(
    tiny_model_dir: Path, faces_dir: Path, tmp_path: Path
) -> None:
    """Growing a 16 px model to 32 trains at 16 and 32 only: the data cache holds those two resolutions and
    none of the 4 and 8 px ones a fresh run needs (at 256 px, the 128 px level alone is 1 GB to average)."""
    cache = tmp_path / "cache"
    rc = main(
        [
            "train", "--resume", str(tiny_model_dir), "--data", str(faces_dir), "--preset", "tiny",
            "--max-res", "32", "--out", str(tmp_path / "runs"), "--cache-dir", str(cache), "--quiet",
            "--max-steps", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in cache.glob("*/*.npy")) == ["16-box32.npy", "32.npy"]


def test_a_resumed_model_switches_to_the_fused_layers(
    tiny_model_dir: Path,
    faces_dir: Path,
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fused layers hold the same parameters, so a model trained unfused (the shipped one's rounds 1-4)
    can train on fused (`--fused-scale`, about 2x the images a second at 256 px on an H200) and back; a
    resume keeps the checkpoint's form unless told. New `gpu` runs are fused; `--no-fused-scale` is not."""
    assert not Checkpoint.load(tiny_model_dir).net.fused_scale
    argv = ["train", "--resume", str(tiny_model_dir), "--data", str(faces_dir), "--preset", "tiny", "--quiet"]
    argv += ["--max-steps", "2", "--cache-dir", str(cache_dir)]
    assert main([*argv, "--fused-scale", "--out", str(tmp_path / "fused")]) == 0
    assert "--fused-scale: the checkpoint's network trains fused from here" in capsys.readouterr().err
    (run,) = (tmp_path / "fused").iterdir()
    ck = Checkpoint.load(run)
    assert ck.net.fused_scale and ck.steps == 2
    assert main(["train", "--resume", str(run), "--quiet", "--extend-kimg", "0.016"]) == 0  # stays fused
    assert Checkpoint.load(run).net.fused_scale and "fused-scale" not in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--quiet", "--extend-kimg", "0.016", "--no-fused-scale"]) == 0
    assert not Checkpoint.load(run).net.fused_scale and "trains unfused" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # a torchrun rank but the first switches as quietly
    assert main(["train", "--resume", str(run), "--quiet", "--extend-kimg", "0.016", "--fused-scale"]) == 0
    assert Checkpoint.load(run).net.fused_scale and "fused-scale" not in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    assert main([*argv, "--out", str(tmp_path / "kept")]) == 0
    (run,) = (tmp_path / "kept").iterdir()
    assert not Checkpoint.load(run).net.fused_scale

    new = ["train", "--data", str(faces_dir), "--preset", "gpu", "--max-res", "16", "--dry-run"]
    for extra, fused in (([], True), (["--no-fused-scale"], False)):
        assert main([*new, *extra]) == 0
        out = capsys.readouterr().out
        assert json.loads(out[out.index("{") : out.index("\n}\n") + 2])["net"]["fused_scale"] is fused


def test_fused_switch_scores_a_checkpoint_in_both_forms(
    tiny_run: Path, faces_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """scripts/fused_switch.py: how far an unfused checkpoint's D moves in the fused form, on real faces and
    its G's; G's two forms agree; bad input is a message and exit 2."""
    script = [sys.executable, str(REPO / "scripts" / "fused_switch.py")]
    args = ["--data", str(faces_dir), "--cache-dir", str(cache_dir)]
    out = subprocess.run([*script, str(tiny_run), *args, "--num", "8"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    diff = float(out.stdout.split("largest difference ")[1].split()[0])
    assert diff < 1e-4
    rows = [
        r.split("|")[1:-1] for r in out.stdout.splitlines() if r.startswith("| real") or r.startswith("| gen")
    ]
    assert len(rows) == 2 and all(-1.0 <= float(r[5]) <= 1.0 for r in rows)
    bad = subprocess.run([*script, str(tiny_run), *args, "--num", "6"], capture_output=True, text=True)
    assert bad.returncode == 2 and "multiple of 4" in bad.stderr
    bad = subprocess.run([*script, str(tmp_path), *args], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_d_level_scores_the_saved_d_and_follows_it_step_by_step(
    tiny_run: Path, tiny_model_dir: Path, faces_dir: Path, cache_dir: Path
) -> None:
    """scripts/d_level.py: the saved D's scores of a fixed minibatch, then eager steps from the run's own Adam
    state that move them; the run folder is left as it was; bad input is a message and exit 2."""
    script = [sys.executable, str(REPO / "scripts" / "d_level.py")]
    args = ["--data", str(faces_dir), "--cache-dir", str(cache_dir), "--num", "16"]
    saved = (tiny_run / "checkpoint.pt").read_bytes()
    out = subprocess.run([*script, str(tiny_run), *args, "--steps", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "16x16 stab" in out.stdout and "the run's Adam state" in out.stdout
    table = [r.split("|")[1:-1] for r in out.stdout.splitlines() if r.startswith("| cpu")]
    assert len(table) == 1  # no device here: the CPU's fp32 row alone
    real, fake, gap = (float(v) for v in table[0][1:])
    assert abs(real - fake - gap) < 2e-3
    steps = [
        [float(v) for v in r.split("|")[1:-1]]
        for r in out.stdout.splitlines()
        if r[:3] in ("| 1", "| 2", "| 3")
    ]
    assert [int(r[0]) for r in steps] == [1, 2, 3] and all(np.isfinite(r).all() for r in steps)
    assert (steps[-1][4], steps[-1][5]) != (real, fake)  # the steps trained D: the fixed minibatch moved
    assert (tiny_run / "checkpoint.pt").read_bytes() == saved
    for argv, message in (
        ([str(tiny_model_dir), *args], "not a run's checkpoint"),
        ([str(tiny_run), *args, "--num", "6"], "multiple of 4"),
        ([str(tiny_run), *args, "--steps", "-1"], "0 or more"),
    ):
        bad = subprocess.run([*script, *argv], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_export_writes_a_checkpoint_that_grows(
    tiny_model_dir: Path, faces_dir: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tiny_model_dir / MODEL_CHECKPOINT
    assert ckpt.exists()
    ck = Checkpoint.load(tiny_model_dir)
    assert ck.is_model and ck.res == 16 and not ck.opt
    assert all(t.dtype == torch.float32 for t in ck.nets["G"].values())
    rc = main(
        [
            "train", "--resume", str(tiny_model_dir), "--data", str(faces_dir), "--preset", "tiny",
            "--max-res", "32", "--out", str(tmp_path), "--cache-dir", str(cache_dir), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    (run,) = tmp_path.iterdir()
    grown = Checkpoint.load(run)
    assert grown.res == 32 and "blocks.b32.conv0.weight" in grown.nets["G"]
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert rows[0]["res"] == 16 and rows[-1]["res"] == 32  # restabilised at 16, then faded in 32
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resumed_from"].endswith(MODEL_CHECKPOINT) and cfg["net"]["z_dim"] == 32

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / MODEL_CHECKPOINT).unlink()
    assert main(["train", "--resume", str(bare), "--data", str(faces_dir), "--quiet"]) == 2
    assert "cannot be trained further" in capsys.readouterr().err
    assert main(["train", "--resume", str(tiny_model_dir), "--quiet"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["train", "--resume", str(tiny_model_dir), "--data", str(faces_dir), "--max-res", "8"]) == 2
    assert "can only grow" in capsys.readouterr().err


def test_packed_lease_checkpoint_round_trip(tiny_run: Path, tmp_path: Path) -> None:
    script = REPO / "scripts" / "gpu_checkpoint.py"
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(script), "pack", str(tiny_run), str(out)], check=True)
    parts = sorted(out.glob("ckpt.part*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    run = tmp_path / "00000-back"
    subprocess.run([sys.executable, str(script), "unpack", *map(str, parts), "--out", str(run)], check=True)
    a, b = Checkpoint.load(tiny_run), Checkpoint.load(run)
    for k in ("G", "D", "G_ema"):
        for name, t in a.nets[k].items():
            assert torch.equal(t.half().float(), b.nets[k][name])
    assert a.opt and not b.opt and b.opt_phase == -1  # Adam starts fresh at the resume
    assert (b.cur_nimg, b.steps, b.history, b.train_cfg) == (a.cur_nimg, a.steps, a.history, a.train_cfg)
    assert (run / "losses.png").stat().st_size > 1000  # drawn from the history: it does not travel
    assert all(torch.equal(x, y) for x, y in zip(a.rng["gen_ranks"], b.rng["gen_ranks"], strict=True))
    assert main(["train", "--quiet", "--resume", str(run), "--extend-kimg", "0.016"]) == 0
    (out / "ckpt.part0").write_bytes(b"damaged")
    bad = subprocess.run(
        [sys.executable, str(script), "unpack", *map(str, parts), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "do not match" in bad.stderr
    snapshot = next(tiny_run.glob("G_ema-*.pt"))  # G_ema alone: nothing a resume could continue
    bad = subprocess.run(
        [sys.executable, str(script), "pack", str(snapshot), str(tmp_path / "y")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "what is packed is a run folder's checkpoint.pt" in bad.stderr
    assert not (tmp_path / "y").exists()


def test_lease_carry_parts_fit_each_call() -> None:
    from scripts import gpu_carry as carry

    limit, margin, tree, held = 20, 1, 5, 3  # early calls carry 2 bytes of checkout, the last one 5
    assert carry.plan_parts(10, tree, held, limit, margin) == [10]  # fits beside the whole checkout
    for archive in (15, 31, 32, 40, 100):
        parts = carry.plan_parts(archive, tree, held, limit, margin)
        assert sum(parts) == archive
        assert all(tree - held + p <= limit - margin for p in parts[:-1])
        assert tree + parts[-1] <= limit - margin
        assert len(parts) - 1 == -(-(archive - (limit - margin - tree)) // (limit - margin - tree + held))
    assert carry.plan_parts(40, tree, held, limit, margin) == [17, 17, 6]
    with pytest.raises(carry.CarryError, match="checkout alone"):
        carry.plan_parts(1, 25, 3, limit, margin)
    with pytest.raises(carry.CarryError, match="no room"):
        carry.plan_parts(30, 19, 0, limit, margin)


def lease_repo(tmp_path: Path) -> Path:
    """A checkout of 7,006 bytes, 6,000 of them a model's weights that the plans hold for the last call."""
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / ".gitignore").write_text(".gpu/\n")
    (repo / "models" / "weights.bin").write_bytes(bytes(6000))
    (repo / "README.md").write_text("x" * 1000)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def test_lease_carry_plan_joins_to_the_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scripts import gpu_carry as carry

    repo = lease_repo(tmp_path)
    archive = tmp_path / "faces.zip"
    archive.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    args = ["--repo", str(repo), "plan", str(archive), "--hold", "models/weights.bin"]
    assert carry.main([*args, "--limit-mib", str(12000 / 2**20), "--margin-mib", "0"]) == 0
    plan = json.loads((repo / ".gpu/lease/plan.json").read_text())
    assert plan["tree"] == 7000 + len(".gpu/\n") and plan["held"] == 6000
    # 10,994 bytes of archive beside the 1,006 that always travel, the rest in the second call, the last
    # call with the held file and nothing of the archive left
    assert [c["travels"] for c in plan["calls"]] == [12000, 1006 + 20000 - 10994, 7006]
    parts = sorted((repo / ".gpu/lease").glob("c*/data.part*"))
    assert b"".join(p.read_bytes() for p in parts) == archive.read_bytes()
    digest, joined = (repo / ".gpu/lease/c3/data.sha256").read_text().split()
    assert joined == "/tmp/faces.zip" and digest == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert "call 3" in capsys.readouterr().out

    assert carry.main(["--repo", str(repo), "aside"]) == 0
    assert not (repo / "models/weights.bin").exists() and (repo / ".gpu/hold/models/weights.bin").is_file()
    assert carry.main([*args]) == 2  # planned again while set aside: says so
    assert "run `back` first" in capsys.readouterr().err
    assert carry.main(["--repo", str(repo), "back"]) == 0
    assert carry.main(["--repo", str(repo), "back"]) == 0  # twice is harmless
    assert (repo / "models/weights.bin").read_bytes() == bytes(6000)
    assert carry.main([*args, "--limit-mib", str(5000 / 2**20)]) == 2
    assert "checkout alone" in capsys.readouterr().err
    shutil.copy(archive, repo / "faces.zip")
    assert carry.main(["--repo", str(repo), "plan", str(repo / "faces.zip")]) == 2
    assert "would travel in every call" in capsys.readouterr().err


def test_lease_carry_also_takes_whole_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--also files travel whole: in a call with room for them, else in one more call before the last; the
    archive's parts still join to it."""
    from scripts import gpu_carry as carry

    repo = lease_repo(tmp_path)
    archive, small, large = tmp_path / "faces.zip", tmp_path / "small.bin", tmp_path / "cache.bin"
    archive.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    small.write_bytes(b"s" * 3000)
    large.write_bytes(b"L" * 5000)
    args = ["--repo", str(repo), "plan", str(archive), "--hold", "models/weights.bin", "--margin-mib", "0"]
    assert carry.main([*args, "--limit-mib", str(12000 / 2**20), "--also", str(small), str(large)]) == 0
    plan = json.loads((repo / ".gpu/lease/plan.json").read_text())
    # the archive's parts as without --also (10,994 + 9,006 + 0); 5,000 bytes fit none of their calls' room
    # (0, 1,988, 4,994) and go in a call of their own before the last; 3,000 fit in the last
    assert [c["also"] for c in plan["calls"]] == [[], [], ["cache.bin"], ["small.bin"]]
    assert [c["travels"] for c in plan["calls"]] == [12000, 1006 + 9006, 1006 + 5000, 7006 + 3000]
    assert all(c["travels"] <= 12000 for c in plan["calls"])
    parts = sorted((repo / ".gpu/lease").glob("c*/data.part*"), key=lambda p: p.name)
    assert b"".join(p.read_bytes() for p in parts) == archive.read_bytes()
    assert (repo / ".gpu/lease/c3/cache.bin").read_bytes() == large.read_bytes()
    assert (repo / ".gpu/lease/c4/small.bin").read_bytes() == small.read_bytes()
    assert "cp .gpu/lease/c3/cache.bin /tmp/carry/" in plan["calls"][2]["command"]
    assert plan["calls"][3]["command"].endswith("DATA=/tmp/faces.zip <the round's command>")
    assert (repo / ".gpu/lease/c4/data.sha256").is_file() and "with small.bin" in capsys.readouterr().out
    assert carry.main([*args, "--limit-mib", str(12000 / 2**20), "--also", str(tmp_path / "no.bin")]) == 2
    assert "no file to carry" in capsys.readouterr().err
    assert carry.main([*args, "--limit-mib", str(9000 / 2**20), "--also", str(large), str(large)]) == 2
    assert "different names" in capsys.readouterr().err
    large.write_bytes(b"L" * 11000)
    assert carry.main([*args, "--limit-mib", str(12000 / 2**20), "--also", str(large)]) == 2
    assert "fits no call" in capsys.readouterr().err


# ---------------------------------------------------------------------------- CUDA paths, checked on CPU


def test_fade_under_bf16_autocast() -> None:
    """Under autocast the faded-out branch and the new one come back in different dtypes (upsampling runs
    in fp32): the lerp must not mix them (this failed on an H100)."""
    net = NetConfig(z_dim=16, max_res=16, fmap_base=64, fmap_max=16)
    G, D = build_networks(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(torch.randn(4, 16), 16, 0.5)
        score = D(img, 16, 0.5)
    assert img.shape == (4, 3, 16, 16) and torch.isfinite(score.float()).all()


def test_training_needs_no_jsonschema_or_pydantic(faces_dir: Path) -> None:
    """GPU machines carry only torch and friends: `train` must not import what export validates with."""
    code = (
        "import sys; sys.modules['jsonschema'] = None; sys.modules['pydantic'] = None; "
        "from trainer.cli import main; "
        f"sys.exit(main(['train', '--data', {str(faces_dir)!r}, '--preset', 'tiny', '--dry-run']))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_archive_with_an_image_of_another_size(
    faces_zip: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    mixed = tmp_path / "mixed.zip"
    shutil.copy(faces_zip, mixed)
    odd = tmp_path / "odd.webp"
    Image.new("RGB", (24, 24), (128, 90, 70)).save(odd)
    with zipfile.ZipFile(mixed, "a") as zf:
        zf.write(odd, "img/zz-odd.webp")
    with pytest.raises(DataError, match="zz-odd.webp is 24x24, but the archive's images are 32x32"):
        load_images(mixed, 16, cache_dir=tmp_path / "c", progress=False)
    out = tmp_path / "runs"
    argv = ["train", "--data", str(mixed), "--preset", "tiny", "--max-res", "16", "--quiet"]
    assert main([*argv, "--out", str(out), "--cache-dir", str(tmp_path / "c2")]) == 2
    assert "one archive holds one resolution" in capsys.readouterr().err
    assert not out.exists() or not any(out.glob("*/checkpoint.pt"))


def test_network_flags_that_contradict_the_checkpoint(
    tiny_model_dir: Path, tiny_run: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = (tiny_run / "checkpoint.pt").read_bytes()
    argv = ["train", "--resume", str(tiny_model_dir), "--data", str(faces_dir), "--quiet", "--fmap-max", "64"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another network" in err and "--fmap-max 64 (it has 16)" in err
    assert main(["train", "--resume", str(tiny_run), "--z-dim", "99", "--quiet"]) == 2
    assert "--z-dim 99 (it has 32)" in capsys.readouterr().err
    assert (tiny_run / "checkpoint.pt").read_bytes() == saved


def test_model_checkpoint_round_trip(tiny_run: Path, tmp_path: Path) -> None:
    from trainer.checkpoint import NETS

    ck = Checkpoint.load(tiny_run)
    path = tmp_path / MODEL_CHECKPOINT
    ck.save_model(path)
    back = Checkpoint.load(path)
    for net in NETS:
        assert back.nets[net].keys() == ck.nets[net].keys()
        for name, t in ck.nets[net].items():
            want = t.half().float() if t.is_floating_point() else t
            assert torch.equal(back.nets[net][name], want), f"{net}.{name}"
    for key in ("net", "res", "cur_nimg", "steps", "data", "num_images", "commit"):
        assert getattr(back, key) == getattr(ck, key), key
    for key in ("train_cfg", "data_index"):  # metadata is JSON: tuples come back lists
        assert getattr(back, key) == json.loads(json.dumps(getattr(ck, key))), key
    assert back.kimg == pytest.approx(ck.kimg) and back.is_model and not back.opt
    assert back.stored_position == back.position() == ck.position() is not None  # written, not worked out


def test_gpu_preset_checkpoint_at_256_fits_40_mb(tmp_path: Path) -> None:
    """The issue's size budget for a model folder's checkpoint: G, D and G_ema of the `gpu` network at 256
    in fp16, no optimizer state."""
    import copy

    net_kw, train_kw = preset("gpu")
    net = NetConfig(max_res=256, **net_kw)
    G, D = build_networks(net)
    ck = Checkpoint(
        net=net,
        res=256,
        nets={"G": G.state_dict(), "D": D.state_dict(), "G_ema": copy.deepcopy(G).state_dict()},
        train_cfg=TrainConfig(**train_kw).to_json(),
    )
    size = ck.save_model(tmp_path / MODEL_CHECKPOINT)
    assert size <= 40e6, f"{size / 1e6:.1f} MB"
