"""Overload: bounded queues refuse a request with 503 + Retry-After before any of its rows is queued."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.errors import Overloaded
from service.inference.batching import InferenceScheduler, MicroBatcher
from service.main import create_app


class GatedGraph:
    """A stand-in run function: each run blocks until `gate` is open, then sleeps `per_row` seconds a row
    and returns `inner(z)` (the input itself by default). `started` counts the runs that began."""

    def __init__(self, per_row: float = 0.0, inner: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.per_row = per_row
        self.inner = inner
        self.started = 0
        self.runs: list[int] = []  # rows of each run that finished
        self.lock = threading.Lock()

    def __call__(self, z: np.ndarray) -> np.ndarray:
        with self.lock:
            self.started += 1
        assert self.gate.wait(10), "the test never opened the gate"
        time.sleep(self.per_row * len(z))
        with self.lock:
            self.runs.append(len(z))
        return z.copy() if self.inner is None else self.inner(z)


class Depth:
    """Stands in for the faces_queue_depth gauge: its value, and the lowest value it ever had."""

    def __init__(self) -> None:
        self.value = 0
        self.low = 0
        self.lock = threading.Lock()

    def __call__(self, delta: int) -> None:
        with self.lock:
            self.value += delta
            self.low = min(self.low, self.value)


def bounded(
    scheduler: InferenceScheduler,
    run: GatedGraph,
    depth: Depth,
    rejected: list[str],
    max_queue_rows: int = 0,
    max_queue_wait_s: float = 0.0,
) -> MicroBatcher:
    return scheduler.batcher(
        run,
        max_batch=4,
        max_wait_s=0.0,
        batching=True,
        observe=lambda *_: None,
        queue_depth=depth,
        rejected=rejected.append,
        max_queue_rows=max_queue_rows,
        max_queue_wait_s=max_queue_wait_s,
        name="model 'm' at 16x16",
    )


def rows(n: int, first: float = 0.0) -> np.ndarray:
    return np.array([[first + i, 0.0] for i in range(n)], np.float32)


async def occupy(b: MicroBatcher, graph: GatedGraph) -> asyncio.Future[np.ndarray]:
    """Close the gate and start a one-row run: the (single) thread is busy, so what follows stays queued."""
    graph.gate.clear()
    before = graph.started
    busy = asyncio.ensure_future(b.infer(rows(1, -1.0)))
    deadline = time.monotonic() + 10
    while graph.started == before:
        assert time.monotonic() < deadline, "the run never started"
        await asyncio.sleep(0.001)
    return busy


async def queue(b: MicroBatcher, *sizes: int) -> list[asyncio.Future[np.ndarray]]:
    """Submit requests of these sizes, in this order, and return once all are queued."""
    jobs: list[asyncio.Future[np.ndarray]] = [asyncio.ensure_future(b.infer(rows(n))) for n in sizes]
    await asyncio.sleep(0)  # each task runs up to its first await: submit() has queued it
    return jobs


def test_the_row_bound_refuses_exactly_the_request_that_would_pass_it() -> None:
    graph, depth = GatedGraph(), Depth()
    rejected: list[str] = []

    async def main() -> None:
        scheduler = InferenceScheduler(1)
        b = bounded(scheduler, graph, depth, rejected, max_queue_rows=8)
        scheduler.start()
        busy = await occupy(b, graph)
        jobs = await queue(b, 3, 4)  # 7 rows queued
        with pytest.raises(Overloaded) as refused:
            await b.infer(rows(2))  # 9 > 8
        assert b.rows == 7 and depth.value == 7  # nothing of it was queued, nothing released
        jobs += await queue(b, 1)  # 8 rows: exactly the bound
        assert b.rows == 8 and depth.value == 8 and rejected == ["queue_rows"]
        graph.gate.set()
        await asyncio.gather(busy, *jobs)
        again = await b.infer(rows(2, 5.0))  # the same request, once the queue has drained
        assert again[:, 0].tolist() == [5.0, 6.0]
        await scheduler.stop()

        error = refused.value
        assert error.status_code == 503
        assert error.headers == {"Retry-After": "1"}  # no run measured yet: the shortest retry
        assert "over capacity" in error.detail and "model 'm' at 16x16" in error.detail
        assert "7 rows queued" in error.detail and "FACES_MAX_QUEUE_ROWS=8" in error.detail

    asyncio.run(main())
    assert sum(graph.runs) == 1 + 8 + 2  # the refused request ran only when sent again
    assert depth.value == 0 and depth.low == 0


def test_an_empty_queue_admits_a_request_of_any_size() -> None:
    graph, depth = GatedGraph(), Depth()
    rejected: list[str] = []

    async def main() -> None:
        scheduler = InferenceScheduler(1)
        b = bounded(scheduler, graph, depth, rejected, max_queue_rows=2, max_queue_wait_s=0.001)
        with scheduler.cond:
            b.timed(1, 10.0)  # a row costs 10 s: any queued row is past the wait bound
        scheduler.start()
        busy = await occupy(b, graph)
        jobs = await queue(b, 10)  # 5x the row bound, in 3 chunks of max_batch 4: admitted, queue empty
        assert b.rows == 10 and depth.value == 10
        for n in (6, 1):  # now neither a chunked request nor a single row gets in
            with pytest.raises(Overloaded):
                await b.infer(rows(n))
        assert b.rows == 10 and depth.value == 10
        graph.gate.set()
        await asyncio.gather(busy, *jobs)
        await scheduler.stop()

    asyncio.run(main())
    assert rejected == ["queue_rows", "queue_rows"]  # the row bound is checked first
    assert graph.runs == [1, 4, 4, 2]
    assert depth.value == 0 and depth.low == 0


def test_the_wait_bound_uses_the_measured_run_time() -> None:
    graph, depth = GatedGraph(per_row=0.1), Depth()
    rejected: list[str] = []

    async def main() -> None:
        scheduler = InferenceScheduler(1)
        b = bounded(scheduler, graph, depth, rejected, max_queue_wait_s=1.0)
        scheduler.start()
        await b.infer(rows(4))  # one run of 4 rows, ~0.4 s: ~0.1 s a row
        per_row = b.seconds_per_row()
        assert 0.1 <= per_row < 0.125  # sleeping never takes less; the margin is for a busy machine
        busy = await occupy(b, graph)
        jobs = await queue(b, 4, 4, 4)  # waits ahead of them: 0, 0.4 and 0.8 s; all admitted
        assert b.rows == 12 and not rejected
        assert scheduler.expected_wait() == pytest.approx(12 * per_row)  # 1.2 s
        with pytest.raises(Overloaded) as refused:
            await b.infer(rows(1))
        assert rejected == ["queue_wait"] and b.rows == 12 and depth.value == 12
        assert refused.value.headers == {"Retry-After": "2"}  # 1.2 s, rounded up
        assert "FACES_MAX_QUEUE_WAIT_MS=1000" in refused.value.detail
        graph.per_row = 0.0  # drain quickly
        graph.gate.set()
        await asyncio.gather(busy, *jobs)
        await scheduler.stop()

    asyncio.run(main())
    assert depth.value == 0 and depth.low == 0


def test_retry_after_grows_with_the_queue_of_every_graph() -> None:
    graph_a, graph_b = GatedGraph(), GatedGraph()
    depth = Depth()
    rejected: list[str] = []

    async def main() -> list[int]:
        scheduler = InferenceScheduler(1)
        a = bounded(scheduler, graph_a, depth, rejected, max_queue_rows=4)
        b = bounded(scheduler, graph_b, depth, [])  # unbounded
        with scheduler.cond:
            a.timed(4, 2.0)  # 0.5 s a row
            b.timed(4, 1.0)  # 0.25 s a row
        scheduler.start()
        busy = await occupy(a, graph_a)  # the one thread is busy with a's run, so b's rows wait too
        jobs = await queue(a, 4)
        retries = []
        for more in (0, 8, 8):  # b's queue holds 0, 8, then 16 rows at each refusal on a
            jobs += await queue(b, *[4] * (more // 4))
            with pytest.raises(Overloaded) as refused:
                await a.infer(rows(1))
            assert refused.value.headers is not None
            retries.append(int(refused.value.headers["Retry-After"]))
        assert depth.value == 4 + 16
        graph_a.gate.set()
        await asyncio.gather(busy, *jobs)
        await scheduler.stop()
        return retries

    # a's 4 rows at 0.5 s, plus b's 0, 8, 16 rows at 0.25 s
    assert asyncio.run(main()) == [2, 4, 6]
    assert rejected == ["queue_rows"] * 3
    assert depth.value == 0 and depth.low == 0


def test_the_expected_wait_is_shared_among_the_threads() -> None:
    waits = []
    for threads in (1, 2):
        scheduler = InferenceScheduler(threads)
        b = bounded(scheduler, GatedGraph(), Depth(), [])
        with scheduler.cond:
            b.timed(2, 1.0)
            b.rows = 6  # as if queued; the scheduler is not started
            waits.append(scheduler.expected_wait())
    assert waits == [3.0, 1.5]


# ---------------------------------------------------------------------------- through HTTP


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_over_capacity_requests_get_503_with_retry_after(
    models_root: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(models_root, max_queue_rows=2)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(8) as pool:
        batcher = client.app.state.pipeline.repo.models["tiny"].batchers[16]  # type: ignore[attr-defined]
        graph = GatedGraph(inner=batcher.run)
        batcher.run = graph
        graph.gate.clear()
        first = pool.submit(client.post, "/generate?res=16&seed=1")
        deadline = time.monotonic() + 30
        while graph.started == 0:  # the one inference thread is now busy with it
            assert time.monotonic() < deadline, "the first request never ran"
            time.sleep(0.005)
        rest: list[Future] = [pool.submit(client.post, f"/generate?res=16&seed={s}") for s in range(2, 8)]
        # 2 of the 6 fit in the queue of 2 rows; the other 4 are answered at once, while the gate is shut
        while sum(f.done() for f in rest) < 4:
            assert time.monotonic() < deadline, "the refusals did not come"
            time.sleep(0.005)
        assert metric(client, "faces_queue_depth", model="tiny", res="16") == 2
        graph.gate.set()
        responses = [first.result(30)] + [f.result(30) for f in rest]

        served = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 503]
        assert len(served) == 3 and len(refused) == 4
        assert all(r.headers["content-type"] == "image/png" for r in served)
        for r in refused:
            assert int(r.headers["Retry-After"]) >= 1
            detail = r.json()["detail"]
            assert "over capacity" in detail and "model 'tiny' at 16x16" in detail
            assert "FACES_MAX_QUEUE_ROWS=2" in detail
        rejected = "faces_rejected_requests_total"
        assert metric(client, rejected, model="tiny", res="16", reason="queue_rows") == 4
        assert metric(client, rejected, reason="queue_wait") == 0
        assert metric(client, "faces_http_requests_total", route="/generate", status="503") == 4
        assert metric(client, "faces_queue_depth") == 0
        assert sum(graph.runs) == 3  # the refused requests never ran
