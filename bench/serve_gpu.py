"""The service and its generators on a CUDA GPU: provider check, the generator alone, and HTTP load.

    python bench/serve_gpu.py build --out .gpu/bench [--checkpoint models/celeba/checkpoint.safetensors]
                                                                    # CPU side (torch): the default model's
                                                                    # network at 64-256 px, three graph forms
    python bench/serve_gpu.py run --models .gpu/bench/models --json out.json   # on the GPU host (no torch)

`build` exports the trained generator of `--checkpoint`, or a freshly initialised one with the NetConfig of
models/celeba (speed does not depend on the weights' values), three times:
- `bench` computes in fp32 with Resize + Conv up-sampling (`trainer export --up plain`, the shipped form
  until 2026-11-27);
- `bench16` in fp16 (same fp16 weights; z in and uint8 out as always);
- `benchT` in fp32 with each block's up-sampling and first conv as one stride-2 ConvTranspose (the paper's
  fused scale: the same function, 2.25x fewer FLOPs in those convs; what `trainer export` writes now).

`run` prints and records, each part on its own so that one failure does not lose the rest:
1. the service started with FACES_PROVIDERS=CUDAExecutionProvider and FACES_REQUIRE_PROVIDER=true, and
   what /models says each resolution got;
2. the generator alone in onnxruntime's CUDA provider: median ms per run at each resolution and batch,
   fp32 and fp16 graphs, three ways of feeding it: `run` (numpy in, numpy out: what the service does),
   `bind_host_out` (IOBinding: z copied in, the image bound to host memory) and `bind_device` (z and the
   image stay on the GPU: the kernels alone); a CUDA-graph replay at batch 1; the other graphs' largest
   grey-level difference from `bench` on the same z;
3. one image's PNG and JPEG encoding on one core (the service's encoder), the CPU floor per image;
4. HTTP load: a closed loop of `concurrency` keep-alive connections spread over client processes,
   each POST /generate?res=R&format=F&n=N returning N images (one as bytes, several as JSON); p50 / p99
   latency and images/s, batching on and off, one worker process and several; the GPU memory the
   server's processes hold (nvidia-smi) after each server's load.
The client runs on the same host and takes cores from the server: its figures are lower bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_load import post, time_fn  # noqa: E402

from contract import read_manifest  # noqa: E402
from scripts.serving import ServiceStartError, start_service, stop_service  # noqa: E402

CUDA = "CUDAExecutionProvider"
PROVIDER = CUDA  # `run --provider CPUExecutionProvider` checks this script on a host without a GPU
DEVICE = "cuda"
GRAPHS = ("bench", "bench16", "benchT")  # build's three forms of one generator; `run` measures those present


def graphs(models: Path) -> list[str]:
    return [g for g in GRAPHS if (models / g).is_dir()]


# ---------------------------------------------------------------------------- build (CPU, torch)


def build(out: Path, resolutions: list[int], checkpoint: str | None) -> int:
    from serve_load import export_bench_model  # torch: only here

    net_config = read_manifest(REPO / "models" / "celeba").provenance.net_config or {}
    net = {k: v for k, v in net_config.items() if k != "max_res"}
    forms = {"bench": ("float32", False), "bench16": ("float16", False), "benchT": ("float32", True)}
    for name, (compute, fused) in forms.items():
        folder, _ = export_bench_model(
            out, "gpu", resolutions, checkpoint, net=net, name=name, compute=compute, fused_up=fused
        )
        what = checkpoint or f"fresh weights, NetConfig of models/celeba: {net}"
        print(f"wrote {folder} ({compute}{', fused up-sampling' if fused else ''}; {what})")
    return 0


# ---------------------------------------------------------------------------- generator alone


def median_ms(fn: Callable[[], Any], seconds: float) -> float:
    """Median ms per call; two warm-up calls first (cuDNN picks its algorithms, the arena grows)."""
    return time_fn(fn, seconds, min_iters=10, warmups=2) * 1e3


def first_output(sess: Any, z: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run(None, {"z": z})[0])


def cuda_session(path: Path, **options: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    opts = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC", **options}
    sess = ort.InferenceSession(str(path), so, providers=[(PROVIDER, opts) if PROVIDER == CUDA else PROVIDER])
    if sess.get_providers()[0] != PROVIDER:
        raise RuntimeError(f"{path} got {sess.get_providers()}, not {PROVIDER}")
    return sess


def bench_generator(
    models: Path, resolutions: list[int], batches: list[int], seconds: float, report: dict[str, Any]
) -> None:
    import onnxruntime as ort

    rows = report.setdefault("generator", [])
    parity = report.setdefault("parity", [])
    z_dim = read_manifest(models / "bench").z_dim
    for res in resolutions:
        outs: dict[str, np.ndarray] = {}
        for name in graphs(models):
            sess = cuda_session(models / name / f"G_{res}.onnx")
            for b in batches:
                z = np.random.default_rng(b).standard_normal((b, z_dim), dtype=np.float32)
                row: dict[str, Any] = dict(graph=name, res=res, batch=b)
                row["run_ms"] = median_ms(partial(sess.run, None, {"z": z}), seconds)
                io = sess.io_binding()
                io.bind_cpu_input("z", z)
                io.bind_output("image", "cpu")
                row["bind_host_out_ms"] = median_ms(partial(sess.run_with_iobinding, io), seconds)
                zd = ort.OrtValue.ortvalue_from_numpy(z, DEVICE, 0)
                img = ort.OrtValue.ortvalue_from_shape_and_type((b, res, res, 3), np.uint8, DEVICE, 0)
                iod = sess.io_binding()
                iod.bind_ortvalue_input("z", zd)
                iod.bind_ortvalue_output("image", img)
                row["bind_device_ms"] = median_ms(partial(sess.run_with_iobinding, iod), seconds)
                row["images_s_run"] = b / row["run_ms"] * 1e3
                row["images_s_device"] = b / row["bind_device_ms"] * 1e3
                rows.append(row)
                print(
                    f"  {name:8s} res {res:4d} batch {b:3d}: run {row['run_ms']:7.3f} ms  bind host out "
                    f"{row['bind_host_out_ms']:7.3f}  on device {row['bind_device_ms']:7.3f} ms  "
                    f"({row['images_s_run']:8.0f} / {row['images_s_device']:8.0f} images/s)",
                    flush=True,
                )
            zp = np.random.default_rng(7).standard_normal((64, z_dim), dtype=np.float32)
            outs[name] = sess.run(None, {"z": zp})[0].astype(np.int16)
        for name in graphs(models)[1:]:
            d = np.abs(outs["bench"] - outs[name])
            parity.append(
                dict(graph=name, res=res, samples=64, max_grey=int(d.max()), mean_grey=float(d.mean()))
            )
            print(f"  {name} vs bench at {res}: max |diff| {int(d.max())}, mean {d.mean():.4f} grey levels")


def bench_algos(
    models: Path, resolutions: list[int], batches: list[int], seconds: float, report: dict[str, Any]
) -> None:
    """Each cuDNN algorithm search and layout: ms per run at each batch, and the rows the service would pad
    every run to (its start-up probe, sessions.probe_min_rows, with FACES_MAX_BATCH 64): 1 means a row's
    image does not depend on the batch it ran in, 64 that cuDNN picked algorithms that differ by batch."""
    from service.inference.sessions import probe_min_rows

    z_dim = read_manifest(models / "bench").z_dim
    rows = report.setdefault("algos", [])
    for res in resolutions:
        for name in graphs(models):
            for search in ("DEFAULT", "HEURISTIC", "EXHAUSTIVE"):
                for nhwc in ("0", "1"):
                    row: dict[str, Any] = dict(graph=name, res=res, search=search, prefer_nhwc=nhwc)
                    try:
                        sess = cuda_session(
                            models / name / f"G_{res}.onnx", cudnn_conv_algo_search=search, prefer_nhwc=nhwc
                        )
                        for b in batches:
                            z = np.random.default_rng(b).standard_normal((b, z_dim), dtype=np.float32)
                            row[f"ms_b{b}"] = median_ms(partial(sess.run, None, {"z": z}), seconds)
                        row["min_rows"] = probe_min_rows(
                            partial(first_output, sess), z_dim, res, max(batches)
                        )
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    rows.append(row)
                    print(
                        f"  {name:8s} res {res:4d} {search:10s} nhwc {nhwc}: "
                        + "  ".join(f"b{b} {row.get(f'ms_b{b}', float('nan')):7.3f} ms" for b in batches)
                        + f"  padded to {row.get('min_rows', '?')} rows {row.get('error', '')}",
                        flush=True,
                    )


def bench_variance(models: Path, resolutions: list[int], report: dict[str, Any]) -> None:
    """How much a row's image depends on the batch it runs in (cuDNN's HEURISTIC search picks per shape):
    64 latents run as one batch of 64, as four of 16 and as 64 of one; differing values and the largest
    difference in grey levels, against the batch of 64."""
    z_dim = read_manifest(models / "bench").z_dim
    rows = report.setdefault("batch_variance", [])
    z = np.random.default_rng(11).standard_normal((64, z_dim), dtype=np.float32)
    for res in resolutions:
        for name in graphs(models):
            sess = cuda_session(models / name / f"G_{res}.onnx")
            ref = sess.run(None, {"z": z})[0].astype(np.int16)
            for k in (16, 1):
                out = np.concatenate([sess.run(None, {"z": z[i : i + k]})[0] for i in range(0, 64, k)])
                d = np.abs(out.astype(np.int16) - ref)
                row = dict(
                    graph=name, res=res, runs_of=k, max_grey=int(d.max()), frac_differ=float((d > 0).mean())
                )
                rows.append(row)
                print(f"  {name:8s} res {res:4d} runs of {k:2d} vs 64: {row}", flush=True)


def bench_cuda_graph(models: Path, res: int, seconds: float, report: dict[str, Any]) -> None:
    """Batch 1 replayed as one CUDA graph (onnxruntime's enable_cuda_graph: fixed shapes, IOBinding)."""
    import onnxruntime as ort

    z_dim = read_manifest(models / "bench").z_dim
    out = report.setdefault("cuda_graph", [])
    for name in graphs(models):
        sess = cuda_session(models / name / f"G_{res}.onnx", enable_cuda_graph="1")
        z = ort.OrtValue.ortvalue_from_numpy(np.ones((1, z_dim), np.float32), DEVICE, 0)
        img = ort.OrtValue.ortvalue_from_shape_and_type((1, res, res, 3), np.uint8, DEVICE, 0)
        io = sess.io_binding()
        io.bind_ortvalue_input("z", z)
        io.bind_ortvalue_output("image", img)
        ms = median_ms(partial(sess.run_with_iobinding, io), seconds)
        out.append(dict(graph=name, res=res, batch=1, cuda_graph_ms=ms))
        print(f"  {name:8s} res {res:4d} batch 1: CUDA graph replay {ms:7.3f} ms", flush=True)


MEMORY_OPTIONS: dict[str, dict[str, str]] = {  # CUDA provider options, as FACES_* settings set them
    "defaults": {},
    "cudnn workspace capped": {"cudnn_conv_use_max_workspace": "0"},
    "arena same-as-requested": {"arena_extend_strategy": "kSameAsRequested"},
    "both": {"cudnn_conv_use_max_workspace": "0", "arena_extend_strategy": "kSameAsRequested"},
}


def memory_child(
    models: Path, graph: str, resolutions: list[int], batches: list[int], opts: str, provider: str
) -> int:
    """One process as a service worker holds a model: a session per resolution, runs at each batch; prints
    {"ms": {res: {batch: ms}}, "gpu_mib": this process's GPU memory} as one JSON line."""
    global PROVIDER
    PROVIDER = provider
    z_dim = read_manifest(models / graph).z_dim
    sessions = {r: cuda_session(models / graph / f"G_{r}.onnx", **json.loads(opts)) for r in resolutions}
    ms: dict[str, dict[str, float]] = {}
    for r, sess in sessions.items():
        for b in batches:
            z = np.random.default_rng(b).standard_normal((b, z_dim), dtype=np.float32)
            ms.setdefault(str(r), {})[str(b)] = median_ms(partial(sess.run, None, {"z": z}), 0.3)
    print(json.dumps({"ms": ms, "gpu_mib": gpu_memory_mib().get(str(os.getpid()))}))
    return 0


def bench_memory(models: Path, resolutions: list[int], batches: list[int], report: dict[str, Any]) -> None:
    """GPU memory of one process holding a model's sessions after runs at every batch, and their speed,
    under each of MEMORY_OPTIONS (a fresh process each: the arena never gives memory back)."""
    rows = report.setdefault("memory", [])
    for graph in [g for g in graphs(models) if g != "bench16"]:
        for label, opts in MEMORY_OPTIONS.items():
            cmd = [sys.executable, __file__, "memory-child", "--models", str(models), "--graph", graph]
            cmd += ["--provider", PROVIDER]
            cmd += [
                "--res",
                *map(str, resolutions),
                "--batches",
                *map(str, batches),
                "--opts",
                json.dumps(opts),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"memory-child {graph} {label}: {out.stderr[-500:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            top = str(max(resolutions))
            row = dict(graph=graph, options=label, gpu_mib=got["gpu_mib"])
            row.update({f"ms_{top}_b{b}": got["ms"][top][str(b)] for b in batches})
            rows.append(row)
            print(
                f"  {graph:8s} {label:26s}: {got['gpu_mib']} MiB; at {top} px {got['ms'][top]} ms", flush=True
            )


def bench_encode(res: int, seconds: float, report: dict[str, Any]) -> None:
    import onnxruntime as ort

    from service.inference import encoding

    folder = Path(report["args"]["models"]) / "bench"
    z_dim = read_manifest(folder).z_dim
    sess = ort.InferenceSession(str(folder / f"G_{res}.onnx"), providers=["CPUExecutionProvider"])
    image = sess.run(None, {"z": np.random.default_rng(0).standard_normal((1, z_dim), dtype=np.float32)})[0][
        0
    ]
    rows = report.setdefault("encode", [])
    for fmt in ("png", "jpeg"):
        ms = median_ms(partial(encoding.encode_still, image, fmt, 90, 1), seconds)
        size = len(encoding.encode_still(image, fmt, 90, 1))
        rows.append(dict(format=fmt, res=res, ms=ms, bytes=size, per_core_images_s=1e3 / ms))
        print(f"  encode {fmt:4s} {res} px: {ms:.3f} ms on one core ({size} bytes)", flush=True)


# ---------------------------------------------------------------------------- HTTP load


async def _client(
    url: str, res: int, conns: int, fmt: str, n: int, start: float, warm: float, stop: float
) -> Any:
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    lat: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        rng = random.Random()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.time() < stop:
                t = time.time()
                path = f"/generate?res={res}&seed={rng.randrange(2**32)}&format={fmt}" + (
                    f"&n={n}" if n > 1 else ""
                )
                status, _, _ = await post(reader, writer, f"{host}:{port}", path)
                done = time.time()
                if t >= start + warm and done <= stop:
                    lat.append(done - t)
                    errors += status != 200
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return lat, errors


def client_proc(
    url: str, res: int, conns: int, fmt: str, n: int, start: float, warm: float, stop: float
) -> Any:
    while time.time() < start:
        time.sleep(0.001)
    try:
        import uvloop

        return uvloop.run(_client(url, res, conns, fmt, n, start, warm, stop))
    except ImportError:
        return asyncio.run(_client(url, res, conns, fmt, n, start, warm, stop))


def load(
    pool: ProcessPoolExecutor,
    procs: int,
    url: str,
    res: int,
    conc: int,
    fmt: str,
    seconds: float,
    warm: float,
    n: int = 1,
) -> dict[str, Any]:
    """One load cell: `conc` connections each asking for `n` images per request; images/s counts images."""
    procs = min(procs, conc)
    share = [conc // procs + (i < conc % procs) for i in range(procs)]
    start = time.time() + 0.5
    stop = start + warm + seconds
    futs = [pool.submit(client_proc, url, res, c, fmt, n, start, warm, stop) for c in share]
    lat: list[float] = []
    errors = 0
    for f in futs:
        part, e = f.result()
        lat += part
        errors += e
    ms = np.array(lat) * 1e3
    return dict(
        res=res,
        format=fmt,
        concurrency=conc,
        n=n,
        client_procs=procs,
        requests=len(ms),
        errors=errors,
        requests_s=(len(ms) - errors) / seconds,  # answered with 200
        images_s=n * (len(ms) - errors) / seconds,
        p50_ms=float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        p99_ms=float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    )


def nvidia_smi(*args: str) -> str:
    """nvidia-smi's output (its error text if it printed nothing); OSError or SubprocessError if it cannot
    run."""
    out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    return out.stdout.strip() or out.stderr.strip()


def gpu_memory_mib() -> dict[str, int]:
    """{pid: MiB} of the processes holding GPU memory (nvidia-smi); {} where it cannot tell."""
    try:
        out = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [line.split(",") for line in out.splitlines() if "," in line]
    return {pid.strip(): int(mib) for pid, mib in rows if mib.strip().isdigit()}


def providers_of(url: str) -> dict[str, dict[str, str]]:
    """{model: {res: provider}} as GET /models reports them."""
    with urllib.request.urlopen(f"{url}/models", timeout=10) as r:
        return {m["name"]: m["providers"] for m in json.load(r)["models"]}


def pick_cuda_settings(report: dict[str, Any]) -> dict[str, str]:
    """FACES_CUDNN_CONV_ALGO_SEARCH of the fastest search (NCHW, the service's layout) at the top resolution
    and largest batch among those whose runs need no padding in any graph and resolution (min_rows 1);
    {} if none does."""
    rows = [r for r in report.get("algos", []) if "error" not in r and r["prefer_nhwc"] == "0"]
    if not rows:
        return {}
    searches = {r["search"] for r in rows}
    unpadded = [k for k in searches if all(r["min_rows"] == 1 for r in rows if r["search"] == k)]
    if not unpadded:
        return {}
    top = max(r["res"] for r in rows)
    big = max(int(k[4:]) for k in rows[0] if k.startswith("ms_b"))

    def cost(k: str) -> float:
        return sum(r[f"ms_b{big}"] for r in rows if r["search"] == k and r["res"] == top)

    return {"FACES_CUDNN_CONV_ALGO_SEARCH": min(unpadded, key=cost)}


def bench_service(models: Path, args: argparse.Namespace, report: dict[str, Any]) -> None:
    base = {
        "FACES_MODEL_DIR": str(models),
        "FACES_PROVIDERS": PROVIDER,
        "FACES_REQUIRE_PROVIDER": "true",
        "FACES_LOG_LEVEL": "warning",
        "FACES_MAX_BATCH": str(args.max_batch),
        "FACES_MAX_WAIT_MS": str(args.max_wait_ms),
        **dict(item.split("=", 1) for item in args.env),
    }
    servers = [  # (label, settings)
        ("1 worker, batching on", {"FACES_BATCHING": "on", "FACES_ENCODE_THREADS": "6"}),
        ("1 worker, batching off", {"FACES_BATCHING": "off", "FACES_ENCODE_THREADS": "6"}),
    ] + [
        (
            f"{w} workers, batching on",
            {"FACES_BATCHING": "on", "FACES_WORKERS": str(w), "FACES_ENCODE_THREADS": "2"},
        )
        for w in args.workers
    ]
    best = pick_cuda_settings(report)
    if best:
        print(f"  servers run with {best} (the fastest unpadded choice above)", flush=True)
        base.update(best)
        report["server_settings"] = best
    rows = report.setdefault("load", [])
    checks = report.setdefault("providers", {})
    ctx = get_context("spawn")
    with ProcessPoolExecutor(args.client_procs, mp_context=ctx) as pool:
        list(pool.map(time.sleep, [0.01] * args.client_procs))  # start the client processes now
        for model in graphs(models):
            for label, extra in servers:
                if model != "bench" and label != servers[-1][0]:
                    continue  # the other graph forms: on the last (most workers) server only
                env = {**base, "FACES_DEFAULT_MODEL": model, **extra}
                t0 = time.perf_counter()
                try:
                    proc, url = start_service(env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                except ServiceStartError as exc:
                    print(f"  {model} {label}: did not start: {exc}", flush=True)
                    report.setdefault("errors", []).append(f"{model} {label}: {exc}")
                    continue
                ready_s = time.perf_counter() - t0
                try:
                    provs = providers_of(url)
                    checks[f"{model} / {label}"] = dict(ready_s=ready_s, providers=provs)
                    print(
                        f"  {model} {label}: ready in {ready_s:.1f} s; /models providers {provs}", flush=True
                    )
                    cells = [
                        (fmt, conc, n)
                        for fmt in args.formats
                        for conc in args.concurrency
                        for n in args.n
                        # batching off at c=1 is the same path as on; several images a request: at the
                        # highest concurrency, where throughput is measured
                        if not ("off" in label and conc == 1)
                        and (n == 1 or (conc == max(args.concurrency) and "off" not in label))
                    ]
                    for fmt, conc, n in cells:
                        row = load(pool, args.client_procs, url, 256, conc, fmt, args.seconds, args.warmup, n)
                        row.update(graph=model, server=label)
                        rows.append(row)
                        print(
                            f"  {model:8s} {label:24s} {fmt:4s} c {conc:3d} n {n:2d}: "
                            f"{row['images_s']:8.0f} images/s  p50 {row['p50_ms']:7.2f}  "
                            f"p99 {row['p99_ms']:7.2f} ms  ({row['requests']} req, {row['errors']} errors)",
                            flush=True,
                        )
                    mem = {k: v for k, v in gpu_memory_mib().items() if k != str(os.getpid())}
                    report.setdefault("gpu_memory_mib", {})[f"{model} / {label}"] = mem
                    print(f"  GPU memory of the server's processes (MiB, by pid): {mem}", flush=True)
                    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
                        text = r.read().decode()
                    keep = [x for x in text.splitlines() if x.startswith("faces_") and "_bucket{" not in x]
                    report.setdefault("metrics", {})[f"{model} / {label}"] = keep
                finally:
                    stop_service(proc, timeout=60)


# ---------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        return (
            f"{v:.3g}"
            if isinstance(v, float) and abs(v) < 100
            else (f"{v:.0f}" if isinstance(v, float) else str(v))
        )

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def gpu_name() -> str:
    try:
        return nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"


def run(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    global PROVIDER, DEVICE
    PROVIDER, DEVICE = args.provider, "cuda" if args.provider == CUDA else "cpu"

    report: dict[str, Any] = {
        "gpu": gpu_name(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
    }
    print(f"# serve_gpu on {report['gpu']}; onnxruntime {ort.__version__} {report['available_providers']}")

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    parts: list[tuple[str, Callable[[], None]]] = [
        ("algos", lambda: bench_algos(args.models, args.res, args.batches, args.gen_seconds, report)),
        ("generator", lambda: bench_generator(args.models, args.res, args.batches, args.gen_seconds, report)),
        ("variance", lambda: bench_variance(args.models, args.res, report)),
        ("memory", lambda: bench_memory(args.models, args.res, args.batches, report)),
        ("cuda-graph", lambda: bench_cuda_graph(args.models, 256, args.gen_seconds, report)),
        ("encode", lambda: bench_encode(256, 1.0, report)),
        ("service", lambda: bench_service(args.models, args, report)),
    ]
    for name, part in parts:
        if name in args.skip:
            continue
        print(f"\n## {name}", flush=True)
        t0 = time.perf_counter()
        try:
            part()
        except Exception as exc:  # one part's failure must not lose the others' figures
            traceback.print_exc()
            report.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        save()
    print()
    if report.get("generator"):
        print(
            table(
                report["generator"],
                [
                    "graph",
                    "res",
                    "batch",
                    "run_ms",
                    "bind_host_out_ms",
                    "bind_device_ms",
                    "images_s_run",
                    "images_s_device",
                ],
            )
        )
    if report.get("load"):
        print()
        print(
            table(
                report["load"],
                ["graph", "server", "format", "concurrency", "n", "images_s", "p50_ms", "p99_ms", "errors"],
            )
        )
    save()
    return 1 if report.get("errors") else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    b = sub.add_parser("build", help="export the bench models (needs torch)")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--res", type=int, nargs="+", default=[64, 128, 256])
    b.add_argument("--checkpoint", help="a trained generator's checkpoint (default: fresh weights)")
    b.set_defaults(func=lambda a: build(a.out, a.res, a.checkpoint))
    r = sub.add_parser("run", help="measure on this host's GPU")
    r.add_argument("--models", type=Path, required=True, help="folder holding bench/ (and bench16/, benchT/)")
    r.add_argument("--res", type=int, nargs="+", default=[64, 128, 256])
    r.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    r.add_argument("--gen-seconds", type=float, default=0.5)
    r.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    r.add_argument("--formats", nargs="+", default=["png", "jpeg"])
    r.add_argument("--seconds", type=float, default=3.0, help="measured seconds per load cell")
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--max-batch", type=int, default=64, help="FACES_MAX_BATCH of the servers")
    r.add_argument("--max-wait-ms", type=float, default=2.0)
    r.add_argument(
        "--workers", type=int, nargs="+", default=[4], help="FACES_WORKERS of the multi-worker servers"
    )
    r.add_argument("--n", type=int, nargs="+", default=[1], help="images per request (n > 1: JSON)")
    r.add_argument("--client-procs", type=int, default=4)
    r.add_argument(
        "--env", action="append", default=[], metavar="FACES_X=V", help="a setting for every server"
    )
    r.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="parts to leave out: algos, generator, variance, memory, cuda-graph, encode, service",
    )
    r.add_argument("--provider", default=CUDA, help="CPUExecutionProvider: check this script without a GPU")
    r.add_argument("--json", type=Path)
    r.set_defaults(func=run)
    m = sub.add_parser("memory-child", help="(internal) one process's GPU memory for `run`'s memory part")
    m.add_argument("--models", type=Path, required=True)
    m.add_argument("--graph", required=True)
    m.add_argument("--res", type=int, nargs="+", required=True)
    m.add_argument("--batches", type=int, nargs="+", required=True)
    m.add_argument("--opts", default="{}", help="CUDA provider options as JSON")
    m.add_argument("--provider", default=CUDA)
    m.set_defaults(func=lambda a: memory_child(a.models, a.graph, a.res, a.batches, a.opts, a.provider))
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
