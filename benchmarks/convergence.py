"""Convergence benchmark: which discriminator learns a known law fastest, per image and per CPU minute?

Same data (a procedural law), same generator, same training step (``projgan.train.step``, what
``pipeline train`` runs); each setting changes only the discriminator (and what its id says). Every
``--every`` kimg the EMA generator's 256 fixed-seed samples are scored (off the clock): the law score
(valid fraction, parameter distance, spread) and an FID proxy (a fixed random-feature extractor
against 1,000 training images). The clock is the process's CPU time, each setting pinned to one core
with one thread, so settings can run side by side (``--jobs``) without timing each other.

A setting is ``dcgan``, ``fastgan`` or ``projected/PROJECTION/WEIGHTS/BACKBONE_PX`` (PROJECTION:
ccm+csm | ccm | none; WEIGHTS: pretrained | random), optionally followed by ``?key=value&...``
TrainConfig overrides (e.g. ``?augment=color,translation&g_lr=0.002``). Settings are separated by ';'.

    .venv/bin/python benchmarks/convergence.py --law discs --jobs 2 --kimg 40 --minutes 5 \\
        --settings "projected/ccm+csm/pretrained/64;projected/ccm+csm/random/64;dcgan"

Results merge into ``OUT/results.json`` (one entry per law and setting, replaced when rerun), with
``curves_<law>.png`` and ``samples_<law>_<setting>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from projgan import artifacts
from projgan.config import GeneratorConfig, TrainConfig
from projgan.generator import sample_latents, to_uint8
from projgan.hardware import machine, versions

SAMPLE_SEEDS = np.arange(256)
PIXEL_D = {"dcgan": dict(discriminator="dcgan", d_width=32), "fastgan": dict(discriminator="fastgan", d_width=16)}


def parse_setting(sid: str) -> dict:
    """A setting id -> TrainConfig overrides (see the module docstring)."""
    base, _, query = sid.partition("?")
    if base in PIXEL_D:
        over = dict(PIXEL_D[base])
    else:
        m = re.fullmatch(r"projected/(ccm\+csm|ccm|none)/(pretrained|random)/(\d+)", base)
        if not m:
            raise SystemExit(f"unknown setting {sid!r}")
        over = dict(discriminator="projected", projection=m.group(1), backbone_resolution=int(m.group(3)),
                    backbone_weights="pretrained" if m.group(2) == "pretrained" else "none")
    for kv in filter(None, query.split("&")):
        k, _, v = kv.partition("=")
        field = {f.name: f for f in dataclasses.fields(TrainConfig)}[k]
        over[k] = v if field.type in ("str", str) else type(getattr(TrainConfig(), k))(v)
    return over


def laws_images(law: str, n: int, res: int, seed: int) -> np.ndarray:
    from projgan.evaluation.laws import get_law, law_params

    spec = get_law(law)
    return np.stack([spec.render(p, res) for p in law_params(law, n, seed)])


def run_setting(sid: str, args: argparse.Namespace, core: int | None) -> dict:
    """Train one setting to its budget; the curve of scores against kimg and CPU minutes."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    from projgan.evaluation.evaluate import default_cache_dir
    from projgan.evaluation.features import proxy_extractor
    from projgan.evaluation.fid import MetricTracker
    from projgan.evaluation.law_score import law_score
    from projgan.train import dist, step
    from projgan.train.backbone_weights import resolve_backbone_weights
    from projgan.train.dataset import ImageDataset

    images = laws_images(args.law, args.images, args.resolution, args.seed)
    tracker = MetricTracker(("fid",), images, cache_dir=default_cache_dir(), num_images=1000,
                            extractor=proxy_extractor(), device="cpu")
    over = parse_setting(sid)
    base = dict(batch=args.batch, kimg=10_000, metrics=(), seed=args.seed, augment=args.augment, lr=args.lr,
                g_lr=args.g_lr)
    cfg = TrainConfig(generator=GeneratorConfig(resolution=args.resolution, ngf=args.ngf), **{**base, **over})
    rt = dist.Runtime()
    torch.manual_seed(cfg.seed)
    weights = resolve_backbone_weights(cfg.backbone, cfg.backbone_weights) if cfg.discriminator == "projected" else None
    t = step.build(cfg, rt, weights)
    data = ImageDataset(images, rt.device, xflip=cfg.xflip)

    def generate(seeds) -> np.ndarray:
        with torch.no_grad():
            return to_uint8(t.G_ema(torch.from_numpy(sample_latents(seeds, cfg.generator.z_dim))))

    def record(cpu_s: float, wall_s: float, nimg: int) -> tuple[dict, np.ndarray]:
        t.G_ema.eval()
        samples = generate(SAMPLE_SEEDS)
        s = law_score(samples, args.law)
        row = {"kimg": round(nimg / 1000, 3), "cpu_minutes": round(cpu_s / 60, 3), "wall_minutes": round(wall_s / 60, 3),
               "law_valid": s["valid"], "law_distance": s["param_distance"], "law_spread": s["spread"],
               "spread_per_param": {k: v["spread"] for k, v in s["per_param"].items()},
               "fid_proxy": round(float(tracker(generate)["fid"]), 3)}
        print(f"  {sid:40s} {row['kimg']:6.2f} kimg {row['cpu_minutes']:5.2f} cpu-min  valid {s['valid']:.3f}  "
              f"spread {s['spread']:.2f}  FID proxy {row['fid_proxy']:.2f}", flush=True)
        return row, samples

    rows, nimg, cpu_s, wall_s = [], 0, 0.0, 0.0
    row, samples = record(0.0, 0.0, 0)
    rows.append(row)
    next_kimg = args.every
    while nimg < args.kimg * 1000 and cpu_s < args.minutes * 60:
        c0, w0 = time.process_time(), time.perf_counter()
        nimg = step.train_step(t, data.sample(cfg.batch, rt.device), nimg)
        cpu_s += time.process_time() - c0
        wall_s += time.perf_counter() - w0
        if nimg >= next_kimg * 1000:
            row, samples = record(cpu_s, wall_s, nimg)
            rows.append(row)
            next_kimg += args.every
    if rows[-1]["kimg"] * 1000 < nimg:
        rows.append(record(cpu_s, wall_s, nimg)[0])
    _save_grid(samples[:64], Path(args.out) / f"samples_{args.law}_{_slug(sid)}.png")
    return {"law": args.law, "setting": sid, "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k in (
        "discriminator", "projection", "d_width", "backbone", "backbone_weights", "backbone_resolution", "batch",
        "lr", "g_lr", "augment")}, "resolution": args.resolution, "ngf": args.ngf, "images": args.images,
        "sec_per_kimg_cpu": round(cpu_s / max(nimg / 1000, 1e-9), 2),
        "d_trainable_params": sum(p.numel() for p in t.D.parameters() if p.requires_grad),
        "precision": t.precision, "final_losses": step.pop_stats(t), "curve": rows, "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv])}


def _slug(sid: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", sid.replace("+", "")).strip("_")


def _save_grid(samples: np.ndarray, path: Path) -> None:
    from PIL import Image

    from projgan.train.samples import image_grid

    grid = image_grid(samples)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def plot(runs: list[dict], law: str, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for i, run in enumerate(runs):
        c = run["curve"]
        style = "o-" if "pretrained" in run["setting"] or "projected" not in run["setting"] else "o--"
        label = f"{run['setting']} ({run['sec_per_kimg_cpu']:.0f} cpu-s/kimg)"
        for row_ax, key in ((0, "law_valid"), (1, "law_spread")):
            for col_ax, x in ((0, "kimg"), (1, "cpu_minutes")):
                axes[row_ax][col_ax].plot([r[x] for r in c], [r[key] or 0 for r in c], style, ms=3,
                                          color=f"C{i % 10}", label=label)
    for col, x in enumerate(("kimg (thousands of real images shown to D)", "CPU minutes of training (one core)")):
        axes[0][col].set_ylabel("law valid fraction (higher is better)")
        axes[1][col].set_ylabel("law spread (1 = the law's variety)")
        for r in (0, 1):
            axes[r][col].set_xlabel(x)
            axes[r][col].set_ylim(0, 1.05)
            axes[r][col].grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    r0 = runs[0]
    fig.suptitle(f"law '{law}' at {r0['resolution']} px, {r0['images']} images, ngf {r0['ngf']}, batch "
                 f"{r0['config']['batch']}; dashed: random-init backbone; {r0['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--law", default="discs")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--ngf", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--augment", default="translation")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--g-lr", type=float, default=1e-3)
    ap.add_argument("--kimg", type=float, default=40.0, help="kimg budget per setting")
    ap.add_argument("--minutes", type=float, default=5.0, help="CPU-minute budget per setting (whichever ends first)")
    ap.add_argument("--every", type=float, default=2.0, help="kimg between records")
    ap.add_argument("--settings", default="projected/ccm+csm/pretrained/64;dcgan")
    ap.add_argument("--jobs", type=int, default=1, help="settings run side by side, one core each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/convergence")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sids = [s.strip() for s in args.settings.split(";") if s.strip()]
    for sid in sids:
        parse_setting(sid)  # refuse a typo before minutes of training
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    jobs = max(1, min(args.jobs, len(sids), len(cores)))
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(jobs, maxtasksperchild=1) as pool:
        free = manager.Queue()
        for core in cores[:jobs]:
            free.put(core)
        pending = [pool.apply_async(_worker, (sid, args, free)) for sid in sids]
        runs = [p.get() for p in pending]
    path = out / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {"runs": []}
    keep = [r for r in old.get("runs", []) if (r.get("law"), r.get("setting")) not in {(args.law, s) for s in sids}]
    result = {"about": "benchmarks/convergence.py: law score against kimg and CPU minutes per discriminator",
              "versions": versions(), "runs": keep + runs}
    artifacts.atomic_write_json(path, result)
    plot([r for r in result["runs"] if r.get("law") == args.law], args.law, out / f"curves_{args.law}.png")
    for r in runs:
        best = max(r["curve"], key=lambda c: c["law_valid"])
        print(f"{r['setting']:40s} {r['sec_per_kimg_cpu']:6.1f} cpu-s/kimg  final {r['curve'][-1]}  best valid "
              f"{best['law_valid']} at {best['kimg']} kimg")


def _worker(sid: str, args: argparse.Namespace, free) -> dict:
    """One setting in a fresh process, pinned to a core no other running setting holds."""
    core = free.get()
    try:
        return run_setting(sid, args, core)
    finally:
        free.put(core)


if __name__ == "__main__":
    main()
