"""Prometheus metrics, one CollectorRegistry per app (tests build many apps in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REJECT_REASONS = ("queue_rows", "queue_wait")  # which bound refused a request (service/inference/batching.py)


class Metrics:
    """Every metric the service exports; names start with `faces_`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "faces_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "faces_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("faces_http_requests_in_flight", "HTTP requests being served", registry=r)
        self.generation_seconds = Histogram(
            "faces_generation_duration_seconds",
            "Time of one onnxruntime run",
            ["model", "res"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("faces_images_generated", "Images generated", ["model", "res"], registry=r)
        self.batch_size = Histogram(
            "faces_batch_size",
            "Rows per onnxruntime run (padding not counted)",
            ["model", "res"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "faces_queue_depth", "Rows waiting for an onnxruntime run", ["model", "res"], registry=r
        )
        self.rejected = Counter(
            "faces_rejected_requests",
            "Requests refused with 503 by the queue bounds (FACES_MAX_QUEUE_ROWS, FACES_MAX_QUEUE_WAIT_MS)",
            ["model", "res", "reason"],
            registry=r,
        )
        self.provider = Gauge(
            "faces_session_provider_info",
            "Execution provider each session got (value 1)",
            ["model", "res", "provider"],
            registry=r,
        )
        self.model_up = Gauge(
            "faces_model_available", "1 if the model loaded, 0 if unavailable", ["model"], registry=r
        )

    def rejections(self, model: str, res: str) -> Callable[[str], None]:
        """A graph's callback counting one refused request by reason; its series start at 0, so that
        rate() and alerts see them before the first refusal."""
        children = {reason: self.rejected.labels(model, res, reason) for reason in REJECT_REASONS}
        return lambda reason: children[reason].inc()
