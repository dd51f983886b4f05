"""Build the README's benchmark table from the JSON files in this folder (never from memory).

    .venv/bin/python benchmarks/table.py          # rewrites the block between the bench-table markers
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"


def _load(name: str):
    path = HERE / name
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[str]:
    out = ["| what | machine | setting | result | file |", "| --- | --- | --- | --- | --- |"]
    g = _load("cpu_generator256.json")
    if g:
        m = g["machine"]
        for r in g["results"]:
            out.append(
                f"| generator 256 px, ngf 128 ({g['gflop_per_image']:.1f} GFLOP/img) | {m['cpu']}, {m['cores']} cores "
                f"| {r['label']}, batch {r['batch']} | {r['images_per_s']:.2f} img/s, p50 {r['latency_ms']['p50']:.0f} ms, "
                f"{100 * r['fraction_of_peak']:.0f}% of peak | cpu_generator256.json |"
            )
    for f in sorted(HERE.glob("generator_*_cpu.json")):  # `pipeline bench --generator ARCH`: one file per arch
        g = json.loads(f.read_text())
        gen, m = g["generator"], g["machine"]
        best = max(g["results"], key=lambda r: r["images_per_s"])
        out.append(
            f"| {gen['arch']} generator {gen['resolution']} px, ngf {gen['ngf']} ({g['gflop_per_image']:.1f} GFLOP/img, "
            f"{gen['params'] / 1e6:.1f} M params) | {m['cpu']}, {m['cores']} cores | best of "
            f"{', '.join(sorted({r['label'] for r in g['results']}))}: {best['label']}, batch {best['batch']} "
            f"| {best['images_per_s']:.2f} img/s, {100 * best['fraction_of_peak']:.0f}% of peak | {f.name} |"
        )
    t = _load("train_cpu.json")
    if t:
        for r in t["results"]:
            out.append(
                f"| training step {r['resolution']} px, ngf {r['ngf']}, batch {r['batch']} | {t['machine']['cpu']}, "
                f"{t['machine'].get('cpu_count', t['machine'].get('cores'))} cores | {r['precision']}, channels_last {'on' if r['channels_last'] else 'off'}, "
                f"compile {'on' if r['compile'] else 'off'} | {r['sec_per_kimg']:.0f} s/kimg | train_cpu.json |"
            )
    c = _load("train_cuda.json")
    if c:
        for run in c["runs"]:
            for r in run["results"]:
                out.append(
                    f"| training step {r['resolution']} px, ngf {r['ngf']}, batch {r['batch']} | {run['machine']['gpu']} "
                    f"| {r['precision']}, channels_last {'on' if r['channels_last'] else 'off'} "
                    f"| {r['sec_per_kimg']:.2f} s/kimg ({r['images_per_sec']:.0f} img/s) | train_cuda.json |"
                )
    e = _load("export_cpu.json")
    if e:
        ex = e["export"]
        out.append(
            f"| export 256 px, ngf 128 --fp16 | {e['machine']['cores']}-core CPU | ONNX export / whole export with parity "
            f"| {ex['onnx_fp32_export_seconds']:.0f} s / {ex['wall_seconds_total']:.0f} s | export_cpu.json |"
        )
    for f in sorted((HERE / "convergence").glob("*.json")):
        cv = json.loads(f.read_text())
        m = cv["machine"]
        for run in cv["runs"]:
            best = max(run["curve"], key=lambda r: r["law_valid"])
            last = run["curve"][-1]
            out.append(
                f"| convergence, law '{cv['law']}' {cv['resolution']} px, ngf {cv['ngf']} | {m['cpu']}, "
                f"{m['torch_threads']} thread(s) | {run['setting']} D, {cv['minutes_per_setting']:g} min "
                f"| valid {last['law_valid']:.2f} at {last['kimg']:.0f} kimg (best {best['law_valid']:.2f}), "
                f"FID proxy {last['fid_proxy']:.1f}, {run['sec_per_kimg']:.1f} s/kimg | convergence/{f.name} |"
            )
    for f in sorted((HERE / "serve_load").glob("*.json")):
        s = json.loads(f.read_text())
        tg, m = s["targets"], s["model"]
        if "served" in s:  # first format: one served phase, single-image routes as a list
            clients, per_req = s["served"]["clients"], s["served"]["images_per_request"]
            served, single = s["served"]["images_per_s"], s["single_image_no_load"][0]["p50_ms"]
            raw1 = s["raw"]["batch1_latency"]["p50_ms"]
            cpu = f"{s['machine']['cpu']}, {s['machine']['torch_threads']} threads"
        else:  # interleaved rounds (after the TCP_NODELAY fix)
            t = s["throughput"]
            clients, per_req = t["clients"], t["images_per_request"]
            served = sorted(r["served_images_per_s"] for r in t["rounds"])[len(t["rounds"]) // 2]
            single, raw1 = s["single_image_no_load"]["post_npy"]["p50_ms"], s["single_image_no_load"]["raw_batch1"]["p50_ms"]
            cpu = f"{s['machine']['cpu']}, {s['machine']['cores']} cores"
        out.append(
            f"| serving {m['resolution']} px, {m['backend']} {m['precision']} | {cpu} "
            f"| {clients} clients x {per_req} img "
            f"| served {served:.1f} img/s = {100 * tg['served_over_raw']:.0f}% of raw; "
            f"single-image p50 {single:.0f} ms vs raw batch-1 {raw1:.0f} ms"
            f" (target {'met' if tg['single_p50_ok'] else 'missed'}) | serve_load/{f.name} |"
        )
    return out


def main() -> None:
    text = README.read_text()
    block = "\n".join(rows())
    new = re.sub(
        r"(<!-- bench-table:start -->\n).*?(<!-- bench-table:end -->)",
        lambda m: m.group(1) + block + "\n\nGenerated by `benchmarks/table.py`; each file holds the command, machine "
        "and versions that produced it.\n" + m.group(2),
        text,
        flags=re.S,
    )
    README.write_text(new)


if __name__ == "__main__":
    main()
