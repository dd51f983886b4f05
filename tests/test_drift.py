"""The drift check of the export certificate: real exports, real ONNX Runtime sessions, the real CLI.

A reduced-precision artifact must keep the distribution of images, not only each seed's pixels: FD to
torch fp32 on the same seeds over the FD of fp32 on two disjoint seed sets (export/drift.py).
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from rich.console import Console

from projgan import artifacts
from projgan.config import ExportConfig
from projgan.export import drift
from projgan.export.parity import certify, table
from projgan.similarity import Thresholds
from tests.conftest import make_generator
from tests.test_export import pipeline_cli

DRIFT = 64  # images per backend: corrupted x1.5 measured at ratio ~1.0 here, fp16 at ~4e-6 (default mark 0.1)


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    """`pipeline export --fp16` of a generator with realistic contrast, through the real CLI."""
    root = tmp_path_factory.mktemp("drift")
    src = make_generator(root / "generator", resolution=32, ngf=16)
    out = root / "export"
    args = ["--fp16", "--no-tensorrt", "--parity-seeds", "8", "--drift-images", str(DRIFT), "--drift-extractor", "proxy"]
    r = pipeline_cli("export", str(src), "--out", str(out), *args, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return out, r.stdout


def test_fp16_drift_row_is_recorded_and_passes(fp16_export):
    out, stdout = fp16_export
    m = artifacts.read_manifest(out, verify=True)
    fp16 = m["parity"]["onnxruntime-fp16"]
    d = fp16["drift"]
    assert fp16["passed"] and d["passed"], fp16["reason"]
    assert d["extractor"] == "proxy" and d["identity"] and d["feature_dim"] > 0
    assert d["images"] == DRIFT and d["max_ratio"] == ExportConfig().drift_max_ratio
    assert d["noise_floor"] > 0 and 0 <= d["fd"] < d["noise_floor"]
    assert d["ratio"] == pytest.approx(d["fd"] / d["noise_floor"], rel=1e-4)
    assert d["ratio"] < 1e-3, "fp16 of a realistic generator drifts ~1e-5 of the noise floor"
    assert "drift" not in m["parity"]["torch-fp32"] and "drift" not in m["parity"]["onnxruntime-fp32"]
    # the manifest says which extractor and rule the whole certificate used
    assert m["drift"]["extractor"] == "proxy" and m["drift"]["identity"] == d["identity"]
    assert m["drift"]["images"]["onnxruntime-fp16"] == DRIFT and m["drift"]["max_ratio"] == d["max_ratio"]
    # the printed table has the column, with this backend's ratio and image count
    assert "drift/floor" in stdout
    row = next(ln for ln in stdout.splitlines() if ln.strip().startswith("onnxruntime-fp16"))
    assert f"@{DRIFT}" in row


def test_corrupted_fp16_fails_the_drift_check(fp16_export, tmp_path):
    """One fp16 conv weight x1.5: with the per-seed marks loosened, drift alone must catch it."""
    import onnx
    from onnx import numpy_helper

    out, _ = fp16_export
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    model = onnx.load(str(bad / artifacts.ONNX_FP16))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 4 else 0)
    arr = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((arr * 1.5).astype(arr.dtype), init.name))
    onnx.save(model, str(bad / artifacts.ONNX_FP16))
    loose = dict(fp16_min_psnr=5.0, fp16_min_ssim=0.1)  # per-seed images pass: only the distribution is judged
    cfg = ExportConfig(source="x", out=str(bad), parity_seeds=8, drift_images=DRIFT, drift_extractor="proxy", **loose)
    results = certify(bad, cfg)
    fp16 = results["onnxruntime-fp16"]
    assert not fp16["passed"] and not fp16["drift"]["passed"]
    assert fp16["reason"].startswith("drift FD") and "noise floor" in fp16["reason"]
    assert fp16["drift"]["ratio"] > cfg.drift_max_ratio
    assert results["onnxruntime-fp32"]["passed"] and results["torch-fp32"]["passed"]
    console = Console(width=200, file=io.StringIO())
    console.print(table(results, Thresholds.of(cfg)))
    row = next(ln for ln in console.file.getvalue().splitlines() if ln.strip().startswith("onnxruntime-fp16"))
    assert f"@{DRIFT}" in row and "FAIL" in row
    json.dumps(results, allow_nan=False)  # the entry goes into export.json as it is


def test_ratio_is_scale_free():
    """FD scales with the square of the features' scale; the floor does too, so the verdict does not."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    shifted = a + 0.05 + rng.normal(0, 0.1, a.shape)
    ratios = []
    for scale in (1.0, 1e3):
        v = drift.verdict(drift._fd(scale * shifted, scale * a), drift._fd(scale * a, scale * b), 200, 0.1)
        ratios.append(v["ratio"])
    assert ratios[0] == pytest.approx(ratios[1], rel=1e-4) and ratios[0] > 0
    assert drift._fd(a, a) == pytest.approx(0.0, abs=1e-9)


def test_verdict_edges():
    assert drift.verdict(0.0, 0.0, 8, 0.1)["passed"]  # constant output everywhere: nothing moved
    v = drift.verdict(1e-3, 0.0, 8, 0.1)  # constant fp32, anything else: drift with no floor to hide in
    assert not v["passed"] and v["ratio"] is None and "inf" in v["reason"]
    assert drift.verdict(0.2, 1.0, 8, 0.1)["passed"] is False and drift.verdict(0.05, 1.0, 8, 0.1)["passed"]
    assert drift.images_for(0, "cuda") == drift.CUDA_IMAGES > drift.images_for(0, "cpu") == drift.CPU_IMAGES
    assert drift.images_for(100, "cuda") == 100
