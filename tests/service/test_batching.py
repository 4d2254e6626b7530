"""Micro-batching merges concurrent requests, and batched images are byte-identical to unbatched ones."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contract import z_for_seeds
from service.config import Settings
from service.inference.batching import BatcherStopped, InferenceScheduler, MicroBatcher
from service.inference.sessions import ModelRepository, probe_min_rows
from service.main import create_app
from service.metrics import Metrics

# 32 requests: seeds, sizes, formats, resolutions, truncation and explicit layouts mixed
REQUESTS = [
    f"/generate?res={(4, 8, 16)[i % 3]}&seed={1000 + 7 * i}&n={1 + i % 3}&format={('png', 'webp', 'jpeg')[i % 3]}"
    + ("&truncation=0.7" if i % 4 == 0 else "")
    + ("&layout=grid" if i % 5 == 0 else "")
    for i in range(32)
]


def run_batched_graph(
    models_root: Path, settings: Settings, sizes: list[int]
) -> tuple[list[np.ndarray], list[int], np.ndarray]:
    """Submit len(sizes) concurrent requests to one graph's batcher; results, rows per run, and z."""
    repo = ModelRepository.load(settings, InferenceScheduler(1), Metrics())
    graph = repo.get("tiny").graphs[16]
    z = z_for_seeds(range(sum(sizes)), 32)
    runs: list[int] = []
    splits = np.split(z, np.cumsum(sizes)[:-1])

    async def main() -> list[np.ndarray]:
        scheduler = InferenceScheduler(1)
        batcher = scheduler.batcher(
            graph.run,
            max_batch=settings.max_batch,
            max_wait_s=0.05,
            batching=True,
            observe=lambda rows, _: runs.append(rows),
            queue_depth=lambda _: None,
        )
        scheduler.start()
        try:
            return list(await asyncio.gather(*(batcher.infer(part) for part in splits)))
        finally:
            await scheduler.stop()

    return asyncio.run(main()), runs, z


def test_batcher_merges_and_splits(models_root: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(models_root, max_batch=8)
    sizes = [1, 3, 2, 1, 5, 1, 1, 11, 2]  # 27 rows; 11 > max_batch is split into chunks
    outs, runs, z = run_batched_graph(models_root, settings, sizes)
    assert sum(runs) == 27 and max(runs) <= 8
    assert len(runs) < len(sizes) + 1  # merged: fewer runs than chunks
    graph = ModelRepository.load(settings, InferenceScheduler(1), Metrics()).get("tiny").graphs[16]
    alone = np.concatenate([graph.run(z[i : i + 1]) for i in range(len(z))])
    assert np.array_equal(np.concatenate(outs), alone)
    assert [len(o) for o in outs] == sizes


# ---------------------------------------------------------------------------- the scheduler alone


class SlowGraph:
    """A stand-in run function that records its batches and takes `seconds` per run (like a real graph,
    it blocks its thread); row i of the output holds the input's first value, to check the split."""

    def __init__(self, seconds: float = 0.02, fail_on: float | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.runs: list[list[float]] = []
        self.lock = threading.Lock()

    def __call__(self, z: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        with self.lock:
            self.runs.append([float(v) for v in z[:, 0]])
        if self.fail_on is not None and self.fail_on in z[:, 0]:
            raise RuntimeError("graph failed")
        return np.repeat(z[:, :1], 3, axis=1).astype(np.float32)


def batcher_on(
    scheduler: InferenceScheduler,
    run: SlowGraph,
    max_wait_s: float = 0.01,
    batching: bool = True,
    observe: Callable[[int, float], None] = lambda *_: None,
) -> MicroBatcher:
    return scheduler.batcher(
        run,
        max_batch=4,
        max_wait_s=max_wait_s,
        batching=batching,
        observe=observe,
        queue_depth=lambda _: None,
    )


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values], np.float32)


def test_requests_queued_while_a_run_is_busy_form_the_next_batch() -> None:
    graph = SlowGraph(0.05)

    async def main() -> list[np.ndarray]:
        scheduler = InferenceScheduler(1)
        b = batcher_on(scheduler, graph, max_wait_s=0.0)
        scheduler.start()
        first = asyncio.ensure_future(b.infer(rows(0)))
        await asyncio.sleep(0.02)  # the first run is in progress; these queue behind it
        rest = [b.infer(rows(v)) for v in (1, 2, 3, 4, 5)]
        outs = await asyncio.gather(first, *rest)
        await scheduler.stop()
        return outs

    outs = asyncio.run(main())
    assert [float(o[0, 0]) for o in outs] == [0, 1, 2, 3, 4, 5]  # each caller gets its own rows back
    assert graph.runs == [[0], [1, 2, 3, 4], [5]]  # FIFO, max_batch 4, no wait needed


def test_a_failing_run_fails_its_callers_and_the_next_run_still_serves() -> None:
    graph = SlowGraph(0.01, fail_on=7)

    async def main() -> tuple[list[object], np.ndarray]:
        scheduler = InferenceScheduler(1)
        b = batcher_on(scheduler, graph, max_wait_s=0.05)
        scheduler.start()
        results = await asyncio.gather(b.infer(rows(7)), b.infer(rows(8)), return_exceptions=True)
        after = await b.infer(rows(9))
        await scheduler.stop()
        return list(results), after

    results, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert float(after[0, 0]) == 9


def test_cancelled_callers_are_skipped_and_stop_fails_what_is_queued() -> None:
    graph = SlowGraph(0.1)

    async def main() -> None:
        scheduler = InferenceScheduler(1)
        b = batcher_on(scheduler, graph, batching=False)
        scheduler.start()
        busy = asyncio.ensure_future(b.infer(rows(0)))
        await asyncio.sleep(0.03)
        gave_up = asyncio.ensure_future(b.infer(rows(1)))
        queued = asyncio.ensure_future(b.infer(rows(2)))
        await asyncio.sleep(0)
        gave_up.cancel()
        assert float((await busy)[0, 0]) == 0
        assert float((await queued)[0, 0]) == 2
        blocker = asyncio.ensure_future(b.infer(rows(3)))
        await asyncio.sleep(0.03)  # run of 3 in progress
        waiting = asyncio.ensure_future(b.infer(rows(4)))
        await asyncio.sleep(0)
        await scheduler.stop()  # lets the run of 3 finish, fails 4
        assert float((await blocker)[0, 0]) == 3
        with pytest.raises(BatcherStopped):
            await waiting
        with pytest.raises(BatcherStopped):
            await b.infer(rows(5))

    asyncio.run(main())
    assert graph.runs == [[0], [2], [3]]  # 1 was cancelled before its turn, 4 never ran


def test_the_oldest_request_is_served_first_across_graphs() -> None:
    graph_a, graph_b = SlowGraph(0.05), SlowGraph(0.05)
    order: list[str] = []

    async def main() -> None:
        scheduler = InferenceScheduler(1)
        a = batcher_on(scheduler, graph_a, batching=False, observe=lambda *_: order.append("a"))
        b = batcher_on(scheduler, graph_b, batching=False, observe=lambda *_: order.append("b"))
        scheduler.start()
        jobs = [asyncio.ensure_future(a.infer(rows(0)))]
        await asyncio.sleep(0.02)
        for q in (a, b, a, b):  # queued in this order behind the first run
            jobs.append(asyncio.ensure_future(q.infer(rows(1))))
            await asyncio.sleep(0.001)
        await asyncio.gather(*jobs)
        await scheduler.stop()

    asyncio.run(main())
    assert order == ["a", "a", "b", "a", "b"]


def metric_sum(client: TestClient, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def fire(client: TestClient, urls: list[str]) -> list[bytes]:
    with ThreadPoolExecutor(len(urls)) as pool:
        responses = list(pool.map(client.post, urls))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.content for r in responses]


def test_32_simultaneous_requests_match_one_by_one(
    models_root: Path, make_settings: Callable[..., Settings]
) -> None:
    with TestClient(create_app(make_settings(models_root, batching=False))) as alone:
        expected = [alone.post(url).content for url in REQUESTS]
        rows = sum(1 + i % 3 for i in range(32))
        assert metric_sum(alone, "faces_batch_size_count") == 32  # one run per request
        assert metric_sum(alone, "faces_batch_size_sum") == rows
    with TestClient(create_app(make_settings(models_root, max_wait_ms=100.0))) as batched:
        assert fire(batched, REQUESTS) == expected
        assert metric_sum(batched, "faces_batch_size_sum") == rows
        assert metric_sum(batched, "faces_batch_size_count") < 32  # requests were merged


def test_padding_runs_to_a_fixed_size_keeps_the_bytes(
    models_root: Path, make_settings: Callable[..., Settings]
) -> None:
    urls = ["/generate?res=16&seed=77&n=3", "/generate?res=16&seed=78", "/generate?res=8&seed=5&format=webp"]
    results = []
    for min_run_batch in (0, 1, 2, 16):  # 0: probed; 16: every run has the same shape
        with TestClient(create_app(make_settings(models_root, min_run_batch=min_run_batch))) as client:
            results.append([client.post(url).content for url in urls])
            ready = [m for m in client.get("/models").json()["models"] if m["status"] == "ready"]
            for m in ready:  # /models says what every run is padded to
                assert set(m["run_rows"]) == {str(r) for r in m["resolutions"]}
                if min_run_batch:
                    assert set(m["run_rows"].values()) == {min_run_batch}
    assert results[0] == results[1] == results[2] == results[3]


def test_the_probe_finds_the_smallest_safe_run_size() -> None:
    def consistent(z: np.ndarray) -> np.ndarray:
        return (z[:, :3] * 10).astype(np.int64)

    def single_rows_differ(z: np.ndarray) -> np.ndarray:  # like plain-NCHW onnxruntime on the CPU
        return consistent(z) + (len(z) == 1)

    def every_size_differs(z: np.ndarray) -> np.ndarray:  # like cuDNN choosing per batch size
        return consistent(z) + len(z)

    assert probe_min_rows(consistent, 4, res=64, max_batch=16) == 1
    assert probe_min_rows(single_rows_differ, 4, res=64, max_batch=16) == 2
    assert probe_min_rows(every_size_differs, 4, res=64, max_batch=16) == 16
    assert probe_min_rows(consistent, 4, res=16, max_batch=16) == 2  # too small to probe: padded to 2


def test_a_lone_closed_loop_client_is_not_kept_waiting() -> None:
    graph = SlowGraph(0.002)

    async def main() -> MicroBatcher:
        scheduler = InferenceScheduler(1)
        b = batcher_on(scheduler, graph, max_wait_s=0.05)  # gaps (~2 ms) are well under max_wait
        scheduler.start()
        for i in range(64):  # one client: the next request only after the last answer
            await b.infer(rows(i))
        await scheduler.stop()
        return b

    b = asyncio.run(main())
    assert b.waits_gained == 0
    assert b.waits <= 6  # a few waits find out that none brings rows; then one probe in PROBE_EVERY runs
    assert all(len(run) == 1 for run in graph.runs)


def test_concurrent_callers_keep_the_waits_that_pay() -> None:
    graph = SlowGraph(0.002)

    async def main() -> MicroBatcher:
        scheduler = InferenceScheduler(1)
        b = batcher_on(scheduler, graph, max_wait_s=0.05)

        async def client(k: int) -> None:
            for i in range(8):
                await b.infer(rows(100 * k + i))
                await asyncio.sleep(0.001 * k)  # clients out of step: requests trickle in

        scheduler.start()
        await asyncio.gather(*(client(k) for k in range(8)))
        await scheduler.stop()
        return b

    b = asyncio.run(main())
    assert b.waits_gained > b.waits / 2
    assert sum(len(run) for run in graph.runs) == 64 and len(graph.runs) < 32


def test_a_failing_metrics_observer_does_not_lose_the_images() -> None:
    def broken_observer(rows: int, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    async def main() -> np.ndarray:
        scheduler = InferenceScheduler(1)
        b = batcher_on(scheduler, SlowGraph(0.0), observe=broken_observer)
        scheduler.start()
        out = await asyncio.wait_for(b.infer(rows(3)), 10)
        await scheduler.stop()
        return out

    assert float(asyncio.run(main())[0, 0]) == 3
