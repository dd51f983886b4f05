"""`pipeline evaluate`: FD/KD, precision/recall and law scores of anything serving can load.

The generator runs through the same ``load_backend`` code the server uses (torch, ONNX Runtime,
TensorRT), so the FID of an fp16 engine next to the FID of the fp32 model is a distribution-level
parity check. Images are generated once; every extractor embeds them once and all metrics (and the
``--nearest`` memorisation check) reuse those features. Each call appends one row to a JSONL file
and prints it as a table.
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
from projgan.config import EvalConfig, parse_metric
from projgan.errors import UserError
from projgan.evaluation import features as F
from projgan.evaluation import fid as M
from projgan.evaluation.reference import load_reference_images
from projgan.generator import classes_for_seeds, sample_latents
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
             progress: bool = True, extractors: dict | None = None) -> list[dict[str, Any]]:
    """Score ``cfg.source`` with ``cfg.metrics``; append one row per target to the JSONL file and return them.

    Targets: the whole dataset (a conditional model's seeds get ``classes_for_seeds``), or with
    ``cfg.class_name`` one class against its folder, or with ``cfg.per_class`` every class and then
    the whole. ``extractor``: the extractor behind fid/kid/pr/--nearest instead of ``cfg.extractor``
    (tests inject a tiny one); ``extractors``: ready extractors by name for fd_<name>/kd_<name>;
    ``cache_dir``: reference statistics folder.
    """
    from projgan.serve.backends import load_backend

    device = resolve_device(cfg.device)
    feature_metrics = tuple(m for m in cfg.metrics if m != "law")
    law = None
    if "law" in cfg.metrics:
        from projgan.evaluation.laws import LAW_FILE, read_law

        law = read_law(cfg.data)
        if law is None:
            raise UserError(f"--metrics law: {cfg.data} has no {LAW_FILE} naming a known law",
                            "the law score is for procedural datasets (pipeline quickstart makes one); use fid,kid")
    out = Path(cfg.out) if cfg.out else default_out(cfg.source)
    # A damaged source is refused first (reading it takes seconds at most), then missing extractor weights,
    # both before anything slow: offline without weights fails within a second.
    backend = load_backend(cfg.source, cfg.backend, cfg.device, cfg.precision)
    rows = []
    try:
        targets = _targets(cfg, backend)
        weights = {"inception": cfg.inception_weights, "dinov2": cfg.dinov2_weights,
                   "auto": cfg.dinov2_weights or cfg.inception_weights}
        extractor, named = M.load_metric_extractors(feature_metrics, extractor, weights, cfg.extractor, device,
                                                    need_selected=cfg.nearest > 0, ready=extractors)
        if not backend.resolution:  # an ONNX file with a dynamic output shape: learn it from one image
            _generate(backend, np.zeros(1, np.int64), None if not backend.num_classes else 0, cfg.truncation)
        for label, data, cls in targets:
            t0 = time.time()
            with _progress(progress) as update:
                values, tracker, reals, memo = _score(cfg, backend, data, cls, law, feature_metrics, extractor, named,
                                                      cache_dir or default_cache_dir(), device, out, update)
            rows.append(_row(cfg, backend.describe(), data, label, backend, values, tracker, reals, memo, t0))
    finally:
        backend.close()
    for row in rows:
        artifacts.append_jsonl(out, row)
    print_rows(rows, f"appended to {out}")
    return rows


def _generate(backend, seeds: np.ndarray, cls: int | None, psi: float | None) -> np.ndarray:
    """uint8 images of ``seeds``: class ``cls`` for all, or each seed's default class; ``psi`` truncation."""
    z = sample_latents(seeds, backend.z_dim)
    classes = None
    if backend.num_classes:
        classes = classes_for_seeds(seeds, backend.num_classes) if cls is None else np.full(len(seeds), cls)
    return backend.generate(z, classes, psi)


def _targets(cfg: EvalConfig, backend) -> list[tuple[str, str, int | None]]:
    """(label, reference data, class index or None) per row: --class, --per-class, or the whole."""
    names = tuple(getattr(backend, "class_names", ()) or ())
    if cfg.truncation is not None and not getattr(backend, "truncation", False):
        raise UserError("--truncation: this model has no truncation", "truncation is for --generator stylegan2 models")
    if not (cfg.class_name or cfg.per_class):
        return [("", cfg.data, None)]
    if not names:
        raise UserError("--class/--per-class: this model is not class-conditional", "drop the option")
    if not Path(cfg.data).is_dir():
        raise UserError(f"--class/--per-class: {cfg.data} must be a folder with one subfolder per class")

    def index(name: str) -> int:
        if name in names:
            return names.index(name)
        if name.isdigit() and int(name) < len(names):
            return int(name)
        raise UserError(f"--class {name!r}: unknown class", f"choose one of {', '.join(names)} (or 0..{len(names) - 1})")

    wanted = [index(cfg.class_name)] if cfg.class_name else list(range(len(names)))
    for k in wanted:
        if not (Path(cfg.data) / names[k]).is_dir():
            raise UserError(f"--data {cfg.data} has no folder {names[k]!r} for class {k}",
                            "pass the folder the model was trained on (classes are its first-level subfolders)")
    out = [(names[k], str(Path(cfg.data) / names[k]), k) for k in wanted]
    return out + ([("all", cfg.data, None)] if cfg.per_class else [])


def _score(cfg, backend, data, cls, law, feature_metrics, extractor, named, cache_dir, device, out, update):
    """One target's numbers: every feature metric from one generation pass, the memorisation check, the law."""
    values: dict[str, Any] = {}
    reals, tracker, memo = np.zeros((0,)), None, None
    batch = max(1, min(cfg.batch, backend.max_batch))

    def generate(seeds: np.ndarray) -> np.ndarray:
        return _generate(backend, seeds, cls, cfg.truncation)

    if feature_metrics or cfg.nearest:
        reals, skipped = load_reference_images(data, backend.resolution,
                                               progress=lambda n, total: update("decode reference", n, total))
        console.print(f"{len(reals)} reference images at {backend.resolution} px from {data}"
                      + (f" ({skipped} unreadable skipped)" if skipped else ""))
        tracker = M.MetricTracker(feature_metrics, reals, cache_dir, cfg.num_images, extractor=extractor,
                                  device=device, batch=batch, extractors=named, keep_images=cfg.nearest > 0)
        values.update(tracker(generate, progress=update))
    if cfg.nearest:
        memo = _memorisation(tracker, reals, cfg.nearest, out.parent)
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
    return values, tracker, reals, memo


def _row(cfg, desc, data, label, backend, values, tracker, reals, memo, t0) -> dict[str, Any]:
    selected = F.describe(tracker.extractor) if tracker and tracker.extractor is not None else None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": str(cfg.source) + (f" [{label}]" if label else ""),
        "backend": desc["backend"],
        "precision": desc["precision"],
        "device": desc["device"],
        "data": str(data),
        **({"class": label} if label else {}),
        **({"truncation": cfg.truncation} if cfg.truncation is not None else {}),
        **{k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v)
           for k, v in values.items()},
        "num_images": cfg.num_images,
        "num_reals": int(len(reals)),
        "resolution": int(backend.resolution),
        "extractor": tracker.identity if tracker else None,
        "preprocessing": selected["preprocessing"] if selected else None,
        "extractor_note": getattr(tracker.extractor, "note", None) if tracker else None,
        "extractors": tracker.describe() if tracker else None,
        "reference_cached": bool(tracker.cache_hit) if tracker else None,
        **({"pr_k": M.PR_K} if "pr" in cfg.metrics else {}),
        **({"memorisation": memo} if memo else {}),
        "seconds": round(time.time() - t0, 2),
        "versions": versions(),
    }


def _memorisation(tracker, reals: np.ndarray, k: int, out_dir: Path) -> dict[str, Any]:
    """--nearest: the memorisation check on the features the metrics already computed (selected extractor);
    its PNGs go beside the JSONL file, its summary numbers into the row."""
    from projgan.evaluation.memorisation import memorisation, plot_memorisation

    name = tracker.selected
    if k > len(reals):
        raise UserError(f"--nearest {k} exceeds the {len(reals)} reference images", "choose a smaller K")
    report = memorisation(tracker.reference_features(name), tracker.last_features[name], k)
    pngs = plot_memorisation(report, reals, tracker.last_images, out_dir)
    summary = {key: (v.item() if isinstance(v, np.generic) else v) for key, v in report.items()
               if not isinstance(v, np.ndarray)}
    return {**summary, "extractor": name, "plots": [str(p) for p in pngs]}


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(header, cell(row)) for every metric present in ``rows``, in a fixed order."""
    def show(v, fmt):  # tiny distances (DINOv2-scale KD, fp16 drift) keep their significant figures
        return format(v, fmt) if v == 0 or abs(v) >= 0.01 or fmt[-1] != "f" else format(v, ".3g")

    def num(key, fmt, se=None):
        def cell(r):
            if not isinstance(r.get(key), (int, float)):
                return "-"
            err = f" ± {show(r[se], fmt)}" if se and isinstance(r.get(se), (int, float)) else ""
            return show(r[key], fmt) + err
        return cell

    keys = list(dict.fromkeys(k for r in rows for k in r))
    cols: list[tuple[str, Any]] = []
    for key in keys:
        kind = parse_metric(key)
        if kind is None or kind[0] not in ("fd", "kd"):
            continue
        header = {"fid": "FID", "kid": "KID"}.get(key) or f"{kind[0].upper()} {kind[1]}"
        cols.append((header, num(key, ".3f") if kind[0] == "fd" else num(key, ".5f", f"{key}_se")))
    for key in ("pr_precision", "pr_recall", "pr_density", "pr_coverage"):
        if key in keys:
            cols.append((key.replace("pr_", "PR ") if key in ("pr_precision", "pr_recall") else key[3:],
                         num(key, ".3f")))
    if "memorisation" in keys:
        cols.append(("closer (memorised?)", lambda r: "-" if not r.get("memorisation") else
                     f"{r['memorisation']['fraction_closer']:.1%} ({'YES' if r['memorisation']['memorised'] else 'no'})"))
    if "law_valid" in keys:
        cols += [("law valid", num("law_valid", ".3f")), ("law distance", num("law_distance", ".3f")),
                 ("spread", lambda r: num("law_spread", ".2f")(r) + (" (collapsed)" if r.get("law_collapsed") else ""))]
    return cols


def print_rows(rows: list[dict[str, Any]], caption: str = "") -> None:
    table = Table(title="evaluation", caption=caption)
    metric_cols = _columns(rows)
    features = any(r.get("num_reals") for r in rows)
    cols = [("source", lambda r: r["source"]), ("backend", lambda r: r["backend"]),
            ("precision", lambda r: r["precision"])] + metric_cols + [("images", lambda r: str(r["num_images"]))]
    cols += ([("reals", lambda r: str(r["num_reals"]))] if features else []) + [("seconds", lambda r: f"{r['seconds']:.1f}")]
    if len(metric_cols) <= 4:  # one line per source
        for col, _ in cols:
            table.add_column(col, justify="left" if col == "source" else "right")
        for r in rows:
            table.add_row(*[cell(r) for _, cell in cols])
    else:  # many metrics: one line per metric, one column per source
        table.add_column("")
        for _ in rows:
            table.add_column("", justify="right")
        for col, cell in cols:
            table.add_row(col, *[cell(r) for r in rows])
    console.print(table)
    if not rows:
        return
    first = rows[0]
    fd = [k for k in first if (parse_metric(k) or ("",))[0] == "fd"]
    if fd and first["num_images"] < 10000:
        console.print("[dim]FD/FID is biased upward at small --num-images: compare values only at equal counts "
                      "(published FIDs use 50k images); below 10k images prefer KD/KID (unbiased, shown ± its "
                      "standard error).[/]")
    if ({"fid", "kid", "pr_precision"} & set(first)) and first.get("extractor") and \
            not first["extractor"].startswith("clean-fid:"):
        console.print(f"[yellow]note:[/] fid/kid/pr use {first['extractor']}, not Inception: numbers are not "
                      "comparable with published FIDs")
    if first.get("extractor_note"):
        console.print(f"[yellow]note:[/] {first['extractor_note']}")
    memo = first.get("memorisation")
    if memo:
        console.print(f"memorisation ({memo['extractor']} features, {memo['k']} nearest): "
                      f"{memo['fraction_closer']:.1%} of samples are closer to a training image than "
                      f"{1 - memo['quantile']:.0%} of training images are to each other (expected "
                      f"{memo['expected_fraction']:.0%}): {'MEMORISED' if memo['memorised'] else 'not memorised'}; "
                      f"plots: {', '.join(memo['plots'])}")
