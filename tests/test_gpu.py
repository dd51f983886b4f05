"""CUDA paths: run where a GPU exists (skipped with the reason elsewhere)."""

from __future__ import annotations

import pytest
import torch

from projgan.config import GeneratorConfig, TrainConfig
from projgan.generator import sample_latents

pytestmark = pytest.mark.gpu


def test_torch_backend_cuda_reduced_precision_matches_cpu_fp32(tmp_path):
    from conftest import make_generator

    from projgan import similarity as parity
    from projgan.serve.backends import load_backend

    src = make_generator(tmp_path / "g", resolution=64, ngf=32)
    z = sample_latents(range(64), 256)
    ref = load_backend(src, "torch", "cpu", "fp32").generate_float(z)
    report = {}
    for precision in ("fp32", "fp16", "bf16"):
        out = load_backend(src, "torch", "cuda", precision).generate_float(z)
        m = parity.compare(ref, out)
        # cuDNN and the CPU pick different conv algorithms: fp32 on CUDA is judged like reduced precision.
        ok, why = parity.judge(m, reduced=True)
        report[precision] = (m["psnr_min"], m["ssim_min"], m["ref_std"])
        assert ok, (precision, why)
    print(report)


@pytest.mark.parametrize(
    ("precision", "compiled"), [("fp32", False), ("bf16", False), ("fp16", False), ("bf16", True)]
)
def test_training_steps_run_on_cuda(precision, compiled):
    from projgan.train.step_bench import bench_training

    cfg = TrainConfig(
        generator=GeneratorConfig(resolution=64, ngf=32),
        batch=16,
        backbone_weights="none",
        backbone_resolution=128,
        precision=precision,
        compile=compiled,
        metrics=(),
        device="cuda",
    )
    torch._dynamo.reset()
    out = bench_training(cfg, steps=3, warmup=2)
    assert out["precision"] == precision and out["compile"] == compiled
    assert out["losses_finite"], out
    assert out["sec_per_kimg"] > 0
    assert torch.cuda.max_memory_allocated() > 0
