"""`python -m service` as a child process on a free port, waited for until `/readyz` answers 200: how the
tests, the load benchmark and the playground screenshot run the real server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]


class ServiceStartError(RuntimeError):
    """The service exited, or was not ready in time; the message carries what it printed."""


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):  # refused while starting; 503 while loading
        return False


def start_service(
    env: dict[str, str],
    command: list[str] | None = None,
    timeout: float = 300,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.STDOUT,
) -> tuple[subprocess.Popen[bytes], str]:
    """(process, base URL) of a ready service on 127.0.0.1 and a free port. The caller's FACES_* variables
    are dropped and `env` added, so only what the caller sets configures the server. `command` defaults to
    `python -m service`; "{port}" in it becomes the port."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FACES_")}
    full_env.update(env, FACES_HOST="127.0.0.1", FACES_PORT=str(port))
    cmd = [arg.replace("{port}", str(port)) for arg in command or [sys.executable, "-m", "service"]]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=stdout, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pipe = proc.stdout or proc.stderr
            printed = pipe.read().decode() if pipe else ""
            raise ServiceStartError(f"the service exited with status {proc.returncode}: {printed}")
        if _ready(url):
            return proc, url
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise ServiceStartError(f"the service was not ready after {timeout:.0f} s")


def stop_service(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM (the service drains), then a kill if it has not stopped within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
