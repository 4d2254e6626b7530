"""API keys: off by default; with FACES_API_KEYS a missing or wrong key gets 401; probes configurable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app


def test_auth_off_by_default(client: TestClient) -> None:
    assert client.post("/generate?res=4&seed=1").status_code == 200
    assert client.get("/models").status_code == 200


@pytest.mark.parametrize("auth_probes", [False, True])
def test_auth_on(models_root: Path, make_settings: Callable[..., Settings], auth_probes: bool) -> None:
    settings = make_settings(models_root, api_keys=["k1", "secret-2"], auth_probes=auth_probes)
    with TestClient(create_app(settings)) as client:
        for method, url in [
            ("post", "/generate?res=4&seed=1"),
            ("post", "/interpolate"),
            ("get", "/models"),
            ("get", "/latents/1"),
        ]:
            missing = getattr(client, method)(url)
            assert missing.status_code == 401 and "API key is required" in missing.json()["detail"]
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = getattr(client, method)(url, headers={"X-API-Key": "k2"})
            assert wrong.status_code == 401 and wrong.json()["detail"] == "the API key is not valid"
        assert client.post("/generate?res=4&seed=1", headers={"X-API-Key": "k1"}).status_code == 200
        assert (
            client.post("/generate?res=4&seed=1", headers={"Authorization": "Bearer secret-2"}).status_code
            == 200
        )
        assert client.get("/models", headers={"Authorization": "Bearer k1x"}).status_code == 401
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert client.get(probe).status_code == (401 if auth_probes else 200)
            assert client.get(probe, headers={"X-API-Key": "k1"}).status_code == 200
        assert client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_cors(models_root: Path, make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(models_root, cors_origins=["https://faces.example"]))) as client:
        r = client.post("/generate?res=4&seed=1", headers={"Origin": "https://faces.example"})
        assert r.headers["access-control-allow-origin"] == "https://faces.example"
        assert "X-Seed" in r.headers["access-control-expose-headers"]
        other = client.post("/generate?res=4&seed=1", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
