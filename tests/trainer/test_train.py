"""Training runs on real faces: outputs, resume, DDP, and every way a user can get it wrong."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.pyramid import one_reduction
from trainer.checkpoint import Checkpoint, SchedulePosition, load_generator
from trainer.cli import main
from trainer.data import downsample_box, find_source, load_images, load_pyramid


def _train(*args: str) -> int:
    return main(["train", "--preset", "tiny", "--quiet", *args])


def test_tiny_run_grows_to_16_with_outputs(tiny_run: Path) -> None:
    names = {p.name for p in tiny_run.iterdir()}
    assert {"checkpoint.pt", "config.json", "stats.jsonl", "losses.png", "reals.png", "grids", "tb"} <= names
    assert {"G_ema-0004.pt", "G_ema-0008.pt", "G_ema-0016.pt"} <= names
    rows = [json.loads(line) for line in (tiny_run / "stats.jsonl").read_text().splitlines()]
    assert [r["res"] for r in rows][-1] == 16 and {4, 8, 16} <= {r["res"] for r in rows}
    assert any(r["phase"] == "fade" and 0 < r["alpha"] < 1 for r in rows)
    # where the time before the steps went (no --minutes: no probe), in order, adding up to the total
    setup = json.loads((tiny_run / "setup.json").read_text())
    # of the data's seconds, the decode into the cache and the pyramid below it, unless another test's
    # run filled this cache first
    parts = setup.pop("data_parts", {})
    assert set(parts) <= {"decode", "downsample"} and sum(parts.values()) <= setup["data"]
    assert list(setup) == ["data", "networks", "files", "first_step", "steps_2_to_4", "total"]
    assert min(setup.values()) >= 0 and abs(sum(setup.values()) - 2 * setup["total"]) < 0.01
    assert setup["total"] < rows[-1]["wall_s"]
    grids = sorted(p.name for p in (tiny_run / "grids").iterdir())
    assert any("res0016" in g for g in grids) and any(g.startswith("end-res0008") for g in grids)
    lg = load_generator(tiny_run)
    assert lg.res == 16 and lg.z_dim == 32
    out = lg.G(torch.randn(2, 32), 16)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_dry_run_prints_schedule(capsys, faces_dir: Path) -> None:
    assert _train("--data", str(faces_dir), "--max-res", "32", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "fade" in out and "stab" in out and "total" in out and '"max_res": 32' in out


def test_paper_preset_schedule(capsys, faces_dir: Path) -> None:
    assert (
        main(
            [
                "train",
                "--data",
                str(faces_dir),
                "--preset",
                "paper",
                "--max-res",
                "256",
                "--dry-run",
                "--allow-upscale",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "800.0" in out and "total 10400.0 kimg" in out  # 800 + 2 * 800 * 6


def test_a_dry_run_refuses_what_the_run_would(capsys, faces_dir: Path) -> None:
    """--dry-run checks the data's honest resolution as the run would (CelebA's 140 px crops give 128)."""
    assert _train("--data", str(faces_dir), "--max-res", "256", "--dry-run") == 2
    assert "256x256 is more than" in capsys.readouterr().err
    assert _train("--data", str(faces_dir), "--max-res", "256", "--dry-run", "--allow-upscale") == 0


def test_a_finished_run_has_nothing_to_train_and_a_continued_one_keeps_its_first_config(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resuming a run that finished its schedule (or its --max-steps) is an error saying how to go on, with
    nothing of the run folder rewritten; a continued run keeps its first start's config.json (where it
    began) with its schedule as now and a line per continuation."""
    # its own image cache, the resume's too: faces decoded straight at 4 px differ from the 4 px level that
    # other tests' pyramids box-average down from 16 or 32, and a shared cache keeps whichever came first
    cache = tmp_path / "cache"
    common = ["--data", str(faces_dir), "--max-res", "4", "--first-kimg", "0.016", "--cache-dir", str(cache)]
    assert _train(*common, "--out", str(tmp_path / "runs")) == 0
    (run,) = (tmp_path / "runs").iterdir()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert _train("--resume", str(run)) == 2
    err = capsys.readouterr().err
    assert "finished its schedule at 0.016 kimg: nothing to train" in err and "--extend-kimg K" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    first = json.loads(before["config.json"])
    assert first["resumed_from"] is None and "resumes" not in first
    assert _train("--resume", str(run), "--extend-kimg", "0.016", "--cache-dir", str(cache)) == 0
    config = json.loads((run / "config.json").read_text())
    (again,) = config["resumes"]
    assert again["from_kimg"] == 0.016 and again["commit"] == first["commit"] and again["date"].endswith("Z")
    assert config["train"]["extra_kimg"] == 0.016 and config["resumed_from"] is None
    assert {k: v for k, v in config.items() if k not in ("train", "resumes")} == {
        k: v for k, v in first.items() if k != "train"
    }
    assert _train("--resume", str(run), "--extend-kimg", "0.016", "--max-steps", "2") == 2
    assert "took its 2 steps (--max-steps)" in capsys.readouterr().err


def test_resume_mid_fade_is_exact(faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    common = ["--data", str(faces_dir), "--max-res", "16", "--cache-dir", str(cache_dir)]
    assert _train(*common, "--out", str(tmp_path / "a"), "--max-steps", "10") == 0
    assert _train(*common, "--out", str(tmp_path / "b"), "--max-steps", "5") == 0
    (run_b,) = (tmp_path / "b").iterdir()
    assert 0 < Checkpoint.load(run_b).cur_nimg < 32 * 2  # stopped inside the 8x8 fade
    assert _train("--resume", str(run_b), "--max-steps", "10") == 0
    (run_a,) = (tmp_path / "a").iterdir()
    a, b = Checkpoint.load(run_a), Checkpoint.load(run_b)
    assert a.steps == b.steps == 10 and a.cur_nimg == b.cur_nimg
    for key in ("G", "D", "G_ema"):
        for name, t in a.nets[key].items():
            assert torch.equal(t, b.nets[key][name]), f"{key}.{name} differs after resume"


def test_dcgan_baseline_uses_the_same_loop(faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "train",
                "--data",
                str(faces_dir),
                "--preset",
                "tiny",
                "--arch",
                "dcgan",
                "--max-res",
                "16",
                "--out",
                str(tmp_path),
                "--cache-dir",
                str(cache_dir),
                "--quiet",
                "--max-steps",
                "6",
            ]
        )
        == 0
    )
    (run,) = tmp_path.iterdir()
    assert (run / "grids").is_dir() and (run / "losses.png").exists()
    assert load_generator(run).arch == "dcgan"


def test_logistic_r1_spectral_norm_and_label_smoothing(
    faces_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    assert (
        _train(
            "--data",
            str(faces_dir),
            "--max-res",
            "8",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(cache_dir),
            "--loss",
            "logistic",
            "--spectral-norm",
            "--label-smoothing",
            "0.1",
            "--max-steps",
            "4",
        )
        == 0
    )
    (run,) = tmp_path.iterdir()
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert "r1" in rows[-1]


# ---------------------------------------------------------------------------- data


def test_cache_is_uint8_memmap_and_reused(faces_dir: Path, cache_dir: Path) -> None:
    a = load_images(faces_dir, 16, cache_dir=cache_dir)
    assert a.dtype == np.uint8 and a.shape == (512, 16, 16, 3) and isinstance(a, np.memmap)
    b = load_images(faces_dir, 16, cache_dir=cache_dir)
    assert np.array_equal(a, b)
    assert find_source(faces_dir).kind == "celeba"


def test_box_downscale_is_the_rounded_2x2_mean(faces_dir: Path, tmp_path: Path) -> None:
    """The pyramid's 2x2 box average, a chunk of images at a time on threads: each pixel the mean of its four,
    rounded half up, the same as one reduction over the whole array; a chunk size that does not divide the
    count and a memmap source change nothing, and a cache's lower resolution is the one above averaged."""
    faces = load_images(faces_dir, 32, cache_dir=tmp_path)
    want = one_reduction(faces)  # the form the pyramid had before, which bench/pyramid.py times against
    for chunk in (1, 100, 256, 4096):
        assert np.array_equal(downsample_box(faces, chunk=chunk), want)
    quad = np.array([[[[1], [2]], [[2], [2]]]], dtype=np.uint8)  # 7 / 4 = 1.75 -> 2; 6 / 4 = 1.5 -> 2
    assert downsample_box(quad).item() == 2 and downsample_box(quad - 1).item() == 1  # 3 / 4 -> 1
    assert np.array_equal(load_images(faces_dir, 16, top=32, cache_dir=tmp_path), downsample_box(faces))


def test_a_resolutions_pixels_do_not_depend_on_what_the_cache_held(faces_dir: Path, tmp_path: Path) -> None:
    """A run's lower resolutions are halvings of its top one and a single resolution asked for alone is decoded
    straight to it, whatever the cache held before: the 8 px faces of a 32 px pyramid are the same on a fresh
    machine as on one that decoded 8 px faces first (an evaluation) or a 16 px pyramid, which an exact resume
    on another machine needs. Each form has its own cache file."""
    fresh = load_pyramid(faces_dir, 32, min_res=8, cache_dir=tmp_path / "fresh", progress=False)
    used = tmp_path / "used"
    direct = load_images(faces_dir, 8, cache_dir=used, progress=False)
    small = load_pyramid(faces_dir, 16, min_res=8, cache_dir=used, progress=False)
    again = load_pyramid(faces_dir, 32, min_res=8, cache_dir=used, progress=False)
    for r in (32, 16, 8):
        assert np.array_equal(again[r], fresh[r]), r
    assert np.array_equal(fresh[8], downsample_box(downsample_box(fresh[32])))
    assert not np.array_equal(direct, fresh[8])  # Lanczos from the photo is another image than box averages
    assert np.array_equal(small[8], downsample_box(small[16]))
    assert np.array_equal(load_images(faces_dir, 8, cache_dir=used, progress=False), direct)
    (root,) = used.iterdir()
    assert sorted(p.name for p in root.glob("*.npy")) == [
        "16-box32.npy", "16.npy", "32.npy", "8-box16.npy", "8-box32.npy", "8.npy"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not a power-of-two halving"):
        load_images(faces_dir, 12, top=32, cache_dir=used)


def test_unreadable_and_greyscale_files(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / "sub" / "grey.webp")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    arr = load_images(folder, 32, cache_dir=tmp_path / "cache", progress=False)
    assert arr.shape == (4, 32, 32, 3)  # the cache file was made for 5: the 4 saved instead
    assert not any((tmp_path / "cache").rglob("*.tmp"))


def test_cifar_batches_with_class_filter(tmp_path: Path) -> None:
    import pickle

    rng = np.random.default_rng(0)
    for i in (1, 2):
        batch = {b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": [1, 3] * 5}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    cars = load_images(tmp_path, 32, cache_dir=tmp_path / "c", cifar_class="car", progress=False)
    assert cars.shape == (10, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown CIFAR-10 class"):
        load_images(tmp_path, 32, cache_dir=tmp_path / "c", cifar_class="unicorn")


def test_npz_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((6, 3, 8, 8), dtype=np.uint8))
    assert load_images(tmp_path / "x.npz", 8, cache_dir=tmp_path / "c", progress=False).shape == (6, 8, 8, 3)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/faces"], "does not exist"),
        (["--data", "{empty}"], "no images"),
        (["--data", "{faces}", "--max-res", "48"], "power of two"),
        (["--data", "{faces}", "--max-res", "256"], "more than"),
        (["--data", "{faces}", "--preset", "nope"], "unknown preset"),
        (["--resume", "{corrupt}"], "corrupt"),
        (["--resume", "/nonexistent/checkpoint.pt"], "does not exist"),
    ],
)
def test_bad_input_clear_message_nonzero_exit(args, message, faces_dir, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    subst = {
        "{empty}": str(tmp_path / "empty"),
        "{faces}": str(faces_dir),
        "{corrupt}": str(tmp_path / "corrupt.pt"),
    }
    args = [subst.get(a, a) for a in args]
    argv = ["train", "--quiet", "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "c"), *args]
    if "--preset" not in args:
        argv += ["--preset", "tiny"]
    assert main(argv) != 0
    assert message in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_checkpoint(faces_dir, cache_dir, tmp_path, capsys) -> None:
    assert (
        _train(
            "--data",
            str(faces_dir),
            "--max-res",
            "8",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(cache_dir),
            "--max-steps",
            "3",
        )
        == 0
    )
    (run,) = tmp_path.iterdir()
    ck = Checkpoint.load(run)
    for t in ck.nets["D"].values():  # a diverged critic: its scores, and so the losses, become NaN
        t.fill_(float("nan"))
    ck.save(run / "checkpoint.pt")
    saved = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--quiet", "--resume", str(run), "--max-steps", "6"]) != 0
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "last good checkpoint" in err
    assert (run / "checkpoint.pt").read_bytes() == saved  # nothing overwritten


def test_full_disk_never_leaves_a_broken_checkpoint(
    faces_dir, cache_dir, tmp_path, capsys, monkeypatch
) -> None:
    import trainer.checkpoint as ck

    assert (
        _train(
            "--data",
            str(faces_dir),
            "--max-res",
            "8",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(cache_dir),
            "--max-steps",
            "2",
        )
        == 0
    )
    (run,) = tmp_path.iterdir()
    good = Checkpoint.load(run)

    real_save = torch.save

    def full_disk(obj, fh, *a, **k):  # write half, then fail as a full disk does
        real_save(obj, fh, *a, **k)
        fh.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    assert main(["train", "--quiet", "--resume", str(run), "--max-steps", "4"]) != 0
    err = capsys.readouterr().err
    assert "No space left" in err and "is intact" in err
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert Checkpoint.load(run).cur_nimg == good.cur_nimg
    assert not list(run.glob(".*.tmp"))


def test_extend_kimg_lengthens_a_finished_run(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    before = Checkpoint.load(run).cur_nimg
    assert main(["train", "--quiet", "--resume", str(run), "--extend-kimg", "0.032"]) == 0
    after = Checkpoint.load(run)
    assert before is not None and after.cur_nimg == before + 32 and after.train.extra_kimg == 0.032


def test_extend_kimg_lengthens_a_new_run(faces_dir: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["--data", str(faces_dir), "--max-res", "8", "--out", str(tmp_path), "--cache-dir", str(cache_dir)]
    assert _train(*args, "--extend-kimg", "0.016") == 0
    (run,) = tmp_path.iterdir()
    ck = Checkpoint.load(run)  # tiny to 8x8: 32 images at 4, 32 fading, 32 + 16 stabilising
    assert ck.cur_nimg == 3 * 32 + 16 and ck.train.extra_kimg == 0.016
    assert _train(*args, "--extend-kimg", "-1") == 2
    assert _train(*args, "--extend-kimg", "1", "--minutes", "1") == 2
    err = capsys.readouterr().err
    assert "--extend-kimg must be positive" in err and "give one of them" in err


def test_fused_scale_trains_and_exports(faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["--data", str(faces_dir), "--max-res", "8", "--out", str(runs), "--cache-dir", str(cache_dir)]
    assert _train(*args, "--fused-scale", "--max-steps", "10") == 0  # 4x4, the fade, into the 8x8 stab
    (run,) = runs.iterdir()
    ck = Checkpoint.load(run)
    assert ck.net.fused_scale and ck.steps == 10
    assert main(["export", str(run), "--out", str(tmp_path / "model"), "--no-checkpoint"]) == 0
    import onnxruntime as ort

    lg = load_generator(run)
    z = torch.randn(2, lg.z_dim, generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(str(tmp_path / "model" / "G_8.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"z": z.numpy()})[0].astype(np.int16)
    with torch.no_grad():
        want = torch.round((lg.G(z, 8, 1.0) + 1) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - want.astype(np.int16)).max() <= 2  # fp16-stored weights: a grey level or two


@pytest.mark.parametrize("n", [8, 16, 6, 2])
def test_one_critic_pass_scores_as_two(n: int) -> None:
    """critic_scores runs D once over reals and fakes interleaved so that every minibatch-stddev group
    holds what it would in a pass of its own (n = 8, 16), and falls back to two passes where the groups
    would differ (6: not a multiple of the group size; 2: below it): the same scores and gradients as
    two separate passes, mid-fade and in channels-last."""
    from trainer.config import NetConfig, TrainConfig, preset
    from trainer.loop import Dist, critic_scores, networks_step_context
    from trainer.networks import build_networks

    net_kw, train_kw = preset("tiny")
    net = NetConfig(max_res=16, fused_scale=True, **net_kw)
    torch.manual_seed(0)
    G, D = build_networks(net)
    D = D.double().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    c = networks_step_context(
        G, D, net, TrainConfig(**train_kw), torch.device("cpu"), torch.Generator(), Dist()
    )
    g = torch.Generator().manual_seed(n)
    reals, fake = (
        torch.randn(n, 3, 16, 16, dtype=torch.float64, generator=g).contiguous(
            memory_format=torch.channels_last
        )
        for _ in range(2)
    )
    real_score, fake_score = critic_scores(c, reals, fake, 16, 0.5)
    loss = (fake_score - real_score).sum()
    grads = torch.autograd.grad(loss, list(D.parameters()), allow_unused=True)
    want_real, want_fake = D(reals, 16, 0.5), D(fake, 16, 0.5)
    want = torch.autograd.grad((want_fake - want_real).sum(), list(D.parameters()), allow_unused=True)
    assert real_score.shape == want_real.shape == (n, 1)
    assert torch.allclose(real_score, want_real, rtol=1e-10, atol=1e-12)
    assert torch.allclose(fake_score, want_fake, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, want, strict=True):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-9, atol=1e-12))
    # and the groups matter: the same samples scored in one plain pass of 2n are not these scores
    if n % net.mbstd_group == 0:
        plain = D(torch.cat([reals, fake]), 16, 0.5)
        assert not torch.allclose(plain[:n], want_real)


# ---------------------------------------------------------------------------- resume: what it keeps


def test_a_model_trains_further_with_its_own_preset_and_resolution(
    tiny_model_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --resume models/NAME --data X` continues the model as it was trained: its preset (tiny here,
    not the command line's default fast) at its own resolution, unless told to grow or change."""
    assert main(["train", "--resume", str(tiny_model_dir), "--data", str(faces_dir), "--dry-run"]) == 0
    said = json.loads(capsys.readouterr().out.split("\nphase")[0])
    assert said["train"]["preset"] == "tiny" and said["net"]["max_res"] == 16
    assert said["train"]["default_batch"] == 8  # the tiny preset's minibatch, not fast's
    argv = ["train", "--resume", str(tiny_model_dir), "--data", str(faces_dir), "--dry-run"]
    assert main([*argv, "--preset", "cpu", "--max-res", "32"]) == 0
    said = json.loads(capsys.readouterr().out.split("\nphase")[0])
    assert said["train"]["preset"] == "cpu" and said["net"]["max_res"] == 32


def test_a_run_refuses_flags_that_would_change_its_schedule(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run's checkpoint continues on its own schedule: --max-res, --preset, --lr, … that disagree with it
    are an error naming each, not silently dropped; the same values pass (scripts repeat them). --batch may
    change (a run that ran out of memory goes on with a smaller minibatch), but not to nothing."""
    run = ["train", "--resume", str(tiny_run), "--dry-run"]
    assert main([*run, "--max-res", "32", "--preset", "fast", "--batch", "99", "--stab-kimg", "5"]) == 2
    err = capsys.readouterr().err
    for part in ("--max-res 32 (it has 16)", "--preset fast (it has tiny)"):
        assert part in err
    assert "--batch" not in err
    assert main([*run, "--batch", "4"]) == 0
    assert json.loads(capsys.readouterr().out.split("\nphase")[0])["train"]["default_batch"] == 4
    assert (
        main([*run, "--batch", "0"]) == 2
        and "--batch must be at least 1 image, got 0" in capsys.readouterr().err
    )
    assert "--stab-kimg 5.0 (it has 0.032)" in err and "export it" in err
    assert main([*run, "--lr", "0.5"]) == 2 and "--lr 0.5 (it has 0.002)" in capsys.readouterr().err
    # --out: a run continues in its own folder; another parent folder would be silently ignored
    other = tiny_run.parent / "elsewhere"
    assert main([*run, "--out", str(other)]) == 2
    assert f"--out {other} (it continues in its own folder, {tiny_run})" in capsys.readouterr().err
    assert not other.exists()
    assert main([*run, "--preset", "tiny", "--max-res", "16", "--batch", "8", "--tick-kimg", "1"]) == 0
    assert main([*run, "--out", str(tiny_run.parent)]) == 0  # its own parent (scripts repeat it)


def test_a_model_checkpoint_whose_weights_do_not_fit_its_config(
    tiny_model_dir: Path, faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from trainer.checkpoint import MODEL_CHECKPOINT

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "manifest.json").write_bytes((tiny_model_dir / "manifest.json").read_bytes())
    with safe_open(str(tiny_model_dir / MODEL_CHECKPOINT), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    net = json.loads(meta["net_cfg"])
    meta["net_cfg"] = json.dumps({**net, "fmap_max": net["fmap_max"] * 2})  # the weights stay as they were
    save_file(tensors, str(folder / MODEL_CHECKPOINT), metadata=meta)
    saved = (folder / MODEL_CHECKPOINT).read_bytes()
    argv = ["train", "--quiet", "--resume", str(folder), "--data", str(faces_dir), "--out", str(tmp_path)]
    assert main([*argv, "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit the network its metadata describes" in err and "size mismatch" in err
    assert "Traceback" not in err and len(err) < 1200
    assert (folder / MODEL_CHECKPOINT).read_bytes() == saved
    assert not any(p.is_dir() for p in tmp_path.iterdir() if p.name != "model")  # no run folder


def test_a_model_checkpoint_records_where_in_its_schedule_it_stopped(
    tiny_model_dir: Path, faces_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    from trainer.export import export_model

    done = Checkpoint.load(tiny_model_dir)  # a run that finished: its last phase, the 16 px stabilisation
    # stab 4, fade 8, stab 8, fade 16, stab 16, as its metadata says (not worked out again on reading)
    assert done.stored_position == done.position() == SchedulePosition(4, "stab", 16, 1.0)
    common = ["--data", str(faces_dir), "--max-res", "16", "--cache-dir", str(cache_dir)]
    assert _train(*common, "--out", str(tmp_path / "runs"), "--max-steps", "5") == 0
    (run,) = (tmp_path / "runs").iterdir()
    export_model(run, tmp_path / "mid")
    mid = Checkpoint.load(tmp_path / "mid")  # 40 images: inside the 8 px fade (images 32-64)
    assert mid.stored_position == mid.position() == SchedulePosition(1, "fade", 8, (40 - 32) / 32)
    assert mid.top_alpha() == (40 - 32) / 32  # what export blends its top graph with


def test_adam_restarts_at_every_fade_and_every_stabilisation(
    faces_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the official code (reset_opt_for_new_lod): fresh Adam for G and D at the start of each phase,
    the stabilisation of a resolution included, and not within a phase."""
    from trainer import loop

    made: list[str] = []
    real = loop.make_optimizer

    def recorded(module, lr, cfg, arch):
        made.append(type(module).__name__)
        return real(module, lr, cfg, arch)

    monkeypatch.setattr(loop, "make_optimizer", recorded)
    common = ["--data", str(faces_dir), "--max-res", "8", "--cache-dir", str(cache_dir)]
    assert _train(*common, "--out", str(tmp_path)) == 0  # stab 4, fade 8, stab 8: 4 steps each
    (run,) = tmp_path.iterdir()
    assert Checkpoint.load(run).steps == 12
    assert made == ["Generator", "Discriminator"] * 3  # a fresh G and D optimizer per phase


def test_checkpoints_follow_the_wall_clock_and_the_phase_ends(
    faces_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint.pt is written at every phase end, at the end and every --checkpoint-minutes, not at
    every tick (a tick here is 2 steps, a phase 4)."""
    from trainer import loop

    for minutes, out in ((None, tmp_path / "default"), (0.0, tmp_path / "every")):
        written: list[int] = []
        real = loop.RunFiles.checkpoint

        def counted(self, s, res, gen_ranks, real=real, written=written):
            written.append(s.cur_nimg)
            return real(self, s, res, gen_ranks)

        monkeypatch.setattr(loop.RunFiles, "checkpoint", counted)
        extra = [] if minutes is None else ["--checkpoint-minutes", str(minutes)]
        common = ["--data", str(faces_dir), "--max-res", "8", "--cache-dir", str(cache_dir)]
        assert _train(*common, "--out", str(out), *extra) == 0
        (run,) = out.iterdir()
        ticks = [json.loads(x)["kimg"] for x in (run / "stats.jsonl").read_text().splitlines()]
        assert len(ticks) == 6
        if minutes is None:
            assert written == [32, 64, 96]  # the three phase ends (the last is also the run's end)
        else:
            assert written == [round(k * 1000) for k in ticks]


def test_unpacking_damaged_lease_parts_without_their_hash_says_so(tiny_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_checkpoint.py"
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(script), "pack", str(tiny_run), str(out)], check=True)
    (out / "ckpt.json").unlink()  # the sha256 left behind: only the bytes can tell
    part = out / "ckpt.part0"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    bad = subprocess.run(
        [sys.executable, str(script), "unpack", str(part), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not a packed checkpoint of this trainer" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_steps_stop_where_the_final_save_still_ends_by_the_deadline(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--minutes N ends the steps FINAL_SAVE_S before the deadline, planned or not (a resumed run has no
    plan), so that the last grid, checkpoint and snapshot are written inside the N minutes."""
    import shutil
    import time

    from trainer import loop
    from trainer.budget import FINAL_SAVE_S

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    asked: list[float] = []
    real = loop.past_deadline

    def recorded(deadline, d, device):
        asked.append(deadline)
        return real(deadline, d, device)

    monkeypatch.setattr(loop, "past_deadline", recorded)
    t0 = time.monotonic()
    argv = ["train", "--quiet", "--resume", str(run), "--extend-kimg", "0.016", "--minutes", "1"]
    assert main(argv) == 0
    t1 = time.monotonic()
    assert asked and all(t0 + 60 - FINAL_SAVE_S <= a <= t1 + 60 - FINAL_SAVE_S for a in asked)
