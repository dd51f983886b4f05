"""CUDA paths: run where a GPU exists (skipped with the reason elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projgan import artifacts
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
    ("precision", "compiled"),
    # compiled: a minute of inductor work; `make test-slow` and the GPU script's compile step cover it
    [("fp32", False), ("bf16", False), ("fp16", False), pytest.param("bf16", True, marks=pytest.mark.slow)],
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


# ---------------------------------------------------------------- the fast serving paths (issue 21)


def _gen(tmp_path, **kw):
    from conftest import make_generator

    return make_generator(tmp_path / "g", resolution=64, ngf=32, **kw)


def test_graphed_torch_backend_is_checked_and_a_seed_is_the_same_in_every_bucket(tmp_path):
    from projgan import similarity
    from projgan.generator import classes_for_seeds
    from projgan.serve.backends import load_backend

    src = _gen(tmp_path, num_classes=3)
    b = load_backend(src, "torch", "cuda:0", "fp16", torch_mode="graphs", max_batch=16)
    assert b.mode == "graphs" and b.info["mode_check"]["passed"], b.info
    assert b.buckets == (1, 2, 4, 8, 16) and b.describe()["buckets"] == [1, 2, 4, 8, 16]
    eager = load_backend(src, "torch", "cuda:0", "fp16", torch_mode="eager")
    for seeds in ([7], [3, 7, 11], list(range(13)), list(range(40))):  # buckets 1, 4, 16 and a split at 16
        z, c = sample_latents(seeds, 256), classes_for_seeds(seeds, 3)
        out = b.generate(z, c)
        assert out.shape == (len(seeds), 64, 64, 3) and out.dtype.name == "uint8"
        np.testing.assert_array_equal(out[seeds.index(7)], b.generate(sample_latents([7], 256), [1])[0])
        ok, why = similarity.judge(similarity.compare(eager.generate_float(z, c), b.generate_float(z, c)), True)
        assert ok, why


def test_fp32_on_a_gpu_is_ieee_fp32_and_leaves_the_tf32_flags_as_it_found_them(tmp_path):
    from projgan import hardware, similarity
    from projgan.serve.backends import load_backend

    src = _gen(tmp_path)
    z = sample_latents(range(16), 256)
    ref = load_backend(src, "torch", "cpu", "fp32").generate_float(z)
    before = hardware.tf32_state()
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: the backend must not run at TF32 anyway
    try:
        gpu = load_backend(src, "torch", "cuda", "fp32", torch_mode="eager")
        out = gpu.generate_float(z)
        assert hardware.tf32_state()["conv"] is True
    finally:
        torch.backends.cudnn.allow_tf32 = before["conv"]
    m = similarity.compare(ref, out)
    assert m["max_abs"] < 1e-3, m  # IEEE fp32 lands near 1e-5 of the CPU; TF32 (10-bit mantissa) near 1e-3
    assert similarity.judge(m, similarity.image_rule("fp32", "cuda"))[0]


def test_onnxruntime_on_cuda_runs_on_cuda_with_device_resident_binding(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("CPU-only onnxruntime here (onnxruntime-gpu is not installed)")
    from projgan import similarity
    from projgan.export.onnx import export_fp32
    from projgan.serve.backends import OnnxRuntimeBackend, load_backend

    src = _gen(tmp_path)
    G, _ = artifacts.load_generator(src)
    export_fp32(G, tmp_path / "g.onnx")
    b = OnnxRuntimeBackend(tmp_path / "g.onnx", "cuda:0", "fp32")
    assert b.providers[0] == "CUDAExecutionProvider" and b.buckets
    z = sample_latents(range(9), 256)
    ref = load_backend(src, "torch", "cpu", "fp32").generate_float(z)
    assert similarity.judge(similarity.compare(ref, b.generate_float(z)), True)[0]
    np.testing.assert_array_equal(b.generate(z[:1]), b.generate(z)[:1])


def test_training_on_cuda_uses_fused_adam_and_draws_batches_on_the_gpu():
    from projgan.train.dataset import ImageDataset
    from projgan.train.step_bench import bench_training

    cfg = TrainConfig(generator=GeneratorConfig(resolution=64, ngf=32), batch=16, backbone_weights="none",
                      backbone_resolution=128, metrics=(), device="cuda")
    out = bench_training(cfg, steps=2, warmup=1)
    assert out["fused_adam"] and out["cudnn_benchmark"] and set(out["tf32"]) == {"matmul", "conv"}
    images = np.zeros((32, 16, 16, 3), np.uint8)
    ds = ImageDataset(images, "cuda", xflip=True, labels=np.arange(32) % 4, balanced=True)
    assert ds.images.is_cuda and ds.labels.is_cuda and ds.weights.is_cuda
    x, c = ds.sample_labeled(8, "cuda")
    assert x.is_cuda and c.is_cuda
