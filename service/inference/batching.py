"""Dynamic micro-batching: concurrent requests for one graph are merged into one onnxruntime run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

RunFn = Callable[[np.ndarray], np.ndarray]  # z [N, z_dim] float32 -> images [N, R, R, 3] uint8
ObserveFn = Callable[[int, float], None]  # (rows, seconds) of one run


class BatcherStopped(Exception):
    """The batcher shut down before the request ran."""


@dataclass
class _Item:
    z: np.ndarray  # [k, z_dim], k <= max_batch
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Queues rows for one graph; a worker task merges them, runs them off the event loop, splits results.

    A run takes whatever is queued, then waits up to `max_wait_s` for more while it has fewer than
    `max_batch` rows, but only while requests arrive closer together than `max_wait_s` (a moving average
    of the gaps): a lone client is not kept waiting for company that is not coming. With
    `batching=False` every request runs on its own (same executor, same code path).
    """

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        max_batch: int,
        max_wait_s: float,
        batching: bool,
        observe: ObserveFn,
        queue_depth: Callable[[int], None],
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batching = batching
        self._observe = observe
        self._queue_depth = queue_depth  # called with +rows / -rows
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._carry: _Item | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_arrival: float | None = None
        self._gap = float("inf")  # moving average of the time between arrivals, seconds

    def start(self) -> None:
        if self.batching and self._task is None:
            self._task = asyncio.create_task(self._worker(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        leftovers = [self._carry] if self._carry else []
        self._carry = None
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for item in leftovers:
            self._queue_depth(-len(item.z))
            if not item.future.done():
                item.future.set_exception(BatcherStopped("the service is shutting down"))

    async def infer(self, z: np.ndarray) -> np.ndarray:
        """[N, z_dim] -> [N, R, R, 3]; N may exceed max_batch (it is split into chunks)."""
        chunks = [z[i : i + self.max_batch] for i in range(0, len(z), self.max_batch)]
        outs = await asyncio.gather(*(self._submit(c) for c in chunks))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    async def _submit(self, z: np.ndarray) -> np.ndarray:
        if not self.batching:
            return await self._execute(z)
        if self._task is None:
            raise BatcherStopped("the service is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap = gap if self._gap == float("inf") else 0.8 * self._gap + 0.2 * gap
        self._last_arrival = now
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue_depth(len(z))
        self._queue.put_nowait(_Item(z, future))
        return await future

    async def _execute(self, z: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        out, seconds = await loop.run_in_executor(self._executor, self._timed_run, z)
        self._observe(len(z), seconds)
        return out

    def _timed_run(self, z: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        out = self._run(z)
        return out, time.perf_counter() - start

    async def _collect(self) -> list[_Item]:
        """The next batch: at least one item, at most max_batch rows."""
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch, rows = [first], len(first.z)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while rows < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or self._gap > self.max_wait_s:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if rows + len(item.z) > self.max_batch:
                self._carry = item  # first in line for the next run
                break
            batch.append(item)
            rows += len(item.z)
        return batch

    async def _worker(self) -> None:
        while True:
            batch = await self._collect()
            self._queue_depth(-sum(len(item.z) for item in batch))
            live = [item for item in batch if not item.future.done()]  # callers that gave up are skipped
            if not live:
                continue
            try:
                out = await self._execute(np.concatenate([item.z for item in live]))
            except asyncio.CancelledError:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(BatcherStopped("the service is shutting down"))
                raise
            except Exception as exc:  # handed to every caller; the worker keeps serving
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            offset = 0
            for item in live:
                if not item.future.done():
                    item.future.set_result(out[offset : offset + len(item.z)])
                offset += len(item.z)
