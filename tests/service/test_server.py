"""A real uvicorn process on a free port, exercised over HTTP: serving, concurrency, metrics, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from scripts.serving import free_port, start_service, stop_service
from service.config import REPO_ROOT

pytestmark = pytest.mark.timeout(180)


def start(models_root: Path, command: list[str], **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """The service on the tiny model, on the CPU with one thread; its output (stderr too) in proc.stdout."""
    tiny = dict(
        FACES_MODEL_DIR=str(models_root),
        FACES_DEFAULT_MODEL="tiny",
        FACES_PROVIDERS="CPUExecutionProvider",
        FACES_INTRA_OP_THREADS="1",
    )
    return start_service({**tiny, **env}, command, timeout=90)


def stop(proc: subprocess.Popen[bytes]) -> str:
    """What the process printed, once it has stopped."""
    stop_service(proc)
    return proc.stdout.read().decode()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def server(models_root: Path) -> Iterator[str]:
    proc, url = start(models_root, [sys.executable, "-m", "service"], FACES_MAX_WAIT_MS="50")
    yield url
    stop(proc)


def test_serves_over_http(server: str, client: TestClient) -> None:
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    r = httpx.post(server + "/generate?res=16&seed=31")
    assert r.status_code == 200 and r.headers["x-seed"] == "31"
    assert r.content == client.post("/generate?res=16&seed=31").content  # same bytes as in-process
    assert httpx.post(server + "/generate?res=3").status_code == 422
    assert httpx.get(server + "/models").json()["models"][0]["name"] == "tiny"


def test_32_simultaneous_http_requests_match_one_by_one(server: str) -> None:
    urls = [
        f"{server}/generate?res={(8, 16)[i % 2]}&seed={500 + i}&n={1 + i % 2}&layout=grid" for i in range(32)
    ]
    with httpx.Client(timeout=60) as http:
        alone = [http.post(u).content for u in urls]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda u: httpx.post(u, timeout=60), urls))
    assert all(r.status_code == 200 for r in together)
    assert [r.content for r in together] == alone
    metrics = httpx.get(server + "/metrics").text
    assert 'faces_http_requests_total{method="POST",route="/generate",status="200"}' in metrics
    assert "faces_batch_size_bucket" in metrics


def test_requests_in_flight_finish_on_sigterm(models_root: Path) -> None:
    # requests arriving together make the batcher wait (FACES_MAX_WAIT_MS) for more: they are still in
    # flight when the signal arrives
    proc, url = start(
        models_root,
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", "{port}"],
        FACES_MAX_WAIT_MS="2000",
        FACES_MAX_BATCH="64",
    )
    seeds = [8, 9, 10, 11]
    with ThreadPoolExecutor(len(seeds)) as pool:
        pending = [pool.submit(httpx.post, f"{url}/generate?res=16&seed={s}", timeout=30) for s in seeds]
        time.sleep(0.7)
        proc.send_signal(signal.SIGTERM)
        responses = [p.result() for p in pending]
    log = stop(proc)
    assert [r.status_code for r in responses] == [200] * 4, log
    assert [r.headers["x-seed"] for r in responses] == [str(s) for s in seeds]
    after_signal = log[log.index("Shutting down") :]
    assert after_signal.count("POST /generate") >= 3, log  # (the first may run at once, before the signal)
    assert proc.returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal once it has drained
    assert "stopped" in log


@pytest.mark.parametrize("mode", ["no-probes", "all"])
def test_access_log_leaves_out_the_probes(models_root: Path, mode: str) -> None:
    env = {"FACES_ACCESS_LOG": mode} if mode != "no-probes" else {}  # no-probes is the default
    proc, url = start(models_root, [sys.executable, "-m", "service"], **env)
    for path in ("/healthz", "/readyz", "/metrics", "/models"):
        assert httpx.get(url + path).status_code == 200
    log = stop(proc)
    assert '"GET /models HTTP/1.1" 200' in log
    probe_lines = [p for p in ("/healthz", "/readyz", "/metrics") if f'"GET {p} HTTP/1.1"' in log]
    assert probe_lines == ([] if mode == "no-probes" else ["/healthz", "/readyz", "/metrics"])


def test_broken_model_folder_exits_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACES_")}
    env.update(FACES_MODEL_DIR=str(tmp_path), FACES_PORT=str(free_port()), FACES_HOST="127.0.0.1")
    r = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
    assert str(tmp_path / "tiny" / "manifest.json") in r.stdout + r.stderr
