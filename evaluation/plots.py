"""PNG plots: the FID curve of a run (and its other distribution metrics), a benchmark's throughput and latency.

matplotlib (Agg, no display) is imported inside each function so that importing this module, and
the training step that calls it, stays light. Files are written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from projgan.artifacts import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return Path(out_png)


def _hours(row: dict[str, Any]) -> float | None:
    for key in ("wall_s", "wall", "seconds"):  # training rows say "wall"; "seconds" as a last resort
        if isinstance(row.get(key), (int, float)):
            return float(row[key]) / 3600.0
    return None


def plot_fid(rows: list[dict[str, Any]], out_png: str | Path, title: str = "") -> Path | None:
    """FID (and KID on a second axis, if present) against kimg and against wall-clock hours.

    ``rows``: metrics.jsonl rows; rows without a numeric ``fid`` are ignored. Returns the PNG path,
    or None when there is nothing to plot.
    """
    rows = [r for r in rows if isinstance(r.get("fid"), (int, float))]
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r.get("kimg", 0))
    plt = _pyplot()
    kimg = [float(r.get("kimg", i)) for i, r in enumerate(rows)]
    hours = [_hours(r) for r in rows]
    fid = [float(r["fid"]) for r in rows]
    has_kid = any(isinstance(r.get("kid"), (int, float)) for r in rows)
    axes_x = [("kimg", kimg)]
    if all(h is not None for h in hours):
        axes_x.append(("wall-clock hours", hours))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(5.2 * len(axes_x), 3.6), squeeze=False)
    best = min(range(len(fid)), key=fid.__getitem__)
    for ax, (label, xs) in zip(axes[0], axes_x, strict=False):
        ax.plot(xs, fid, "o-", color="tab:blue", ms=3, label="FID")
        ax.plot([xs[best]], [fid[best]], "*", color="tab:red", ms=11, zorder=5, label=f"best FID {fid[best]:.2f}")
        ax.set_xlabel(label)
        ax.set_ylabel("FID (lower is better)", color="tab:blue")
        ax.grid(alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if has_kid:
            pts = [(x, float(r["kid"])) for x, r in zip(xs, rows, strict=True) if isinstance(r.get("kid"), (int, float))]
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="tab:orange", ms=3, label="KID")
            ax2.set_ylabel("KID", color="tab:orange")
            ax.set_zorder(ax2.get_zorder() + 1)  # FID and its best-marker above the KID line
            ax.patch.set_visible(False)
            h2, n2 = ax2.get_legend_handles_labels()
            handles, names = handles + h2, names + n2
        ax.legend(handles, names, loc="upper right", fontsize=8)
    fig.suptitle(title or f"FID over training ({len(rows)} records)")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_metrics(rows: list[dict[str, Any]], out_png: str | Path, title: str = "") -> Path | None:
    """Every distribution metric of a run against kimg, one panel per family: FD (left axis) with KD ±
    its standard error (right) per extractor (``fid``/``kid`` first, then ``fd_<name>``/``kd_<name>``),
    and precision/recall/density/coverage. Returns the PNG path, or None when there is nothing to plot."""
    def num(r, k):
        return isinstance(r.get(k), (int, float))

    rows = sorted((r for r in rows if any(num(r, k) for k in r if k.startswith(("fid", "kid", "fd_", "kd_", "pr_")))),
                  key=lambda r: r.get("kimg", 0))
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r))
    families = [("fid", "kid", "FID / KID")] if ("fid" in keys or "kid" in keys) else []
    names = dict.fromkeys(k.split("_", 1)[1] for k in keys if k.startswith(("fd_", "kd_")) and not k.endswith("_se"))
    families += [(f"fd_{n}", f"kd_{n}", f"FD / KD on {n}") for n in names]
    pr = [k for k in ("pr_precision", "pr_recall", "pr_density", "pr_coverage") if k in keys]
    plt = _pyplot()
    panels = len(families) + bool(pr)
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 3.6), squeeze=False)
    for ax, (fd, kd, label) in zip(axes[0], families, strict=False):
        pts = [(float(r.get("kimg", 0)), float(r[fd])) for r in rows if num(r, fd)]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color="tab:blue", ms=3, label=fd.upper() if fd == "fid" else fd)
        ax.set_ylabel("FD (lower is better)", color="tab:blue")
        kpts = [(float(r.get("kimg", 0)), float(r[kd]), float(r.get(f"{kd}_se") or 0)) for r in rows if num(r, kd)]
        if kpts:
            ax2 = ax.twinx()
            x, y, e = zip(*kpts, strict=True)
            ax2.errorbar(x, y, yerr=e, fmt="s--", color="tab:orange", ms=3, capsize=2, label=f"{kd} ± se")
            ax2.set_ylabel("KD (lower is better)", color="tab:orange")
        ax.set_xlabel("kimg")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if pr:
        ax = axes[0][-1]
        for k, c in zip(pr, ("tab:green", "tab:purple", "tab:olive", "tab:cyan"), strict=False):
            pts = [(float(r.get("kimg", 0)), float(r[k])) for r in rows if num(r, k)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=c, ms=3, label=k.removeprefix("pr_"))
        ax.set_xlabel("kimg")
        ax.set_ylabel("higher is better")
        ax.set_title("k-NN precision / recall / density / coverage", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"distribution metrics over training ({len(rows)} records)")
    fig.tight_layout()
    return _save(fig, out_png)


def _minutes(row: dict[str, Any]) -> float | None:
    h = _hours(row)
    return None if h is None else h * 60


def plot_law(rows: list[dict[str, Any]], out_png: str | Path, title: str = "") -> Path | None:
    """Law score over training: valid fraction (left axis) and parameter distance (right), against kimg
    and wall-clock minutes."""
    rows = sorted((r for r in rows if isinstance(r.get("law_valid"), (int, float))), key=lambda r: r.get("kimg", 0))
    if not rows:
        return None
    plt = _pyplot()
    axes_x = [("kimg", [float(r.get("kimg", 0)) for r in rows])]
    minutes = [_minutes(r) for r in rows]
    if all(m is not None for m in minutes):
        axes_x.append(("wall-clock minutes", minutes))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(5.2 * len(axes_x), 3.6), squeeze=False)
    for ax, (label, xs) in zip(axes[0], axes_x, strict=True):
        ax.plot(xs, [r["law_valid"] for r in rows], "o-", color="tab:green", ms=3, label="valid fraction")
        ax.set_ylim(0, 1)
        ax.set_xlabel(label)
        ax.set_ylabel("valid fraction (higher is better)", color="tab:green")
        ax.grid(alpha=0.3)
        pts = [(x, r["law_distance"]) for x, r in zip(xs, rows, strict=True)
               if isinstance(r.get("law_distance"), (int, float))]
        if pts:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="tab:purple", ms=3)
            ax2.set_ylabel("parameter distance (lower is better)", color="tab:purple")
    fig.suptitle(title or "law score over training")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_run(run_dir: str | Path, out_png: str | Path) -> Path | None:
    """One picture of a run: the latest sample grid beside its quality curve (law score, else FID)."""
    import numpy as np
    from PIL import Image

    from projgan.artifacts import METRICS, SAMPLES_DIR, read_jsonl

    run = Path(run_dir)
    grids = sorted((run / SAMPLES_DIR).glob("kimg*.png"))
    if not grids:
        return None
    rows = read_jsonl(run / METRICS)
    law = [r for r in rows if isinstance(r.get("law_valid"), (int, float))]
    fid = [r for r in rows if isinstance(r.get("fid"), (int, float))]
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 1.1]})
    ax1.imshow(np.asarray(Image.open(grids[-1]).convert("RGB")), interpolation="nearest")
    ax1.set_axis_off()
    ax1.set_title(f"EMA samples at {float(grids[-1].stem.removeprefix('kimg')):g} kimg", fontsize=10)
    series = [("law valid fraction (higher is better)", "law_valid", law, "tab:green")] if law else []
    series += [("FID (lower is better)", "fid", fid, "tab:blue")] if fid and not law else []
    for label, key, pts, color in series:
        ax2.plot([(_minutes(r) or 0) for r in pts], [r[key] for r in pts], "o-", ms=3, color=color)
        ax2.set_ylabel(label)
    if law:
        ax2.set_ylim(0, 1)
    ax2.set_xlabel("wall-clock minutes of training")
    ax2.grid(alpha=0.3)
    last = law[-1]["law_valid"] if law else (fid[-1]["fid"] if fid else None)
    ax2.set_title(f"{run.name}: " + (f"{last:.0%} valid" if law else f"FID {last:.2f}" if fid else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_bench(result: dict[str, Any], out_png: str | Path) -> Path | None:
    """Left: images/s against batch size, one line per backend. Right: batch latency distribution."""
    points = [p for p in result.get("results", []) if p.get("latencies_ms")]
    if not points:
        return None
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    labels = list(dict.fromkeys(p["label"] for p in points))
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label in labels:
        ps = sorted((p for p in points if p["label"] == label), key=lambda p: p["batch"])
        ax1.plot([p["batch"] for p in ps], [p["images_per_s"] for p in ps], "o-", color=colors[label], label=label)
    batches = sorted({p["batch"] for p in points})
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(batches, [str(b) for b in batches])
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("images/s (batch / median latency)")
    ax1.set_title("throughput")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    box = ax2.boxplot([p["latencies_ms"] for p in points], whis=(1, 99), patch_artist=True)
    for patch, p in zip(box["boxes"], points, strict=True):
        patch.set_facecolor(colors[p["label"]])
        patch.set_alpha(0.5)
    ax2.set_xticks(range(1, len(points) + 1), [f"{p['label']}\nb={p['batch']}" for p in points],
                   rotation=45, ha="right", fontsize=7)
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(ScalarFormatter())
    ax2.yaxis.set_minor_formatter(NullFormatter())
    ax2.set_ylabel("latency per batch (ms)")
    ax2.set_title("latency distribution (box: quartiles, whiskers: p1-p99)")
    ax2.grid(alpha=0.3, axis="y")
    m = result.get("machine", {})
    where = m.get("gpu") or m.get("cpu", "")
    gen = result.get("generator") or {}
    what = f"{gen.get('resolution', '?')} px ngf {gen.get('ngf', '?')}" if gen else Path(result.get("source", "")).name
    fig.suptitle(f"{what} on {where}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)
