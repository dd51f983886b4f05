"""serve/backends.py and serve/tensorrt.py: the one home for running a generator (TensorRT plans built by export)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from projgan import artifacts, similarity
from projgan.config import ExportConfig
from projgan.errors import UserError
from projgan.generator import sample_latents
from projgan.serve import backends
from projgan.serve import tensorrt as trt_runtime
from tests.conftest import make_generator

needs_bf16 = pytest.mark.skipif(not backends.cpu_has_fast_bf16(), reason="CPU has no AMX/AVX512-BF16")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from projgan.export.pipeline import export

    root = tmp_path_factory.mktemp("backends")
    make_generator(root / "generator", resolution=32, ngf=16)
    out = root / "exp"
    assert export(ExportConfig(source=str(root / "generator"), out=str(out), fp16=True, parity_seeds=4))
    return out


def test_torch_and_onnxruntime_agree_per_seed(export_dir):
    G, config = artifacts.load_generator(export_dir / artifacts.GENERATOR_DIR)
    torch_b = backends.TorchBackend(G, config, "cpu", "fp32")
    ort_b = backends.OnnxRuntimeBackend(export_dir / artifacts.ONNX_FP32, "cpu", "fp32")
    assert (ort_b.z_dim, ort_b.resolution) == (256, 32)
    z = sample_latents([5, 6, 7], 256)
    a, b = torch_b.generate_float(z), ort_b.generate_float(z)
    assert a.shape == b.shape == (3, 3, 32, 32)
    assert np.abs(a - b).max() <= similarity.Thresholds().fp32_max_abs
    u8 = ort_b.generate(z)
    assert u8.dtype == np.uint8 and u8.shape == (3, 32, 32, 3)
    assert np.abs(u8.astype(int) - torch_b.generate(z)).max() <= 1


@needs_bf16
def test_auto_precision_self_check_passes_and_is_reported(generator_dir):
    G, config = artifacts.load_generator(generator_dir)
    b = backends.TorchBackend(G, config, "cpu", "auto")
    check = b.info["precision_check"]
    assert b.precision == "bf16" and check["passed"], check
    assert "PSNR" in check["reason"] and "reference std" in check["reason"]


@needs_bf16
def test_auto_precision_falls_back_to_fp32_when_the_self_check_fails(generator_dir, monkeypatch, caplog):
    # bf16 measures ~50 dB on this generator; demand more than it can give
    monkeypatch.setattr(backends.TorchBackend, "self_check_thresholds", similarity.Thresholds(min_psnr=90.0))
    G, config = artifacts.load_generator(generator_dir)
    with caplog.at_level("WARNING", logger="projgan.serve"):
        b = backends.TorchBackend(G, config, "cpu", "auto")
    assert b.precision == "fp32" and b.dtype is None
    assert not b.info["precision_check"]["passed"] and "< 90 dB" in b.info["precision_check"]["reason"]
    assert "serving fp32" in caplog.text
    G2, _ = artifacts.load_generator(generator_dir)
    z = sample_latents([1, 2], 256)
    ref = backends.TorchBackend(G2, config, "cpu", "fp32").generate_float(z)
    assert np.abs(b.generate_float(z) - ref).max() <= similarity.Thresholds().fp32_max_abs


@needs_bf16
def test_a_failed_bf16_certificate_makes_torch_serve_fp32(export_dir, tmp_path):
    import shutil

    d = tmp_path / "exp"
    shutil.copytree(export_dir, d)
    m = json.loads((d / artifacts.MANIFEST).read_text())
    m["parity"]["torch-bf16"]["passed"] = False
    m["parity"]["torch-bf16"]["reason"] = "seed 3: PSNR 31.0 dB < 40 dB"
    artifacts.write_manifest(d, m)  # export.json is not in its own file list
    b = backends.load_backend(d, backend="torch", device="cpu")
    assert b.precision == "fp32" and "certificate" in b.info["precision_check"]["reason"]
    explicit = backends.load_backend(d, backend="torch", device="cpu", precision="bf16")
    assert explicit.precision == "bf16"  # an explicit choice is the user's


def test_load_backend_refuses_failed_or_tampered_exports(export_dir, tmp_path):
    import shutil

    d = tmp_path / "exp"
    shutil.copytree(export_dir, d)
    m = json.loads((d / artifacts.MANIFEST).read_text())
    m["parity"]["onnxruntime-fp32"]["passed"] = False
    artifacts.write_manifest(d, m)
    with pytest.raises(UserError, match="parity"):
        backends.load_backend(d, backend="onnxruntime", device="cpu")
    assert backends.load_backend(d, backend="onnxruntime", device="cpu", force=True).name == "onnxruntime"
    with open(d / artifacts.ONNX_FP32, "r+b") as f:  # flip bytes after the manifest was written
        f.seek(-16, 2)
        f.write(b"\0" * 16)
    with pytest.raises(UserError, match="sha256"):
        backends.load_backend(d, device="cpu")


def test_single_onnx_file_and_plain_generator_sources(export_dir, generator_dir):
    b = backends.load_backend(export_dir / artifacts.ONNX_FP16, device="cpu")
    assert b.name == "onnxruntime" and b.precision == "fp16"
    assert backends.load_backend(generator_dir, device="cpu", precision="fp32").name == "torch"
    with pytest.raises(UserError, match="needs one"):
        backends.load_backend(generator_dir, backend="onnxruntime", device="cpu")


def test_tensorrt_absence_is_one_clear_reason(export_dir):
    ok, why = trt_runtime.available()
    if ok:
        pytest.skip("TensorRT is available here; the tensorrt-marked tests cover it")
    assert why and "\n" not in why
    with pytest.raises(UserError, match="cannot run"):
        backends.TensorRTBackend(export_dir / "generator.fp16.plan")
    m = artifacts.read_manifest(export_dir)
    assert m["tensorrt"] == {"built": False, "reason": why}
    assert "tensorrt" not in m["parity"]


@pytest.mark.tensorrt
def test_tensorrt_engine_builds_runs_and_matches(export_dir, tmp_path):
    from projgan.export import tensorrt_build

    plan, cache = tmp_path / "g.plan", tmp_path / "tc"
    onnx16 = export_dir / artifacts.ONNX_FP16
    info = tensorrt_build.build_engine(onnx16, plan, (1, 8, 64), workspace_gib=1.0, timing_cache_path=cache)
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    assert info["version"] and info["gpu"] and info["strongly_typed"]
    assert info["timing_cache"] == {"path": str(cache), "loaded": "new", "saved": True}
    again = tensorrt_build.build_engine(onnx16, tmp_path / "g2.plan", (1, 8, 64), 1.0, cache)
    assert again["timing_cache"]["loaded"] == "reused"
    runner = trt_runtime.EngineRunner(plan)
    assert (runner.z_dim, runner.resolution, runner.max_batch) == (256, 32, 64)
    ort_b = backends.OnnxRuntimeBackend(export_dir / artifacts.ONNX_FP32, "cpu", "fp32")
    z = sample_latents(range(64), 256)
    ref = ort_b.generate_float(z)
    full = runner.run(z)
    ok, why = similarity.judge(similarity.compare(ref, full), reduced=True)
    assert ok, why
    for b in (1, 7):
        ok, why = similarity.judge(similarity.compare(full[:b], runner.run(z[:b])), reduced=True)
        assert ok, why
    assert runner.run(sample_latents(range(70), 256)).shape == (70, 3, 32, 32)  # split above the profile


@pytest.mark.tensorrt
def test_export_with_tensorrt_certifies_the_engine(tmp_path):
    from projgan.export.pipeline import export

    make_generator(tmp_path / "generator")
    out = tmp_path / "exp"
    assert export(ExportConfig(source=str(tmp_path / "generator"), out=str(out), fp16=True, parity_seeds=8))
    m = artifacts.read_manifest(out)
    assert m["tensorrt"]["built"] and m["parity"]["tensorrt"]["passed"]
    assert backends.load_backend(out, device="cuda").name == "tensorrt"
