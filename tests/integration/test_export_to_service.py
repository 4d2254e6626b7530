"""End to end: a tiny ProGAN trained on real faces, exported by the trainer, served by the service."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from contract import read_manifest, verify_files, z_for_seeds
from service.config import Settings
from service.main import create_app
from tests.service.test_api import decode
from trainer.export import export_model


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("served")
    return export_model(tiny_run, root / "trained")


def test_the_service_serves_what_the_trainer_exported(
    exported,
    make_settings: Callable[..., Settings],  # type: ignore[no-untyped-def]
) -> None:
    manifest = read_manifest(exported.out)  # the contract reads what the exporter wrote
    verify_files(exported.out, manifest)
    settings = make_settings(exported.out.parent, default_model="trained", max_n=4)
    with TestClient(create_app(settings)) as client:
        info = client.get("/models").json()["models"][0]
        assert info["name"] == "trained" and info["resolutions"] == [4, 8, 16]
        assert info["provenance"]["architecture"] == "progan"
        seeds = [3, 4]
        z = torch.from_numpy(z_for_seeds(seeds, manifest.z_dim))
        for res in manifest.resolutions:
            body = client.post(f"/generate?res={res}&seed=3&n=2&layout=json&format=png").json()
            got = np.stack([decode(base64.b64decode(im["data"])) for im in body["images"]])
            with torch.no_grad():
                want = exported.modules[res](z).numpy()  # the torch module the graph came from
            assert got.shape == want.shape == (2, res, res, 3)
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, res


def test_a_model_folder_missing_a_graph_is_reported(
    exported,
    tmp_path: Path,
    make_settings: Callable[..., Settings],  # type: ignore[no-untyped-def]
) -> None:
    broken = tmp_path / "models" / "broken"
    shutil.copytree(exported.out, broken)
    (broken / "G_8.onnx").unlink()
    shutil.copytree(exported.out, tmp_path / "models" / "good")
    with TestClient(create_app(make_settings(tmp_path / "models", default_model="good"))) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["good"]["status"] == "ready"
        assert models["broken"]["status"] == "unavailable" and "G_8.onnx" in models["broken"]["error"]
