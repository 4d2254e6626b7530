"""Service load benchmark, and the generator alone in onnxruntime against torch eager on the same weights.

    python bench/serve_load.py                      # export a cpu-preset generator, start servers, print tables
    python bench/serve_load.py --checkpoint runs/x  # the same with a trained checkpoint's weights
    python bench/serve_load.py --url http://host:8000 --label mine   # load against a running server only
    python bench/serve_load.py --overload --res 64 --concurrency 128 512   # queue bound on against off

Load: closed loop, `concurrency` clients each sending POST /generate?res=R&seed=... back to back for
`--seconds`; req/s, images/s and latency percentiles per (batching, res, concurrency). The client runs on
the same machine as the server and takes CPU from it; figures are lower bounds for a separate client.
This script may import torch and trainer; the service never does.

Overload (`--overload`): the same closed loop, at concurrencies far above what saturates the server,
against a server with the queue bound on (`--queue-wait-ms`, `--queue-rows`; the service defaults) and
one with it off; served req/s, p50 / p99 of the served (200) requests, and the share of 503s, counted by
when a response arrives (an overloaded request can outlast the warm-up). A client that gets 503 either
sends its next request at once (`--on-503 retry`: the offered load stays that of `concurrency` clients
and the refusals cost the server what they cost) or first sleeps Retry-After (`sleep`: what a polite
client does; the offered load falls, but with hundreds of clients stays far above capacity); `both`
(default) loads the bound-on server once each way. A closed loop of c clients never queues more than c
rows, so the bound bites only at concurrencies whose queue would pass it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contract import (  # noqa: E402
    MANIFEST_FILE,
    SCHEMA_VERSION,
    FileEntry,
    InputSpec,
    LatentSpec,
    Manifest,
    OutputSpec,
    Provenance,
    WeightsEntry,
    total_bytes,
)
from scripts.serving import ServiceStartError, start_service, stop_service  # noqa: E402

# ---------------------------------------------------------------------------- model


def export_bench_model(
    out: Path,
    preset_name: str,
    resolutions: list[int],
    checkpoint: str | None,
    net: dict[str, Any] | None = None,
    name: str = "bench",
    compute: str = "float32",
    fused_up: bool = False,
) -> tuple[Path, dict[int, Any]]:
    """A model folder `out/models/name`, and the torch modules its graphs were exported from (same
    fp16-rounded weights).

    The weights: a trained checkpoint's, or a freshly initialised generator of `preset_name` with `net`'s
    NetConfig fields over the preset's (speed does not depend on their values). Each resolution's graph
    cuts G at that resolution with its own toRGB (trainer.export also refits those heads, which costs
    minutes on a CPU and nothing at run time). `compute` "float16": graphs that compute in fp16 (z in and
    uint8 out as always). `fused_up`: each block's up-sampling and first conv as one stride-2 ConvTranspose
    (trainer.export.onnx_friendly); the graph keeps the stored 3x3 weights and builds the 4x4 kernel from
    them, which onnxruntime folds at load, so `weights.bin` is the same as the plain form's.
    """
    import onnx
    import torch

    from trainer.checkpoint import load_generator
    from trainer.config import NetConfig, preset
    from trainer.export import (
        INPUT,
        OPSET,
        OUTPUT,
        WEIGHTS_FILE,
        ExportedGenerator,
        WeightStore,
        export_onnx,
        fold_equalized_scales,
        round_weights_fp16,
        store_weights_fp16,
    )
    from trainer.networks import Generator, res_key

    if checkpoint is not None:
        G0 = load_generator(checkpoint).G
        source = f"checkpoint {checkpoint}"
    else:
        net_kwargs, _ = preset(preset_name)
        net_kwargs = {**net_kwargs, **(net or {}), "max_res": max(resolutions)}
        torch.manual_seed(0)
        G0 = Generator(NetConfig(**net_kwargs))
        source = f"freshly initialised {preset_name}-preset generator"
    assert isinstance(G0, Generator), "the bench exports ProGAN generators"
    G = fold_equalized_scales(G0.float().eval())
    assert isinstance(G, Generator)
    round_weights_fp16(G)
    dtype = {"float32": torch.float32, "float16": torch.float16}[compute]
    if dtype == torch.float16:
        G = G.half()
    folder = out / "models" / name
    folder.mkdir(parents=True)
    store = WeightStore(folder / WEIGHTS_FILE)
    modules: dict[int, Any] = {}
    files: dict[int, FileEntry] = {}
    for res in resolutions:
        top = res == G.max_res
        module = ExportedGenerator(G, res, 1.0, None if top else G.to_rgb[res_key(res)], dtype).eval()
        onnx.save_model(
            store_weights_fp16(export_onnx(module, G.z_dim, fused_up=fused_up), store),
            folder / f"G_{res}.onnx",
        )
        modules[res] = module
    store.close()
    for res in resolutions:
        f = folder / f"G_{res}.onnx"
        files[res] = FileEntry.of(f)
    weights = WeightsEntry.of(store.path, dtype="float16")
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=name,
        z_dim=G.z_dim,
        latent=LatentSpec(),
        input=InputSpec(name=INPUT, shape=("N", G.z_dim)),
        output=OutputSpec(name=OUTPUT),
        resolutions=files,
        weights=weights,
        opset=OPSET,
        provenance=Provenance(
            architecture="progan",
            dataset=source,
            license="benchmark only",
            kimg=0.0,
            preset=preset_name,
            commit="unknown",
            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ),
        total_bytes=total_bytes(files, weights),
    )
    (folder / MANIFEST_FILE).write_text(manifest.to_json())
    return folder, modules


# ---------------------------------------------------------------------------- generator alone


def time_fn(fn: Any, seconds: float, min_iters: int = 5, warmups: int = 1) -> float:
    """Median seconds per call over at least `min_iters` calls and about `seconds`, after `warmups`."""
    for _ in range(warmups):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_generator(
    model_dir: Path,
    modules: dict[int, Any],
    resolutions: list[int],
    batches: list[int],
    threads: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """Median time per call of each graph in onnxruntime and of its torch module in eager mode, both on
    `threads` threads. torch is timed first, before onnxruntime creates its thread pools, and its thread
    count is set once: changing it, or sharing the cores with other pools, makes OpenMP spin-wait."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    zs = {
        b: np.random.default_rng(0).standard_normal((b, modules[resolutions[0]].G.z_dim), dtype=np.float32)
        for b in batches
    }
    torch_s: dict[tuple[int, int], float] = {}
    torch_out: dict[tuple[int, int], np.ndarray] = {}
    with torch.inference_mode():
        for res in resolutions:
            for b in batches:
                zt = torch.from_numpy(zs[b])
                torch_out[res, b] = modules[res](zt).numpy()
                torch_s[res, b] = time_fn(lambda m=modules[res], x=zt: m(x), seconds)
    from service.config import Settings
    from service.inference.sessions import disabled_optimizers, session_options

    settings = {  # the service's FACES_CPU_LAYOUT choices, set up as the service sets them
        "nchwc": Settings(intra_op_threads=threads, cpu_layout="nchwc"),
        "nchw": Settings(intra_op_threads=threads, cpu_layout="nchw"),
    }
    rows = []
    for res in resolutions:
        path = str(model_dir / f"G_{res}.onnx")
        sessions = {
            layout: ort.InferenceSession(
                path,
                session_options(s),
                providers=["CPUExecutionProvider"],
                disabled_optimizers=disabled_optimizers(s),
            )
            for layout, s in settings.items()
        }
        for b in batches:
            t = {}
            diff = 0
            for layout, sess in sessions.items():
                out = sess.run(None, {"z": zs[b]})[0]
                diff = max(diff, int(np.abs(out.astype(int) - torch_out[res, b].astype(int)).max()))
                t[layout] = time_fn(lambda s=sess, x=zs[b]: s.run(None, {"z": x}), seconds)
            t_torch = torch_s[res, b]
            best = min(t, key=lambda k: t[k])
            rows.append(
                dict(
                    res=res,
                    batch=b,
                    threads=threads,
                    ort_nchwc_ms=t["nchwc"] * 1e3,
                    ort_nchw_ms=t["nchw"] * 1e3,
                    torch_ms=t_torch * 1e3,
                    speedup_nchwc=t_torch / t["nchwc"],
                    speedup_best=t_torch / t[best],
                    best=best,
                    max_abs_diff=diff,
                )
            )
            print(
                f"  generator res {res:4d} batch {b:3d} threads {threads}: onnxruntime nchwc {t['nchwc'] * 1e3:7.2f} ms"
                f"  nchw {t['nchw'] * 1e3:7.2f} ms  torch {t_torch * 1e3:7.2f} ms  x{t_torch / t['nchwc']:.2f}"
                f" (best, {best}: x{t_torch / t[best]:.2f})  (max |diff| {diff} grey levels)",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------------------- load


async def post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 keep-alive POST with an empty body: (status, headers, body). A few lines of parsing
    instead of an HTTP client library, because the load generator shares the server's cores: httpx spends
    about a millisecond of CPU per request, which at concurrency 64 on two cores is a sizeable part of the
    budget."""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    if "content-length" not in headers:
        raise RuntimeError(f"response without Content-Length: {headers}")
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def load(
    url: str,
    res: int,
    concurrency: int,
    seconds: float,
    warmup: float,
    fmt: str,
    sleep_on_503: bool = False,
) -> dict[str, Any]:
    """Closed loop: `concurrency` connections, each sending its next request when the last one returns
    (after sleeping Retry-After on a 503 with `sleep_on_503`)."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    latencies: list[float] = []
    served: list[float] = []  # latencies of the 200s answered in the measured window
    answered = refused = 0  # responses answered in the measured window, and the 503s among them
    errors = 0
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup

    async def worker() -> None:
        nonlocal errors, answered, refused
        rng = random.Random()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                t = time.perf_counter()
                if t >= stop_at:
                    return
                path = (
                    f"{parsed.path.rstrip('/')}/generate?res={res}&seed={rng.randrange(2**32)}&format={fmt}"
                )
                status, headers, _ = await post(reader, writer, f"{host}:{port}", path)
                done = time.perf_counter()
                if t >= measure_from and done <= stop_at:
                    latencies.append(done - t)
                    errors += status != 200
                if measure_from <= done <= stop_at:
                    answered += 1
                    refused += status == 503
                    if status == 200:
                        served.append(done - t)
                if status == 503 and sleep_on_503:
                    await asyncio.sleep(min(float(headers.get("retry-after", 1)), stop_at - done))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.array(latencies) * 1e3
    n = len(lat)
    ok = np.array(served) * 1e3
    overload = dict(
        served_req_s=len(ok) / seconds,
        served_p50_ms=float(np.percentile(ok, 50)) if len(ok) else float("nan"),
        served_p99_ms=float(np.percentile(ok, 99)) if len(ok) else float("nan"),
        answered=answered,
        refused=refused,
        pct_503=100 * refused / answered if answered else float("nan"),
    )
    return overload | dict(
        res=res,
        concurrency=concurrency,
        requests=n,
        errors=errors,
        req_s=n / seconds,
        images_s=n / seconds,
        p50_ms=float(np.percentile(lat, 50)) if n else float("nan"),
        p95_ms=float(np.percentile(lat, 95)) if n else float("nan"),
        p99_ms=float(np.percentile(lat, 99)) if n else float("nan"),
    )


def run_async(coro: Any) -> Any:
    """asyncio.run on uvloop when installed (uvicorn[standard] brings it): a cheaper client loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def start_server(
    models: Path, batching: bool, args: argparse.Namespace, extra: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """A `python -m service` process on a free port; `extra` settings override --env."""
    env = dict(
        FACES_MODEL_DIR=str(models),
        FACES_DEFAULT_MODEL="bench",
        FACES_BATCHING="on" if batching else "off",
        FACES_MAX_BATCH=str(args.max_batch),
        FACES_MAX_WAIT_MS=str(args.max_wait_ms),
        FACES_LOG_LEVEL="warning",
    )
    env.update(item.split("=", 1) for item in args.env)
    env.update(extra)
    try:
        return start_service(env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except ServiceStartError as exc:
        raise SystemExit(str(exc)) from None


@contextlib.contextmanager
def running_servers(
    models: Path, args: argparse.Namespace, specs: dict[str, tuple[bool, dict[str, str]]]
) -> Iterator[dict[str, str]]:
    """{label: url} of one server per spec (label: (batching, extra settings)), stopped on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    servers: dict[str, str] = {}
    try:
        for label, (batching, extra) in specs.items():
            proc, url = start_server(models, batching, args, extra)
            procs.append(proc)
            servers[label] = url
        yield servers
    finally:
        for proc in procs:
            stop_service(proc, timeout=60)


def run_load(servers: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (res, concurrency) cell against each server in turn, so that they share the same background load."""
    rows = []
    for res in args.res:
        for c in args.concurrency:
            for label, url in servers.items():
                row = run_async(load(url, res, c, args.seconds, args.warmup, args.format))
                row["mode"] = label
                rows.append(row)
                print(
                    f"  {label:12s} res {res:4d} c {c:3d}: {row['req_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f}  "
                    f"p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  ({row['requests']} req, {row['errors']} errors)",
                    flush=True,
                )
    return sorted(rows, key=lambda r: r["mode"] != "batching on")


OVERLOAD_COLS = ["mode", "res", "concurrency", "served_req_s", "served_p50_ms", "served_p99_ms", "pct_503"]


ON_503 = {"retry": "503: retry at once", "sleep": "503: sleep Retry-After"}


def run_overload(servers: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (res, concurrency) cell against each server in turn, counting served requests and 503s; a
    server that may refuse is loaded once per client behaviour on 503 (`--on-503`)."""
    behaviours = list(ON_503) if args.on_503 == "both" else [args.on_503]
    rows = []
    for res in args.res:
        for c in args.concurrency:
            for label, url in servers.items():
                for behaviour in ["retry"] if label == "bound off" else behaviours:
                    row = run_async(
                        load(url, res, c, args.seconds, args.warmup, args.format, behaviour == "sleep")
                    )
                    row["mode"] = label if label == "bound off" else f"{label}, {ON_503[behaviour]}"
                    rows.append(row)
                    print(
                        f"  {row['mode']:34s} res {res:4d} c {c:4d}: served {row['served_req_s']:7.1f} req/s  "
                        f"p50 {row['served_p50_ms']:7.1f}  p99 {row['served_p99_ms']:7.1f} ms  "
                        f"503 {row['pct_503']:5.1f}% of {row['answered']} responses",
                        flush=True,
                    )
    return rows


def overload_settings(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """The settings of the two overload servers: the queue bound as asked, and none."""
    return {
        "bound on": {
            "FACES_MAX_QUEUE_ROWS": str(args.queue_rows),
            "FACES_MAX_QUEUE_WAIT_MS": str(args.queue_wait_ms),
        },
        "bound off": {"FACES_MAX_QUEUE_ROWS": "0", "FACES_MAX_QUEUE_WAIT_MS": "0"},
    }


# ---------------------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--url",
        help="load an already running server (skips the export, the generator bench and batching off)",
    )
    p.add_argument("--label", default="server", help="name of the --url server in the table")
    p.add_argument(
        "--checkpoint", help="trainer checkpoint whose weights to export (default: a fresh generator)"
    )
    p.add_argument("--preset", default="cpu", help="network preset of the fresh generator (default: cpu)")
    p.add_argument("--res", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each cell")
    p.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="FACES_X=VALUE",
        help="extra service setting for both servers (repeatable), e.g. FACES_INFERENCE_THREADS=2",
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads for the generator-alone bench"
    )
    p.add_argument("--gen-batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--gen-seconds", type=float, default=3.0)
    p.add_argument("--skip-load", action="store_true")
    p.add_argument(
        "--overload",
        action="store_true",
        help="queue bound on against off (batching on both) instead of the generator and batching tables; "
        "give concurrencies far above saturation, e.g. --concurrency 128 512",
    )
    p.add_argument(
        "--queue-wait-ms", type=float, default=2000.0, help="FACES_MAX_QUEUE_WAIT_MS of the bound-on server"
    )
    p.add_argument("--queue-rows", type=int, default=512, help="FACES_MAX_QUEUE_ROWS of the bound-on server")
    p.add_argument(
        "--on-503",
        choices=["retry", "sleep", "both"],
        default="both",
        help="what an overload client does on 503: send again at once, or sleep Retry-After first",
    )
    p.add_argument("--skip-generator", action="store_true")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    bad = [item for item in args.env if not item.startswith("FACES_") or "=" not in item]
    if bad:
        p.error(f"--env takes FACES_NAME=VALUE, got {', '.join(bad)}")

    # a SIGTERM (timeout, kill) unwinds like Ctrl-C, so the servers this script started are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    print(f"# serve_load on {report['machine']}", flush=True)
    if args.url and args.overload:
        report["overload"] = run_overload({args.label: args.url}, args)
    elif args.url:
        report["load"] = run_load({args.label: args.url}, args)
        print(
            "\n"
            + markdown(
                report["load"],
                ["mode", "res", "concurrency", "req_s", "images_s", "p50_ms", "p95_ms", "p99_ms", "errors"],
            )
        )
    else:
        with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
            print("exporting the bench model ...", flush=True)
            model_dir, modules = export_bench_model(Path(tmp), args.preset, args.res, args.checkpoint)
            if args.overload:
                specs = {label: (True, extra) for label, extra in overload_settings(args).items()}
                with running_servers(model_dir.parent, args, specs) as servers:
                    report["overload"] = run_overload(servers, args)
            elif not args.skip_generator:
                print("generator alone (CPU):", flush=True)
                report["generator"] = bench_generator(
                    model_dir, modules, args.res, args.gen_batches, args.threads, args.gen_seconds
                )
            if not args.skip_load and not args.overload:
                # both up at once; the idle one costs nothing
                specs = {"batching on": (True, {}), "batching off": (False, {})}
                with running_servers(model_dir.parent, args, specs) as servers:
                    report["load"] = run_load(servers, args)
        print()
        if "generator" in report:
            print("## Generator alone: onnxruntime vs torch eager (same fp16-rounded weights, CPU)\n")
            print(
                markdown(
                    report["generator"],
                    [
                        "res",
                        "batch",
                        "threads",
                        "ort_nchwc_ms",
                        "ort_nchw_ms",
                        "torch_ms",
                        "speedup_nchwc",
                        "speedup_best",
                        "best",
                        "max_abs_diff",
                    ],
                )
            )
            print()
        if "load" in report:
            print("## Service load (closed loop; one image per request)\n")
            cols = ["mode", "res", "concurrency", "req_s", "images_s", "p50_ms", "p95_ms", "p99_ms", "errors"]
            print(markdown(report["load"], cols))
            by = {(r["mode"], r["res"], r["concurrency"]): r["req_s"] for r in report["load"]}
            print(
                "\nbatching on / off throughput at concurrency 16: "
                + ", ".join(
                    f"res {res}: x{by[('batching on', res, 16)] / by[('batching off', res, 16)]:.2f}"
                    for res in args.res
                    if ("batching on", res, 16) in by and by.get(("batching off", res, 16))
                )
            )
        if "generator" in report:
            # the most batching can give: the generator's own per-image gain, batch b against batch 1
            ms = {(r["res"], r["batch"]): r["ort_nchwc_ms"] for r in report["generator"]}
            biggest = max(args.gen_batches)
            if biggest > 1 and 1 in args.gen_batches:
                print(
                    f"batching ceiling (generator alone, per image at batch {biggest} against batch 1): "
                    + ", ".join(
                        f"res {res}: x{ms[res, 1] / (ms[res, biggest] / biggest):.2f}" for res in args.res
                    )
                )
    if "overload" in report:
        print("\n## Overload: queue bound on against off (closed loop; latency of the served requests)\n")
        print(markdown(report["overload"], OVERLOAD_COLS))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
