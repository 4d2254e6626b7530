"""Dynamic micro-batching: concurrent requests for one graph are merged into one onnxruntime run.

Each graph has a `MicroBatcher` queue; an `InferenceScheduler` owns the inference threads that serve every
queue. A thread forms a batch at the moment it becomes free, from whatever has queued while it was busy,
so a run starts without a round trip through the event loop: the event loop only appends a request and,
once per run, receives the results. (A batcher task on the event loop had to be scheduled between every
two runs; under heavy load the loop was the busy part and the inference thread sat idle between runs.)

The queues are bounded: past `max_queue_rows` rows, or an expected wait over `max_queue_wait_s`, a request
is refused with `Overloaded` (503 + Retry-After) before any of it is queued, rather than waiting longer and
longer under a load the threads cannot serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from service.errors import Overloaded

log = logging.getLogger("service")

RunFn = Callable[[np.ndarray], np.ndarray]  # z [N, z_dim] float32 -> images [N, R, R, 3] uint8
ObserveFn = Callable[[int, float], None]  # (rows, seconds) of one run
RejectFn = Callable[[str], None]  # reason a request was refused: "queue_rows" or "queue_wait"


def _ignore(reason: str) -> None:
    pass


class BatcherStopped(Exception):
    """The scheduler shut down before the request ran."""


@dataclass
class _Item:
    z: np.ndarray  # [k, z_dim], k <= max_batch
    future: asyncio.Future[np.ndarray]
    arrival: float  # time.monotonic()


@dataclass(eq=False)
class MicroBatcher:
    """One graph's queue of requests. A run takes the queued rows (at most `max_batch`); when fewer are
    queued it waits for more until the oldest request has waited `max_wait_s`, but only while requests
    arrive closer together than `max_wait_s` (a moving average of the gaps) and recent waits brought more
    rows (a moving average of their outcomes; one wait in PROBE_EVERY is tried regardless). So a lone
    client, whose next request cannot come before this one's answer, is not kept waiting for company that
    is not coming. With `batching=False` every request runs on its own, through the same queue and threads.
    A request is refused (InferenceScheduler.submit) when it would take the queue past `max_queue_rows`,
    or when the work queued ahead of it is expected to take over `max_queue_wait_s`; 0 turns a bound off.
    """

    scheduler: InferenceScheduler
    run: RunFn
    max_batch: int
    max_wait_s: float
    batching: bool
    observe: ObserveFn
    queue_depth: Callable[[int], None]  # called with +rows / -rows
    rejected: RejectFn = _ignore  # called once per refused request
    max_queue_rows: int = 0  # rows this queue may hold; 0 = no bound
    max_queue_wait_s: float = 0.0  # expected wait past which requests are refused; 0 = no bound
    name: str = "this graph"  # in error messages, e.g. "model 'celeba' at 64x64"
    items: deque[_Item] = field(default_factory=deque)  # guarded by scheduler.cond
    rows: int = 0  # rows in `items`
    claimed: bool = False  # a thread is forming a batch from this queue
    last_arrival: float | None = None
    gap: float = float("inf")  # moving average of the time between arrivals, seconds
    wait_hit_rate: float = 1.0  # moving average of 1 (a wait brought rows) / 0 (it did not)
    skipped_waits: int = 0  # waits skipped since the last one tried
    waits: int = 0  # waits tried, and those that brought rows (tests and debugging)
    waits_gained: int = 0
    run_seconds: float = 0.0  # moving averages of the measured runs (guarded by scheduler.cond)
    run_rows: float = 0.0

    # with a low hit rate, still try one wait in this many runs, to notice load returning
    PROBE_EVERY: ClassVar[int] = 32
    MIN_HIT_RATE: ClassVar[float] = 0.2

    def should_wait(self) -> bool:
        """Whether a run with fewer than max_batch rows should wait for more (called under the lock)."""
        if not self.batching or self.rows >= self.max_batch or self.gap > self.max_wait_s:
            return False
        if self.wait_hit_rate >= self.MIN_HIT_RATE or self.skipped_waits + 1 >= self.PROBE_EVERY:
            self.skipped_waits = 0
            return True
        self.skipped_waits += 1
        return False

    def waited(self, gained: bool) -> None:
        self.waits += 1
        self.waits_gained += gained
        self.wait_hit_rate = 0.7 * self.wait_hit_rate + 0.3 * gained

    def timed(self, rows: int, seconds: float) -> None:
        """Record a run (under the lock). Averaging seconds and rows apart, rather than seconds per row,
        weights full runs by their rows: when a queue builds up, runs fill and their lower cost per row
        takes over the estimate within a few runs."""
        if self.run_rows == 0:
            self.run_seconds, self.run_rows = seconds, rows
        else:
            self.run_seconds = 0.8 * self.run_seconds + 0.2 * seconds
            self.run_rows = 0.8 * self.run_rows + 0.2 * rows

    def seconds_per_row(self) -> float:
        """The measured cost of a row; 0 before the first run (the wait bound then admits)."""
        return self.run_seconds / self.run_rows if self.run_rows else 0.0

    async def infer(self, z: np.ndarray) -> np.ndarray:
        """[N, z_dim] -> [N, R, R, 3]; N may exceed max_batch (it is split into chunks). Raises Overloaded,
        with none of the chunks queued, past the queue's bounds."""
        chunks = [z[i : i + self.max_batch] for i in range(0, len(z), self.max_batch)]
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in chunks]
        self.scheduler.submit(self, [_Item(c, f, 0.0) for c, f in zip(chunks, futures, strict=True)])
        outs = await asyncio.gather(*futures)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _take(self) -> list[_Item]:
        """The next batch, FIFO: at least one item, at most max_batch rows (one item without batching)."""
        batch = [self.items.popleft()]
        rows = len(batch[0].z)
        while self.batching and self.items and rows + len(self.items[0].z) <= self.max_batch:
            item = self.items.popleft()
            batch.append(item)
            rows += len(item.z)
        self.rows -= rows
        return batch


class InferenceScheduler:
    """`threads` inference threads shared by every graph: a free thread serves the queue whose oldest
    request has waited longest, so one busy resolution cannot starve another."""

    def __init__(self, threads: int, name: str = "onnxruntime") -> None:
        self.cond = threading.Condition()
        self._batchers: list[MicroBatcher] = []
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        self._running = False
        self._stopping = False

    def batcher(
        self,
        run: RunFn,
        *,
        max_batch: int,
        max_wait_s: float,
        batching: bool,
        observe: ObserveFn,
        queue_depth: Callable[[int], None],
        rejected: RejectFn = _ignore,
        max_queue_rows: int = 0,
        max_queue_wait_s: float = 0.0,
        name: str = "this graph",
    ) -> MicroBatcher:
        b = MicroBatcher(
            self,
            run,
            max_batch,
            max_wait_s,
            batching,
            observe,
            queue_depth,
            rejected=rejected,
            max_queue_rows=max_queue_rows,
            max_queue_wait_s=max_queue_wait_s,
            name=name,
        )
        with self.cond:
            self._batchers.append(b)
        return b

    def start(self) -> None:
        with self.cond:
            if self._running:
                return
            self._running = True
        for t in self._threads:
            t.start()

    async def stop(self) -> None:
        """Let the runs in progress finish, then fail whatever is still queued with BatcherStopped."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._running:
            await asyncio.get_running_loop().run_in_executor(None, self._join)
        with self.cond:
            leftovers = [(b, item) for b in self._batchers for item in b.items]
            for b in self._batchers:
                b.items.clear()
                b.rows = 0
        for b, item in leftovers:
            b.queue_depth(-len(item.z))
            _resolve(item.future, exc=BatcherStopped("the service is shutting down"))

    def _join(self) -> None:
        for t in self._threads:
            t.join()

    def submit(self, b: MicroBatcher, items: list[_Item]) -> None:
        """Queue items, or raise Overloaded with none of them queued (called on the event loop; holds the
        lock only to check the bounds and append)."""
        rows = sum(len(item.z) for item in items)
        with self.cond:
            if self._stopping or not self._running:
                error = BatcherStopped(
                    "the service is shutting down" if self._stopping else "the service is not running"
                )
                for item in items:
                    item.future.set_exception(error)
                return
            refused = self._refusal(b, rows)
            if refused is None:
                self._append(b, items, rows)
        if refused is not None:
            b.rejected(refused[0])
            raise refused[1]
        b.queue_depth(rows)

    def expected_wait(self) -> float:
        """Seconds a request queued now waits for its run (called under the lock): every queued row, of
        every graph, is older and so served first, at its graph's measured cost per row, shared among
        the threads. Runs in progress are not counted."""
        return sum(b.rows * b.seconds_per_row() for b in self._batchers) / len(self._threads)

    def _refusal(self, b: MicroBatcher, rows: int) -> tuple[str, Overloaded] | None:
        """(reason, error) when `rows` more must not queue on b, else None (called under the lock)."""
        if not b.items:
            # an empty queue admits any request (FACES_MAX_N / FACES_MAX_FRAMES bound its rows), so no
            # request is refused for its size alone
            return None
        wait = self.expected_wait()
        if b.max_queue_rows and b.rows + rows > b.max_queue_rows:
            reason = "queue_rows"
            why = (
                f"the queue for {b.name} is full ({b.rows} rows queued, {rows} more would pass "
                f"FACES_MAX_QUEUE_ROWS={b.max_queue_rows})"
            )
        elif b.max_queue_wait_s and wait > b.max_queue_wait_s:
            reason = "queue_wait"
            why = (
                f"a request for {b.name} would wait {wait:.1f} s for its run, over "
                f"FACES_MAX_QUEUE_WAIT_MS={b.max_queue_wait_s * 1000:g}"
            )
        else:
            return None
        retry = max(1, math.ceil(wait))
        error = Overloaded(
            f"the service is over capacity: {why}; retry after {retry} s", {"Retry-After": str(retry)}
        )
        return reason, error

    def _append(self, b: MicroBatcher, items: list[_Item], rows: int) -> None:
        """Queue items on b and wake a thread (called under the lock)."""
        now = time.monotonic()
        if b.last_arrival is not None:
            gap = now - b.last_arrival
            b.gap = gap if b.gap == float("inf") else 0.8 * b.gap + 0.2 * gap
        b.last_arrival = now
        for item in items:
            item.arrival = now
        b.items.extend(items)
        b.rows += rows
        # a thread forming a batch from this queue waits on the same condition as the idle threads
        if b.claimed:
            self.cond.notify_all()
        else:
            self.cond.notify()

    # ------------------------------------------------------------------------ inference threads

    def _next_batch(self) -> tuple[MicroBatcher, list[_Item]] | None:
        """Block until a queue has work; form its batch. None when stopping."""
        with self.cond:
            while True:
                if self._stopping:
                    return None
                ready = [b for b in self._batchers if b.items and not b.claimed]
                if ready:
                    break
                self.cond.wait()
            b = min(ready, key=lambda q: q.items[0].arrival)
            deadline = b.items[0].arrival + b.max_wait_s  # the oldest request waits at most max_wait_s
            if deadline > time.monotonic() and b.should_wait():
                b.claimed = True
                rows_before = b.rows
                while b.rows < b.max_batch and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                b.claimed = False
                b.waited(b.rows > rows_before)
            batch = b._take()
            if b.items:
                self.cond.notify()  # what did not fit is ready for another thread
        return b, batch

    def _serve(self) -> None:
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            b, batch = nxt
            live = [item for item in batch if not item.future.cancelled()]  # callers that gave up
            out: np.ndarray | None = None
            error: BaseException | None = None
            try:
                b.queue_depth(-sum(len(item.z) for item in batch))
                if live:
                    z = live[0].z if len(live) == 1 else np.concatenate([item.z for item in live])
                    start = time.perf_counter()
                    out = b.run(z)
                    elapsed = time.perf_counter() - start
                    with self.cond:
                        b.timed(len(z), elapsed)
                    b.observe(len(z), elapsed)
            except Exception as exc:  # handed to every caller; the thread keeps serving
                if out is not None:  # the run worked and only the metrics failed: serve the images
                    log.exception("recording a run's metrics failed")
                else:
                    error = exc
            if live:
                _deliver(live, out, error)


def _deliver(items: list[_Item], out: np.ndarray | None, error: BaseException | None) -> None:
    """Hand one run's results to the event loop(s) of its callers, in one callback per loop."""
    parts: dict[asyncio.AbstractEventLoop, list[tuple[_Item, np.ndarray | None]]] = {}
    offset = 0
    for item in items:
        rows = len(item.z)
        part = None if out is None else out[offset : offset + rows]
        parts.setdefault(item.future.get_loop(), []).append((item, part))
        offset += rows
    for loop, pairs in parts.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve_all, pairs, error)


def _resolve_all(pairs: list[tuple[_Item, np.ndarray | None]], error: BaseException | None) -> None:
    for item, part in pairs:
        _resolve(item.future, part, error)


def _resolve(
    future: asyncio.Future[np.ndarray], result: np.ndarray | None = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)
