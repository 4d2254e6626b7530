"""`train --compile --compile-cache FILE`: torch.compile's caches carried from one machine to the next.

A lent GPU starts bare, so every lease compiled the step from nothing (62 s at 256 px on an H200, paid
before the first image is trained). torch's portable cache (`torch.compiler.save_cache_artifacts`, the
"Mega-Cache") serialises what compiling made, on CUDA the Triton kernels with it; loaded before the first
compile on a machine with the same torch, Triton and GPU, the compile finds every graph in it. The file is
read once at the start and rewritten beside every checkpoint, from whatever this process compiled or
found in the cache (a run that only hit the cache writes the same set back). On a CPU the cache holds the
generated C++ but not the built libraries, so the compiler still runs there: it saves little time on a CPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("trainer")


class CompileCacheError(ValueError):
    """A --compile-cache file this torch cannot read."""


@dataclass
class CompileCache:
    path: Path
    loaded: int = 0  # artifacts the file held when the run started
    saved: int = 0  # artifacts in it after the last save

    @classmethod
    def open(cls, path: str | Path) -> CompileCache:
        """Load `path` into torch's compile caches if it exists (a first run starts without one)."""
        path = Path(path)
        cache = cls(path)
        if path.is_dir():
            raise CompileCacheError(f"--compile-cache {path} is a folder; name a file")
        if not path.exists():
            if not path.parent.is_dir():
                raise CompileCacheError(f"--compile-cache {path}: no folder {path.parent} to write it in")
            return cache
        blob = path.read_bytes()
        # torch returns None for bytes it cannot parse (a failed checksum), after a warning with a traceback
        # that the error below says better
        torch_log = logging.getLogger("torch.compiler._cache")
        level = torch_log.level
        torch_log.setLevel(logging.ERROR)
        try:
            info = torch.compiler.load_cache_artifacts(blob) if blob else None
        finally:
            torch_log.setLevel(level)
        if info is None:
            raise CompileCacheError(
                f"--compile-cache {path} is not a torch.compile cache this torch can read ({len(blob)} bytes, "
                "damaged or not written by `train --compile-cache`); delete it or name another file"
            )
        cache.loaded = count(info)
        return cache

    def save(self) -> None:
        """Write what this process compiled (or found in the cache) to the file, atomically; nothing yet
        compiled leaves the file as it is. A failed write is a warning: the run's checkpoint matters more."""
        got = torch.compiler.save_cache_artifacts()
        if got is None:
            return
        blob, info = got
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.chmod(tmp, 0o644)  # as a plain write would leave it, not mkstemp's owner-only
            os.replace(tmp, self.path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            log.warning("could not write the compile cache %s (%s); the run goes on", self.path, e)
            return
        self.saved = count(info)

    def summary(self) -> dict[str, Any]:
        """For setup.json: the file, its artifacts at the start, and how this process's compiles went so far
        (hits and misses of inductor's graph cache and AOTAutograd's, from torch's own counters)."""
        from torch._dynamo.utils import counters

        inductor, aot = counters["inductor"], counters["aot_autograd"]
        return {
            "file": str(self.path),
            "loaded": self.loaded,
            "graph_hits": inductor["fxgraph_cache_hit"],
            "graph_misses": inductor["fxgraph_cache_miss"],
            "autograd_hits": aot["autograd_cache_hit"],
            "autograd_misses": aot["autograd_cache_miss"],
        }


def count(info: Any) -> int:
    """Artifacts in a torch CacheInfo (a list of keys per kind)."""
    return sum(len(v) for v in info.artifacts.values())
