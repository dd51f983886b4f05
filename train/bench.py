"""Seconds per kimg of the real training step (the one ``loop`` runs), for one config or a grid.

Imports torch and timm only. Random images stand in for the dataset (the loop samples batches from
a tensor already in memory, so the data path costs nothing worth timing). Example:

    python -m projgan.train.bench --device cuda --resolution 256 --ngf 64 --batch 32 \\
        --precisions fp32,bf16 --channels-last on,off --compile off,on --out benchmarks/train_cuda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from projgan.config import GeneratorConfig, TrainConfig
from projgan.train import dist, step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(cfg: TrainConfig, steps: int = 10, warmup: int = 3) -> dict:
    """Time ``steps`` training steps (after ``warmup``) of ``cfg``; returns seconds per kimg and context."""
    device = dist.resolve_device(cfg.device)
    rt = dist.Runtime(device=device)
    weights = None if cfg.backbone_weights in ("none", "pretrained") else cfg.backbone_weights
    torch.manual_seed(cfg.seed)
    t = step.build(cfg, rt, weights)
    res = cfg.generator.resolution
    reals = torch.rand(cfg.batch, 3, res, res, device=device) * 2 - 1
    nimg = 0
    t0 = time.perf_counter()
    for _ in range(warmup):
        nimg = step.train_step(t, reals, nimg)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        nimg = step.train_step(t, reals, nimg)
        _sync(device)
        times.append(time.perf_counter() - t0)
    losses = step.pop_stats(t)
    mean = statistics.fmean(times)
    out = {
        "sec_per_kimg": round(mean / cfg.batch * 1000, 2),
        "images_per_sec": round(cfg.batch / mean, 2),
        "step_ms_mean": round(mean * 1000, 1),
        "step_ms_median": round(statistics.median(times) * 1000, 1),
        "step_ms_min": round(min(times) * 1000, 1),
        "warmup_s": round(warmup_s, 2),
        "steps": steps,
        "warmup": warmup,
        "precision": t.precision,
        "channels_last": t.channels_last,  # off under --compile (inductor chooses layouts)
        "compile": cfg.compile,
        "batch": cfg.batch,
        "resolution": res,
        "ngf": cfg.generator.ngf,
        "backbone": cfg.backbone,
        "backbone_weights": "random" if weights is None else weights,
        "backbone_resolution": step.backbone_resolution(cfg),
        "projection": cfg.projection,
        "num_discs": cfg.num_discs,
        "device": str(device),
        "losses_finite": all(v == v and abs(v) != float("inf") for v in losses.values()),
    }
    if device.type == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_fast_bf16": dist.cpu_has_fast_bf16(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on a shared machine skews CPU timings
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _onoff(text: str) -> list[bool]:
    return [{"on": True, "off": False}[v.strip()] for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m projgan.train.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--backbone-weights", default="none", help="none (random init) or a local file")
    p.add_argument("--backbone-resolution", type=int, default=0)
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16, fp16, auto")
    p.add_argument("--channels-last", default="on", help="on, off or on,off")
    p.add_argument("--compile", default="off", help="off, on or off,on")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="", help="also write the JSON here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    load_before = round(os.getloadavg()[0], 2)
    results = []
    layouts = _onoff(a.channels_last)
    for precision in [v.strip() for v in a.precisions.split(",") if v.strip()]:
        for cl in layouts:
            for comp in _onoff(a.compile):
                if comp and cl and False in layouts:
                    continue  # compile ignores channels_last (see step.build): this run would repeat the off one
                cfg = TrainConfig(
                    generator=GeneratorConfig(resolution=a.resolution, ngf=a.ngf), batch=a.batch,
                    backbone=a.backbone, backbone_weights=a.backbone_weights,
                    backbone_resolution=a.backbone_resolution, precision=precision, channels_last=cl,
                    compile=comp, device=a.device, metrics=(),
                )
                if comp:
                    torch._dynamo.reset()
                r = bench_training(cfg, steps=a.steps, warmup=a.warmup)
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
    report = {
        "command": "python -m projgan.train.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k in ("lr", "betas", "augment")},
        "machine": {**machine(), "load_avg_1m_before": load_before},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
