"""Service fixtures: settings and clients over tests/service/fixtures/tiny, a hand-built model of a few KB
(scripts/make_service_fixture.py writes it): the service tests need neither torch nor the face data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app

# every field a developer's FACES_* environment could change is pinned here
BASE: dict[str, Any] = dict(
    default_model="tiny",
    providers=["CPUExecutionProvider"],
    intra_op_threads=1,
    api_keys=[],
    auth_probes=False,
    cors_origins=[],
    playground=True,
    batching=True,
    max_batch=16,
    max_wait_ms=2.0,
    min_run_batch=0,  # auto, as in production
    max_n=8,
    max_steps=8,
    max_frames=20,
    max_waypoints=4,
    max_body_bytes=64 * 1024,
    warmup_batch=1,
    max_queue_rows=512,
    max_queue_wait_ms=2000,
)


def settings_for(model_dir: Path, **overrides: Any) -> Settings:
    return Settings(**{**BASE, "model_dir": model_dir, **overrides})


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    """make_settings(model_dir, **overrides): test settings, independent of the caller's environment."""
    return settings_for


@pytest.fixture(autouse=True)
def _no_faces_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FACES_"):
            monkeypatch.delenv(key)


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny"  # 4, 8, 16 px; z_dim 32


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding only `tiny` (a copy: tests that break models copy this again)."""
    root = tmp_path_factory.mktemp("service-models")
    shutil.copytree(FIXTURE, root / "tiny")
    return root


@pytest.fixture(scope="module")
def client(models_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(models_root))) as c:
        yield c


@pytest.fixture
def copy_models(models_root: Path, tmp_path: Path) -> Callable[..., Path]:
    """copy_models(*names): a fresh models folder holding a copy of the tiny model under each name."""

    def copy(*names: str) -> Path:
        dest = tmp_path / "models"
        dest.mkdir(exist_ok=True)
        for name in names:
            shutil.copytree(models_root / "tiny", dest / name)
        return dest

    return copy
