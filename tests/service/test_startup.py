"""Start-up: manifests, checksums, sessions, warm-up; broken model folders fail fast or are reported unavailable."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.config import REPO_ROOT, Settings
from service.inference.manifest import ModelLoadError
from service.main import create_app


def break_missing(folder: Path) -> Path:
    path = folder / "G_8.onnx"
    path.unlink()
    return path


def break_checksum(folder: Path) -> Path:
    weights = json.loads((folder / "manifest.json").read_text()).get("weights")
    path = folder / (weights["file"] if weights else "G_4.onnx")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    return path


def break_onnx(folder: Path) -> Path:
    """Garbage in place of a graph, with the manifest's checksum updated so only onnxruntime can object."""
    path = folder / "G_16.onnx"
    path.write_bytes(b"this is not an onnx model" * 10)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["resolutions"]["16"].update(
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size
    )
    files = [*manifest["resolutions"].values(), manifest["weights"]]
    manifest["total_bytes"] = sum(f["bytes"] for f in files)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return path


def break_manifest(folder: Path) -> Path:
    path = folder / "manifest.json"
    path.write_text("{ not json")
    return path


BREAKERS = {
    "missing file": break_missing,
    "wrong checksum": break_checksum,
    "corrupt onnx": break_onnx,
    "bad manifest": break_manifest,
}


@pytest.mark.parametrize("kind", list(BREAKERS))
def test_a_broken_only_model_fails_fast_naming_the_file(copy_models, make_settings, kind: str) -> None:  # type: ignore[no-untyped-def]
    root = copy_models("tiny")
    bad = BREAKERS[kind](root / "tiny")
    app = create_app(make_settings(root))
    with pytest.raises(ModelLoadError) as info, TestClient(app):
        pass
    assert str(bad) in str(info.value)


def test_a_broken_model_is_unavailable_and_the_others_serve(copy_models, make_settings) -> None:  # type: ignore[no-untyped-def]
    root = copy_models("tiny", "good", "broken")
    bad = break_checksum(root / "broken")
    with TestClient(create_app(make_settings(root, default_model="good"))) as client:
        assert client.get("/readyz").json() == {"status": "ready", "models": ["good", "tiny"]}
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["broken"]["status"] == "unavailable" and str(bad) in models["broken"]["error"]
        assert models["good"]["status"] == "ready" and models["good"]["default"] is True
        r = client.post("/generate?model=broken")
        assert r.status_code == 503 and "unavailable" in r.json()["detail"] and "sha256" in r.json()["detail"]
        assert client.post("/generate?model=tiny&res=8&seed=1").status_code == 200
        assert client.post("/generate?res=8&seed=1").headers["x-model"] == "good"
        assert 'faces_model_available{model="broken"} 0.0' in client.get("/metrics").text


def test_default_model_falls_back_to_the_first_found(
    models_root: Path, make_settings: Callable[..., Settings]
) -> None:
    with TestClient(create_app(make_settings(models_root, default_model="celeba"))) as client:
        assert client.get("/models").json()["default"] == "tiny"


def test_model_dir_may_be_one_model_folder(models_root: Path, make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(models_root / "tiny"))) as client:
        assert client.post("/generate?res=4&seed=0").status_code == 200


def test_missing_model_dir_fails_fast(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    with (
        pytest.raises(ModelLoadError, match="does not exist"),
        TestClient(create_app(make_settings(tmp_path / "nowhere"))),
    ):
        pass


def test_no_available_provider_fails_fast(models_root: Path, make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(models_root, providers=["NoSuchExecutionProvider"]))
    with pytest.raises(ModelLoadError, match="NoSuchExecutionProvider"), TestClient(app):
        pass


def test_require_provider_fails_instead_of_falling_back(
    models_root: Path, make_settings: Callable[..., Settings]
) -> None:
    # no GPU here: CUDA is either not offered by this onnxruntime build or its sessions fall back to the CPU
    cuda_first = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    app = create_app(make_settings(models_root, providers=cuda_first, require_provider=True))
    with pytest.raises(ModelLoadError, match="FACES_REQUIRE_PROVIDER"), TestClient(app):
        pass
    cpu_only = create_app(
        make_settings(models_root, providers=["CPUExecutionProvider"], require_provider=True)
    )
    with TestClient(cpu_only) as c:
        assert c.get("/readyz").status_code == 200


def test_sessions_log_the_provider_they_got(
    models_root: Path, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    # CUDA first, as in production: on a machine without a GPU onnxruntime falls back to the CPU
    with TestClient(
        create_app(make_settings(models_root, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    ) as c:
        provider = c.get("/models").json()["models"][0]["provider"]
    lines = [r.getMessage() for r in caplog.records if "session on" in r.getMessage()]
    assert len(lines) == 3 and all(f"session on {provider}" in line for line in lines)


def test_cpu_layouts_serve_the_same_faces(models_root: Path, make_settings: Callable[..., Settings]) -> None:
    images = {}
    for layout in ("nchwc", "nchw"):
        with TestClient(create_app(make_settings(models_root, cpu_layout=layout))) as c:
            info = c.get("/models").json()["models"][0]
            assert info["cpu_layouts"] == {"4": layout, "8": layout, "16": layout}
            r = c.post("/generate?res=16&seed=3&format=png")
            assert r.status_code == 200
            images[layout] = np.asarray(Image.open(io.BytesIO(r.content)), dtype=int)
    # the two layouts sum in different orders: at most a grey level apart
    assert np.abs(images["nchwc"] - images["nchw"]).max() <= 1


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().model_dir == REPO_ROOT / "models" and Settings().port == 8000 and Settings().batching
    monkeypatch.setenv("FACES_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("FACES_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("FACES_API_KEYS", "a, b")
    monkeypatch.setenv("FACES_CORS_ORIGINS", "https://example.org")
    monkeypatch.setenv("FACES_BATCHING", "off")
    monkeypatch.setenv("FACES_MAX_WAIT_MS", "7.5")
    s = Settings()
    assert s.model_dir == tmp_path and s.providers == ["CPUExecutionProvider"] and s.api_keys == ["a", "b"]
    assert s.cors_origins == ["https://example.org"] and s.batching is False and s.max_wait_ms == 7.5


def test_bad_settings_exit_with_a_message() -> None:
    env = {"FACES_PORT": "not-a-port", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "service"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "FACES_PORT" in r.stderr


def test_the_service_never_imports_torch() -> None:
    code = "import sys, service.main, service.__main__; sys.exit('torch' in sys.modules)"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
