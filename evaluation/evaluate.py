"""`pipeline evaluate`: FID/KID of anything serving can load, against a folder or zip of images.

The generator runs through the same ``load_backend`` code the server uses (torch, ONNX Runtime,
TensorRT), so the FID of an fp16 engine next to the FID of the fp32 model is a distribution-level
parity check. Each call appends one row to a JSONL file and prints it as a table.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from projgan import artifacts
from projgan.config import EvalConfig
from projgan.evaluation import metrics as M
from projgan.evaluation.bench import versions
from projgan.evaluation.reference import load_reference_images
from projgan.generator import sample_latents

console = Console()
if not console.is_terminal:  # logs and pipes: wide enough that the table never truncates
    console = Console(width=max(console.width, 120))
EVAL_JSONL = "evaluation.jsonl"


def default_cache_dir() -> Path:
    """Reference statistics shared by every evaluation: $PROJGAN_CACHE or ~/.cache/projgan, /fid-refs."""
    root = os.environ.get("PROJGAN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "projgan"
    return Path(root) / "fid-refs"


def default_out(source: str | Path) -> Path:
    """evaluation.jsonl beside the source: next to a file or a generator/ artifact (which training
    replaces wholesale), inside a run or export directory."""
    src = Path(source)
    if src.is_file() or ((src / artifacts.CONFIG_JSON).exists() and (src / artifacts.WEIGHTS).exists()):
        return src.parent / EVAL_JSONL
    return src / EVAL_JSONL


@contextmanager
def _progress(enabled: bool = True):
    """A Rich progress bar with one task per stage; yields ``update(stage, n, total)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not enabled:
        yield lambda *a: None
        return
    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        def update(stage: str, n: int, total: int | None = None):
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.advance(tasks[stage], n)

        yield update


def evaluate(cfg: EvalConfig, extractor=None, cache_dir: str | Path | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Score ``cfg.source`` with ``cfg.metrics``; append the row to the JSONL file and return it.

    ``extractor``: a feature extractor (float 0..255 [B,3,H,W] -> [B,F]) to use instead of
    clean-fid's Inception (tests inject a tiny one); ``cache_dir``: reference statistics folder.
    """
    from projgan.serve.backends import load_backend, resolve_device

    t0 = time.time()
    device = resolve_device(cfg.device)
    # A damaged source is refused first (reading it takes seconds at most), then the Inception weights,
    # both before anything slow: offline without weights fails within a second.
    backend = load_backend(cfg.source, cfg.backend, cfg.device, cfg.precision)
    try:
        if extractor is None:
            extractor = M.load_extractor(cfg.inception_weights, device)
        batch = max(1, min(cfg.batch, backend.max_batch))
        if not backend.resolution:  # an ONNX file with a dynamic output shape: learn it from one image
            backend.generate(sample_latents([0], backend.z_dim))
        with _progress(progress) as update:
            reals, skipped = load_reference_images(cfg.data, backend.resolution,
                                                   progress=lambda n, total: update("decode reference", n, total))
            console.print(f"{len(reals)} reference images at {backend.resolution} px from {cfg.data}"
                          + (f" ({skipped} unreadable skipped)" if skipped else ""))
            tracker = M.MetricTracker(cfg.metrics, reals, cache_dir or default_cache_dir(), cfg.num_images,
                                      extractor=extractor, device=device, batch=batch)

            def generate(seeds: np.ndarray) -> np.ndarray:
                return backend.generate(sample_latents(seeds, backend.z_dim))

            values = tracker(generate, progress=update)
        desc = backend.describe()
    finally:
        backend.close()
    row = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": str(cfg.source),
        "backend": desc["backend"],
        "precision": desc["precision"],
        "device": desc["device"],
        "data": str(cfg.data),
        **{k: float(v) for k, v in values.items()},
        "num_images": cfg.num_images,
        "num_reals": int(len(reals)),
        "resolution": int(backend.resolution),
        "extractor": tracker.identity,
        "reference_cached": bool(tracker.cache_hit),
        "seconds": round(time.time() - t0, 2),
        "versions": versions(),
    }
    out = Path(cfg.out) if cfg.out else default_out(cfg.source)
    artifacts.append_jsonl(out, row)
    print_rows([row], f"appended to {out}")
    return [row]


def print_rows(rows: list[dict[str, Any]], caption: str = "") -> None:
    table = Table(title="evaluation", caption=caption)
    for col in ("source", "backend", "precision", "FID", "KID", "images", "reals", "seconds"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in rows:
        table.add_row(
            r["source"], r["backend"], r["precision"],
            f"{r['fid']:.3f}" if "fid" in r else "-", f"{r['kid']:.5f}" if "kid" in r else "-",
            str(r["num_images"]), str(r["num_reals"]), f"{r['seconds']:.1f}",
        )
    console.print(table)
    if rows and rows[0]["num_images"] < 10000:
        console.print("[dim]FID is biased upward at small --num-images: compare values only at equal counts "
                      "(published FIDs use 50k generated images).[/]")
    if rows and not rows[0]["extractor"].startswith("clean-fid:"):
        console.print(f"[yellow]note:[/] features from {rows[0]['extractor']}, not Inception: "
                      "numbers are not comparable with published FIDs")
