"""Convergence benchmark: which discriminator learns a known law fastest on this machine?

Same data (a procedural law), same generator, same training step (``projgan.train.step``, what
``pipeline train`` runs), same augmentation, same wall-clock budget; only the discriminator
changes. Every ``--every`` seconds of *training* time (evaluation is off the clock) the EMA
generator's 256 fixed-seed samples are scored: the law score (valid fraction, parameter distance,
spread) and an FID proxy (a fixed random-feature extractor against 1,000 training images).

    taskset -c 0 .venv/bin/python benchmarks/convergence.py --threads 1 --minutes 5 --out benchmarks/convergence

writes results.json (curves, command, machine, versions), curves.png and samples_<setting>.png.
The projected settings use a random-init backbone: no pretrained weights exist on these machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from projgan import artifacts
from projgan.config import GeneratorConfig, TrainConfig
from projgan.evaluation.evaluate import default_cache_dir
from projgan.evaluation.features import proxy_extractor
from projgan.evaluation.fid import MetricTracker
from projgan.evaluation.law_score import law_score
from projgan.evaluation.laws import get_law, law_params
from projgan.generator import sample_latents, to_uint8
from projgan.hardware import machine, versions
from projgan.train import dist, step
from projgan.train.dataset import ImageDataset

SETTINGS = {
    "projected ccm+csm": dict(discriminator="projected", projection="ccm+csm"),
    "projected ccm": dict(discriminator="projected", projection="ccm"),
    "projected none": dict(discriminator="projected", projection="none"),
    "fastgan": dict(discriminator="fastgan", d_width=16),
    "dcgan": dict(discriminator="dcgan", d_width=32),
}
SAMPLE_SEEDS = np.arange(256)


def run_setting(name: str, overrides: dict, images: np.ndarray, law: str, args, tracker: MetricTracker) -> dict:
    res = images.shape[1]
    cfg = TrainConfig(generator=GeneratorConfig(resolution=res, ngf=args.ngf), batch=args.batch, kimg=10_000,
                      backbone_weights="none", backbone_resolution=args.backbone_resolution, metrics=(),
                      seed=args.seed, augment=args.augment, lr=args.lr, g_lr=args.g_lr, **overrides)
    rt = dist.Runtime()
    torch.manual_seed(cfg.seed)
    t = step.build(cfg, rt, None)
    data = ImageDataset(images, rt.device, xflip=cfg.xflip)

    def generate(seeds) -> np.ndarray:
        with torch.no_grad():
            return to_uint8(t.G_ema(torch.from_numpy(sample_latents(seeds, cfg.generator.z_dim))))

    def record(train_s: float, nimg: int) -> dict:
        t.G_ema.eval()
        samples = generate(SAMPLE_SEEDS)
        s = law_score(samples, law)
        fid = tracker(generate)["fid"]
        row = {"minutes": round(train_s / 60, 3), "kimg": round(nimg / 1000, 3), "law_valid": s["valid"],
               "law_distance": s["param_distance"], "law_spread": s["spread"], "fid_proxy": round(float(fid), 3)}
        print(f"  {name:18s} {row['minutes']:5.2f} min {row['kimg']:7.2f} kimg  valid {s['valid']:.3f}  "
              f"distance {s['param_distance']}  FID proxy {fid:.1f}", flush=True)
        return row, samples

    rows, nimg, train_s = [], 0, 0.0
    row, samples = record(0.0, 0)
    rows.append(row)
    next_eval = args.every
    while train_s < args.minutes * 60:
        t0 = time.perf_counter()
        nimg = step.train_step(t, data.sample(cfg.batch, rt.device), nimg)
        train_s += time.perf_counter() - t0
        if train_s >= next_eval:
            row, samples = record(train_s, nimg)
            rows.append(row)
            next_eval += args.every
    losses = step.pop_stats(t)
    from PIL import Image

    from projgan.train.samples import image_grid

    grid = image_grid(samples[:64])
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(
        Path(args.out) / f"samples_{name.replace(' ', '_').replace('+', '')}.png")
    d_params = sum(p.numel() for p in t.D.parameters() if p.requires_grad)
    return {"setting": name, "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k in (
        "discriminator", "projection", "d_width", "backbone", "backbone_resolution", "batch", "lr", "g_lr", "augment")},
        "sec_per_kimg": round(train_s / max(nimg / 1000, 1e-9), 2), "d_trainable_params": d_params,
        "precision": t.precision, "final_losses": losses, "curve": rows}


def plot(result: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for i, run in enumerate(result["runs"]):
        c = run["curve"]
        for row_ax, key in ((0, "law_valid"), (1, "fid_proxy")):
            for col_ax, x in ((0, "kimg"), (1, "minutes")):
                axes[row_ax][col_ax].plot([r[x] for r in c], [r[key] for r in c], "o-", ms=3, color=f"C{i}",
                                          label=f"{run['setting']} ({run['sec_per_kimg']:.1f} s/kimg)")
    for col, x in enumerate(("kimg", "wall-clock minutes of training")):
        axes[0][col].set_ylabel("law valid fraction (higher is better)")
        axes[0][col].set_ylim(0, 1)
        axes[1][col].set_ylabel("FID proxy (lower is better)")
        axes[1][col].set_yscale("log")
        for r in (0, 1):
            axes[r][col].set_xlabel(x)
            axes[r][col].grid(alpha=0.3)
    axes[0][1].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"law '{result['law']}' at {result['resolution']} px, ngf {result['ngf']}, batch {result['batch']}, "
                 f"random-init backbone at {result['backbone_resolution']} px; {m['cpu']}, {m['torch_threads']} thread(s)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


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
    ap.add_argument("--backbone-resolution", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=5.0, help="training minutes per setting")
    ap.add_argument("--every", type=float, default=20.0, help="seconds of training between records")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/convergence")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = get_law(args.law)
    images = np.stack([spec.render(p, args.resolution) for p in law_params(args.law, args.images, args.seed)])
    tracker = MetricTracker(("fid",), images, cache_dir=default_cache_dir(), num_images=1000,
                            extractor=proxy_extractor(), device="cpu")
    runs = []
    for name in args.settings.split(","):
        print(f"{name}: {args.minutes:g} min", flush=True)
        runs.append(run_setting(name, SETTINGS[name], images, args.law, args, tracker))
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "law": args.law,
              "resolution": args.resolution, "images": args.images, "ngf": args.ngf, "batch": args.batch,
              "augment": args.augment, "lr": args.lr, "g_lr": args.g_lr,
              "backbone": "tf_efficientnet_lite0, random init", "backbone_resolution": args.backbone_resolution,
              "minutes_per_setting": args.minutes, "machine": machine(), "versions": versions(), "runs": runs}
    artifacts.atomic_write_json(out / "results.json", result)
    plot(result, out / "curves.png")
    print(json.dumps([{k: r[k] for k in ("setting", "sec_per_kimg")} | {"final": r["curve"][-1]} for r in runs],
                     indent=1))


if __name__ == "__main__":
    main()
