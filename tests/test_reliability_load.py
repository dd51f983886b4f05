"""The server under load, overload, a failing backend and shutdown (loopback only, bounded).

Load, overload and shutdown run ``pipeline serve`` as a subprocess (its RSS read from /proc); the
failing-backend test wraps the real torch backend in a fault injector and serves it with a real
uvicorn in a thread, so it can tell exactly which batch failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import threading
import time
from collections import Counter, defaultdict

import httpx
import numpy as np
import pytest

from tests.conftest import make_generator
from tests.test_reliability_api import ServerProc, free_port


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return make_generator(tmp_path_factory.mktemp("load") / "generator")


async def _clients(url: str, jobs: list, concurrency: int, timeout: float = 60, on_done=None):
    """Run ``jobs`` ((method, path, json) tuples) from ``concurrency`` clients; returns (job, status, bytes, s)."""
    results: list = [None] * len(jobs)
    it = iter(enumerate(jobs))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker():
            for i, (method, path, body) in it:
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, json=body)
                    results[i] = (jobs[i], r.status_code, r.content, time.perf_counter() - t0, r.headers)
                except httpx.HTTPError as e:
                    results[i] = (jobs[i], type(e).__name__, b"", time.perf_counter() - t0, {})
                if on_done is not None:
                    on_done(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@pytest.mark.slow
def test_5000_requests_from_64_clients_no_errors_same_bytes_flat_memory(gen):
    n_requests, seeds = 5000, list(range(40))
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(n_requests):
        s = int(rng.choice(seeds))
        if i % 4 == 3:
            jobs.append(("POST", "/v1/generate", {"seeds": [s], "format": "npy"}))
        else:
            jobs.append(("GET", f"/v1/images/{s}.png", None))
    rss = {}
    with ServerProc(gen, "--backend", "torch", "--max-batch", "32") as server:
        rss["start"] = server.rss_kib()
        done = 0

        def on_done(i):
            nonlocal done
            done += 1
            if done in (1000, 4000, n_requests):
                rss[done] = server.rss_kib()

        t0 = time.monotonic()
        results = asyncio.run(_clients(server.url, jobs, concurrency=64, on_done=on_done))
        wall = time.monotonic() - t0
        rss["end"] = server.rss_kib()
        assert server.stop() == 0
    statuses = Counter(r[1] for r in results)
    assert statuses == Counter({200: n_requests}), statuses
    by_seed = defaultdict(set)
    for (method, path, body), _, content, _, _ in results:
        seed = body["seeds"][0] if body else int(path.split("/")[-1].removesuffix(".png"))
        by_seed[(method, seed)].add(hashlib.sha256(content).hexdigest())
    assert all(len(v) == 1 for v in by_seed.values()), {k: len(v) for k, v in by_seed.items() if len(v) > 1}
    lat = np.array([r[3] for r in results])
    growth = (rss[n_requests] - rss[1000]) / rss[1000]
    print(
        f"load: {n_requests} requests, 64 clients, {wall:.1f} s ({n_requests / wall:.0f} req/s), "
        f"p50 {np.percentile(lat, 50) * 1e3:.0f} ms p99 {np.percentile(lat, 99) * 1e3:.0f} ms; RSS KiB {rss}; "
        f"growth 1000->{n_requests}: {growth * 100:+.1f}%"
    )
    assert growth < 0.10


@pytest.mark.slow
def test_overload_gives_fast_503_with_retry_after_and_recovers(gen):
    with ServerProc(
        gen,
        "--backend",
        "torch",
        "--max-batch",
        "16",
        "--max-images",
        "16",
        "--queue-size",
        "64",
        "--max-delay-ms",
        "2",
    ) as server:
        jobs = [("POST", "/v1/generate", {"n": 16, "seed": i, "format": "npy"}) for i in range(600)]
        t0 = time.monotonic()
        results = asyncio.run(_clients(server.url, jobs, concurrency=64, timeout=30))
        wall = time.monotonic() - t0
        statuses = Counter(r[1] for r in results)
        rejected = [r for r in results if r[1] == 503]
        assert set(statuses) <= {200, 503}, statuses  # no timeouts, no resets, no 5xx but 503
        assert rejected and statuses[200] > 0, statuses
        assert all(int(r[4]["retry-after"]) >= 1 for r in rejected)
        lat503 = np.array([r[3] for r in rejected])
        lat200 = np.array([r[3] for r in results if r[1] == 200])
        # Rejection does not wait behind the queue that caused it: a 503 is quicker than a served request,
        # and nothing piles up towards the client timeout.
        assert np.median(lat503) < np.median(lat200), (np.median(lat503), np.median(lat200))
        assert max(r[3] for r in results) < 20
        time.sleep(0.5)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            after = [c.post("/v1/generate", json={"n": 16, "seed": 7, "format": "npy"}) for _ in range(20)]
            assert [r.status_code for r in after] == [200] * 20
            assert len({r.content for r in after}) == 1
            metrics = c.get("/metrics").text
        assert server.stop() == 0
    print(
        f"overload: {len(jobs)} requests of 16 images from 64 clients in {wall:.1f} s: {dict(statuses)}; "
        f"503 p50 {np.median(lat503) * 1e3:.0f} ms p95 {np.percentile(lat503, 95) * 1e3:.0f} ms; "
        f"200 p50 {np.median(lat200) * 1e3:.0f} ms; 20/20 OK after"
    )
    # The Prometheus counter saw every 503 (its HELP text alone would not do: read the sample's value).
    counted = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("projgan_queue_rejections_total ")]
    assert counted == [float(len(rejected))], counted


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests(gen):
    server = ServerProc(gen, "--backend", "torch", "--max-batch", "8", "--max-delay-ms", "300")
    try:
        jobs = [("POST", "/v1/generate", {"seeds": [i, i + 1], "format": "npy"}) for i in range(24)]

        async def go():
            task = asyncio.ensure_future(_clients(server.url, jobs, concurrency=24, timeout=60))
            await asyncio.sleep(0.15)  # requests are now queued behind the 300 ms batching delay
            server.proc.send_signal(signal.SIGTERM)
            return await task

        results = asyncio.run(go())
        rc = server.proc.wait(60)
    finally:
        server.stop()
    statuses = Counter(r[1] for r in results)
    assert statuses == Counter({200: len(jobs)}), (statuses, server.output()[-2000:])
    assert rc == 0, server.output()
    assert "Traceback" not in server.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)


# ------------------------------------------------------------------ a backend that fails mid-batch


class FailingBackend:
    """Fault injector around a real backend: the batch holding the poison seed's latent raises."""

    def __init__(self, inner, poison: np.ndarray):
        self.inner, self.poison = inner, poison
        self.calls: list[tuple[int, bool]] = []  # (batch size, raised)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, z):
        bad = bool(np.any(np.all(np.isclose(z, self.poison[None]), axis=1)))
        self.calls.append((len(z), bad))
        if bad:
            raise RuntimeError("injected fault: device lost")
        return self.inner.generate(z)


def test_backend_failing_mid_batch_fails_only_that_batch(gen):
    import uvicorn

    from projgan.config import ServeConfig
    from projgan.generator import sample_latents
    from projgan.serve.app import create_app
    from projgan.serve.backends import load_backend

    real = load_backend(str(gen), "torch", "cpu", "fp32", False)
    flaky = FailingBackend(real, sample_latents([666], real.z_dim)[0])
    port = free_port()
    cfg = ServeConfig(source=str(gen), backend="torch", port=port, max_batch=8, max_delay_ms=50, ui=False)
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, flaky), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not (server.started and httpx.get(url + "/readyz", timeout=2).status_code == 200):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        flaky.calls.clear()  # warm-up calls
        jobs = [("POST", "/v1/generate", {"seeds": [s], "format": "npy"}) for s in [*range(10), 666, *range(10, 20)]]
        results = asyncio.run(_clients(url, jobs, concurrency=len(jobs)))
        statuses = Counter(r[1] for r in results)
        failed_batches = [size for size, raised in flaky.calls if raised]
        assert len(failed_batches) == 1
        assert statuses[500] == failed_batches[0], (statuses, flaky.calls)  # exactly that batch's requests
        assert statuses[200] == len(jobs) - failed_batches[0]
        assert {r[0][2]["seeds"][0] for r in results if r[1] == 500} >= {666}
        assert all(b"RuntimeError" in r[2] and b"device lost" not in r[2] for r in results if r[1] == 500)
        # The next batch succeeds, and the same seeds give the same images as before the fault.
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/generate", json={"seeds": [1, 2, 3], "format": "npy"})
            assert r.status_code == 200
            ok = {r[0][2]["seeds"][0]: r[2] for r in results if r[1] == 200}
            again = c.post("/v1/generate", json={"seeds": [s for s in ok][:1], "format": "npy"})
            assert again.content == next(iter(ok.values()))
            assert c.get("/healthz").status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
        real.close()
    assert not thread.is_alive()
