"""Reproduce benchmarks/export_cpu.json: `pipeline export --fp16` of a 256 px, ngf-128 generator on
the CPU (wall time per step, parity certificate) and ONNX Runtime CPU throughput of the files it wrote.

Random weights rescaled so the output spans the range (tests/conftest.make_generator): speed does
not depend on the values, and parity is meaningful (reference std ~0.4). Run from the repo root:

    .venv/bin/python benchmarks/export_cpu.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from projgan import artifacts  # noqa: E402
from projgan.generator import sample_latents  # noqa: E402
from projgan.hardware import machine  # noqa: E402
from projgan.serve.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from tests.conftest import make_generator  # noqa: E402

NOTES = "Shared 2-core machine: other engineers' jobs ran at the same time (see loadavg_before), so wall times are pessimistic and noisy; compare rows within this file. The export's wall time is dominated by the parity certificate (64 seeds through 4 backends, plus batches of 1 and 7). ONNX Runtime's CPU provider runs the fp16 file with inserted casts where it lacks fp16 kernels; the fp16 file is meant for GPUs (ONNX Runtime CUDA, TensorRT)."
COMMAND = "pipeline export GENERATOR_256_NGF128 --fp16 --out TMP/export  # parity on 64 seeds (the default)"


def throughput(path: Path, precision: str, batch: int, seconds: float = 20.0) -> dict:
    b = OnnxRuntimeBackend(path, "cpu", precision)
    z = sample_latents(range(batch), b.z_dim)
    b.generate(z)  # warm-up
    times = []
    while sum(times) < seconds or len(times) < 3:
        t0 = time.perf_counter()
        b.generate(z)
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return {
        "file": path.name,
        "precision": precision,
        "batch": batch,
        "repeats": len(times),
        "median_s": round(med, 3),
        "images_per_s": round(batch / med, 2),
    }


def main() -> None:
    out_json = ROOT / "benchmarks" / "export_cpu.json"
    with tempfile.TemporaryDirectory(prefix="export256-") as tmp:
        gen = make_generator(Path(tmp) / "generator", resolution=256, ngf=128)
        exe = Path(sys.executable).with_name("pipeline")
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        r = subprocess.run(
            [str(exe), "export", str(gen), "--fp16", "--out", f"{tmp}/export"], capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        print(r.stdout[-4000:], r.stderr[-2000:])
        m = artifacts.read_manifest(Path(tmp) / "export")
        results = [
            throughput(Path(tmp) / "export" / name, prec, b)
            for name, prec in ((artifacts.ONNX_FP32, "fp32"), (artifacts.ONNX_FP16, "fp16"))
            for b in (1, 8)
        ]
        report = {
            "command": ".venv/bin/python benchmarks/export_cpu.py  # = " + COMMAND,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {**machine(), "loadavg_before": [round(x, 2) for x in load_before]},
            "versions": m["versions"],
            "generator": m["generator"],
            "parameters": m["onnx"]["parameters"],
            "export": {
                "exit_code": r.returncode,
                "wall_seconds_total": round(wall, 1),
                "onnx_fp32_export_seconds": m["onnx"]["export_seconds"],
                "parity_seconds": {k: e.get("seconds") for k, e in m["parity"].items()},
                "file_bytes": {k: v["bytes"] for k, v in m["files"].items()},
            },
            "parity": {
                k: {f: e.get(f) for f in ("passed", "max_abs", "psnr", "psnr_min", "ssim_min", "ref_std", "max_abs_seed",
                                         "psnr_min_seed", "ssim_min_seed")}
                for k, e in m["parity"].items()
            },
            "onnxruntime_cpu": results,
            "notes": NOTES,
        }
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
