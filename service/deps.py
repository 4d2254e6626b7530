"""Dependencies: what handlers reach through `Annotated` aliases (created in the lifespan, kept on app.state).

All `async def`: they only read app.state, and FastAPI runs a plain `def` dependency on its thread pool, a
thread hop per dependency per request."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.errors import Unauthorized, Unavailable
from service.inference.pipeline import Pipeline
from service.inference.sessions import ModelRepository
from service.metrics import Metrics


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline | None = getattr(request.app.state, "pipeline", None)
    if pipeline is None:
        raise Unavailable("the models are not loaded yet")
    return pipeline


async def get_repo(pipeline: Annotated[Pipeline, Depends(get_pipeline)]) -> ModelRepository:
    return pipeline.repo


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
RepoDep = Annotated[ModelRepository, Depends(get_repo)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of FACES_API_KEYS")
_bearer = HTTPBearer(auto_error=False, description="One of FACES_API_KEYS, as a bearer token")


async def require_api_key(
    settings: SettingsDep,
    header_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """401 unless the request carries one of FACES_API_KEYS. Installed (main.create_app) only on the routes
    that need a key: every route when keys are set, the probes only with FACES_AUTH_PROBES too."""
    if not settings.api_keys:
        return
    given = header_key or (bearer.credentials if bearer else None)
    if not given:
        raise Unauthorized(
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            {"WWW-Authenticate": "Bearer"},
        )
    # compare with every key, without stopping early, so the timing does not tell which prefix matched
    matches = [secrets.compare_digest(given.encode(), key.encode()) for key in settings.api_keys]
    if not any(matches):
        raise Unauthorized("the API key is not valid", {"WWW-Authenticate": "Bearer"})
