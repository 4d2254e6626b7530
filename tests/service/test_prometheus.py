"""/metrics moves as requests arrive; every app has its own registry."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(snapshot: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move(client: TestClient) -> None:
    before = samples(client)
    assert client.post("/generate?res=8&seed=1&n=3").status_code == 200
    assert client.post("/generate?res=5").status_code == 422
    assert client.get("/nope").status_code == 404
    after = samples(client)
    gen = {"route": "/generate", "method": "POST"}
    for status, delta in (("200", 1), ("422", 1)):
        assert (
            value(after, "faces_http_requests_total", **gen, status=status)
            - value(before, "faces_http_requests_total", **gen, status=status)
            == delta
        )
    assert value(after, "faces_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert (
        value(after, "faces_http_request_duration_seconds_count", **gen)
        - value(before, "faces_http_request_duration_seconds_count", **gen)
        == 2
    )
    tiny8 = {"model": "tiny", "res": "8"}
    assert (
        value(after, "faces_images_generated_total", **tiny8)
        - value(before, "faces_images_generated_total", **tiny8)
        == 3
    )
    assert value(after, "faces_batch_size_count", **tiny8) > value(before, "faces_batch_size_count", **tiny8)
    assert value(after, "faces_generation_duration_seconds_count", **tiny8) > value(
        before, "faces_generation_duration_seconds_count", **tiny8
    )
    assert value(after, "faces_queue_depth", **tiny8) == 0
    assert value(after, "faces_session_provider_info", **tiny8, provider="CPUExecutionProvider") == 1
    assert value(after, "faces_model_available", model="tiny") == 1


def test_metrics_content_type(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
