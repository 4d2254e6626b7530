"""The committed test model is exactly what scripts/make_service_fixture.py writes, so it can be rebuilt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.service.conftest import FIXTURE

SCRIPT = REPO / "scripts" / "make_service_fixture.py"


def test_the_script_writes_the_committed_fixture(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, capture_output=True)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in FIXTURE.iterdir())
    for name in written:
        assert (out / name).read_bytes() == (FIXTURE / name).read_bytes(), f"{name} differs: rerun the script"
    assert sum((out / n).stat().st_size for n in written) < 16 * 1024  # a few KB
