"""`pipeline bench`: images/s and latency percentiles per backend and batch size, FLOPs per image,
and the fraction of the machine's measured matmul peak each backend reaches.

Every backend runs through ``load_backend`` (the code serving runs) and is timed on
``Backend.generate`` (latents in, uint8 NHWC out, what a client receives). The peak comes from a
matmul microbenchmark in the same process, so "fraction of peak" compares numbers taken under the
same load. Only precisions this machine runs natively are measured (bf16 on a CPU without
AVX512-BF16/AMX is emulated ~100x slower than fp32); the skipped ones and why go into the JSON.
Imports with torch alone: ONNX Runtime and matplotlib load only where used.

Every generator architecture (``fastgan``, ``stylegan2``; conditional or not) is measured the same way:
a conditional model's seeds get ``classes_for_seeds``. ``bench(..., generator=GeneratorConfig(...))``
without a source measures a randomly initialised generator of that config (FLOPs and images/s need no
training), and the JSON records its ``arch`` and ``num_classes`` in ``generator`` and in every row.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from projgan import artifacts, hardware
from projgan.config import BenchConfig, GeneratorConfig
from projgan.errors import UserError
from projgan.generator import build_generator, sample_latents

BENCH_JSON = "bench.json"


# ---------------------------------------------------------------- the machine's peak

PEAK_BUDGET_S = 2.0  # wall time per dtype and engine: enough for a stable best-of on any size


def _best_seconds(run, repeats: int, budget_s: float, warmup: int = 2) -> float:
    """Fastest of up to ``repeats`` timed calls of ``run`` after ``warmup``, stopping once ``budget_s``
    of wall time is spent (after at least one timed call): a slow machine gets fewer repeats, not hours."""
    stop = time.perf_counter() + budget_s
    for _ in range(warmup):
        run()
        if time.perf_counter() > stop:
            break
    best, calls = float("inf"), 0
    while calls < repeats and (calls == 0 or time.perf_counter() < stop):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
        calls += 1
    return best


def matmul_peak(device: str, n: int = 0, repeats: int = 10, budget_s: float = PEAK_BUDGET_S,
                precisions: tuple[str, ...] | None = None) -> dict[str, float]:
    """Best GFLOP/s of an n x n matmul per precision (TF32 off): by default those this device runs
    natively (``hardware.precision_support``), each bounded by ``budget_s`` of wall time."""
    n = n or (8192 if device.startswith("cuda") else 2048)
    if precisions is None:
        precisions = tuple(p for p, why in hardware.precision_support(device).items() if why is None)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = {}
    with hardware.fp32_exact():  # the fp32 peak is IEEE fp32, as the fp32 rows are (torch backend)
        for name in precisions:
            a = torch.randn(n, n, device=device).to(dtypes[name])
            b = torch.randn(n, n, device=device).to(dtypes[name])

            def run(a=a, b=b):
                a @ b
                sync()

            out[name] = round(2 * n**3 / _best_seconds(run, repeats, budget_s) / 1e9, 1)
            del a, b
    return out


def ort_matmul_peak(device: str, n: int = 0, repeats: int = 10, budget_s: float = PEAK_BUDGET_S) -> dict[str, float]:
    """Best fp32 GFLOP/s of an n x n MatMul in ONNX Runtime. Its own GEMM (MLAS) can beat torch's
    BLAS on some CPUs (MKL on AMD), so the machine's peak is the larger of the two."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = n or (8192 if device.startswith("cuda") else 2048)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=providers)
    feeds = {k: np.random.default_rng(0).standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
    best = _best_seconds(lambda: sess.run(None, feeds), repeats, budget_s)
    return {"fp32": round(2 * n**3 / best / 1e9, 1)}


def generator_flops(cfg: GeneratorConfig) -> tuple[float, int]:
    """FLOPs per image and parameters of any architecture (``FlopCounterMode`` on the meta device: no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G = build_generator(cfg).eval()
        z = torch.zeros(2, cfg.z_dim)
        c = torch.zeros(2, dtype=torch.long) if cfg.conditional else None
        psi = torch.ones(2) if cfg.truncation else None
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            G(z, c=c, psi=psi)
    return fc.get_total_flops() / 2, sum(p.numel() for p in G.parameters())


def generator_info(source: str | Path) -> dict[str, Any] | None:
    """Architecture and FLOPs per image, or None where the source holds no generator config."""
    src = Path(source)
    try:
        d = src / artifacts.GENERATOR_DIR if (src / artifacts.MANIFEST).exists() else src
        config = artifacts.read_generator_config(artifacts.resolve_generator_dir(d))
    except UserError:
        return None
    cfg = GeneratorConfig.from_dict(config["generator"])
    flops, params = generator_flops(cfg)
    return {**dataclasses.asdict(cfg), "params": params, "flops_per_image": flops,
            "kimg": config.get("meta", {}).get("kimg")}


# ---------------------------------------------------------------- what to measure


@dataclass
class Variant:
    label: str  # e.g. torch-bf16, torch-fp16-graphs, onnxruntime-fp32
    backend: str
    precision: str
    target: Path  # what load_backend opens
    mode: str = "eager"  # torch: eager | graphs | compile


def plan(source: str | Path, device: str, onnx: str | Path | None = None,
         precisions: tuple[str, ...] | None = None, torch_modes: tuple[str, ...] = ("eager",)) -> list[Variant]:
    """Every backend/precision this source offers on this machine; ``precisions``: the ones to
    consider [default: those the device runs natively]; ``torch_modes``: one torch row set per mode."""
    if precisions is None:
        precisions = tuple(p for p, why in hardware.precision_support(device).items() if why is None)
    cuda = device.startswith("cuda")
    src = Path(source)
    if not src.exists():
        raise UserError(f"{src} does not exist", "pass an export directory, a run directory or a generator/ folder")
    out: list[Variant] = []
    if src.is_file() and src.suffix == ".onnx":
        out.append(Variant(f"onnxruntime-{'fp16' if '.fp16' in src.name else 'fp32'}", "onnxruntime",
                           "fp16" if ".fp16" in src.name else "fp32", src))
    elif src.is_file() and src.suffix in (".plan", ".engine"):
        out.append(Variant("tensorrt-fp16", "tensorrt", "fp16", src))
    else:
        manifest = artifacts.read_manifest(src, verify=False) if (src / artifacts.MANIFEST).exists() else None
        has_torch = (src / artifacts.GENERATOR_DIR).exists() if manifest else True
        if has_torch:
            precs = [p for p in (("fp32", "fp16", "bf16") if cuda else ("fp32", "bf16")) if p in precisions]
            out += [Variant(f"torch-{p}" + ("" if m == "eager" else f"-{m}"), "torch", p, src, m)
                    for p in precs for m in torch_modes]
        files = manifest.get("files", {}) if manifest else {}
        if artifacts.ONNX_FP32 in files:
            out.append(Variant("onnxruntime-fp32", "onnxruntime", "fp32", src / artifacts.ONNX_FP32))
        if artifacts.ONNX_FP16 in files and cuda:  # measured no faster than fp32 on CPUs
            out.append(Variant("onnxruntime-fp16", "onnxruntime", "fp16", src / artifacts.ONNX_FP16))
        if artifacts.TRT_PLAN in files and cuda and importlib.util.find_spec("tensorrt"):
            out.append(Variant("tensorrt-fp16", "tensorrt", "fp16", src / artifacts.TRT_PLAN))
    if onnx:
        out.append(Variant("onnxruntime-fp32", "onnxruntime", "fp32", Path(onnx)))
    return list({v.label: v for v in out}.values())


def _select(variants: list[Variant], wanted: tuple[str, ...], skipped: dict[str, str] | None = None) -> list[Variant]:
    if not wanted:
        return variants
    picked = [v for v in variants if v.label in wanted or v.backend in wanted]
    unknown = [w for w in wanted if not any(w in (v.label, v.backend) for v in variants)]
    if unknown:
        have = ", ".join(v.label for v in variants) or "none"
        why = "".join(f"; {p} skipped: {r}" for p, r in (skipped or {}).items() if any(p in w for w in unknown))
        raise UserError(f"--backends {','.join(unknown)} not available for this source here (available: {have}){why}")
    return picked


def measure_interleaved(backends: list, batch: int, warmup: int, repeats: int, advance=None) -> list[list[float]]:
    """Seconds per ``generate`` call of ``batch`` images for each backend, after ``warmup`` untimed
    calls. Backends take turns call by call, so load from other processes, which drifts over
    seconds on a shared machine, falls on all of them alike instead of on whichever ran last."""
    seeds = [range(min(batch, be.max_batch)) for be in backends]
    feeds = [(sample_latents(s, be.z_dim), _classes(be, s)) for be, s in zip(backends, seeds, strict=True)]
    out: list[list[float]] = [[] for _ in backends]
    for i in range(warmup + repeats):
        for k, (be, (z, c)) in enumerate(zip(backends, feeds, strict=True)):
            t = time.perf_counter()
            be.generate(z, c)  # returns host numpy: includes device sync and the uint8 conversion
            if i >= warmup:
                out[k].append(time.perf_counter() - t)
            if advance:
                advance(1)
    return out


def _classes(backend, seeds):
    """The classes seeds get when none are named (conditional models), as serving gives them."""
    return backend.default_classes(seeds) if getattr(backend, "num_classes", 0) else None


def summarize(label: str, precision: str, batch: int, lat: list[float], flops: float | None,
              peaks: dict[str, float]) -> dict[str, Any]:
    ms = np.asarray(lat) * 1e3
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    ips = batch / (p50 / 1e3)
    row = {"label": label, "precision": precision, "batch": batch, "repeats": len(lat),
           "images_per_s": round(ips, 3), "images_per_s_mean": round(batch * len(lat) / float(ms.sum() / 1e3), 3),
           "latency_ms": {"p50": round(p50, 2), "p90": round(p90, 2), "p99": round(p99, 2),
                          "min": round(float(ms.min()), 2), "mean": round(float(ms.mean()), 2)},
           "latencies_ms": [round(float(x), 3) for x in ms]}
    if flops:
        achieved = flops * ips / 1e9
        peak_key = precision if precision in peaks else "fp32"
        row.update(gflops_per_s=round(achieved, 1), peak_key=peak_key,
                   fraction_of_peak=round(achieved / peaks[peak_key], 4) if peaks.get(peak_key) else None)
    return row


# ---------------------------------------------------------------- the command


def bench(cfg: BenchConfig, onnx: str | Path | None = None, notes: str = "", command: str | None = None,
          progress: bool = True, peak_n: int = 0, peak_budget_s: float = PEAK_BUDGET_S,
          generator: GeneratorConfig | None = None) -> dict[str, Any]:
    """Measure, write ``cfg.out`` (default ``bench.json`` beside the source) plus a PNG, print a table.

    ``onnx``: an extra ONNX file to time with ONNX Runtime next to a generator directory;
    ``peak_n``: matmul size of the peak microbenchmark (0: 2048 on CPU, 8192 on CUDA);
    ``peak_budget_s``: its wall-time bound per precision and engine;
    ``generator``: with no ``cfg.source``, measure a randomly initialised generator of this config
    (any ``arch``, conditional or not) with torch; ``cfg.out`` defaults to ``bench-<arch>-<res>px.json``.
    """
    if generator is None:
        return _bench(cfg, onnx, notes, command, progress, peak_n, peak_budget_s)
    if cfg.source:
        raise UserError("give a source or a synthetic generator config, not both")
    import tempfile

    torch.manual_seed(0)
    G = build_generator(generator).eval()
    out = cfg.out or f"bench-{generator.arch}-{generator.resolution}px.json"
    with tempfile.TemporaryDirectory(prefix="projgan-bench-") as d:
        artifacts.save_generator(Path(d) / "generator", G, {"synthetic": True})
        cfg = dataclasses.replace(cfg, source=str(Path(d) / "generator"), out=out)
        label = f"synthetic {generator.arch} ({generator.resolution} px, ngf {generator.ngf}, {generator.num_classes} classes)"
        return _bench(cfg, onnx, notes, command, progress, peak_n, peak_budget_s, synthetic=label)


def _bench(cfg: BenchConfig, onnx, notes: str, command: str | None, progress: bool, peak_n: int,
           peak_budget_s: float, synthetic: str = "") -> dict[str, Any]:
    from rich.console import Console

    from projgan.serve.backends import load_backend

    if cfg.warmup < 0 or cfg.repeats < 1 or any(b < 1 for b in cfg.batch_sizes):
        raise UserError("--warmup must be >= 0, --repeats >= 1 and batch sizes >= 1")
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that the table never truncates
        console = Console(width=max(console.width, 110))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = hardware.resolve_device(cfg.device)
    support = hardware.precision_support(device)
    native = tuple(p for p, why in support.items() if why is None)
    skipped = {p: why for p, why in support.items() if why}
    wanted = tuple(p for p in cfg.precisions if p in native) if cfg.precisions else native
    skipped.update({p: f"not native here: {support.get(p) or 'not run on ' + device}" for p in cfg.precisions
                    if p not in native and p not in skipped})
    variants = _select(plan(cfg.source, device, onnx, wanted, cfg.torch_modes), cfg.backends, skipped)
    if not variants:
        raise UserError(f"no backend can run {cfg.source} here")
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    gen = generator_info(cfg.source)
    flops = gen["flops_per_image"] if gen else None
    console.print(f"matmul peak on {device} ({', '.join(native)}, up to {peak_budget_s:g} s each)...")
    engines = {"torch": matmul_peak(device, peak_n, budget_s=peak_budget_s, precisions=native)}
    if device == "cpu" and any(v.backend == "onnxruntime" for v in variants):  # numpy feeds: CPU only
        try:
            engines["onnxruntime"] = ort_matmul_peak(device, peak_n, budget_s=peak_budget_s)
        except Exception as e:  # the peak is context; an ONNX Runtime hiccup here must not stop the bench
            console.print(f"[yellow]ONNX Runtime matmul peak skipped:[/] {e}")
    keys = list(dict.fromkeys(k for e in engines.values() for k in e))
    peaks = {k: max(e[k] for e in engines.values() if k in e) for k in keys}
    results, errors, loaded = [], [], []
    for v in variants:
        try:
            be = load_backend(v.target, v.backend, device, v.precision, force=True, torch_mode=v.mode,
                              max_batch=max(cfg.batch_sizes))
        except UserError as e:
            errors.append({"label": v.label, "error": str(e)})
            continue
        if getattr(be, "mode", "eager") != v.mode:  # a graphs/compile variant that failed its self-check
            errors.append({"label": v.label, "error": f"not served: {be.info.get('mode_check', {}).get('reason')}"})
            be.close()
            continue
        loaded.append((v, be))
    try:
        with _bar(progress, console, len(loaded) * len(cfg.batch_sizes) * (cfg.warmup + cfg.repeats)) as advance:
            for b in cfg.batch_sizes:
                lats = measure_interleaved([be for _, be in loaded], b, cfg.warmup, cfg.repeats, advance)
                for (v, be), lat in zip(loaded, lats, strict=True):
                    row = summarize(v.label, be.precision, min(b, be.max_batch), lat, flops, peaks)
                    row.update(backend=v.backend, device=be.device, providers=be.providers, mode=v.mode,
                               arch=be.cfg.arch, num_classes=be.num_classes)
                    results.append(row)
    finally:
        for _, be in loaded:
            be.close()
    if not results:
        raise UserError("no backend could be measured: " + "; ".join(f"{e['label']}: {e['error']}" for e in errors))
    result = {
        "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": synthetic or str(cfg.source),
        "synthetic": bool(synthetic),
        "config": {**dataclasses.asdict(cfg), **({"source": ""} if synthetic else {})},
        "machine": {**hardware.machine(), "load_avg_1m_before": load_before},  # other processes sharing the cores
        "versions": hardware.versions(),
        "skipped_precisions": skipped,  # not measured here (neither peak nor backend), and why
        "generator": gen,
        "gflop_per_image": round(flops / 1e9, 3) if flops else None,
        "flops_note": "torch.utils.flop_counter.FlopCounterMode (conv/matmul; a multiply-add counts 2)",
        "peak_gflops": peaks,
        "peak_gflops_by_engine": engines,
        "peak_note": (f"best n x n matmul per native precision within {peak_budget_s:g} s of wall time each "
                      "(torch, TF32 off: fp32 rows run IEEE fp32 too; ONNX Runtime fp32 when it is benchmarked); "
                      "max over engines"),
        "results": results,
        "errors": errors,
        "notes": notes,
    }
    out = Path(cfg.out) if cfg.out else _default_out(cfg.source)
    artifacts.atomic_write_json(out, result)
    from projgan.evaluation.plots import plot_bench

    png = plot_bench(result, out.with_suffix(".png"))
    print_table(result, console, f"{out}" + (f" + {png}" if png else ""))
    return result


def _default_out(source: str | Path) -> Path:
    src = Path(source)
    if src.is_file() or ((src / artifacts.CONFIG_JSON).exists() and (src / artifacts.WEIGHTS).exists()):
        return src.parent / BENCH_JSON
    return src / BENCH_JSON


@contextmanager
def _bar(enabled: bool, console, total: int):
    """A Rich progress bar over all (backend, batch) points; yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as p:
        task = p.add_task("bench", total=total)
        yield lambda n: p.advance(task, n)


def print_table(result: dict[str, Any], console, caption: str = "") -> None:
    from rich.table import Table

    m = result["machine"]
    title = f"{m['gpu'] or m['cpu']} ({m['cores']} cores)"
    gen = result.get("generator") or {}
    if gen.get("arch"):
        title += f" · {gen['arch']}" + (f", {gen['num_classes']} classes" if gen.get("num_classes") else "")
    if result.get("gflop_per_image"):
        title += f" · {result['gflop_per_image']:.2f} GFLOP/image"
    table = Table(title=title, caption=caption)
    for col in ("backend", "batch", "img/s", "p50 ms", "p90 ms", "p99 ms", "GFLOP/s", "% peak"):
        table.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
    for r in result["results"]:
        lat = r["latency_ms"]
        frac = r.get("fraction_of_peak")
        table.add_row(r["label"], str(r["batch"]), f"{r['images_per_s']:.2f}", f"{lat['p50']:.1f}",
                      f"{lat['p90']:.1f}", f"{lat['p99']:.1f}", f"{r.get('gflops_per_s', 0):.0f}",
                      f"{100 * frac:.1f}" if frac is not None else "-")
    console.print(table)
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_gflops"].items())
    console.print(f"matmul peak GFLOP/s: {peaks} (% peak: of the backend's precision; latency per batch)")
    for p, why in result.get("skipped_precisions", {}).items():
        console.print(f"[yellow]skipped {p}:[/] {why}", highlight=False)
    for e in result["errors"]:
        console.print(f"[yellow]skipped {e['label']}:[/] {e['error']}")
