"""CPU per request on the service's Python path, against bare framework floors, in one process.

    python bench/request_path.py [--requests 3000] [--concurrency 1 32] [--json out.json]

On a GPU host the service's throughput is set by the CPU each request costs its worker's event loop (docs/
benchmarks.md, "GPU: the service on an NVIDIA H100"), not by the generator. This bench drives ASGI apps
directly (no sockets, no HTTP parsing: what uvicorn adds is the same for every row) and reports CPU time per
request (all threads of the process: the event loop, the inference and encode threads):

- `starlette`: a bare Starlette route returning fixed bytes, the floor of any ASGI app;
- `fastapi`: the same route in FastAPI;
- `fastapi + sync dep` / `+ async dep`: one dependency reading app.state, as a plain `def` (FastAPI runs
  it on its thread pool) and as `async def`;
- `fastapi + params`: the service's own query and body models (GenerateQuery, GenerateRequest), fixed bytes;
- `service`: the real app, POST /generate?res=4&seed=i&format=jpeg, on the committed 4-16 px test model
  (its run and encoding cost microseconds, so the row is the request path) with batching on;
- the pieces: z for one seed, one 4 px run in onnxruntime, one 4 px JPEG.
Ratios are against `starlette` in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi import Body, Depends, FastAPI, Query, Request  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from contract import z_for_seeds  # noqa: E402
from scripts.make_service_fixture import DEFAULT_OUT as FIXTURE  # noqa: E402  the committed test model
from service.config import Settings  # noqa: E402
from service.inference import encoding  # noqa: E402
from service.main import create_app  # noqa: E402
from service.schemas import GenerateQuery, GenerateRequest  # noqa: E402

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
BODY = b"\xff\xd8" + bytes(600)  # about a 4 px JPEG


async def call(app: ASGIApp, path: str, query: str) -> int:
    """One POST through the ASGI interface; the response status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"bench"), (b"content-length", b"0")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "app": app,
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # never: the request is complete
        return {}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def fixed_jpeg() -> Response:
    return Response(BODY, media_type="image/jpeg")


async def route_plain() -> Response:
    return fixed_jpeg()


def sync_dep(request: Request) -> object:
    return request.app.state.thing


async def async_dep(request: Request) -> object:
    return request.app.state.thing


# module level: the routes' string annotations (PEP 563) are resolved in this module's globals
async def route_sync_dep(thing: Annotated[object, Depends(sync_dep)]) -> Response:
    return fixed_jpeg()


async def route_async_dep(thing: Annotated[object, Depends(async_dep)]) -> Response:
    return fixed_jpeg()


async def route_params(
    query: Annotated[GenerateQuery, Query()], body: Annotated[GenerateRequest | None, Body()] = None
) -> Response:
    GenerateRequest.merged(query, body)
    return fixed_jpeg()


def floors() -> dict[str, ASGIApp]:
    async def fixed(request: Any) -> Response:
        return fixed_jpeg()

    apps: dict[str, ASGIApp] = {"starlette": Starlette(routes=[Route("/generate", fixed, methods=["POST"])])}

    plain = FastAPI()
    plain.post("/generate")(route_plain)
    apps["fastapi"] = plain

    for name, route in (("fastapi + sync dep", route_sync_dep), ("fastapi + async dep", route_async_dep)):
        app = FastAPI()
        app.state.thing = object()
        app.post("/generate")(route)
        apps[name] = app

    params = FastAPI()
    params.post("/generate")(route_params)
    apps["fastapi + params"] = params
    return apps


async def load(app: ASGIApp, requests: int, concurrency: int) -> dict[str, float]:
    """`requests` POSTs, `concurrency` at a time; CPU and wall time per request."""
    seeds = iter(range(10**9))

    async def worker(n: int) -> None:
        for _ in range(n):
            status = await call(app, "/generate", f"res=4&seed={next(seeds)}&format=jpeg")
            assert status == 200, status

    per = requests // concurrency
    await asyncio.gather(*(worker(10) for _ in range(concurrency)))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    n = per * concurrency
    return {
        "cpu_us": (time.process_time() - cpu) / n * 1e6,
        "wall_us": (time.perf_counter() - wall) / n * 1e6,
    }


def piece(fn: Callable[[], object], repeat: int = 2000) -> float:
    """CPU microseconds per call."""
    for _ in range(20):
        fn()
    t = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t) / repeat * 1e6


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = Settings(
        model_dir=FIXTURE,
        default_model="tiny",
        providers=["CPUExecutionProvider"],
        intra_op_threads=1,
        playground=False,
    )
    service = create_app(settings)
    rows: list[dict[str, Any]] = []
    async with service.router.lifespan_context(service):
        apps: dict[str, ASGIApp] = {**floors(), "service": service}
        for c in args.concurrency:
            base = None
            for name, app in apps.items():
                r = await load(app, args.requests, c)
                base = base or r["cpu_us"]
                rows.append({"app": name, "concurrency": c, **r, "x_starlette": r["cpu_us"] / base})
                print(
                    f"  {name:22s} c {c:3d}: {r['cpu_us']:8.1f} us CPU/request  {r['wall_us']:8.1f} us wall",
                    flush=True,
                )
        model = service.state.pipeline.repo.models["tiny"]
        graph = model.graphs[4]
        z = z_for_seeds([1], model.z_dim, None)
        image = graph.run(z)[0]
        for name, fn in (
            ("z for one seed", lambda: z_for_seeds([7], model.z_dim, None)),
            ("onnxruntime run, 1 row at 4 px", lambda: graph.run(z)),
            ("JPEG of one 4 px image", lambda: encoding.encode_still(image, "jpeg", 90, 1)),
        ):
            us = piece(fn)
            rows.append({"app": name, "concurrency": 1, "cpu_us": us, "wall_us": us, "x_starlette": None})
            print(f"  {name:32s}: {us:8.1f} us CPU", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| app | concurrency | CPU us / request | wall us / request | x starlette |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        x = "" if r["x_starlette"] is None else f"{r['x_starlette']:.1f}"
        lines.append(f"| {r['app']} | {r['concurrency']} | {r['cpu_us']:.0f} | {r['wall_us']:.0f} | {x} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = asyncio.run(main(args))
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
