"""`pipeline export`: real ONNX files, real ONNX Runtime sessions, the real CLI for exit codes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from projgan import artifacts
from projgan.config import ExportConfig
from projgan.errors import UserError
from projgan.export.parity import KEYS, certify, table
from projgan.export.pipeline import export
from projgan.generator import sample_latents
from projgan.similarity import Thresholds
from tests.conftest import make_generator

SEEDS = 8  # the default stays 64; tests use fewer to stay fast
DRIFT = 32  # drift images per reduced-precision backend (default 256 on a CPU): tests/test_drift.py checks more


def pipeline_cli(*args: str, timeout: float = 180):
    exe = Path(sys.executable).with_name("pipeline")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "projgan"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    src = make_generator(root / "run" / "generator", resolution=32, ngf=16, meta={"kimg": 1.5, "fid": 42.0})
    out = root / "exports" / "tiny"
    cfg = ExportConfig(
        source=str(root / "run"), out=str(out), fp16=True, triton=True, parity_seeds=SEEDS, drift_images=DRIFT
    )
    assert export(cfg) is True
    return src, out


def test_export_writes_every_file_and_a_verified_manifest(exported):
    src, out = exported
    for name in (artifacts.ONNX_FP32, artifacts.ONNX_FP16, artifacts.MANIFEST, "generator/model.safetensors"):
        assert (out / name).is_file(), name
    m = artifacts.read_manifest(out, verify=True)  # every listed sha256 matches
    assert m["passed"] is True
    assert m["source"]["sha256"] == artifacts.sha256_file(src / artifacts.WEIGHTS)
    assert m["generator"]["resolution"] == 32 and m["generator_meta"]["kimg"] == 1.5
    assert m["opset"] == 18 and m["batch_profile"] == {"min": 1, "opt": 8, "max": 64}
    assert m["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["batch", 256]}]
    assert m["outputs"][0]["shape"] == ["batch", 3, 32, 32] and m["outputs"][0]["dtype"] == "float32"
    assert {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(m["versions"])
    assert m["tensorrt"]["built"] is False and m["tensorrt"]["reason"]
    for name, info in m["files"].items():
        assert info["bytes"] == (out / name).stat().st_size
    assert not list(out.parent.glob(".tiny.*")), "no temp folder left beside the export"


def test_parity_certificate_in_manifest(exported):
    _, out = exported
    parity = json.loads((out / artifacts.MANIFEST).read_text())["parity"]
    assert set(parity) <= set(KEYS)
    assert {"torch-fp32", "onnxruntime-fp32", "onnxruntime-fp16"} <= set(parity)
    for key, e in parity.items():
        assert e["passed"], (key, e["reason"])
        assert e["images"] == SEEDS and e["nan_images"] == 0
        assert e["ref_std"] > 0.2, "the test generator must have realistic contrast"
        assert e["batch_independence"]["passed"] and e["batch_independence"]["sizes"] == [1, 7, 8]
    assert parity["onnxruntime-fp32"]["max_abs"] <= 1e-4
    assert parity["onnxruntime-fp16"]["psnr_min"] >= 40 and parity["onnxruntime-fp16"]["ssim_min"] >= 0.99
    for key, e in parity.items():  # the distribution check: every reduced precision, nothing else
        assert ("drift" in e) == e["reduced_precision"], key
        assert "drift" not in e or (e["drift"]["passed"] and e["drift"]["images"] == DRIFT)
    for e in parity.values():  # the worst seed of each metric, named separately
        assert {e["max_abs_seed"], e["psnr_min_seed"], e["ssim_min_seed"]} <= set(range(SEEDS))


def test_onnx_files_have_dynamic_batch_and_float32_io(exported):
    import onnx
    import onnxruntime as ort

    _, out = exported
    G, _ = artifacts.load_generator(out / "generator")
    for name in (artifacts.ONNX_FP32, artifacts.ONNX_FP16):
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model, full_check=True)
        (inp,), (outp,) = model.graph.input, model.graph.output
        assert (inp.name, outp.name) == ("z", "image")
        assert inp.type.tensor_type.elem_type == outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = ort.InferenceSession(str(out / artifacts.ONNX_FP32), providers=["CPUExecutionProvider"])
    z64 = sample_latents(range(64), 256)
    full = sess.run(None, {"z": z64})[0]
    assert full.shape == (64, 3, 32, 32) and full.dtype == np.float32
    assert -1 <= full.min() and full.max() <= 1
    for b in (1, 7):  # the same seed in another batch size gives the same image
        np.testing.assert_allclose(sess.run(None, {"z": z64[:b]})[0], full[:b], atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(G(torch.from_numpy(z64[:7])).numpy(), full[:7], atol=1e-4)


def test_existing_output_is_not_clobbered_without_force(exported, tmp_path):
    src, out = exported
    before = (out / artifacts.MANIFEST).read_bytes()
    with pytest.raises(UserError, match="already exists"):
        export(ExportConfig(source=str(src), out=str(out), parity_seeds=2, drift_images=DRIFT))
    assert (out / artifacts.MANIFEST).read_bytes() == before
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "stale.txt").write_text("from an older export")
    assert export(ExportConfig(source=str(src), out=str(copy), force=True, parity_seeds=2, drift_images=DRIFT))
    assert not (copy / "stale.txt").exists() and not (copy / artifacts.ONNX_FP16).exists()
    assert artifacts.read_manifest(copy)["parity_seeds"] == 2


def test_export_dir_serves_with_every_backend(exported):
    from projgan.serve.backends import load_backend

    _, out = exported
    z = sample_latents([3, 99, 12345], 256)
    imgs = {}
    for name in ("torch", "onnxruntime", "auto"):
        b = load_backend(out, backend=name, device="cpu", precision="fp32" if name == "torch" else "auto")
        imgs[name] = b.generate(z)
        assert imgs[name].shape == (3, 32, 32, 3) and imgs[name].dtype == np.uint8
        assert b.describe()["parity"]["passed"]
    # fp32 backends: the same seed gives the same uint8 image up to a rounding step
    assert np.abs(imgs["torch"].astype(int) - imgs["onnxruntime"]).max() <= 1


def test_tampered_onnx_weight_fails_parity(exported, tmp_path):
    """A corrupted initializer (1% on one conv) is caught with the worst seed named."""
    import onnx
    from onnx import numpy_helper

    _, out = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    for name, scale in ((artifacts.ONNX_FP32, 1.01), (artifacts.ONNX_FP16, 1.5)):
        model = onnx.load(str(bad / name))
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 4 else 0)
        arr = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((arr * scale).astype(arr.dtype), init.name))
        onnx.save(model, str(bad / name))
    results = certify(bad, ExportConfig(source="x", out=str(bad), fp16=True, parity_seeds=SEEDS, drift_images=DRIFT))
    assert results["torch-fp32"]["passed"]
    assert not results["onnxruntime-fp32"]["passed"] and "max abs" in results["onnxruntime-fp32"]["reason"]
    assert results["onnxruntime-fp32"]["max_abs"] > 1e-4
    assert not results["onnxruntime-fp16"]["passed"]
    assert "seed" in results["onnxruntime-fp16"]["reason"]
    fp16 = results["onnxruntime-fp16"]
    assert fp16["psnr_min_seed"] in range(SEEDS) and fp16["ssim_min_seed"] in range(SEEDS)
    assert f"seed {fp16['psnr_min_seed']}: PSNR" in fp16["reason"] or f"seed {fp16['ssim_min_seed']}: SSIM" in fp16["reason"]
    console = Console(width=200, file=io.StringIO())
    console.print(table(results, Thresholds()))
    row = next(ln for ln in console.file.getvalue().splitlines() if ln.strip().startswith("onnxruntime-fp16"))
    assert f"{fp16['psnr_min']:.1f} @{fp16['psnr_min_seed']}" in row
    assert f"{fp16['ssim_min']:.4f} @{fp16['ssim_min_seed']}" in row


def test_failed_build_leaves_nothing_behind(tmp_path):
    src = make_generator(tmp_path / "g")
    cfg = json.loads((src / "config.json").read_text())
    cfg["generator"]["ngf"] = 32  # weights no longer match the config: fails while building
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "exports" / "x"
    with pytest.raises(UserError, match="does not match"):
        export(ExportConfig(source=str(src), out=str(out), parity_seeds=2))
    assert not out.exists() and list((tmp_path / "exports").iterdir()) == []


@pytest.mark.parametrize(
    "kw",
    [
        {"opset": 13},
        {"opset": 24},
        {"batch_sizes": (8, 1, 64)},
        {"parity_seeds": 0},
        {"drift_images": 1},
        {"drift_images": -5},
        {"drift_max_ratio": 0.0},
        {"drift_extractor": "vgg"},
    ],
)
def test_bad_options_are_refused_by_the_config_alone(kw):
    """ExportConfig is the one place export options are validated; nothing is built first."""
    with pytest.raises(UserError, match="opset|batch-sizes|parity-seeds|drift"):
        ExportConfig(source="x", out="y", **kw)


# ---------------------------------------------------------------- the real CLI


@pytest.fixture(scope="module")
def cli_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_generator(root / "generator")
    (root / "notagen").mkdir()
    (root / "notagen" / "config.json").write_text('{"model_type": "bert"}')
    (root / "notagen" / "model.safetensors").write_bytes(b"x")
    (root / "taken").mkdir()
    return root


@pytest.mark.parametrize(
    "args,needle",
    [
        (["{root}/missing"], "does not exist"),
        (["{root}/notagen"], "not a projgan generator"),
        (["{root}/generator", "--opset", "12"], "opset"),
        (["{root}/generator", "--batch-sizes", "64,8,1"], "--batch-sizes"),
        (["{root}/generator", "--drift-images", "1"], "--drift-images"),
        (["{root}/generator", "--out", "{root}/taken"], "already exists"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(cli_source, args, needle):
    args = [a.format(root=cli_source) for a in args]
    if "--out" not in args:
        args += ["--out", str(cli_source / "o")]
    r = pipeline_cli("export", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert not (cli_source / "o").exists()
    assert list((cli_source / "taken").iterdir()) == []


def test_cli_broken_weights_fail_parity_with_exit_1(tmp_path):
    """A diverged run (NaN in a weight) exports, fails the certificate, exits 1; serving refuses it."""
    from safetensors.torch import load_file, save_file

    from projgan.serve.backends import load_backend

    src = make_generator(tmp_path / "generator")
    state = load_file(str(src / "model.safetensors"))
    state["to_rgb.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(src / "model.safetensors"))
    out = tmp_path / "exp"
    r = pipeline_cli(
        "export", str(src), "--out", str(out), "--parity-seeds", "4", "--drift-images", str(DRIFT), "--no-tensorrt"
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "FAIL" in r.stdout and "NaN" in r.stdout and "Traceback" not in r.stderr
    m = json.loads((out / artifacts.MANIFEST).read_text())
    assert m["passed"] is False and not m["parity"]["onnxruntime-fp32"]["passed"]
    with pytest.raises(UserError, match="no usable backend"):
        load_backend(out, device="cpu")
    assert load_backend(out, backend="onnxruntime", device="cpu", force=True).name == "onnxruntime"


def test_nearly_constant_reference_is_flagged(tmp_path, capsys):
    """A random-init generator's flat output inflates PSNR: the certificate says so beside the std."""
    src = make_generator(tmp_path / "generator", target_std=0.02)
    out = tmp_path / "exp"
    assert export(ExportConfig(source=str(src), out=str(out), parity_seeds=2, drift_images=DRIFT))
    ref = artifacts.read_manifest(out)["parity"]["torch-fp32"]
    assert ref["ref_std"] < 0.1 and "nearly constant" in ref["reason"]
    assert "nearly constant" in capsys.readouterr().out
