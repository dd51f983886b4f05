"""What this machine is and has: device, CPU flags, native precisions, versions, cache folder.

One home for the facts every stage asks about, so training, serving, export and the benchmarks
agree on them, and every benchmark file describes its machine the same way. CPUs differ from
machine to machine (AMX, AVX512-BF16, AVX2 only), so all of it is detected at run time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from projgan.config import parse_device
from projgan.errors import UserError

# The flags that decide which precision is fast here (recorded in every benchmark file).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
# Space- or comma-separated flags that replace /proc/cpuinfo's: to check the paths of another CPU
# (e.g. "avx2 fma" for one without bf16 instructions) or to keep bf16 off on this one.
CPU_FLAGS_ENV = "PROJGAN_CPU_FLAGS"
# Installed versions worth recording: key (import name) -> distributions that provide it.
_PACKAGES = {
    "projgan": ("projgan",), "numpy": ("numpy",), "timm": ("timm",), "clean-fid": ("clean-fid",),
    "onnx": ("onnx",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "onnxscript": ("onnxscript",),
    "onnxslim": ("onnxslim",), "onnxconverter-common": ("onnxconverter-common",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU_FLAGS this CPU has (or that ``$PROJGAN_CPU_FLAGS`` says it has)."""
    override = os.environ.get(CPU_FLAGS_ENV)
    have = set(override.replace(",", " ").split()) if override is not None else _cpuinfo()[1]
    return [f for f in CPU_FLAGS if f in have]


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 convs and matmuls run several times faster than fp32 on the CPU."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_flags()))


def precision_support(device: str) -> dict[str, str | None]:
    """Each precision worth measuring on ``device`` -> None where it runs natively, else why not.

    Without bf16 instructions a CPU emulates bf16 about 100x slower than fp32 (1.2 against 115-175
    GFLOP/s measured on an AVX2-only EPYC), so timing it only takes minutes to say "don't".
    """
    if is_cuda(device):
        major = torch.cuda.get_device_capability(device if ":" in str(device) else None)[0]
        return {"fp32": None, "fp16": None,  # bf16 tensor cores: compute capability 8.0+ (Ampere)
                "bf16": None if major >= 8 else f"{torch.cuda.get_device_name()} has no native bf16 (needs compute capability 8.0+)"}
    if cpu_has_fast_bf16():
        return {"fp32": None, "bf16": None}
    flags = " ".join(cpu_flags()) or "none of " + " ".join(CPU_FLAGS)
    src = f"${CPU_FLAGS_ENV}" if CPU_FLAGS_ENV in os.environ else "/proc/cpuinfo"
    return {"fp32": None, "bf16": f"CPU has neither AMX-BF16 nor AVX512-BF16 (flags from {src}: {flags}); "
                                  "bf16 would be emulated, about 100x slower than fp32"}


def is_cuda(device) -> bool:
    """Whether a device string or ``torch.device`` is a GPU (``cuda`` or ``cuda:N``)."""
    return str(device).startswith("cuda")


def cuda_index(device) -> int:
    """The GPU index of ``cuda:N`` (plain ``cuda``: the current device)."""
    d = torch.device(device)
    return d.index if d.index is not None else torch.cuda.current_device()


def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> str:
    """'auto' -> 'cuda' where CUDA works, else 'cpu'. ``local_rank`` pins plain 'cuda' to one GPU
    (torchrun). Returns 'cpu', 'cuda' or 'cuda:N'; asking for what is not here is a UserError."""
    kind, index = parse_device(str(device))
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but CUDA is not available here", "use --device cpu or auto")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise UserError(f"--device {device}: this machine has {count} GPU(s)", f"choose cuda:0 .. cuda:{count - 1}")
    if index is None and local_rank is not None:
        index = local_rank
    return "cuda" if index is None else f"cuda:{index}"


def pick_auto_precision(support: dict[str, str | None], cuda: bool) -> str:
    """The one rule behind ``--precision auto`` (training and serving alike): bf16 where the device
    runs it natively (its range needs no loss scaling), else fp16 on a GPU, else fp32."""
    if support.get("bf16", "absent") is None:
        return "bf16"
    return "fp16" if cuda else "fp32"


def auto_precision(device) -> str:
    """``--precision auto`` on ``device``: ``pick_auto_precision`` of what it runs natively."""
    return pick_auto_precision(precision_support(str(device)), is_cuda(device))


def tf32_state() -> dict[str, bool]:
    """Whether CUDA fp32 matmuls and cuDNN convolutions may use TF32 (10-bit mantissa) right now.

    cuDNN's default is on: an "fp32" convolution on an Ampere or later GPU is TF32 unless turned off.
    Read through the legacy flags; a process that set the newer ``fp32_precision`` API in a way the
    legacy flags cannot express is read through that API instead.
    """
    try:
        return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "conv": bool(torch.backends.cudnn.allow_tf32)}
    except RuntimeError:  # torch >= 2.9: legacy and new TF32 settings were mixed
        return {"matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
                "conv": torch.backends.cudnn.conv.fp32_precision == "tf32"}


@contextlib.contextmanager
def fp32_exact():
    """fp32 means fp32 inside this block: TF32 off for matmuls and cuDNN convolutions, restored after.

    A reference, a parity check or an fp32 benchmark row on a GPU must not silently run at TF32.
    Only the legacy flags are set (conv and RNN together), so readers of either API agree."""
    old = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old["matmul"]
        torch.backends.cudnn.allow_tf32 = old["conv"]


def cache_dir() -> Path:
    """Caches shared by runs (reference statistics, TensorRT timing caches): $PROJGAN_CACHE, else
    $XDG_CACHE_HOME/projgan, else ~/.cache/projgan."""
    if os.environ.get("PROJGAN_CACHE"):
        return Path(os.environ["PROJGAN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "projgan"


def versions() -> dict[str, str]:
    """Python, torch and every installed package that changes results or speed (read from package
    metadata: nothing is imported). A package installed under another name is recorded under both."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for key, dists in _PACKAGES.items():
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
            if dist != key:
                out[dist] = out[key]
            break
    return out


def machine() -> dict[str, Any]:
    """CPU model and flags, cores and threads, GPU, platform and current load: what a timing needs
    beside it to be read (compare numbers within one file, never across machines)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_fast_bf16": cpu_has_fast_bf16(),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "gpu": None, "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if CPU_FLAGS_ENV in os.environ:
        info["cpu_flags_override"] = os.environ[CPU_FLAGS_ENV]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpus"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["tf32"] = tf32_state()
        info["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return info
