"""Micro-batching merges concurrent requests, and batched images are byte-identical to unbatched ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from service.config import Settings
from service.inference.batching import MicroBatcher
from service.inference.latents import z_for_seeds
from service.inference.sessions import ModelRepository
from service.main import create_app

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
    repo = ModelRepository.load(settings)
    graph = repo.get("tiny").graphs[16]
    z = z_for_seeds(range(sum(sizes)), 32)
    runs: list[int] = []
    splits = np.split(z, np.cumsum(sizes)[:-1])

    async def main() -> list[np.ndarray]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(
                graph.run,
                pool,
                max_batch=settings.max_batch,
                max_wait_s=0.05,
                batching=True,
                observe=lambda rows, _: runs.append(rows),
                queue_depth=lambda _: None,
            )
            batcher.start()
            try:
                return list(await asyncio.gather(*(batcher.infer(part) for part in splits)))
            finally:
                await batcher.stop()

    return asyncio.run(main()), runs, z


def test_batcher_merges_and_splits(models_root: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(models_root, max_batch=8)
    sizes = [1, 3, 2, 1, 5, 1, 1, 11, 2]  # 27 rows; 11 > max_batch is split into chunks
    outs, runs, z = run_batched_graph(models_root, settings, sizes)
    assert sum(runs) == 27 and max(runs) <= 8
    assert len(runs) < len(sizes) + 1  # merged: fewer runs than chunks
    graph = ModelRepository.load(settings).get("tiny").graphs[16]
    alone = np.concatenate([graph.run(z[i : i + 1]) for i in range(len(z))])
    assert np.array_equal(np.concatenate(outs), alone)
    assert [len(o) for o in outs] == sizes


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
    for min_run_batch in (2, 16):  # 16: every run has the same shape (what a GPU deployment may want)
        with TestClient(create_app(make_settings(models_root, min_run_batch=min_run_batch))) as client:
            results.append([client.post(url).content for url in urls])
    assert results[0] == results[1]
