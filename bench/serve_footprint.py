"""What one service process needs from a host or a Kubernetes pod: memory (resident after start-up, and
the peak under load at every resolution of every model) and CPU (start-up time and CPU seconds, CPU
seconds per image). Sizes the requests and limits in deploy/k8s (docs/deploy.md).

    python bench/serve_footprint.py                         # the bundled models, default settings
    python bench/serve_footprint.py --env FACES_INTRA_OP_THREADS=2 --requests 40 --concurrency 4

Reads /proc (Linux): VmRSS and VmHWM (peak resident) of the server, utime + stime for its CPU seconds.
The load is closed-loop `POST /generate?n=N` per model and resolution, from this process (the client's
own CPU is not counted: it is a different process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.serving import REPO, start_service, stop_service  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat


def generate(url: str, model: str, res: int, n: int) -> None:
    request = urllib.request.Request(
        f"{url}/generate?model={model}&res={res}&n={n}&format=png", method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=REPO / "models", help="FACES_MODEL_DIR (default: models/)")
    p.add_argument("--n", type=int, default=16, help="images per request (default 16, FACES_MAX_N)")
    p.add_argument("--requests", type=int, default=24, help="requests per model and resolution")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    p.add_argument("--env", action="append", default=[], metavar="FACES_X=V", help="a setting for the server")
    a = p.parse_args(argv)
    env = {"FACES_MODEL_DIR": str(a.models), "FACES_ACCESS_LOG": "off"}
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("FACES_"):
            p.error(f"--env wants FACES_NAME=VALUE, not {item!r}")
        env[key] = value

    t0 = time.monotonic()
    proc, url = start_service(env)
    startup_s = time.monotonic() - t0
    try:
        startup_cpu = cpu_seconds(proc.pid)
        ready = proc_status(proc.pid)
        with urllib.request.urlopen(url + "/models", timeout=30) as r:
            models = json.load(r)["models"]
        print(f"server: {url}, settings {env}")
        print(
            f"start-up: {startup_s:.1f} s wall, {startup_cpu:.1f} CPU s; resident when ready "
            f"{mib(ready['VmRSS'])} MiB (peak so far {mib(ready['VmHWM'])} MiB)\n"
        )
        print("| model | res | images | wall s | images/s | CPU s / image | resident MiB | peak MiB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for m in models:
            for res in sorted(int(r) for r in m["resolutions"]):
                cpu0, w0 = cpu_seconds(proc.pid), time.monotonic()
                with ThreadPoolExecutor(a.concurrency) as pool:
                    jobs = [pool.submit(generate, url, m["name"], res, a.n) for _ in range(a.requests)]
                    for job in jobs:
                        job.result()
                wall, cpu = time.monotonic() - w0, cpu_seconds(proc.pid) - cpu0
                images = a.requests * a.n
                st = proc_status(proc.pid)
                print(
                    f"| {m['name']} | {res} | {images} | {wall:.1f} | {images / wall:.0f} | "
                    f"{cpu / images * 1000:.1f} ms | {mib(st['VmRSS'])} | {mib(st['VmHWM'])} |",
                    flush=True,
                )
        final = proc_status(proc.pid)
        print(f"\npeak resident over the whole run: {mib(final['VmHWM'])} MiB")
    finally:
        stop_service(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
