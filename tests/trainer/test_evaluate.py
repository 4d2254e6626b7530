"""`python -m trainer evaluate`: end to end on the tiny run and its ONNX export, the cache, the report,
export into manifest.json, and every input a user can get wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.cli import main
from trainer.evaluate import Measuring, evaluate

NUM = 16  # the Inception pass is slow on CPU; this only checks the plumbing, not the figures


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["evaluate", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fid")


@pytest.fixture(scope="module")
def onnx_metrics(tiny_model_dir: Path, faces_dir: Path, cache_dir: Path, fid_cache: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_onnx")
    rc = main(
        [
            "evaluate",
            str(tiny_model_dir),
            "--data",
            str(faces_dir),
            "--num",
            str(NUM),
            "--cache-dir",
            str(fid_cache),
            "--data-cache-dir",
            str(cache_dir),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


KEYS = {
    "resolution", "num", "fid", "kid", "kid_std", "ms_ssim", "ms_ssim_real", "face_rate", "face_rate_real",
    "data", "model", "inception", "seconds", "ms_ssim_scales", "face_detector", "fid_note",
}  # fmt: skip


def test_onnx_model_writes_json_and_markdown(onnx_metrics: Path, tiny_model_dir: Path) -> None:
    m = json.loads((onnx_metrics / "metrics_16.json").read_text())
    assert m.keys() >= KEYS
    assert m["resolution"] == 16 and m["num"] == NUM and m["num_real"] == NUM
    assert m["model"] == str(tiny_model_dir.resolve()) and m["model_info"]["kind"] == "onnx"
    assert m["fid"] is None and "2048" in m["fid_note"]  # too few images for FID: said, KID reported
    assert np.isfinite(m["kid"]) and m["kid_std"] >= 0
    assert 0 <= m["ms_ssim"] <= 1 and 0 <= m["ms_ssim_real"] <= 1 and m["ms_ssim_scales"] == 3
    assert 0 <= m["face_rate"] <= 1 and m["face_rate_real"] > 0.5
    assert m["data_resized"] and m["data_native_res"] > 16
    assert len(m["inception"]["sha256"]) == 64
    assert m["inception"]["runtime"].startswith("onnxruntime (CPU), exported from the TorchScript")
    md = (onnx_metrics / "metrics_16.md").read_text()
    assert "| KID ×10³ ↓ |" in md and "| face rate ↑ |" in md and "needs 2048+" in md


def test_checkpoint_gives_the_same_figures_as_its_onnx_export(
    onnx_metrics: Path,
    tiny_run: Path,
    faces_dir: Path,
    cache_dir: Path,
    fid_cache: Path,
    tmp_path: Path,
    capsys,
) -> None:
    rc, out, err = run_cli(
        [str(tiny_run), "--data", str(faces_dir), "--num", str(NUM), "--cache-dir", str(fid_cache),
         "--data-cache-dir", str(cache_dir), "--out", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert "| MS-SSIM (lower = more diverse) |" in out  # the table is printed
    assert "generated 16x16" in err  # the progress bar
    assert "real 16x16" not in err  # real statistics came from the cache the ONNX run wrote
    ckpt = json.loads((tmp_path / "metrics_16.json").read_text())
    onnx = json.loads((onnx_metrics / "metrics_16.json").read_text())
    assert ckpt["model_info"]["kind"] == "checkpoint" and ckpt["arch"] == "progan"
    assert ckpt["real_cache"] == onnx["real_cache"] and Path(ckpt["real_cache"]).is_file()
    for k in ("ms_ssim_real", "face_rate_real"):
        assert ckpt[k] == onnx[k]
    # same z, same network (ONNX: fp16 weights, within a grey level): the same figures, nearly
    assert ckpt["kid"] == pytest.approx(onnx["kid"], abs=0.02)
    assert ckpt["ms_ssim"] == pytest.approx(onnx["ms_ssim"], abs=0.02)


def test_lower_resolution_and_export_into_manifest(
    tiny_run: Path, faces_dir: Path, cache_dir: Path, fid_cache: Path, tmp_path: Path, capsys
) -> None:
    rc, _, err = run_cli(
        [str(tiny_run), "--data", str(faces_dir), "--res", "8", "--num", "8", "--cache-dir", str(fid_cache),
         "--data-cache-dir", str(cache_dir), "--out", str(tmp_path), "--quiet"],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    m8 = tmp_path / "metrics_8.json"
    assert json.loads(m8.read_text())["ms_ssim_scales"] == 2
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "model"), "--metrics", str(m8)]) == 0
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["metrics"]["8"]["kid"] == json.loads(m8.read_text())["kid"]


def test_data_smaller_than_the_model_is_upscaled_and_said(
    tiny_run: Path, faces_dir: Path, cache_dir: Path, fid_cache: Path, tmp_path: Path, caplog
) -> None:
    from trainer.data import load_images

    small = tmp_path / "faces8.npy"
    np.save(small, np.asarray(load_images(faces_dir, 8, cache_dir=cache_dir, progress=False))[:NUM])
    how = Measuring(cache_dir=fid_cache, data_cache_dir=str(cache_dir), progress=False)
    m = evaluate(str(tiny_run), str(small), num=NUM, how=how)
    assert m["data_native_res"] == 8 and m["resolution"] == 16 and m["data_resized"]
    assert "UPSCALED" in caplog.text


def test_fewer_data_images_than_num_uses_them_all(
    tiny_run: Path, faces_dir: Path, cache_dir: Path, fid_cache: Path, tmp_path: Path, caplog
) -> None:
    from trainer.data import load_images

    few = tmp_path / "few.npy"
    np.save(few, np.asarray(load_images(faces_dir, 16, cache_dir=cache_dir, progress=False))[:10])
    how = Measuring(cache_dir=fid_cache, data_cache_dir=str(cache_dir), progress=False)
    m = evaluate(str(tiny_run), str(few), num=NUM, how=how)
    assert m["num_real"] == 10 and m["num"] == NUM
    assert "fewer than --num" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--res", "64"], "generates 4, 8, 16"),
        (["--num", "2"], "too few"),
        (["--inception", "/nonexistent/inception.pt"], "--inception"),
        (["--batch", "1"], "--batch"),
    ],
)
def test_bad_options_clear_message_nonzero_exit(
    extra: list[str], message: str, tiny_run: Path, faces_dir: Path, capsys
) -> None:
    rc, _, err = run_cli([str(tiny_run), "--data", str(faces_dir), "--quiet", *extra], capsys)
    assert rc == 2 and message in err and "Traceback" not in err


def test_bad_paths_clear_message_nonzero_exit(
    tiny_run: Path, faces_dir: Path, tmp_path: Path, capsys
) -> None:
    rc, _, err = run_cli([str(tmp_path / "missing"), "--data", str(faces_dir)], capsys)
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_cli([str(tmp_path), "--data", str(faces_dir)], capsys)
    assert rc == 2 and "neither manifest.json" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    rc, _, err = run_cli([str(bad), "--data", str(faces_dir)], capsys)
    assert rc == 2 and "corrupt" in err
    rc, _, err = run_cli([str(tiny_run), "--data", str(tmp_path / "nodata")], capsys)
    assert rc == 2 and "does not exist" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_requested_without_cuda(tiny_run: Path, faces_dir: Path, capsys) -> None:
    rc, _, err = run_cli([str(tiny_run), "--data", str(faces_dir), "--device", "cuda"], capsys)
    assert rc == 2 and "no CUDA" in err


@pytest.mark.gpu
def test_cuda_evaluation(tiny_model_dir: Path, faces_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    how = Measuring(
        batch=128, device="cuda", cache_dir=tmp_path, data_cache_dir=str(cache_dir), progress=False
    )
    m = evaluate(str(tiny_model_dir), str(faces_dir), num=512, how=how)
    assert m["device"] == "cuda" and m["num"] == 512 and m["face_rate_real"] > 0.5


@pytest.mark.slow
def test_fid_is_reported_from_2048_images(tiny_model_dir: Path, tmp_path: Path) -> None:
    """About 10 minutes on 2 CPU cores: the real and generated Inception passes over 2,048 images each."""
    from tests.conftest import CELEBA

    if not CELEBA.is_dir():
        pytest.skip("no CelebA")
    m = evaluate(
        str(tiny_model_dir), str(CELEBA), num=2048, how=Measuring(cache_dir=tmp_path, progress=False)
    )
    assert m["fid"] is not None and m["fid"] > 0 and m["fid_note"] is None


# ---------------------------------------------------------------------------- compare-data


@pytest.fixture(scope="module")
def twin_archives(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first 64 faces at 32 px: lossless, and at WebP quality 5 (visibly blocky)."""
    root = tmp_path_factory.mktemp("twins")
    out = {}
    for name, flags in {"lossless": ["--lossless"], "q5": ["--quality", "5"]}.items():
        out[name] = root / f"faces-32-{name}.zip"
        args = [str(faces_dir), "--res", "32", "--crop", "celeba", "--limit", "64", "--out", str(out[name])]
        assert main(["prepare-data", *args, "--quiet", *flags]) == 0
    return out


def test_lossless_archive_keeps_every_pixel(
    twin_archives: dict[str, Path], faces_dir: Path, tmp_path: Path
) -> None:
    import io
    import zipfile

    from PIL import Image

    from trainer.data import crop_box, load_images

    lossless = twin_archives["lossless"]
    index = json.loads(zipfile.ZipFile(lossless).read("index.json"))
    assert index["format"] == "webp lossless" and index["count"] == 64
    assert lossless.stat().st_size > 2 * twin_archives["q5"].stat().st_size
    first = sorted(faces_dir.iterdir())[0]
    with Image.open(first) as im:  # what prepare-data does before encoding: the crop, then Lanczos
        made = im.convert("RGB").crop(crop_box(*im.size, "celeba")).resize((32, 32), Image.Resampling.LANCZOS)
    with zipfile.ZipFile(lossless) as zf:
        stored = np.asarray(Image.open(io.BytesIO(zf.read(f"img/{first.stem}.webp"))).convert("RGB"))
    assert np.array_equal(stored, np.asarray(made))
    assert np.array_equal(load_images(lossless, 32, cache_dir=tmp_path, progress=False)[0], stored)


def run_compare(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["compare-data", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compare_data_measures_the_compression(
    twin_archives: dict[str, Path], faces_dir: Path, cache_dir: Path, fid_cache: Path, tmp_path: Path, capsys
) -> None:
    lossless, q5 = str(twin_archives["lossless"]), str(twin_archives["q5"])
    common = ["--res", "16", "--num", "16", "--cache-dir", str(fid_cache), "--data-cache-dir", str(cache_dir)]
    out = tmp_path / "q5.json"
    rc, text, _ = run_compare([lossless, q5, *common, "--floor", "--quiet", "--out", str(out)], capsys)
    assert rc == 0 and "the same faces on both sides" in text and "| FID ↓ | n/a" in text
    m = json.loads(out.read_text())
    assert m["same_faces"] and m["num"] == 16 and m["resolution"] == 16
    assert m["a"]["format"] == "webp lossless" and m["b"]["format"] == "webp q5"
    assert m["b"]["bytes_per_image"] < m["a"]["bytes_per_image"]
    assert m["b_against_a"]["fid"] is None and "2048" in m["b_against_a"]["fid_note"]
    assert m["floor"] is not None and np.isfinite(m["floor"]["kid"])
    assert out.with_suffix(".md").read_text() == text.split("\nwrote ")[0]
    # the archive against itself: the same features (from the cache), no distance left to measure
    rc, _, _ = run_compare(
        [lossless, lossless, *common, "--quiet", "--out", str(tmp_path / "self.json")], capsys
    )
    same = json.loads((tmp_path / "self.json").read_text())
    assert rc == 0 and same["b_against_a"]["kid"] < m["b_against_a"]["kid"]
    # two different data sets (64 archive faces, 512 folder faces): independent draws, said so
    rc, text, _ = run_compare([str(faces_dir), lossless, *common, "--quiet"], capsys)
    assert rc == 0 and "independent random draws" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num", "2"], "too few"),
        (["--num", "40", "--floor"], "--num 32 or less"),
        (["--out", "figures.txt"], "must end in .json"),
        (["--batch", "1"], "--batch"),
    ],
)
def test_compare_data_bad_options(
    extra: list[str], message: str, twin_archives: dict[str, Path], cache_dir: Path, capsys
) -> None:
    args = [str(twin_archives["lossless"]), str(twin_archives["q5"]), "--res", "16", "--quiet"]
    rc, _, err = run_compare([*args, "--data-cache-dir", str(cache_dir), *extra], capsys)
    assert rc == 2 and message in err and "Traceback" not in err


def test_compare_data_missing_set(twin_archives: dict[str, Path], tmp_path: Path, capsys) -> None:
    rc, _, err = run_compare(
        [str(twin_archives["lossless"]), str(tmp_path / "none.zip"), "--res", "16"], capsys
    )
    assert rc == 2 and "does not exist" in err


def test_spectrum_script_measures_periodic_patterns_against_the_real_faces(
    tiny_model_dir: Path, tiny_run: Path, faces_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/spectrum.py: a row per band and per periodic point for each model (an ONNX folder, a run),
    a plot; a pattern of period 2 shows at that point only, and bad input is a clear error."""
    from scripts import spectrum

    plot = tmp_path / "spectrum.png"
    args = ["--data", str(faces_zip), "--res", "16", "--num", "16"]
    assert spectrum.main([str(tiny_model_dir), str(tiny_run), *args, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")][2:]
    assert rows == [f"band {lo:.2f}-{hi:.2f}" for lo, hi in spectrum.BANDS] + list(spectrum.POINTS)
    assert plot.stat().st_size > 5000
    # columns alternating by +-20 grey levels on smooth images: power at period 2 along x, not along y
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(60, 190, (16, 4, 4, 3)), 8, axis=1), 8, axis=2)
    stripes = smooth + np.where(np.arange(32) % 2, 20, -20)[None, None, :, None]
    real, fake = (
        spectrum.power_spectrum(smooth.astype(np.uint8)),
        spectrum.power_spectrum(stripes.astype(np.uint8)),
    )
    got = spectrum.relative(fake, real)
    assert got["period 2 along x"] > 100 * got["period 2 along y"] and got["band 0.00-0.05"] == pytest.approx(
        1, rel=0.2
    )
    assert spectrum.main([str(tiny_model_dir), *args, "--labels", "tiny"]) == 0
    assert "| where | tiny |" in capsys.readouterr().out
    assert spectrum.main([str(tiny_model_dir), *args, "--labels", "a", "b"]) == 2
    assert "--labels names 2 models" in capsys.readouterr().err
    assert spectrum.main([str(tmp_path / "nothing"), *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert spectrum.main([str(tiny_model_dir), *args[:4], "--num", "4096"]) == 2
    assert "fewer than --num 4096" in capsys.readouterr().err


def test_output_filter_bench_measures_both_forms(
    tiny_model_dir: Path, faces_zip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/output_filter.py on the tiny model at 16 px: a row as generated and one resampled through 12 px
    (too few images for FID: KID only); a --via at or above --res is an error."""
    from bench import output_filter

    args = [str(tiny_model_dir), "--data", str(faces_zip), "--res", "16", "--num", "16", "--real-num", "16"]
    assert output_filter.main([*args, "--via", "12", "--batch", "8"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][2:]
    assert [r[1].strip() for r in rows] == ["as generated", "through 12 px and back"]
    assert all(r[2].strip() == "-" and "±" in r[3] for r in rows)
    assert output_filter.main([*args, "--via", "16"]) == 2
    assert "--via must be between 8 and --res (16)" in capsys.readouterr().err
    img = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert output_filter.round_trip(img, 12).shape == (2, 16, 16, 3)


def test_truncation_is_measured_as_the_service_draws_it(
    tiny_model_dir: Path, faces_dir: Path, cache_dir: Path, fid_cache: Path, tmp_path: Path, capsys
) -> None:
    """`evaluate --truncation t` generates from z drawn as the service's truncation draws it (contract.truncate:
    every entry within [-t, t]) into its own metrics_RES-tT.json, which add-metrics refuses: a model's figures
    are of its plain samples. A t the service would refuse is refused here too. scripts/truncation.py puts
    a row per t in one table and draws the figures."""
    import shutil

    from contract import truncate
    from scripts import truncation
    from trainer.metrics.samplers import open_model, sample_batches

    model = open_model(str(tiny_model_dir))
    rng = np.random.default_rng(3)
    z = truncate(rng.standard_normal((4, model.z_dim), dtype=np.float32), rng, 0.5)
    assert np.abs(z).max() <= 0.5
    (got,) = sample_batches(model, 4, 16, 4, seed=3, truncation=0.5)
    (plain,) = sample_batches(model, 4, 16, 4, seed=3)
    assert np.array_equal(got, model(z, 16)) and not np.array_equal(got, plain)

    common = ["--data", str(faces_dir), "--num", str(NUM), "--cache-dir", str(fid_cache)]
    common += ["--data-cache-dir", str(cache_dir), "--quiet"]
    rc, out, err = run_cli(
        [str(tiny_model_dir), *common, "--truncation", "0.5", "--out", str(tmp_path)], capsys
    )
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.glob("metrics_*")) == [
        "metrics_16-t0.5.json",
        "metrics_16-t0.5.md",
    ]
    assert json.loads((tmp_path / "metrics_16-t0.5.json").read_text())["truncation"] == 0.5
    assert "generated (truncation 0.5) vs" in out
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    assert main(["add-metrics", str(folder), str(tmp_path / "metrics_16-t0.5.json")]) == 2
    assert "measured z truncated to 0.5" in capsys.readouterr().err
    for bad in ("0.05", "nan"):
        rc, _, err = run_cli([str(tiny_model_dir), *common, "--truncation", bad], capsys)
        assert rc == 2 and "--truncation must be a number >= 0.1" in err

    plot = tmp_path / "truncation.png"
    args = [
        str(tiny_model_dir),
        "--data",
        str(faces_dir),
        "--num",
        str(NUM),
        "--quiet",
        "--values",
        "none",
        "0.5",
    ]
    assert truncation.main([*args, "--batch", "8", "--plot", str(plot)]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r[1].strip() for r in rows[-2:]] == ["none", "0.5"] and plot.stat().st_size > 5000
    with pytest.raises(SystemExit):
        truncation.main([*args[:-2], "abc"])
    assert "a truncation is a number or 'none'" in capsys.readouterr().err


def test_feature_truncation_bench_pulls_the_first_features_to_their_mean(
    tiny_model_dir: Path, faces_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/feature_truncation.py: psi 1 is G as exported, psi 0 gives every z the mean face; a row per psi
    (too few images for FID: KID only) and a picture; a psi outside [0, 1] is an error."""
    from bench import feature_truncation as ft
    from trainer.checkpoint import load_generator
    from trainer.export import to_uint8_nhwc

    G = load_generator(tiny_model_dir).G
    mean = ft.feature_mean(G, 32)
    z = np.random.default_rng(0).standard_normal((4, 32), dtype=np.float32)
    as_is = to_uint8_nhwc(G(torch.from_numpy(z), 16)).numpy()
    assert (
        np.abs(ft.generate(G, z, mean, 1.0).astype(int) - as_is).max() <= 1
    )  # mean + (x - mean): x, to a bit
    same = ft.generate(G, z, mean, 0.0)
    assert all(np.array_equal(same[0], x) for x in same[1:]) and not np.array_equal(same[0], as_is[0])
    plot = tmp_path / "strip.png"
    args = [str(tiny_model_dir), "--data", str(faces_zip), "--num", "16", "--real-num", "16", "--batch", "8"]
    assert ft.main([*args, "--psi", "1", "0.5", "--plot", str(plot)]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][2:]
    assert [r[1].strip() for r in rows] == ["1", "0.5"] and plot.stat().st_size > 1000
    assert ft.main([*args, "--psi", "1.5"]) == 2
    assert "--psi values must be between 0 and 1" in capsys.readouterr().err
