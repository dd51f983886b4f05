"""The dynamic batcher on its own: coalescing, splitting, failure isolation, back-pressure, drain.

``generate`` here is any function of a latent batch (the batcher's contract), chosen so every
output row can be traced back to its input row.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from projgan.serve.batcher import Batcher, BatcherClosed, QueueFull, Stats


class Recorder(Stats):
    def __init__(self):
        self.sizes, self.waits, self.depths, self.rejections = [], [], [], 0

    def batch(self, size, seconds):
        self.sizes.append(size)

    def queue_wait(self, seconds):
        self.waits.append(seconds)

    def queue_depth(self, images):
        self.depths.append(images)

    def rejected(self):
        self.rejections += 1


def doubling(delay: float = 0.0, fail_on: float | None = None):
    """Rows in -> rows * 2 out, after ``delay`` seconds; raises if any row starts with ``fail_on``."""

    def generate(z):
        time.sleep(delay)
        if fail_on is not None and np.any(z[:, 0] == fail_on):
            raise RuntimeError("bad row")
        return z * 2

    return generate


def rows(start: int, n: int, width: int = 4) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None].repeat(width, 1)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_coalesced_and_answered_in_order():
    async def main():
        rec = Recorder()
        b = Batcher(doubling(0.02), max_batch=16, max_delay_ms=5, queue_size=256, stats=rec)
        await b.start()
        reqs = [rows(10 * i, 1 + i % 3) for i in range(24)]
        outs = await asyncio.gather(*(b.submit(z) for z in reqs))
        await b.stop()
        return rec, reqs, outs

    rec, reqs, outs = run(main())
    for z, out in zip(reqs, outs, strict=True):
        np.testing.assert_array_equal(out, z * 2)
    assert sum(rec.sizes) == sum(len(z) for z in reqs)
    assert max(rec.sizes) > 1 and len(rec.sizes) < len(reqs)
    assert all(s <= 16 for s in rec.sizes)
    assert len(rec.waits) == len(reqs) and rec.depths[-1] == 0


def test_large_request_is_split_across_batches():
    async def main():
        rec = Recorder()
        b = Batcher(doubling(), max_batch=4, max_delay_ms=0, queue_size=64, stats=rec)
        await b.start()
        out = await b.submit(rows(0, 10))
        await b.stop()
        return rec, out

    rec, out = run(main())
    np.testing.assert_array_equal(out, rows(0, 10) * 2)
    assert rec.sizes == [4, 4, 2]


def test_a_failing_batch_fails_only_its_requests():
    async def main():
        b = Batcher(doubling(0.01, fail_on=-1.0), max_batch=2, max_delay_ms=0, queue_size=64)
        await b.start()
        first = asyncio.ensure_future(b.submit(rows(100, 1)))  # runs alone while the rest queue
        await asyncio.sleep(0.002)
        bad = rows(-1, 1)
        results = await asyncio.gather(
            b.submit(rows(0, 1)), b.submit(bad), b.submit(rows(5, 2)), b.submit(rows(7, 1)), return_exceptions=True
        )
        after = await b.submit(rows(9, 1))  # the worker survived
        await b.stop()
        return await first, results, after

    first, results, after = run(main())
    np.testing.assert_array_equal(first, rows(100, 1) * 2)
    # batches of two: [0, -1] fails together; [5, 6] and [7] succeed
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
    np.testing.assert_array_equal(results[2], rows(5, 2) * 2)
    np.testing.assert_array_equal(results[3], rows(7, 1) * 2)
    np.testing.assert_array_equal(after, rows(9, 1) * 2)


def test_full_queue_rejects_at_once_with_retry_after():
    async def main():
        rec = Recorder()
        b = Batcher(doubling(0.2), max_batch=4, max_delay_ms=0, queue_size=4, stats=rec)
        await b.start()
        running = asyncio.ensure_future(b.submit(rows(0, 4)))
        await asyncio.sleep(0.02)  # taken by the worker: the queue is empty again
        queued = asyncio.ensure_future(b.submit(rows(10, 4)))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        with pytest.raises(QueueFull) as info:
            await b.submit(rows(20, 1))
        rejected_in = time.perf_counter() - t0
        outs = await asyncio.gather(running, queued)
        await b.stop()
        return rec, info.value, rejected_in, outs

    rec, err, rejected_in, outs = run(main())
    assert rejected_in < 0.05 and err.retry_after >= 1 and err.depth == 4 and err.capacity == 4
    assert rec.rejections == 1
    np.testing.assert_array_equal(outs[1], rows(10, 4) * 2)


def test_stop_finishes_queued_work_then_refuses_new_work():
    async def main():
        b = Batcher(doubling(0.02), max_batch=2, max_delay_ms=0, queue_size=64)
        await b.start()
        pending = [asyncio.ensure_future(b.submit(rows(i, 1))) for i in range(6)]
        await asyncio.sleep(0)
        await b.stop()
        done = [p.done() and not p.cancelled() and p.exception() is None for p in pending]
        with pytest.raises(BatcherClosed):
            await b.submit(rows(0, 1))
        return done

    assert all(run(main()))


def test_lone_request_does_not_wait_for_company():
    """On an idle server one request runs at once: the delay only applies to bursts."""

    async def main():
        b = Batcher(doubling(), max_batch=32, max_delay_ms=300, queue_size=64)
        await b.start()
        latencies = []
        for i in range(5):
            t0 = time.perf_counter()
            await b.submit(rows(i, 1))
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.35)  # arrivals further apart than the delay
        await b.stop()
        return latencies

    assert max(run(main())) < 0.1


def test_cancelled_request_does_not_disturb_others():
    async def main():
        b = Batcher(doubling(0.05), max_batch=2, max_delay_ms=0, queue_size=64)
        await b.start()
        head = asyncio.ensure_future(b.submit(rows(0, 2)))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(b.submit(rows(10, 3)))
        kept = asyncio.ensure_future(b.submit(rows(20, 1)))
        await asyncio.sleep(0)
        gone.cancel()
        out = await asyncio.gather(head, kept)
        depth = b.depth
        await b.stop()
        return out, depth

    (head, kept), depth = run(main())
    np.testing.assert_array_equal(kept, rows(20, 1) * 2)
    assert depth == 0


def gated(release: threading.Event, limit: float = 3.0):
    """A backend call that holds the backend thread until ``release`` is set (or ``limit`` s pass)."""

    def generate(z):
        release.wait(limit)
        return z * 2

    return generate


def test_drain_timeout_fails_every_waiting_request_including_the_running_batch():
    """stop() giving up on a stuck batch must answer its callers too, not only the queued ones."""
    release = threading.Event()

    async def main():
        b = Batcher(gated(release), max_batch=2, max_delay_ms=0, queue_size=64)
        await b.start()
        running = asyncio.ensure_future(b.submit(rows(0, 2)))  # whole in the stuck batch
        await asyncio.sleep(0.02)
        queued = [asyncio.ensure_future(b.submit(rows(10 + i, 1 + i))) for i in range(3)]
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(b.stop(timeout=0.05))
        waiting = [running, *queued]
        done, _ = await asyncio.wait(waiting, timeout=1.0)  # while the backend call is still stuck
        release.set()
        await stopping
        return waiting, done, b.depth

    waiting, done, depth = run(main())
    assert len(done) == len(waiting)
    assert all(isinstance(f.exception(), BatcherClosed) for f in waiting)
    assert depth == 0


def test_cancelled_request_leaves_the_queue_at_once():
    """A caller that went away frees its room now, even when queued behind others."""
    release = threading.Event()

    async def main():
        rec = Recorder()
        b = Batcher(gated(release), max_batch=2, max_delay_ms=0, queue_size=8, stats=rec)
        await b.start()
        head = asyncio.ensure_future(b.submit(rows(0, 2)))  # holds the backend thread
        await asyncio.sleep(0.02)
        first = asyncio.ensure_future(b.submit(rows(10, 2)))
        gone = asyncio.ensure_future(b.submit(rows(20, 5)))  # behind `first`: not at the head
        await asyncio.sleep(0)
        full = b.depth
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        freed, reported = b.depth, rec.depths[-1]
        late = asyncio.ensure_future(b.submit(rows(30, 5)))  # fits only in the room `gone` left
        await asyncio.sleep(0)
        release.set()
        outs = await asyncio.gather(head, first, late)
        await b.stop()
        return full, freed, reported, outs, b.depth

    full, freed, reported, (head, first, late), depth = run(main())
    assert full == 7 and freed == 2 and reported == 2
    np.testing.assert_array_equal(first, rows(10, 2) * 2)
    np.testing.assert_array_equal(late, rows(30, 5) * 2)
    assert depth == 0


def test_requests_with_different_classes_and_psi_share_a_batch_row_by_row():
    """Per-row columns travel with their rows: one backend call serves mixed classes and truncations."""
    calls = []

    def generate(z, classes, psi):
        calls.append((len(z), classes.copy(), psi.copy()))
        return z * 2 + classes[:, None] * 100 + psi[:, None]

    async def main():
        b = Batcher(generate, max_batch=8, max_delay_ms=0, queue_size=64)
        await b.start()
        release = threading.Event()
        blocker = asyncio.ensure_future(b.run_in_worker(release.wait, 1.0))  # hold the thread: requests queue up
        await asyncio.sleep(0.01)
        reqs = [
            (rows(10 * i, 1 + i % 2), np.full(1 + i % 2, i % 3), np.full(1 + i % 2, 0.5 * i, np.float32))
            for i in range(4)
        ]
        futs = [asyncio.ensure_future(b.submit(z, classes=c, psi=p)) for z, c, p in reqs]
        await asyncio.sleep(0.01)
        release.set()
        await blocker
        outs = await asyncio.gather(*futs)
        await b.stop()
        return reqs, outs

    reqs, outs = run(main())
    for (z, c, p), out in zip(reqs, outs, strict=True):
        np.testing.assert_array_equal(out, z * 2 + c[:, None] * 100 + p[:, None])
    assert len(calls) == 1 and calls[0][0] == 6  # all four requests in one call
    assert calls[0][1].tolist() == [0, 1, 1, 2, 0, 0] and calls[0][2].tolist() == [0, 0.5, 0.5, 1.0, 1.5, 1.5]


def test_another_function_or_other_columns_start_a_new_batch():
    """A style model's ``map_w``/``synthesize_w`` rows never go into a ``generate`` call, nor vice versa."""
    calls = []

    def generate(z, **cols):
        calls.append(("generate", len(z), sorted(cols)))
        return z * 2

    def synthesize(w):
        calls.append(("synthesize", len(w), []))
        return w * 3

    async def main():
        b = Batcher(generate, max_batch=8, max_delay_ms=0, queue_size=64)
        await b.start()
        release = threading.Event()
        blocker = asyncio.ensure_future(b.run_in_worker(release.wait, 1.0))
        await asyncio.sleep(0.01)
        futs = [
            asyncio.ensure_future(b.submit(rows(0, 2))),
            asyncio.ensure_future(b.submit(rows(10, 1), fn=synthesize)),
            asyncio.ensure_future(b.submit(rows(20, 1), fn=synthesize)),
            asyncio.ensure_future(b.submit(rows(30, 1), classes=np.array([1]))),
            asyncio.ensure_future(b.submit(rows(40, 1))),
        ]
        await asyncio.sleep(0.01)
        release.set()
        await blocker
        outs = await asyncio.gather(*futs)
        with pytest.raises(ValueError, match="one value per row"):
            await b.submit(rows(0, 2), classes=np.array([1]))
        await b.stop()
        return outs

    outs = run(main())
    np.testing.assert_array_equal(outs[1], rows(10, 1) * 3)
    np.testing.assert_array_equal(outs[3], rows(30, 1) * 2)
    assert calls == [("generate", 2, []), ("synthesize", 2, []), ("generate", 1, ["classes"]), ("generate", 1, [])]
