"""Serving benchmark: what the HTTP server delivers against what the backend alone can do.

In one run on one machine, with a real `pipeline serve` child process:
  1. throughput, in alternating rounds: raw ``backend.generate`` at the max batch in this process, then
     N concurrent closed-loop HTTP clients (paired rounds, so a busy neighbour slows both alike);
  2. single-image latency with no load: a raw batch-1 call, a ``POST /v1/generate`` (npy) and a
     ``GET /v1/images/{seed}.png``, interleaved call by call; p50/p99 of each.
Targets (issue 4): served >= 85 % of raw; single-image p50 within 5 ms of raw batch-1.

    .venv/bin/python benchmarks/serve_load.py --out benchmarks/serve_load/NAME.json

Without --source a random-weight generator is built (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from projgan import artifacts
from projgan.config import GeneratorConfig
from projgan.generator import build_generator, sample_latents
from projgan.hardware import machine, versions
from projgan.serve.backends import load_backend


def percentile(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def raw_throughput(backend, batch: int, seconds: float) -> dict:
    z = sample_latents(range(batch), backend.z_dim)
    backend.generate(z)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        backend.generate(z)
        n += 1
    dt = time.perf_counter() - t0
    return {"batch": batch, "calls": n, "images_per_s": n * batch / dt}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, source: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "projgan", "serve", str(source), "--backend", args.backend, "--device", args.device,
           "--torch-mode", args.torch_mode]
    cmd += ["--port", str(port), "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms)]
    cmd += ["--queue-size", str(max(256, 2 * args.clients * args.images_per_request)), "--no-ui"]
    log = open(Path(tempfile.gettempdir()) / f"serve_load_{port}.log", "w")  # noqa: SIM115 (lives with the process)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    return proc


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({proc.returncode}): see {proc.log_path}\n" + open(proc.log_path).read()
                )
            try:
                if (await c.get(url + "/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("server never became ready")


async def throughput_rounds(url: str, backend, args) -> dict:
    """Alternate raw and served phases, so a busy neighbour slows both alike; return paired numbers.

    Served: ``clients`` closed-loop HTTP clients, each asking ``images_per_request`` images per request.
    Raw: ``backend.generate`` at the max batch in this process while the clients are paused.
    """
    import httpx

    gate, counting = asyncio.Event(), [False]
    done = {"images": 0, "requests": 0, "errors": 0}
    inflight, lat = [0], []

    async def client(k: int, c):
        seed = k * 1_000_000
        while True:
            await gate.wait()
            body = {"n": args.images_per_request, "seed": seed, "format": args.format}
            seed += args.images_per_request
            inflight[0] += 1
            t0 = time.perf_counter()
            r = await c.post("/v1/generate", json=body)
            inflight[0] -= 1
            if counting[0]:
                if r.status_code == 200:
                    done["images"] += args.images_per_request
                    done["requests"] += 1
                    lat.append((time.perf_counter() - t0) * 1e3)
                else:
                    done["errors"] += 1

    rounds, raw_ips, served_ips = [], [], []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        tasks = [asyncio.create_task(client(k, c)) for k in range(args.clients)]
        m_start = None
        for i in range(args.rounds):
            gate.clear()
            while inflight[0]:
                await asyncio.sleep(0.005)
            raw = raw_throughput(backend, args.max_batch, args.seconds)  # blocks the loop: clients are paused
            gate.set()
            await asyncio.sleep(1.0)  # clients ramp up; not counted
            m0 = parse_metrics((await c.get("/metrics")).text)
            m_start = m_start or m0
            images0, t0 = done["images"], time.perf_counter()
            counting[0] = True
            await asyncio.sleep(args.seconds)
            counting[0] = False
            dt = time.perf_counter() - t0
            m1 = parse_metrics((await c.get("/metrics")).text)
            served = (done["images"] - images0) / dt
            rounds.append(
                {"raw_images_per_s": raw["images_per_s"], "served_images_per_s": served, **batch_stats(m0, m1, dt)}
            )
            raw_ips.append(raw["images_per_s"])
            served_ips.append(served)
            print(f"  round {i}: raw {raw['images_per_s']:.1f}, served {served:.1f} img/s", flush=True)
        gate.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": args.clients,
        "images_per_request": args.images_per_request,
        "format": args.format,
        "seconds_per_phase": args.seconds,
        "rounds": rounds,
        "raw_images_per_s": statistics.median(raw_ips),
        "served_images_per_s": statistics.median(served_ips),
        "served_over_raw_median_of_rounds": statistics.median(
            [s / r for s, r in zip(served_ips, raw_ips, strict=True)]
        ),
        **done,
        "request_p50_ms": percentile(lat, 50) if lat else None,
        "request_p99_ms": percentile(lat, 99) if lat else None,
    }


async def single_latency(url: str, backend, calls: int) -> dict:
    """Interleaved, so all three see the same machine: raw batch-1 call, POST npy, GET png.

    The order rotates every round: right after a raw call this process's OpenMP threads still
    spin for a while and steal the cores from the server, so whichever call came next would pay
    for it (measured: a fixed order put ~6 ms on the POST that always followed the raw call).
    """
    import httpx

    lat = {"raw_batch1": [], "post_npy": [], "get_png": []}
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def call(kind: str, seed: int) -> float:
            t0 = time.perf_counter()
            if kind == "raw_batch1":
                backend.generate(sample_latents([seed], backend.z_dim))
            elif kind == "post_npy":
                r = await c.post("/v1/generate", json={"seeds": [seed], "format": "npy"})
                assert r.status_code == 200, r.text
            else:
                r = await c.get(f"/v1/images/{seed}.png")
                assert r.status_code == 200, r.text
            return (time.perf_counter() - t0) * 1e3

        kinds = list(lat)
        for i in range(calls + 5):
            order = kinds[i % 3 :] + kinds[: i % 3]
            for kind in order:
                ms = await call(kind, 50_000 + i)
                if i >= 5:  # the first few settle the batcher's arrival estimate after the load test
                    lat[kind].append(ms)
    return {k: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "calls": calls} for k, v in lat.items()}


def parse_metrics(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if line.startswith(
            (
                "projgan_batch_size_sum",
                "projgan_batch_size_count",
                "projgan_queue_rejections_total",
                "projgan_batch_duration_seconds_sum",
            )
        ):
            name, value = line.split()
            out[name] = float(value)
    return out


def batch_stats(m0: dict, m1: dict, seconds: float) -> dict:
    def d(k):
        return m1.get(k, 0.0) - m0.get(k, 0.0)

    batches = max(d("projgan_batch_size_count"), 1)
    return {
        "batches": batches,
        "mean_batch": d("projgan_batch_size_sum") / batches,
        "backend_busy_fraction": d("projgan_batch_duration_seconds_sum") / seconds,
        "backend_ms_per_batch": 1e3 * d("projgan_batch_duration_seconds_sum") / batches,
        "rejected": d("projgan_queue_rejections_total"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help="generator/export dir; default: a random generator of --resolution/--ngf")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--torch-mode", default="auto", help="torch backend: auto (CUDA graphs on a GPU), eager, graphs, compile")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--format", default="npy", choices=["npy", "png", "zip"])
    p.add_argument("--seconds", type=float, default=4.0, help="length of each raw and each served phase")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency-calls", type=int, default=200)
    p.add_argument("--out", default="benchmarks/serve_load/latest.json")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    source = Path(args.source) if args.source else None
    if source is None:
        torch.manual_seed(0)
        G = build_generator(GeneratorConfig(resolution=args.resolution, ngf=args.ngf))
        source = artifacts.save_generator(tmp / "generator", G)
    backend = load_backend(source, args.backend, args.device, torch_mode=args.torch_mode, max_batch=args.max_batch)
    desc = backend.describe()
    print(f"backend {desc['backend']} {desc['precision']} on {desc['device']}, {desc['resolution']} px", flush=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": {**machine(), "loadavg_start": os.getloadavg()},
              "versions": versions(), "model": desc}

    backend.warmup([1, args.max_batch])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, source, port)
    try:
        asyncio.run(wait_ready(url, proc))
        tp = asyncio.run(throughput_rounds(url, backend, args))
        single = asyncio.run(single_latency(url, backend, args.latency_calls))
        for k, v in single.items():
            print(f"single image, no load, {k}: p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    ratio = tp["served_over_raw_median_of_rounds"]
    gap = single["post_npy"]["p50_ms"] - single["raw_batch1"]["p50_ms"]
    result.update(
        throughput=tp,
        single_image_no_load=single,
        targets={
            "served_over_raw": ratio,
            "served_over_raw_ok": ratio >= 0.85,
            "single_p50_minus_raw_batch1_ms": gap,
            "single_p50_ok": gap <= 5.0,
            "png_route_p50_minus_raw_batch1_ms": single["get_png"]["p50_ms"] - single["raw_batch1"]["p50_ms"],
        },
        notes="Closed-loop clients in this process (httpx), server in a child process (`pipeline serve`, access "
        "log on); both share the machine's cores. Raw and served throughput alternate in rounds (paired, so a "
        "busy neighbour slows both alike); the ratio is the median over rounds. Throughput uses the npy format "
        "unless --format says otherwise. Single-image latency: raw batch-1 calls and HTTP requests interleaved "
        "one by one. The machine may be shared with other processes: see loadavg.",
    )
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_json(args.out, result)
    print(f"served/raw = {ratio:.1%} (target >= 85%); single p50 - raw batch-1 p50 = {gap:+.2f} ms (target <= 5)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
