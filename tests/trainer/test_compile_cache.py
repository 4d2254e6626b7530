"""`train --compile --compile-cache FILE`: torch.compile's caches written with the checkpoint and found again
by a run on a fresh machine (a fresh inductor cache folder stands in for one); bad use gets clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]


def tiny_compiled(data: Path, out: Path, cache: Path, inductor_dir: Path) -> dict:
    """A 4x4 `tiny` run of three compiled steps in its own process with its own inductor cache folder (its
    own "machine"); returns its setup.json."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "trainer", "train", "--data", str(data), "--preset", "tiny"]
    cmd += ["--max-res", "4", "--start-res", "4", "--max-steps", "3", "--quiet", "--out", str(out)]
    cmd += ["--compile", "--compile-cache", str(cache)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"artifacts in {cache}" in done.stdout
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((run / "setup.json").read_text())


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor on a CPU needs g++")
def test_a_fresh_machine_compiles_from_the_carried_cache(faces_zip: Path, tmp_path: Path) -> None:
    """The first run compiles everything and writes the file; a second on a bare inductor folder loads it
    and finds every graph there (no inductor or AOTAutograd miss), then writes the same set back."""
    cache = tmp_path / "compile-cache.bin"
    first = tiny_compiled(faces_zip, tmp_path / "a", cache, tmp_path / "inductor-a")["compile_cache"]
    assert first["loaded"] == 0 and first["graph_misses"] > 0 and first["graph_hits"] == 0
    written = cache.read_bytes()
    assert len(written) > 1000
    second = tiny_compiled(faces_zip, tmp_path / "b", cache, tmp_path / "inductor-b")["compile_cache"]
    assert second["loaded"] > 0 and second["file"] == str(cache)
    assert second["graph_misses"] == 0 and second["graph_hits"] == first["graph_misses"]
    assert second["autograd_misses"] == 0 and second["autograd_hits"] == first["autograd_misses"]
    assert cache.stat().st_size == len(written)  # what it found, written back


def test_compile_cache_bad_use(faces_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --compile, a damaged file, a folder, a missing folder: each an error before anything is
    decoded or written; the damaged file is left as it was."""
    args = ["train", "--data", str(faces_zip), "--preset", "tiny", "--max-res", "4", "--out", str(tmp_path)]
    assert main([*args, "--compile-cache", str(tmp_path / "c.bin")]) == 2
    assert "add --compile" in capsys.readouterr().err
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(b"not a cache at all, but a file someone named by mistake")
    assert main([*args, "--compile", "--compile-cache", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "not a torch.compile cache" in err and "delete it or name another file" in err
    assert damaged.read_bytes().startswith(b"not a cache")
    assert main([*args, "--compile", "--compile-cache", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main([*args, "--compile", "--compile-cache", str(tmp_path / "nowhere" / "c.bin")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # no run folder
