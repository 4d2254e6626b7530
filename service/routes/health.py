"""GET /healthz, /readyz and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsDep
from service.schemas import Status

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness", response_model=Status, response_model_exclude_none=True)
async def healthz() -> Status:
    """200 while the process serves HTTP."""
    return Status(status="ok")


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=Status,
    responses={503: {"model": Status, "description": "Still loading, or shutting down"}},
)
async def readyz(request: Request) -> Response | Status:
    """200 once every model is loaded, checked and warmed up; 503 before that and while shutting down."""
    if not getattr(request.app.state, "ready", False):
        return JSONResponse(Status(status="not ready").model_dump(exclude_none=True), status_code=503)
    pipeline = request.app.state.pipeline
    return Status(status="ready", models=sorted(pipeline.repo.models))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
