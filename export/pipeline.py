"""`pipeline export`: generator artifact -> ONNX fp32/fp16, TensorRT plan, parity certificate, manifest.

Everything is built in a temporary folder beside ``--out`` and swapped into place at the end
(``artifacts.atomic_replace_dir``), so an interrupted or failed export leaves nothing half-written
and an existing export is replaced only with ``--force``. A failed parity check still writes the
export (with the failing entries marked, which serving refuses unless forced) and returns False.
"""

from __future__ import annotations

import datetime
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from projgan import artifacts, hardware, similarity
from projgan.config import ExportConfig
from projgan.errors import UserError
from projgan.export import drift
from projgan.export import onnx as onnx_export
from projgan.generator import input_names

MANIFEST_FORMAT = "projgan.export"
FORMAT_VERSION = 2  # 2: arch, num_classes, class_names, truncation, the input signature, w_space


@contextmanager
def _step(console: Console, title: str):
    """A spinner while a step runs, then one line with its duration."""
    t0 = time.perf_counter()
    note: dict[str, str] = {"text": ""}
    with console.status(f"[bold]{title}[/] ..."):
        yield note
    console.print(
        f"[green]✓[/] {title}{' ' + note['text'] if note['text'] else ''} [dim]{time.perf_counter() - t0:.1f} s[/]"
    )


def _validate(cfg: ExportConfig) -> tuple[Path, Path]:
    """Every user mistake about files, before any work: one line, exit 2.

    Opset, batch profile and seed count were validated when ``cfg`` was made (``ExportConfig``).
    """
    src = artifacts.resolve_generator_dir(cfg.source)
    artifacts.read_generator_config(src)  # wrong format -> UserError
    if not cfg.out:
        raise UserError("no output directory given", "pass --out exports/NAME")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory", "choose another --out")
    if out.exists() and not cfg.force:
        raise UserError(f"{out} already exists", "pass --force to replace it, or choose another --out")
    s, o = src.resolve(), out.resolve()
    if s == o or o in s.parents:
        raise UserError(f"--out {out} would replace the source {src}", "choose an --out outside the source")
    return src, out


def _versions(with_trt: bool) -> dict[str, str]:
    out = hardware.versions()
    if with_trt:  # the module that built the engine, whichever distribution carried it
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    return out


def _timing_cache_path() -> Path:
    return hardware.cache_dir() / "tensorrt-timing.cache"


def _build(tmp: Path, src: Path, cfg: ExportConfig, console: Console, state: dict[str, Any]) -> None:
    from projgan.export import fp16 as fp16_export
    from projgan.export import parity

    gen_cfg = artifacts.read_generator_config(src)
    G, _ = artifacts.load_generator(src)
    g = G.cfg
    lo, opt, hi = cfg.batch_sizes
    files: list[Path] = []

    with _step(console, "copy generator artifact") as note:
        (tmp / artifacts.GENERATOR_DIR).mkdir()
        for name in (artifacts.CONFIG_JSON, artifacts.WEIGHTS):
            shutil.copy2(src / name, tmp / artifacts.GENERATOR_DIR / name)
            files.append(tmp / artifacts.GENERATOR_DIR / name)
        classes = f", {g.num_classes} classes" if g.conditional else ""
        note["text"] = f"({g.arch}, {g.resolution} px, z_dim {g.z_dim}, ngf {g.ngf}{classes})"

    with _step(console, f"ONNX fp32 -> {artifacts.ONNX_FP32}") as note:
        t0 = time.perf_counter()
        onnx_info = onnx_export.export_fp32(G, tmp / artifacts.ONNX_FP32, cfg.opset, max_batch=max(hi, 1024))
        onnx_info["export_seconds"] = round(time.perf_counter() - t0, 2)
        files.append(tmp / artifacts.ONNX_FP32)
        note["text"] = (
            f"(opset {cfg.opset}, inputs {', '.join(onnx_info['inputs'])}, {onnx_info['nodes']} nodes, "
            "checked, loads in ONNX Runtime)"
        )
    w_info = None
    if g.truncation:
        from projgan.artifacts import W_FILES

        with _step(console, f"ONNX w space -> {', '.join(W_FILES.values())}") as note:
            w_info = onnx_export.export_w_space(G, tmp, cfg.opset, max_batch=max(hi, 1024))
            files += [tmp / W_FILES[k] for k in ("mapping", "synthesis")]
            note["text"] = "(z -> w and w -> image, fp32, for interpolation in w)"
    del G

    fp16_info = None
    if cfg.fp16:
        with _step(console, f"ONNX fp16 -> {artifacts.ONNX_FP16}") as note:
            fp16_info = _fp16_with_probe(tmp, cfg, fp16_export)
            files.append(tmp / artifacts.ONNX_FP16)
            kept = len(fp16_info["fp32_nodes"])
            note["text"] = f"(keep_io_types, {kept} fragile nodes kept in fp32)" if kept else "(keep_io_types)"

    trt_info: dict[str, Any] = {"built": False}
    if not cfg.tensorrt:
        trt_info["reason"] = "disabled with --no-tensorrt"
    elif not cfg.fp16:
        trt_info["reason"] = "needs --fp16 (the engine is built from the fp16 ONNX)"
    else:
        from projgan.serve import tensorrt as trt_runtime

        ok, why = trt_runtime.available()
        if not ok:
            trt_info["reason"] = why
        else:
            from projgan.export import tensorrt_build

            with _step(console, f"TensorRT engine -> {artifacts.TRT_PLAN}") as note:
                built = tensorrt_build.build_engine(
                    tmp / artifacts.ONNX_FP16,
                    tmp / artifacts.TRT_PLAN,
                    cfg.batch_sizes,
                    cfg.workspace_gib,
                    _timing_cache_path(),
                )
                trt_info = {"built": True, **built}
                files.append(tmp / artifacts.TRT_PLAN)
                note["text"] = f"(TensorRT {built['version']}, {built.get('gpu', '?')}, batch {lo}..{hi})"
    if not trt_info["built"]:
        console.print(f"[yellow]-[/] TensorRT engine skipped: {trt_info['reason']}")

    console.print(f"[bold]parity[/] on {cfg.parity_seeds} seeds against torch fp32 ...")
    t = similarity.Thresholds.of(cfg)
    results = parity.certify(tmp, cfg, with_trt=trt_info["built"], console=console)
    console.print(parity.table(results, t))
    for line in parity.failures(results):
        console.print(f"[red]✗[/] {line}", highlight=False)
    warnings = [e["reason"].split("warning: ")[1] for e in results.values() if "warning: " in e.get("reason", "")]
    for w in warnings[:1]:
        console.print(f"[yellow]![/] {w}", highlight=False)
    passed = all(e["passed"] for e in results.values())
    state["passed"] = passed

    triton_info = None
    if cfg.triton:
        from projgan.export import triton

        with _step(console, "Triton model repository -> triton/") as note:
            use16 = cfg.fp16 and results.get("onnxruntime-fp16", {}).get("passed", False)
            onnx_for_triton = tmp / (artifacts.ONNX_FP16 if use16 else artifacts.ONNX_FP32)
            plan = tmp / artifacts.TRT_PLAN if trt_info["built"] else None
            written = triton.write_repository(
                tmp / "triton",
                onnx_for_triton,
                plan,
                g.z_dim,
                (g.channels, g.resolution, g.resolution),
                cfg.batch_sizes,
                extra_inputs=input_names(g)[1:],
            )
            files += written
            triton_info = {
                "models": [triton.ONNX_MODEL] + ([triton.TRT_MODEL] if plan else []),
                "onnx": onnx_for_triton.name,
                "max_batch_size": hi,
            }
            note["text"] = f"({', '.join(triton_info['models'])}; {onnx_for_triton.name})"

    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "passed": passed,
        "source": {
            "path": str(src.resolve()),
            "sha256": artifacts.sha256_file(src / artifacts.WEIGHTS),
            "config_sha256": artifacts.sha256_file(src / artifacts.CONFIG_JSON),
        },
        "generator": gen_cfg.get("generator", {}),
        "generator_meta": gen_cfg.get("meta", {}),
        "opset": cfg.opset,
        **onnx_export.io_spec(g),
        "batch_profile": {"min": lo, "opt": opt, "max": hi},
        "precisions": {
            artifacts.ONNX_FP32: "fp32",
            **({artifacts.ONNX_FP16: "fp16"} if cfg.fp16 else {}),
            **({artifacts.TRT_PLAN: "fp16"} if trt_info["built"] else {}),
        },
        "onnx": onnx_info,
        "w_space": w_info,
        "fp16": fp16_info,
        "tensorrt": trt_info,
        "triton": triton_info,
        "thresholds": t.as_dict(),
        "parity_seeds": cfg.parity_seeds,
        "parity_inputs": [c.describe() for c in parity.combinations(g, range(cfg.parity_seeds))],
        "parity": results,
        "drift": drift.summary(results),
        "versions": _versions(trt_info["built"]),
        "files": {
            f.relative_to(tmp).as_posix(): {"sha256": artifacts.sha256_file(f), "bytes": f.stat().st_size}
            for f in files
        },
    }
    artifacts.write_manifest(tmp, manifest)


def _fp16_with_probe(tmp: Path, cfg: ExportConfig, fp16_export) -> dict[str, Any]:
    """Convert; if a quick probe on 8 seeds misses the thresholds, keep the fragile ends in fp32."""
    from projgan.generator import sample_latents
    from projgan.serve.onnxruntime import OnnxRuntimeBackend

    src, dst = tmp / artifacts.ONNX_FP32, tmp / artifacts.ONNX_FP16
    info = fp16_export.convert(src, dst)
    b32 = OnnxRuntimeBackend(src, "cpu", "fp32")
    seeds = range(8)
    psi = [1.0, 0.7] * 4 if b32.truncation else None  # both truncations the certificate will judge
    x = {"z": sample_latents(seeds, b32.z_dim), "classes": b32.default_classes(seeds), "psi": psi}
    ref = b32.generate_float(**x)
    out = OnnxRuntimeBackend(dst, "cpu", "fp16").generate_float(**x)
    ok, why = similarity.judge(similarity.compare(ref, out), True, similarity.Thresholds.of(cfg))
    info["probe"] = why
    if not ok:
        info = fp16_export.convert(src, dst, keep_fp32=True)
        info["probe"] = f"plain conversion failed ({why}); fragile nodes kept in fp32"
    return info


def export(cfg: ExportConfig) -> bool:
    """Run the export; True when every backend passed parity (the CLI exits 1 otherwise)."""
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the parity table
        console = Console(width=150)
    src, out = _validate(cfg)
    t0 = time.perf_counter()
    console.print(f"[bold]export[/] {src} -> {out}")
    state: dict[str, Any] = {}
    artifacts.atomic_replace_dir(lambda tmp: _build(Path(tmp), src, cfg, console, state), out)
    seconds = time.perf_counter() - t0
    if state.get("passed"):
        console.print(f"[green]✓ export written to {out} in {seconds:.0f} s; parity passed[/]")
        return True
    console.print(
        f"[red]✗ parity FAILED[/]: {out}/{artifacts.MANIFEST} marks the failing backends unusable "
        "(pipeline serve refuses them unless --force)"
    )
    return False
