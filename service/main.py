"""The FastAPI app: `create_app(settings)` for tests, `app` for `uvicorn service.main:app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from service import __version__
from service.config import Settings
from service.deps import require_api_key
from service.errors import error_responses, install_error_handlers
from service.inference.batching import InferenceScheduler
from service.inference.manifest import ModelLoadError
from service.inference.pipeline import Pipeline
from service.inference.sessions import ModelRepository
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.openapi import install_openapi
from service.routes import generate, health, interpolate, latents, models, playground

log = logging.getLogger("service")

DESCRIPTION = """
Faces from ProGAN generators exported to ONNX, served with onnxruntime.

* `POST /generate` one or more faces (seeds, truncation or explicit latents; PNG, JPEG or WebP)
* `POST /interpolate` walks between waypoints (animated GIF / WebP, a strip, or JSON frames)
* `GET /latents/{seed}` the z a seed maps to, so clients can do latent arithmetic
* `GET /models` what is loaded, at which resolutions, on which execution provider
* `GET /` a playground page in the browser (FACES_PLAYGROUND)

Errors are JSON: `{"detail": "..."}`. With FACES_API_KEYS set, send a key as `X-API-Key` or
`Authorization: Bearer`. Settings: docs/service.md.
"""


def configure_logging(level: str) -> None:
    """Give the `service` logger a handler of its own when nobody configured one (uvicorn does not)."""
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


PROBES = ("/healthz", "/readyz", "/metrics")


class AccessLogFilter(logging.Filter):
    """Drops uvicorn access lines: all of them, or those of the probes (a health check every few seconds
    and a Prometheus scrape would otherwise be most of the log)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def filter(self, record: logging.LogRecord) -> bool:
        if self.mode == "off":
            return False
        if self.mode == "no-probes" and isinstance(record.args, tuple) and len(record.args) >= 3:
            # uvicorn's args: client, method, path with query, version, status
            return str(record.args[2]).split("?", 1)[0] not in PROBES
        return True


def configure_access_log(mode: str) -> None:
    access = logging.getLogger("uvicorn.access")
    for old in [f for f in access.filters if isinstance(f, AccessLogFilter)]:
        access.removeFilter(old)
    access.addFilter(AccessLogFilter(mode))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    configure_access_log(settings.access_log)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = InferenceScheduler(settings.inference_threads)
        try:
            repo = ModelRepository.load(settings, scheduler, metrics)
        except ModelLoadError as exc:
            log.error("start-up failed: %s", exc)
            raise
        encoder = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="encode")
        scheduler.start()
        app.state.pipeline = Pipeline(repo, settings, encoder)
        app.state.ready = True
        log.info(
            "ready: models %s (default %s), batching %s (max %d rows, %.1f ms wait)",
            ", ".join(sorted(repo.models)),
            repo.default,
            "on" if settings.batching else "off",
            settings.max_batch,
            settings.max_wait_ms,
        )
        try:
            yield
        finally:  # uvicorn gets here after the requests in flight have finished
            app.state.ready = False
            await scheduler.stop()
            encoder.shutdown(wait=True)
            log.info("stopped")

    app = FastAPI(title="ProGAN faces", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    install_error_handlers(app)
    install_openapi(app, DESCRIPTION)

    # the key check, and its security scheme in the OpenAPI schema, only where keys are configured
    keys = bool(settings.api_keys)
    for module in (generate, interpolate, latents, models):
        app.include_router(
            module.router,
            dependencies=[Depends(require_api_key)] if keys else [],
            responses=error_responses(401) if keys else None,
        )
    if settings.playground:  # public: the page asks for a key itself when the API needs one
        app.include_router(playground.router)
        app.mount("/static", StaticFiles(directory=playground.STATIC), name="static")
    probes_keyed = keys and settings.auth_probes
    app.include_router(
        health.router,
        dependencies=[Depends(require_api_key)] if probes_keyed else [],
        responses=error_responses(401) if probes_keyed else None,
    )

    # the last added is the outermost: metrics see every response, 413s included
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Seed", "X-Seeds", "X-Resolution", "X-Model", "X-Truncation", "X-Frames"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


app = create_app()
