"""Seconds per kimg of the real training step (the one ``loop`` runs), for one config or a grid.

Reached through ``pipeline bench --train`` (``config_for`` turns its options into a ``TrainConfig``). Random images stand
in for the dataset: the loop samples batches from a tensor already in memory, so the data path costs
nothing worth timing. Precisions the machine only emulates (bf16 on a CPU without AVX512-BF16/AMX
runs about 100x slower than fp32) are skipped with the reason recorded, not timed for minutes.
Imports torch and timm only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from projgan import artifacts, hardware
from projgan.config import GeneratorConfig, TrainConfig
from projgan.errors import UserError
from projgan.train import dist, step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(cfg: TrainConfig, steps: int = 10, warmup: int = 3) -> dict:
    """Time ``steps`` training steps (after ``warmup``) of ``cfg``; returns seconds per kimg and context."""
    device = torch.device(hardware.resolve_device(cfg.device, local_rank=0))
    rt = dist.Runtime(device=device, cuda_settings=dist.tune_cuda(device))  # as the loop's dist.init sets it
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
        "fused_adam": any(g.get("fused") for g in t.opt_G.param_groups),
    }
    if rt.cuda_settings:
        out.update(rt.cuda_settings)  # cudnn_benchmark and the TF32 state these numbers were taken with
    if device.type == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def config_for(source: str | Path = "", device: str = "auto", **overrides) -> TrainConfig:
    """The run's own training config (``source``: run directory or its train_config.json), or a small
    default (64 px, ngf 64, batch 16), with ``overrides`` (resolution, ngf, or any TrainConfig field)."""
    if source:
        path = Path(source) / artifacts.TRAIN_CONFIG if Path(source).is_dir() else Path(source)
        try:
            cfg = TrainConfig.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot read a training config from {path}: {e}", "pass a run directory (runs/NAME)") from None
    else:
        cfg = TrainConfig(generator=GeneratorConfig(resolution=64, ngf=64), batch=16)
    gen = {k: overrides.pop(k) for k in ("resolution", "ngf") if k in overrides}
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, **gen), device=device, metrics=(),
                              **overrides)
    if cfg.backbone_weights == "pretrained":  # speed does not depend on the weights' values
        cfg = dataclasses.replace(cfg, backbone_weights="none")
    return cfg


def _skip_reason(precision: str, device: str) -> str | None:
    """Why ``precision`` is not timed on ``device`` (None: it runs natively)."""
    resolved = dist.resolve_precision(precision, torch.device(device)) if precision == "auto" else precision
    support = hardware.precision_support(device)
    if resolved not in support:
        return f"{resolved} is not run on {torch.device(device).type}"
    return support[resolved]


def bench(cfg: TrainConfig, precisions: tuple[str, ...] = (), channels_last: tuple[bool, ...] = (),
          compile: tuple[bool, ...] = (), steps: int = 10, warmup: int = 3, threads: int = 0,
          out: str | Path = "", command: str | None = None) -> dict:
    """Time every (precision, layout, compile) point of the grid; empty axes keep ``cfg``'s value.

    Prints one line per point to stderr and the report (JSON) to stdout; writes it to ``out`` too.
    """
    if threads:
        torch.set_num_threads(threads)
    device = hardware.resolve_device(cfg.device)
    precisions = precisions or (cfg.precision,)
    layouts, compiles = channels_last or (cfg.channels_last,), compile or (cfg.compile,)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    results, skipped = [], {}
    for precision in precisions:
        why = _skip_reason(precision, device)
        if why:
            skipped[precision] = why
            print(f"skipped {precision}: {why}", file=sys.stderr, flush=True)
            continue
        for cl in layouts:
            for comp in compiles:
                if comp and cl and False in layouts:
                    continue  # compile ignores channels_last (see step.build): this run would repeat the off one
                point = dataclasses.replace(cfg, precision=precision, channels_last=cl, compile=comp, device=device)
                if comp:
                    torch._dynamo.reset()
                r = bench_training(point, steps=steps, warmup=warmup)
                print(f"{r['precision']} channels_last={'on' if r['channels_last'] else 'off'} "
                      f"compile={'on' if comp else 'off'}: {r['sec_per_kimg']} s/kimg", file=sys.stderr, flush=True)
                results.append(r)
    report = {
        "command": command or "pipeline " + " ".join(sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict(),
        "machine": {**hardware.machine(), "load_avg_1m_before": load_before},
        "versions": hardware.versions(),
        "results": results,
        "skipped_precisions": skipped,
    }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if out:
        artifacts.atomic_write_text(out, text + "\n")
    return report
