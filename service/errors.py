"""Errors a client can cause, and the handlers that turn every error into JSON `{"detail": ...}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.schemas import ErrorResponse

log = logging.getLogger("service")


class ServiceError(Exception):
    """An error with a status code and a message meant for the client."""

    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class InvalidInput(ServiceError):
    status_code = 422


class Unauthorized(ServiceError):
    status_code = 401


class Unavailable(ServiceError):
    status_code = 503


class Overloaded(ServiceError):
    """The queue in front of the inference threads is past its bound; sent with Retry-After."""

    status_code = 503


ERROR_STATUSES: dict[int, str] = {
    400: "The body is not valid JSON",
    401: "No API key, or one that is not in FACES_API_KEYS",
    413: "The body is larger than FACES_MAX_BODY_BYTES",
    415: "A body sent with a Content-Type other than application/json",
    422: "A parameter breaks a rule; `detail` names it and `errors` lists every problem",
    503: "Not ready yet, the model is unavailable, or the service is over capacity (then with Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries of the errors a route can answer, all of them ErrorResponse JSON."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        out[s] = {"model": ErrorResponse, "description": ERROR_STATUSES[s]}
        if s == 503:
            out[s]["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying, when over capacity",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
    return out


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        return f"{parts[0]} " + ".".join(parts[1:]) if len(parts) > 1 else parts[0]
    return ".".join(parts)


def validation_summary(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """One readable line plus a trimmed list (no echoed input: it may be a large latent array)."""
    trimmed = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    lines = [f"{_location(e['loc'])}: {e['msg']}" for e in trimmed[:5]]
    more = f" (and {len(trimmed) - 5} more)" if len(trimmed) > 5 else ""
    return "invalid request: " + "; ".join(lines) + more, trimmed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        broken = next((e for e in errors if e["type"] == "json_invalid"), None)
        if broken is not None:  # the body does not parse: 400, as it is no request at all
            where = f" at character {broken['loc'][1]}" if len(broken["loc"]) > 1 else ""
            reason = broken.get("ctx", {}).get("error", "JSON decode error")
            return JSONResponse({"detail": f"the request body is not valid JSON: {reason}{where}"}, 400)
        content_type = request.headers.get("content-type", "")
        if content_type and "json" not in content_type and any(tuple(e["loc"]) == ("body",) for e in errors):
            return JSONResponse(
                {
                    "detail": f"send the body as JSON with Content-Type: application/json, not {content_type!r}"
                },
                415,
            )
        detail, trimmed = validation_summary(errors)
        return JSONResponse({"detail": detail, "errors": trimmed}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
