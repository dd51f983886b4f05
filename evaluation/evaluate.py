"""`pipeline evaluate`: FID/KID of anything serving can load, against a folder or zip of images.

The generator runs through the same ``load_backend`` code the server uses (torch, ONNX Runtime,
TensorRT), so the FID of an fp16 engine next to the FID of the fp32 model is a distribution-level
parity check. Each call appends one row to a JSONL file and prints it as a table.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from projgan import artifacts, hardware
from projgan.config import EvalConfig
from projgan.errors import UserError
from projgan.evaluation import fid as M
from projgan.evaluation.reference import load_reference_images
from projgan.generator import sample_latents
from projgan.hardware import resolve_device, versions

console = Console()
if not console.is_terminal:  # logs and pipes: wide enough that the table never truncates
    console = Console(width=max(console.width, 120))
EVAL_JSONL = "evaluation.jsonl"


def default_cache_dir() -> Path:
    """Reference statistics shared by every evaluation, under the one cache folder (hardware.cache_dir)."""
    return hardware.cache_dir() / "fid-refs"


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
    from projgan.serve.backends import load_backend

    t0 = time.time()
    device = resolve_device(cfg.device)
    fid_metrics = tuple(m for m in cfg.metrics if m in ("fid", "kid"))
    law = None
    if "law" in cfg.metrics:
        from projgan.evaluation.laws import LAW_FILE, read_law

        law = read_law(cfg.data)
        if law is None:
            raise UserError(f"--metrics law: {cfg.data} has no {LAW_FILE} naming a known law",
                            "the law score is for procedural datasets (pipeline quickstart makes one); use fid,kid")
    # A damaged source is refused first (reading it takes seconds at most), then the Inception weights,
    # both before anything slow: offline without weights fails within a second.
    backend = load_backend(cfg.source, cfg.backend, cfg.device, cfg.precision)
    values: dict[str, Any] = {}
    reals, tracker = np.zeros((0,)), None
    try:
        if extractor is None and fid_metrics:
            extractor = M.load_extractor(cfg.inception_weights, device)
        batch = max(1, min(cfg.batch, backend.max_batch))
        if not backend.resolution:  # an ONNX file with a dynamic output shape: learn it from one image
            backend.generate(sample_latents([0], backend.z_dim))

        def generate(seeds: np.ndarray) -> np.ndarray:
            return backend.generate(sample_latents(seeds, backend.z_dim))

        with _progress(progress) as update:
            if fid_metrics:
                reals, skipped = load_reference_images(cfg.data, backend.resolution,
                                                       progress=lambda n, total: update("decode reference", n, total))
                console.print(f"{len(reals)} reference images at {backend.resolution} px from {cfg.data}"
                              + (f" ({skipped} unreadable skipped)" if skipped else ""))
                tracker = M.MetricTracker(fid_metrics, reals, cache_dir or default_cache_dir(), cfg.num_images,
                                          extractor=extractor, device=device, batch=batch)
                values.update(tracker(generate, progress=update))
            if law:
                from projgan.evaluation.law_score import law_score

                chunks = []
                for ix in np.array_split(np.arange(cfg.num_images), max(1, -(-cfg.num_images // batch))):
                    chunks.append(generate(ix))
                    update("law score", len(ix), cfg.num_images)
                s = law_score(np.concatenate(chunks), law)
                values.update(law_valid=s["valid"], law_distance=s["param_distance"], law_spread=s["spread"],
                              law_collapsed=s["collapsed"])
                values["law_detail"] = {"law": law, "per_param": s["per_param"], "invalid": s["invalid_reasons"]}
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
        **{k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v)
           for k, v in values.items()},
        "num_images": cfg.num_images,
        "num_reals": int(len(reals)),
        "resolution": int(backend.resolution),
        "extractor": tracker.identity if tracker else None,
        "reference_cached": bool(tracker.cache_hit) if tracker else None,
        "seconds": round(time.time() - t0, 2),
        "versions": versions(),
    }
    out = Path(cfg.out) if cfg.out else default_out(cfg.source)
    artifacts.append_jsonl(out, row)
    print_rows([row], f"appended to {out}")
    return [row]


def print_rows(rows: list[dict[str, Any]], caption: str = "") -> None:
    table = Table(title="evaluation", caption=caption)
    fid = any("fid" in r or "kid" in r for r in rows)
    law = any("law_valid" in r for r in rows)
    cols = ["source", "backend", "precision"] + (["FID", "KID"] if fid else [])
    cols += ["law valid", "law distance", "spread"] if law else []
    cols += ["images"] + (["reals"] if fid else []) + ["seconds"]
    for col in cols:
        table.add_column(col, justify="left" if col == "source" else "right")

    def num(r, key, fmt):
        return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else "-"

    for r in rows:
        cells = [r["source"], r["backend"], r["precision"]]
        if fid:
            cells += [num(r, "fid", ".3f"), num(r, "kid", ".5f")]
        if law:
            spread = num(r, "law_spread", ".2f") + (" (collapsed)" if r.get("law_collapsed") else "")
            cells += [num(r, "law_valid", ".3f"), num(r, "law_distance", ".3f"), spread]
        cells += [str(r["num_images"])] + ([str(r["num_reals"])] if fid else []) + [f"{r['seconds']:.1f}"]
        table.add_row(*cells)
    console.print(table)
    if rows and "fid" in rows[0] and rows[0]["num_images"] < 10000:
        console.print("[dim]FID is biased upward at small --num-images: compare values only at equal counts "
                      "(published FIDs use 50k generated images).[/]")
    if rows and rows[0].get("extractor") and not rows[0]["extractor"].startswith("clean-fid:"):
        console.print(f"[yellow]note:[/] features from {rows[0]['extractor']}, not Inception: "
                      "numbers are not comparable with published FIDs")
