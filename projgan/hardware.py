"""What this machine computes fast: one answer shared by training, serving and benchmarks."""

from __future__ import annotations

from pathlib import Path


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 convs and matmuls run several times faster than fp32 on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
