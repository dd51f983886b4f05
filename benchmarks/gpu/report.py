"""The window's verdict: the issue's targets read off the step JSONs, as ``summary.json`` and ``summary.png``.

Targets (issue 21; benchmarks, not tests): the best GPU backend at batch >= 32 reaches half the matmul peak of
its precision; a single image takes <= 2 ms raw; HTTP serves >= 85 % of raw throughput; training at 256 px,
batch 64, ngf 64 takes <= 1.5 s/kimg on an H200 (<= 2 on an H100), bf16 beating fp32; and it is >= 5x faster
than the paper's code on the same GPU and data. A target whose step did not run is "not measured", not failed.
"""

from __future__ import annotations

import json
from pathlib import Path


def _load(out: Path, name: str) -> dict | None:
    p = out / name
    try:
        return json.loads(p.read_text()) if p.exists() else None
    except ValueError:
        return None


def _target(name: str, value, target: float, higher_is_better: bool, unit: str, source: str) -> dict:
    met = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"target": name, "value": value, "goal": f"{'>=' if higher_is_better else '<='} {target:g} {unit}".strip(),
            "met": met, "source": source}


def gpu_name(out: Path) -> str:
    env = _load(out, "env.json") or {}
    torch_info = env.get("torch") if isinstance(env.get("torch"), dict) else {}
    return (torch_info.get("device") or {}).get("name") or (torch_info.get("machine") or {}).get("cpu") or "unknown"


def infer_targets(out: Path) -> list[dict]:
    rows, files = [], sorted(p.name for p in out.glob("infer_*.json"))
    for name in files:
        rows += [dict(r, file=name) for r in (_load(out, name) or {}).get("results", [])]
    big = [r for r in rows if r["batch"] >= 32 and r.get("fraction_of_peak") is not None]
    best = max(big, key=lambda r: r["fraction_of_peak"], default=None)
    one = [r for r in rows if r["batch"] == 1]
    fastest = min(one, key=lambda r: r["latency_ms"]["p50"], default=None)
    return [
        _target("best backend at batch >= 32, fraction of the matmul peak of its precision",
                best and best["fraction_of_peak"], 0.5, True, "",
                best and f"{best['file']}: {best['label']} batch {best['batch']}"),
        _target("single image, raw p50", fastest and fastest["latency_ms"]["p50"], 2.0, False, "ms",
                fastest and f"{fastest['file']}: {fastest['label']}"),
    ]


def serve_targets(out: Path) -> list[dict]:
    s = _load(out, "serve_load.json")
    ratio = s and s["targets"]["served_over_raw"]
    raw1 = s and s["single_image_no_load"]["raw_batch1"]["p50_ms"]
    return [_target("HTTP throughput over raw", ratio, 0.85, True, "", "serve_load.json"),
            _target("single image, raw batch-1 p50 beside the server", raw1, 2.0, False, "ms", "serve_load.json")]


def train_targets(out: Path, gpu: str) -> list[dict]:
    t = _load(out, "train_ngf64.json")
    rows = {r["precision"]: r["sec_per_kimg"] for r in (t or {}).get("results", []) if r["batch"] == 64}
    limit = 1.5 if "H200" in gpu else 2.0
    best = min(rows.values()) if rows else None
    ours, paper = _load(out, "ours_train.json"), _load(out, "paper_train.json")
    speedup = None
    if ours and paper and ours.get("sec_per_kimg") and paper.get("sec_per_kimg"):
        speedup = round(paper["sec_per_kimg"] / ours["sec_per_kimg"], 2)
    bf16_over_fp32 = round(rows["fp32"] / rows["bf16"], 3) if {"fp32", "bf16"} <= set(rows) else None
    return [
        _target(f"training 256 px, batch 64, ngf 64 ({'H200' if limit == 1.5 else 'H100 or other'} limit)", best,
                limit, False, "s/kimg", "train_ngf64.json"),
        _target("bf16 speed-up over fp32 at batch 64", bf16_over_fp32, 1.0, True, "x", "train_ngf64.json"),
        _target("faster than the paper's code (same GPU, data, batch 64, 256 px)", speedup, 5.0, True, "x",
                "ours_train.json, paper_train.json"),
    ]


def summarize(out: Path, steps: dict, meta: dict) -> dict:
    gpu = gpu_name(out)
    targets = infer_targets(out) + serve_targets(out) + train_targets(out, gpu)
    summary = {**meta, "gpu": gpu, "steps": steps, "targets": targets}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    try:
        plot(out, summary)
    except Exception as e:  # the JSON is the record; a figure that cannot be drawn says why
        summary["plot_error"] = f"{type(e).__name__}: {e}"
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def plot(out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.6))
    for f in sorted(out.glob("infer_*.json")):
        by_label: dict[str, list] = {}
        for r in (_load(out, f.name) or {}).get("results", []):
            by_label.setdefault(r["label"], []).append((r["batch"], r["images_per_s"]))
        for label, pts in by_label.items():
            pts.sort()
            a.plot(*zip(*pts, strict=True), marker="o", label=f"{f.stem[6:]} {label}")
    a.set(xscale="log", yscale="log", xlabel="batch", ylabel="images/s", title="generator inference (raw backend)")
    a.legend(fontsize=7)
    bars = []
    for f in sorted(out.glob("train_*.json")):
        bars += [(f"{f.stem[6:]} {r['precision']}", r["sec_per_kimg"]) for r in (_load(out, f.name) or {}).get("results", [])]
    for name, label in (("ours_train.json", "ours (train)"), ("paper_train.json", "paper code")):
        d = _load(out, name)
        if d and d.get("sec_per_kimg"):
            bars.append((label, d["sec_per_kimg"]))
    if bars:
        b.barh([x for x, _ in bars], [y for _, y in bars], color="tab:blue")
    sz = summary.get("sizes", {})
    b.set(xlabel="s/kimg (lower is better)", title=f"training, {sz.get('resolution')} px, batch {sz.get('train_batch')}")
    s = _load(out, "serve_load.json")
    if s:
        single = s["single_image_no_load"]
        c.bar(list(single), [v["p50_ms"] for v in single.values()], color="tab:green")
        c.set(ylabel="p50 ms", title=f"single image; HTTP/raw throughput {s['targets']['served_over_raw']:.0%}")
    else:
        c.set(title="serving: not measured")
    met = sum(1 for x in summary["targets"] if x["met"]) if summary["targets"] else 0
    fig.suptitle(f"{summary['gpu']}: {met} of {len(summary['targets'])} targets met ({summary.get('mode', '')})")
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=110)
    plt.close(fig)


def table(summary: dict) -> str:
    """Steps and targets as plain text: the last thing the window prints."""
    lines = [f"{'step':<16} {'status':<8} {'s':>6}  note"]
    for name, r in summary["steps"].items():
        note = r.get("reason") or (f"rc {r['rc']}" if r.get("rc") else "")
        lines.append(f"{name:<16} {r['status']:<8} {r.get('seconds', 0):>6.1f}  {note}"[:160])
    lines.append("")
    for t in summary["targets"]:
        mark = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.4g}"
        lines.append(f"{mark:<12} {value:>8} {t['goal']:<14} {t['target']}")
    return "\n".join(lines)
