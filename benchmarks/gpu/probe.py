"""The GPU window's first record: what this machine is and has, before anything is timed.

    python3 benchmarks/gpu/probe.py OUT.json

GPU name, memory, multiprocessors, driver and CUDA versions, the TF32 and cuDNN settings, package versions,
which execution providers ONNX Runtime really has, whether TensorRT loads, and which of the serving stack's
modules import. Fails soft: every part that cannot be read says why.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path


def _nvidia_smi() -> dict:
    fields = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    rows = [dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))
            for line in r.stdout.splitlines() if line.strip()]
    return {"gpus": rows} if rows else {"error": (r.stderr or "no output").strip()[:200]}


def _torch() -> dict:
    import torch

    from projgan import hardware

    out = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "machine": hardware.machine(), "versions": hardware.versions(), "tf32": hardware.tf32_state(),
           "auto_precision": hardware.auto_precision(hardware.resolve_device("auto"))}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["device"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}"}
    return out


def _providers() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return {"error": str(e)}
    return {"version": ort.__version__, "available": ort.get_available_providers(), "device": ort.get_device()}


def _tensorrt() -> dict:
    from projgan.serve import tensorrt

    ok, why = tensorrt.available()
    return {"available": ok, "reason": why}


def main(path: str) -> None:
    record: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    for key, fn in (("nvidia_smi", _nvidia_smi), ("torch", _torch), ("onnxruntime", _providers),
                    ("tensorrt", _tensorrt)):
        try:
            record[key] = fn()
        except Exception as e:  # a probe reports, it never stops the window
            record[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    mods = ("fastapi", "uvicorn", "pydantic", "starlette", "gradio", "cleanfid", "timm", "skimage", "httpx", "onnx")
    record["importable"] = {m: importlib.util.find_spec(m) is not None for m in mods}
    Path(path).write_text(json.dumps(record, indent=2, default=str) + "\n")
    dev = record["torch"].get("device", {}) if isinstance(record["torch"], dict) else {}
    print(f"probe: {dev.get('name', 'no GPU')}, torch {record['torch'].get('torch')}, "
          f"ORT {record['onnxruntime'].get('available')}, TensorRT {record['tensorrt'].get('reason')}")


if __name__ == "__main__":
    main(sys.argv[1])
