"""`python -m service`: options, their errors, and a real start where the options beat the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.config import REPO_ROOT
from tests.conftest import free_port
from tests.service.test_server import stop

pytestmark = pytest.mark.timeout(180)


def service_env(**env: str) -> dict[str, str]:
    """The caller's environment without FACES_*, plus the test's own (CPU, the tiny model, one thread)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("FACES_")}
    out.update(
        FACES_PROVIDERS="CPUExecutionProvider", FACES_DEFAULT_MODEL="tiny", FACES_INTRA_OP_THREADS="1", **env
    )
    return out


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO_ROOT,
        env=service_env(**env),
        capture_output=True,
        text=True,
        timeout=20,  # none of these may start a server
    )


def test_help_lists_the_options_and_starts_nothing() -> None:
    r = run_cli("--help", FACES_PORT="8123")
    assert r.returncode == 0, r.stderr
    for option in ("--host", "--port", "--workers", "--model-dir", "--log-level"):
        assert option in r.stdout
    assert "FACES_PORT=8123" in r.stdout  # the value in force now
    assert "docs/service.md" in r.stdout and "Uvicorn running" not in r.stdout + r.stderr


@pytest.mark.parametrize("args", [["--bogus"], ["stray"], ["--port"]])
def test_unknown_options_and_stray_arguments_are_errors(args: list[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 2 and r.stderr.startswith("usage: python -m service"), r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port 99999: Input should be less than or equal to 65535"),
        (["--port", "eighty"], "--port eighty: Input should be a valid integer"),
        (["--workers", "0"], "--workers 0: Input should be greater than or equal to 1"),
        (["--log-level", "loud"], "--log-level loud: Input should be 'debug', 'info', 'warning' or 'error'"),
        (["--model-dir", "/no/such/folder"], "the model folder /no/such/folder does not exist (--model-dir)"),
    ],
)
def test_bad_values_exit_2_with_one_line(args: list[str], message: str) -> None:
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_bad_environment_value_is_named_by_its_variable() -> None:
    r = run_cli("--port", "8000", FACES_WORKERS="0")
    assert r.returncode == 2 and "FACES_WORKERS: Input should be" in r.stderr, r.stderr


def test_options_beat_the_environment_on_a_real_start(models_root: Path) -> None:
    port, env_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
        + ["--model-dir", str(models_root), "--log-level", "warning"],
        cwd=REPO_ROOT,
        env=service_env(FACES_PORT=str(env_port), FACES_MODEL_DIR="/no/such/folder", FACES_LOG_LEVEL="debug"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60  # loads and probes three sessions: slow on two busy cores
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the service did not answer on --port within 60 s"
                time.sleep(0.3)
        assert r.json() == {"status": "ok"}
        with pytest.raises(httpx.TransportError):  # FACES_PORT lost to --port
            httpx.get(f"http://127.0.0.1:{env_port}/healthz", timeout=1)
    finally:
        log = stop(proc)
    assert "INFO service:" not in log, log  # --log-level warning beat FACES_LOG_LEVEL=debug
