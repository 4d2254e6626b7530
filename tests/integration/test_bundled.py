"""The bundled model (models/celeba), when present: it loads, serves faces, and batches byte-identically."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings
from service.main import create_app
from trainer.metrics.face_rate import FaceDetector


def test_bundled_model_serves(bundled_model_dir: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(bundled_model_dir, default_model=bundled_model_dir.name, max_n=4)
    with TestClient(create_app(settings)) as client:
        info = client.get("/models").json()["models"][0]
        assert info["status"] == "ready" and info["z_dim"] >= 1 and info["provenance"]
        res = info["resolutions"][0]
        several = client.post(f"/generate?res={res}&seed=11&n=3&layout=json").json()
        for image in several["images"]:
            alone = client.post(f"/generate?res={res}&seed={image['seed']}")
            assert alone.status_code == 200 and base64.b64decode(image["data"]) == alone.content
        top = info["resolutions"][-1]
        assert client.post(f"/generate?res={top}&seed=1&format=jpeg").headers["x-resolution"] == str(top)


def test_bundled_model_serves_faces_not_noise(
    bundled_model_dir: Path, make_settings: Callable[..., Settings]
) -> None:
    """What the service returns for the default model: OpenCV's face detector finds faces in most of
    them, and in none of the same number of noise images (the manifest's face rate is measured on 2k+)."""
    settings = make_settings(bundled_model_dir, default_model=bundled_model_dir.name, max_n=16)
    with TestClient(create_app(settings)) as client:
        top = client.get("/models").json()["models"][0]["resolutions"][-1]
        images = []
        for first in (1000, 1016, 1032, 1048):
            out = client.post(f"/generate?res={top}&seed={first}&n=16&layout=json").json()
            images += [np.asarray(Image.open(io.BytesIO(base64.b64decode(i["data"])))) for i in out["images"]]
    faces = np.stack(images)  # [64, top, top, 3]
    noise = np.random.default_rng(0).integers(0, 256, faces.shape, dtype=np.uint8)
    detector = FaceDetector()
    rate, noise_rate = detector.count(faces) / len(faces), detector.count(noise) / len(noise)
    assert noise_rate == 0.0
    assert rate >= 0.3, f"only {rate:.0%} of 64 samples at {top}x{top} show a face"
