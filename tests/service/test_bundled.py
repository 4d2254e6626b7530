"""The bundled model (models/celeba), when present: it loads, serves, and batches byte-identically."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app


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
