"""The OpenAPI schema tells the truth: requests generated from it (schemathesis) get responses it lists,
in the shapes it states; its examples are accepted; security appears only where keys are configured."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.config import Settings
from service.main import create_app
from tests.service.conftest import FIXTURE, settings_for


@pytest.fixture(scope="module")
def api(models_root: Path, make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(models_root))) as client:
        yield client


def served_spec(**overrides: Any) -> dict[str, Any]:
    """The schema a started server (models loaded) serves at /openapi.json."""
    with TestClient(create_app(settings_for(FIXTURE.parent, **overrides))) as client:
        return dict(client.get("/openapi.json").json())


# built at collection (schemathesis parametrizes from it): the tiny fixture loads in milliseconds
schema = schemathesis.openapi.from_dict(served_spec())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_generated_requests_get_documented_responses(case: Any, api: TestClient) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    response = api.request(**kwargs)
    case.validate_response(response, checks=CHECKS)


def test_every_example_is_accepted(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for name, path in (("GenerateRequest", "/generate"), ("InterpolateRequest", "/interpolate")):
        examples = spec["components"]["schemas"][name]["examples"]
        assert len(examples) >= 3
        for example in examples:
            r = api.post(path, json=example)
            assert r.status_code == 200, (example, r.text)
    z_dim = api.get("/models").json()["models"][0]["z_dim"]
    latents = spec["components"]["schemas"]["GenerateRequest"]["examples"][2]["latents"]
    assert len(latents[0]) == z_dim  # the latent example fits the loaded model


def test_limits_and_models_are_in_the_schema(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    gen = spec["components"]["schemas"]["GenerateRequest"]
    assert gen["properties"]["n"]["maximum"] == 8  # FACES_MAX_N of the test settings
    assert "`tiny` (default): 4, 8, 16 px, z_dim 32" in spec["info"]["description"]
    assert "4, 8, 16 px" in gen["properties"]["res"]["description"]
    interp = spec["components"]["schemas"]["InterpolateRequest"]
    assert interp["oneOf"] == [{"required": ["seeds"]}, {"required": ["waypoints"]}]
    assert interp["properties"]["steps"]["maximum"] == 8
    assert "not" in gen  # seeds or latents


def test_every_error_status_is_listed_with_its_shape(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, statuses in (
        ("/generate", {"400", "413", "415", "422", "503"}),
        ("/interpolate", {"400", "413", "415", "422", "503"}),
    ):
        responses = spec["paths"][path]["post"]["responses"]
        assert statuses <= set(responses), (path, sorted(responses))
        for status in statuses:
            assert responses[status]["content"]["application/json"]["schema"] == error
        assert "Retry-After" in responses["503"]["headers"]  # over capacity: when to come back
    latents = spec["paths"]["/latents/{seed}"]["get"]["responses"]
    assert {"422", "503"} <= set(latents)


def test_security_is_declared_only_with_keys() -> None:
    def secured(spec: dict[str, Any], path: str, method: str = "get") -> bool:
        op = spec["paths"][path][method]
        return bool(op.get("security")) and "401" in op["responses"]

    open_spec = served_spec()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert not any(secured(open_spec, p) for p in ("/models", "/healthz"))
    assert not secured(open_spec, "/generate", "post")

    keyed = served_spec(api_keys=["k1"])
    assert keyed["components"]["securitySchemes"]
    assert secured(keyed, "/models") and secured(keyed, "/generate", "post")
    assert not secured(keyed, "/healthz") and not secured(keyed, "/metrics")

    probes = served_spec(api_keys=["k1"], auth_probes=True)
    assert secured(probes, "/healthz") and secured(probes, "/metrics")
