"""The compose stack, built and run for real (opt-in: `-m docker`, or `make docker-test`).

scripts/docker-test.sh does the work (engine, build, CPU stack up, a face over HTTP, Prometheus,
bad input, tear-down); this test runs it and shows its output when it fails.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.docker
@pytest.mark.timeout(3600)
def test_compose_stack_serves_faces_and_is_scraped() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker-test.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    steps = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("docker-test:"))
    assert proc.returncode == 0, (
        f"scripts/docker-test.sh failed:\n{steps}\n\nlast output:\n{proc.stderr[-4000:]}"
    )
    assert "docker-test: passed" in proc.stderr
