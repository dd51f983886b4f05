"""Dynamic batcher: many small generation requests become few large backend calls.

Like Triton's dynamic batcher: requests (latents, one row per image) wait in a bounded queue,
counted in images; one worker takes as many images as fit in ``max_batch`` (splitting a large
request across batches), waits at most ``max_delay_ms`` for more, runs the backend on a single
thread (backends are not re-entrant) and hands each request its own rows back. A failing batch
fails only the requests that had rows in it. asyncio and numpy only: no web imports.

A request may carry per-row columns besides the latents (``classes``, ``psi``): requests with
different classes or truncation share a batch, each row keeping its own values, so a seed's image
never depends on who else was in the batch. A request may also name another function of the same
backend (``fn``, e.g. a style model's ``map_w`` or ``synthesize_w``); only requests with the same
function and the same column names share a batch.

With ``buckets`` (a GPU backend's batch sizes, ``serve/buckets.py``) a batch is padded to the smallest
bucket that holds it, the last row repeated, and the padding dropped from the result: the backend only ever
sees sizes it captured once (CUDA graphs) or tuned for, and a seed's image is the same in every bucket.

The wait for more requests is adaptive: it only pays when requests arrive closer together than
``max_delay_ms``; a lone request on an idle server runs at once, so single-image latency stays
at the backend's batch-1 latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from projgan.serve.buckets import bucket_for, pad_rows

log = logging.getLogger("projgan.serve")


class QueueFull(Exception):
    """The request does not fit in the queue right now; retry after ``retry_after`` seconds."""

    def __init__(self, requested: int, depth: int, capacity: int, retry_after: int):
        super().__init__(f"queue full: {depth} of {capacity} images waiting, {requested} more requested")
        self.requested, self.depth, self.capacity, self.retry_after = requested, depth, capacity, retry_after


class BatcherClosed(Exception):
    """The batcher is stopping (or never started) and takes no new work."""


class Stats:
    """Observer interface the batcher reports to (``projgan.serve.telemetry.Metrics`` implements it)."""

    def batch(self, size: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queue_depth(self, images: int) -> None: ...

    def rejected(self) -> None: ...

    def padded(self, rows: int) -> None: ...


@dataclass(eq=False)
class _Request:
    z: np.ndarray
    future: asyncio.Future
    enqueued: float
    fn: Callable[..., np.ndarray]
    columns: dict[str, np.ndarray]
    taken: int = 0  # rows handed to batches so far
    done: int = 0  # rows returned
    out: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.z)

    def joins(self, other: _Request) -> bool:
        """Whether this request's rows can go in one backend call with ``other``'s."""
        return self.fn == other.fn and self.columns.keys() == other.columns.keys()


class Batcher:
    """``await submit(z, **columns)`` returns ``generate(z, **columns)``, computed in batches shared with
    other callers."""

    def __init__(
        self,
        generate: Callable[..., np.ndarray],
        *,
        max_batch: int = 32,
        max_delay_ms: float = 5.0,
        queue_size: int = 256,
        stats: Stats | None = None,
        buckets: tuple[int, ...] | None = None,
    ):
        if max_batch < 1 or queue_size < 1 or max_delay_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1, max_delay_ms >= 0")
        if buckets is not None and max(buckets) < max_batch:
            raise ValueError(f"the largest bucket {max(buckets)} is below max_batch {max_batch}")
        self.generate = generate
        self.buckets = tuple(sorted(buckets)) if buckets else None
        self.max_batch, self.queue_size = max_batch, queue_size
        self.max_delay = max_delay_ms / 1000.0
        self.stats = stats or Stats()
        self._pending: deque[_Request] = deque()
        self._inflight: list[_Request] = []  # requests with rows in the batch now on the backend thread
        self._depth = 0  # images queued and not yet handed to a batch
        self._gap = math.inf  # moving average of the time between arrivals
        self._last_arrival = 0.0
        self._rate = 0.0  # images/s of recent batches, for Retry-After
        self._closing = False
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Event | None = None
        self.batches = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind to the running event loop and start the worker."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="projgan-backend")
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="projgan-batcher")

    async def stop(self, timeout: float | None = 30.0) -> None:
        """Take no new work, finish what is queued and running, then release the worker thread."""
        self._closing = True
        if self._worker is None:
            return
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except asyncio.TimeoutError:
            log.warning("batcher did not drain in %.0f s; failing the rest", timeout)
            self._worker.cancel()
            # Queued requests and those whose batch is still on the backend thread: no caller is left waiting.
            for req in [*self._inflight, *self._pending]:
                if not req.future.done():
                    req.future.set_exception(BatcherClosed("server stopped before this request ran"))
            self._pending.clear()
            self._inflight = []
            self._depth = 0
            self.stats.queue_depth(0)
        self._worker = None
        # Off the event loop, so the failed requests' callers can answer while a stuck batch finishes.
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._closing

    @property
    def depth(self) -> int:
        return self._depth

    async def run_in_worker(self, fn: Callable[..., Any], *args) -> Any:
        """Run ``fn`` on the backend thread, serialised with batches (warm-up, model card queries)."""
        if self._executor is None:
            raise BatcherClosed("batcher not started")
        return await self._loop.run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ submitting

    async def submit(self, z: np.ndarray, fn: Callable[..., np.ndarray] | None = None, **columns) -> np.ndarray:
        """Queue ``z [n, z_dim]`` and wait for ``fn(z, **columns)`` (``fn`` defaults to ``generate``); each
        column (e.g. ``classes``, ``psi``) holds one value per row. Raises QueueFull at once when full."""
        if not self.running:
            raise BatcherClosed("server is not accepting work")
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or len(z) == 0:
            raise ValueError(f"expected latents [n >= 1, z_dim], got shape {z.shape}")
        n = len(z)
        columns = {k: np.ascontiguousarray(v) for k, v in columns.items()}
        for k, v in columns.items():
            if v.shape[:1] != (n,):
                raise ValueError(f"column {k!r} has shape {v.shape}; expected one value per row ({n})")
        if self._depth + n > self.queue_size:
            self.stats.rejected()
            raise QueueFull(n, self._depth, self.queue_size, self.retry_after())
        now = time.perf_counter()
        if self._last_arrival:
            gap = now - self._last_arrival
            self._gap = gap if math.isinf(self._gap) else 0.7 * self._gap + 0.3 * gap
        self._last_arrival = now
        req = _Request(z, self._loop.create_future(), now, fn or self.generate, columns)
        self._pending.append(req)
        self._depth += n
        self.stats.queue_depth(self._depth)
        self._wake.set()
        try:
            return await req.future
        except asyncio.CancelledError:  # the caller went away: free its room in the queue now
            self._abandon(req)
            raise

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        if self._rate <= 0:
            return 1
        return max(1, math.ceil(self._depth / self._rate))

    # ------------------------------------------------------------------ the worker

    def _abandon(self, req: _Request) -> None:
        """Take ``req`` out of the queue wherever it stands; idempotent."""
        if req.taken < req.n:
            self._depth -= req.n - req.taken
            req.taken = req.n  # none of its rows count as queued any more
            self.stats.queue_depth(self._depth)
        with contextlib.suppress(ValueError):  # already taken whole, or dropped by the worker
            self._pending.remove(req)

    def _drop_abandoned(self) -> None:
        while self._pending and self._pending[0].future.done():  # cancelled by its caller, or failed
            self._abandon(self._pending[0])

    def _should_wait(self) -> bool:
        # Waiting for more only pays if another request is likely to come within the delay.
        return self.max_delay > 0 and self._depth < self.max_batch and self._gap < self.max_delay

    async def _gather(self) -> None:
        deadline = self._pending[0].enqueued + self.max_delay
        while self._depth < self.max_batch and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[tuple[_Request, int, int]]:
        """Up to ``max_batch`` rows from the head of the queue, splitting a request if needed; stops at a
        request that cannot share the batch (another function or other columns), which leads the next one."""
        batch, room, now = [], self.max_batch, time.perf_counter()
        while room and self._pending:
            req = self._pending[0]
            if req.future.done():
                self._drop_abandoned()
                continue
            if batch and not req.joins(batch[0][0]):
                break
            k = min(room, req.n - req.taken)
            if req.taken == 0:
                self.stats.queue_wait(now - req.enqueued)
            batch.append((req, req.taken, req.taken + k))
            req.taken += k
            room -= k
            self._depth -= k
            if req.taken == req.n:
                self._pending.popleft()
        self.stats.queue_depth(self._depth)
        return batch

    async def _run(self) -> None:
        while True:
            self._drop_abandoned()
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._should_wait():
                await self._gather()
            batch = self._take()
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[_Request, int, int]]) -> None:
        head = batch[0][0]
        z = _rows(batch, lambda req: req.z)
        columns = {k: _rows(batch, lambda req, k=k: req.columns[k]) for k in head.columns}
        t0 = time.perf_counter()
        self._inflight = [req for req, _, _ in batch]
        try:
            rows = {"z": z, **columns}
            if self.buckets:
                rows = pad_rows(rows, bucket_for(len(z), self.buckets))
                self.stats.padded(len(rows["z"]) - len(z))
            call = functools.partial(head.fn, rows.pop("z"), **rows)
            images = await self._loop.run_in_executor(self._executor, call)
            if len(images) != len(call.args[0]):
                raise RuntimeError(f"backend returned {len(images)} images for {len(call.args[0])} latents")
            images = images[: len(z)]
        except Exception as e:  # fail exactly the requests in this batch
            log.exception("batch of %d failed", len(z))
            for req, _, _ in batch:
                if not req.future.done():
                    req.future.set_exception(e)
            return
        finally:
            self._inflight = []
        seconds = time.perf_counter() - t0
        self.batches += 1
        self.stats.batch(len(z), seconds)
        rate = len(z) / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        offset = 0
        for req, a, b in batch:
            rows = images[offset : offset + b - a]
            offset += b - a
            if req.future.done():
                continue
            if a == 0 and b == req.n:  # the whole request in this batch: hand back a view
                req.future.set_result(rows)
                continue
            if req.out is None:
                req.out = np.empty((req.n, *images.shape[1:]), dtype=images.dtype)
            req.out[a:b] = rows
            req.done += b - a
            if req.done == req.n:
                req.future.set_result(req.out)


def _rows(batch: list[tuple[_Request, int, int]], field: Callable[[_Request], np.ndarray]) -> np.ndarray:
    """One array of a batch's rows (a view when the batch is one request's slice)."""
    if len(batch) == 1:
        req, a, b = batch[0]
        return field(req)[a:b]
    return np.concatenate([field(req)[a:b] for req, a, b in batch])
