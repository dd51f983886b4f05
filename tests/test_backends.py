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


# ---------------------------------------------------------------- what a first GPU run would hit


def test_onnxruntime_providers_follow_the_device_and_refuse_a_missing_cuda_provider():
    from projgan.serve import onnxruntime as ort_backend

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_backend.providers_for("cpu", "fp32", both) == ["CPUExecutionProvider"]
    (name, opts), cpu = ort_backend.providers_for("cuda:1", "fp32", both)
    assert (name, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert opts == {"device_id": "1", "use_tf32": "0"}  # the GPU asked for, and fp32 that is fp32
    assert ort_backend.providers_for("cuda", "fp16", both)[0] == ("CUDAExecutionProvider", {"device_id": "0"})
    with pytest.raises(UserError, match="no CUDA provider"):
        ort_backend.providers_for("cuda", "fp32", ["CPUExecutionProvider"])


def test_a_session_that_fell_back_to_the_cpu_is_refused_for_cuda(export_dir):
    """What ONNX Runtime does when its CUDA provider cannot load: a session on CPUExecutionProvider alone."""
    from projgan.serve import onnxruntime as ort_backend

    path = export_dir / artifacts.ONNX_FP32
    got = ort_backend._ort_session(path, "cpu", "fp32").get_providers()
    assert got == ["CPUExecutionProvider"]
    ort_backend.check_providers("cpu", got, path)
    with pytest.raises(UserError, match="could not use CUDA"):
        ort_backend.check_providers("cuda:0", got, path)
    ort_backend.check_providers("cuda:0", ["CUDAExecutionProvider", "CPUExecutionProvider"], path)


def test_iobinding_by_pointer_gives_what_session_run_gives(export_dir):
    """The device-resident path binds torch tensors by address; on the CPU the same code must match run()."""
    import torch

    from projgan.serve import onnxruntime as ort_backend

    b = backends.OnnxRuntimeBackend(export_dir / artifacts.ONNX_FP32, "cpu", "fp32")
    z = sample_latents(range(5), 256)
    ref = b.session.run(None, {"z": z})[0]
    strided = torch.from_numpy(np.asfortranarray(z))  # not contiguous: must be bound through a contiguous copy
    assert not strided.is_contiguous()
    out = ort_backend.bind_and_run(b.session, {"z": strided}, "cpu")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == ref.shape
    np.testing.assert_array_equal(out.numpy(), ref)
    np.testing.assert_array_equal(b.generate(z), backends.to_uint8(ref))


def test_parity_rule_per_device():
    assert not similarity.image_rule("fp32", "cpu")  # the float rule: max abs <= 1e-4
    assert similarity.image_rule("fp32", "cuda:0")  # cuDNN against the CPU reference: images
    assert not similarity.image_rule("fp32", "cuda", reference_device="cuda:0")  # same kind of device
    assert similarity.image_rule("bf16", "cpu") and similarity.image_rule("fp16", "cuda")


def test_parity_candidates_carry_the_rule_and_the_engines_config(tmp_path):
    from projgan.config import GeneratorConfig
    from projgan.export import parity

    gen = GeneratorConfig(resolution=32, ngf=16, num_classes=3)
    keys = {c.key: c for c in parity.candidates(tmp_path, "cuda", True, True, gen)}
    assert keys["onnxruntime-fp32"].reduced and keys["onnxruntime-fp32"].device == "cuda"
    assert not {c.key: c for c in parity.candidates(tmp_path, "cpu", False, False, gen)}["onnxruntime-fp32"].reduced
    assert keys["tensorrt"].reduced


def test_an_engine_inside_an_export_finds_its_models_config(tmp_path):
    """Parity opens the plan before export.json exists; serving opens it after: both find the classes."""
    import shutil

    from projgan.config import GeneratorConfig

    src = make_generator(tmp_path / "exp" / artifacts.GENERATOR_DIR, resolution=32, ngf=8, num_classes=3)
    plan = src.parent / artifacts.TRT_PLAN
    cfg = trt_runtime.config_beside(plan)  # mid-export: generator/ only
    assert cfg == GeneratorConfig(resolution=32, ngf=8, num_classes=3)
    manifest = {"files": {}, "generator": {"resolution": 32, "ngf": 8, "num_classes": 2, "class_names": ["a", "b"]}}
    (src.parent / artifacts.MANIFEST).write_text(json.dumps(manifest))
    assert trt_runtime.config_beside(plan).class_names == ("a", "b")  # the manifest wins once written
    shutil.rmtree(src)
    (src.parent / artifacts.MANIFEST).unlink()
    assert trt_runtime.config_beside(plan) is None


def test_a_shape_outside_the_engine_profile_is_refused_not_run_on_stale_bindings():
    from tests.fake_tensorrt import IExecutionContext

    ctx = IExecutionContext({"z": ((1, 256), (8, 256), (64, 256))})
    trt_runtime.set_shape(ctx, "z", (8, 256))
    assert ctx.shapes["z"] == (8, 256)
    with pytest.raises(RuntimeError, match="outside the engine's profile"):
        trt_runtime.set_shape(ctx, "z", (65, 256))


@pytest.mark.slow  # two torch.compile builds on the CPU, about a minute each
def test_a_compiled_torch_backend_serves_only_after_its_self_check(generator_dir, monkeypatch):
    z = sample_latents(range(5), 256)
    eager = backends.TorchBackend(*artifacts.load_generator(generator_dir), "cpu", "fp32")
    b = backends.TorchBackend(*artifacts.load_generator(generator_dir), "cpu", "fp32", mode="compile", max_batch=8)
    assert b.mode == "compile" and b.info["mode_check"]["passed"], b.info
    assert b.describe()["mode"] == "compile"
    assert np.abs(b.generate(z).astype(int) - eager.generate(z)).max() <= 1
    np.testing.assert_array_equal(b.generate(z[:1]), b.generate(z)[:1])  # alone or in a batch: the same bytes
    # demand bit-identity with eager: inductor's fused kernels round differently, so the variant is refused
    monkeypatch.setattr(backends.TorchBackend, "self_check_thresholds", similarity.Thresholds(fp32_max_abs=0.0))
    refused = backends.TorchBackend(*artifacts.load_generator(generator_dir), "cpu", "fp32", mode="compile")
    assert refused.mode == "eager" and not refused.info["mode_check"]["passed"]
    assert "max abs" in refused.info["mode_check"]["reason"]
    np.testing.assert_array_equal(refused.generate(z), eager.generate(z))  # served eager, exactly
