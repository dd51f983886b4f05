"""The parity certificate: do the exported files make the same images as the trained generator?

Fixed seeds (``sample_latents``) through every backend that could serve this export, each opened
with the ``projgan.serve.backends`` class serving uses, so the certificate speaks for what is served:

- ``torch-fp32``: the reference (the copied generator artifact, eager PyTorch fp32 on the CPU).
- ``onnxruntime-fp32``: must match the float output (max abs <= ``fp32_max_abs``).
- ``onnxruntime-fp16``, ``tensorrt``, ``torch-bf16`` (where the CPU has fast bf16, as serve's
  auto choice uses it): reduced precision must keep every seed's uint8 image (worst PSNR and SSIM).

Every input combination the model has is certified: a conditional model's seeds get
``classes_for_seeds`` (seed % K, so consecutive seeds cover every class), and a style model runs at
psi = 1 and psi = 0.7; with more than one combination each is a labelled part of the backend's entry
(``combinations``) and the entry's numbers are over all of them. A style export's w-space graphs
(mapping, synthesis) get their own entry, ``onnxruntime-w``: w against torch's, and synthesis of
ONNX Runtime's w against torch fp32's images.

Each backend is also run on the first seeds in smaller batches (1 and 7 beside the full chunk): the
same seed must give the same image whichever batch it is in. The metrics and pass marks are
``projgan.similarity``'s, the same ones serving's load-time self-check applies.

Every reduced-precision backend must also keep the *distribution* (``export/drift.py``): the FD of its
images to torch fp32's on the same seeds, over the FD between fp32 on two disjoint seed sets, must stay
under ``drift_max_ratio``. Per-seed PSNR cannot see a small shift that every image shares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from projgan import artifacts
from projgan import similarity as metrics
from projgan.config import ExportConfig, GeneratorConfig
from projgan.errors import UserError
from projgan.export import drift
from projgan.generator import classes_for_seeds, sample_latents
from projgan.serve import backends

KEYS = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-fp16", "torch-bf16", "tensorrt", backends.W_PARITY_KEY)
REALISTIC_STD = 0.1  # below this the reference is nearly constant and PSNR says little
PSI_VALUES = (1.0, 0.7)  # style models: no truncation, and the usual serving truncation


@dataclass(frozen=True)
class Combination:
    """One way to feed the certificate's seeds: their classes (conditional) and one psi (style)."""

    label: str
    classes: np.ndarray | None
    psi: float | None

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "classes": None if self.classes is None else "seed % num_classes", "psi": self.psi}


def combinations(cfg: GeneratorConfig, seeds) -> list[Combination]:
    """Every input combination the model has: classes_for_seeds where conditional, each psi where style."""
    classes = classes_for_seeds(seeds, cfg.num_classes) if cfg.conditional else None
    psis = PSI_VALUES if cfg.truncation else (None,)
    return [Combination("all" if p is None else f"psi={p:g}", classes, p) for p in psis]


def _slice(c: Combination, i: int, j: int) -> dict[str, Any]:
    return {"classes": None if c.classes is None else c.classes[i:j], "psi": c.psi}


@dataclass
class Candidate:
    key: str
    reduced: bool  # judged on its uint8 images (similarity.image_rule), and by the drift check
    open: Callable[[], backends.Backend]
    device: str = "cpu"  # where it runs: the drift check's auto image count depends on it


def candidates(export_dir: Path, device: str, with_fp16: bool, with_trt: bool,
               gen: GeneratorConfig | None = None) -> list[Candidate]:
    """The backends this export can be served with, reference first. ``gen``: the export's generator config
    (an engine of a conditional or style model cannot say what its extra inputs are; serving reads the
    manifest, parity passes it here). fp32 is held to the float rule only on the reference's kind of device
    (``similarity.image_rule``)."""

    def torch_backend(precision: str, dev: str):
        def open_():
            G, config = artifacts.load_generator(export_dir / artifacts.GENERATOR_DIR)
            return backends.TorchBackend(G, config, dev, precision)

        return open_

    out = [
        Candidate("torch-fp32", False, torch_backend("fp32", "cpu")),
        Candidate(
            "onnxruntime-fp32",
            metrics.image_rule("fp32", device),
            lambda: backends.OnnxRuntimeBackend(export_dir / artifacts.ONNX_FP32, device, "fp32"),
            device,
        ),
    ]
    if with_fp16:
        out.append(
            Candidate(
                "onnxruntime-fp16",
                True,
                lambda: backends.OnnxRuntimeBackend(export_dir / artifacts.ONNX_FP16, device, "fp16"),
                device,
            )
        )
    if backends.cpu_has_fast_bf16():
        out.append(Candidate("torch-bf16", True, torch_backend("bf16", "cpu")))
    if with_trt:
        out.append(
            Candidate("tensorrt", True, lambda: backends.TensorRTBackend(export_dir / artifacts.TRT_PLAN, cfg=gen), "cuda")
        )
    return out


def _onnxruntime_device() -> str:
    """Where serving would run ONNX Runtime: CUDA only if both torch and ONNX Runtime have it."""
    import onnxruntime as ort

    if backends.is_cuda(backends.resolve_device("auto")) and "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda"
    return "cpu"


def _run(generate, z: np.ndarray, combo: Combination, chunk: int, advance=None) -> np.ndarray:
    """``generate(z, classes=, psi=)`` on the seeds ``chunk`` at a time."""
    parts = []
    for i in range(0, len(z), chunk):
        parts.append(generate(z[i : i + chunk], **_slice(combo, i, i + chunk)))
        if advance:
            advance(len(parts[-1]))
    return np.concatenate(parts)


def _batch_independence(generate, z, combos, fulls, chunk: int, reduced: bool, t) -> dict[str, Any]:
    """The first seeds in batches of 1 and 7 against the same seeds inside the full chunk, per combination."""
    sizes = sorted({s for s in (1, 7) if s < min(chunk, len(z))})
    worst_abs, worst_psnr, ok = 0.0, metrics.PSNR_CAP, True
    for combo, full in zip(combos, fulls, strict=True):
        for s in sizes:
            m = metrics.compare(full[:s], generate(z[:s], **_slice(combo, 0, s)))
            worst_abs, worst_psnr = max(worst_abs, m["max_abs"]), min(worst_psnr, m["psnr_min"])
            ok = ok and metrics.judge(m, reduced, t)[0]
    return {"sizes": [*sizes, min(chunk, len(z))], "max_abs": worst_abs, "psnr_min": worst_psnr, "passed": ok}


def _judge_combinations(ref, out, combos, seeds, reduced: bool, t) -> tuple[dict, bool, str, list]:
    """Metrics over every combination at once, and each combination judged on its own (its label in the reason)."""
    m = metrics.compare(np.concatenate(ref), np.concatenate(out), list(seeds) * len(combos))
    if len(combos) == 1:
        ok, reason = metrics.judge(m, reduced, t)
        return m, ok, reason, []
    parts, fails = [], []
    for combo, r, o in zip(combos, ref, out, strict=True):
        mc = metrics.compare(r, o, seeds)
        ok, why = metrics.judge(mc, reduced, t)
        parts.append({**combo.describe(), **mc, "passed": bool(ok), "reason": why})
        if not ok:
            fails.append(f"{combo.label}: {why}")
    if fails:
        return m, False, "; ".join(fails), parts
    return m, True, metrics.judge(m, reduced, t)[1] + f" ({', '.join(c.label for c in combos)})", parts


def certify(export_dir: str | Path, cfg: ExportConfig, with_trt: bool = False, console=None) -> dict[str, Any]:
    """Run the certificate on a built export folder; returns ``{key: entry}`` (see module doc).

    Every entry has ``passed`` and ``reason``; the reference's entry holds the reference std.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    export_dir = Path(export_dir)
    device = _onnxruntime_device()
    t = metrics.Thresholds.of(cfg)
    gen = GeneratorConfig.from_dict(artifacts.read_generator_config(export_dir / artifacts.GENERATOR_DIR)["generator"])
    seeds = list(range(cfg.parity_seeds))
    z = sample_latents(seeds, gen.z_dim)
    combos = combinations(gen, seeds)
    chunk = max(1, min(64, cfg.batch_sizes[2]))
    todo = candidates(export_dir, device, (export_dir / artifacts.ONNX_FP16).exists(), with_trt, gen)
    results: dict[str, Any] = {}
    ref = None
    with Progress(
        TextColumn("[bold]parity[/] {task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        drifts = drift.Checker(export_dir, cfg, [c for c in todo if c.reduced], chunk, progress)
        for c in todo:
            task = progress.add_task(c.key, total=len(z) * len(combos))
            t0 = time.perf_counter()
            try:
                b = c.open()
            except Exception as e:  # a backend that cannot even open fails its entry, not the export
                results[c.key] = {"passed": False, "reason": f"could not open: {str(e).splitlines()[0]}"}
                progress.remove_task(task)
                continue
            adv = lambda n, task=task: progress.advance(task, n)  # noqa: E731
            out = [_run(b.generate_float, z, combo, chunk, adv) for combo in combos]
            indep = _batch_independence(b.generate_float, z, combos, out, chunk, c.reduced, t)
            seconds = time.perf_counter() - t0
            info = {
                "device": b.device,
                "precision": b.precision,
                "providers": b.providers,
                "seconds": round(seconds, 2),
            }
            try:
                drift_entry = drifts.measure(c, b) if c.reduced else None
            except UserError:  # e.g. --drift-extractor inception without its weights: the user's to fix
                b.close()
                raise
            except Exception as e:  # like a backend that cannot open: fails its entry, not the export
                drift_entry = {"passed": False, "reason": f"drift check could not run: {str(e).splitlines()[0]}"}
            b.close()
            progress.remove_task(task)
            parts: list = []
            if ref is None:  # the reference: judged on itself (finite, batch independent, contrast)
                ref = out
                m, ok, reason = _reference_entry(np.concatenate(ref), list(seeds) * len(combos))
                entry = {**m, "reference": True}
            else:
                m, ok, reason, parts = _judge_combinations(ref, out, combos, seeds, c.reduced, t)
                entry = {**m, "reference": False}
            if not indep["passed"]:
                where = f"the same seeds differ across batches {indep['sizes']}"
                reason = f"{reason}; {where}" if not ok else where
                ok = False
            if drift_entry is not None and not drift_entry["passed"]:
                reason = f"{reason}; {drift_entry['reason']}" if not ok else drift_entry["reason"]
                ok = False
            elif drift_entry is not None:
                reason += f"; drift {drift_entry['ratio']:.2g} x the noise floor"
            results[c.key] = {
                **entry,
                **info,
                "reduced_precision": b.precision != "fp32",
                "rule": "images" if c.reduced else "float",  # similarity.image_rule: judged on images or floats
                "batch_independence": indep,
                **({"combinations": parts} if parts else {}),
                **({"drift": drift_entry} if drift_entry is not None else {}),
                "passed": bool(ok),
                "reason": reason,
            }
        if ref is not None and all((export_dir / f).exists() for f in artifacts.W_FILES.values()):
            results[backends.W_PARITY_KEY] = _w_space(export_dir, device, z, combos, ref, chunk, t)
    if not results.get("torch-fp32", {}).get("passed", False):
        for key, entry in results.items():
            if key != "torch-fp32" and entry.get("passed"):
                entry["passed"], entry["reason"] = False, "the reference itself failed; " + entry["reason"]
    return results


def _reference_entry(ref: np.ndarray, seeds) -> tuple[dict[str, Any], bool, str]:
    m = metrics.compare(ref, ref, seeds)
    m["nan_images"] = int((~np.isfinite(ref).reshape(len(ref), -1).all(axis=1)).sum())
    m["max_abs"] = m["mean_abs"] = 0.0  # against itself; NaN would read as an error of 2
    ok = m["nan_images"] == 0
    reason = (
        f"reference: finite, std {m['ref_std']}"
        if ok
        else f"the reference itself has NaN/Inf in {m['nan_images']} of {len(ref)} images: "
        "the generator weights are broken (a diverged run?)"
    )
    if m["ref_std"] < REALISTIC_STD:
        reason += f"; warning: reference std {m['ref_std']} is nearly constant, PSNR says little"
    return m, ok, reason


def _w_space(export_dir: Path, device: str, z, combos, ref, chunk: int, t) -> dict[str, Any]:
    """The w-space graphs (fp32): w against torch fp32's mapping, and ONNX Runtime's synthesis of
    its own w against torch fp32's full images, so interpolating in w serves the certified model."""
    t0 = time.perf_counter()
    w_files = tuple(export_dir / artifacts.W_FILES[k] for k in ("mapping", "synthesis"))
    try:
        G, config = artifacts.load_generator(export_dir / artifacts.GENERATOR_DIR)
        torch_b = backends.TorchBackend(G, config, "cpu", "fp32")
        ort_b = backends.OnnxRuntimeBackend(export_dir / artifacts.ONNX_FP32, device, "fp32", w_graphs=w_files)
    except Exception as e:
        return {"passed": False, "reason": f"could not open: {str(e).splitlines()[0]}"}
    w_err, w_scale, out = 0.0, 1.0, []
    for combo in combos:
        w_ref = _run(torch_b.map_w, z, combo, chunk)
        w = _run(ort_b.map_w, z, combo, chunk)
        w_err, w_scale = max(w_err, float(np.abs(w - w_ref).max())), max(w_scale, float(np.abs(w_ref).max()))
        out.append(np.concatenate([ort_b.synthesize_w_float(w[i : i + chunk]) for i in range(0, len(w), chunk)]))
    seeds = list(range(len(z)))
    images = metrics.image_rule("fp32", device)  # ONNX Runtime on a GPU against the CPU reference
    m, ok, reason, parts = _judge_combinations(ref, out, combos, seeds, images, t)
    w_ok = w_err <= t.fp32_max_abs * w_scale  # w is not bounded like images: relative to its largest entry
    if not w_ok:
        ok, reason = False, f"w max abs {w_err:.2e} > {t.fp32_max_abs:.0e} x {w_scale:.3g}; " + reason
    one = ort_b.synthesize_w_float(ort_b.map_w(z[:1], **_slice(combos[0], 0, 1)))
    b1 = metrics.compare(out[0][:1], one)
    indep = {"sizes": [1, min(chunk, len(z))], "max_abs": b1["max_abs"], "psnr_min": b1["psnr_min"]}
    indep["passed"] = metrics.judge(b1, images, t)[0]
    if not indep["passed"]:
        ok, reason = False, f"{reason}; the same seeds differ across batches {indep['sizes']}"
    ort_b.close()
    return {
        **m,
        "reference": False,
        "device": ort_b.device,
        "precision": "fp32",
        "providers": ort_b.providers,
        "seconds": round(time.perf_counter() - t0, 2),
        "files": [f.name for f in w_files],
        "w_max_abs": w_err,
        "reduced_precision": False,
        "rule": "images" if images else "float",
        "batch_independence": indep,
        **({"combinations": parts} if parts else {}),
        "passed": bool(ok),
        "reason": reason,
    }


def table(results: dict[str, Any], t: metrics.Thresholds):
    """A Rich table of the certificate: the worst seed of PSNR and of SSIM, the reference's std beside them."""
    from rich import box
    from rich.table import Table

    tab = Table(
        title="parity certificate (reference: torch-fp32 on the CPU)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    cols = (
        "backend",
        "run on",
        "max abs",
        "mean abs",
        "NaN",
        "PSNR dB",
        "PSNR min @seed",
        "SSIM min @seed",
        "drift/floor @n",
        "ref std",
        "batches",
        "result",
    )
    for col in cols:
        tab.add_column(
            col, justify="left" if col in ("backend", "run on", "batches", "result") else "right", no_wrap=True
        )
    for key, e in results.items():
        result = "[green]pass[/]" if e["passed"] else "[red]FAIL[/]"
        if "max_abs" not in e:
            tab.add_row(key, *["-"] * (len(cols) - 2), result)
            continue
        ref = e.get("reference")
        bi = e["batch_independence"]
        tab.add_row(
            key,
            f"{e['device']} {e['precision']}",
            "-" if ref else f"{e['max_abs']:.1e}",
            "-" if ref else f"{e['mean_abs']:.1e}",
            str(e["nan_images"]),
            "-" if ref else f"{e['psnr']:.1f}",
            "-" if ref else f"{e['psnr_min']:.1f} @{e['psnr_min_seed']}",
            "-" if ref else f"{e['ssim_min']:.4f} @{e['ssim_min_seed']}",
            drift.cell(e.get("drift")),
            f"{e['ref_std']:.3f}",
            ",".join(map(str, bi["sizes"])) + ("" if bi["passed"] else " [red]differ[/]"),
            result,
        )
    tab.caption = (
        f"pass: fp32 max abs <= {t.fp32_max_abs:g}; reduced precision: every seed's uint8 image "
        f"PSNR >= {t.min_psnr:g} dB and SSIM >= {t.min_ssim:g}"
    )
    combos = next((e["combinations"] for e in results.values() if e.get("combinations")), None)
    if combos:
        labels = ", ".join(c["label"] for c in combos)
        tab.caption += f"; each row covers {labels} (each judged on its own: export.json, combinations)"
    d = drift.summary(results)
    if d:
        tab.caption += (
            f"; drift: FD to fp32 on the same n seeds <= {d['max_ratio']:g} x FD of fp32 on two disjoint "
            f"n-seed sets ({d['extractor']} features)"
        )
    return tab


def failures(results: dict[str, Any]) -> list[str]:
    """One line per failing backend: what failed and by how much."""
    return [f"{key}: {e['reason']}" for key, e in results.items() if not e["passed"]]
