"""`pipeline bench` on a tiny generator: JSON with FLOPs, percentiles, peak fractions, and the PNG."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from projgan import artifacts
from projgan.config import BenchConfig
from projgan.errors import UserError
from projgan.evaluation import bench as B
from projgan.serve.backends import cpu_has_fast_bf16
from tests.conftest import make_generator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    gen = make_generator(root / "generator", resolution=32, ngf=16)
    G, _ = artifacts.load_generator(gen)
    onnx = root / "g.onnx"
    torch.onnx.export(
        G,
        (torch.zeros(2, G.cfg.z_dim),),
        str(onnx),
        input_names=["z"],
        output_names=["image"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
        verbose=False,
    )
    return gen, onnx


def test_bench_writes_json_and_png(tiny, tmp_path):
    gen, onnx = tiny
    out = tmp_path / "b.json"
    cfg = BenchConfig(source=str(gen), batch_sizes=(1, 4), device="cpu", warmup=1, repeats=3, out=str(out))
    result = B.bench(cfg, onnx=onnx, notes="test", command="pipeline bench tiny", progress=False, peak_n=256)
    on_disk = json.loads(out.read_text())
    assert on_disk["command"] == "pipeline bench tiny" and on_disk["notes"] == "test"
    assert on_disk["gflop_per_image"] > 0 and on_disk["generator"]["flops_per_image"] > 0
    assert on_disk["peak_gflops"]["fp32"] > 0 and on_disk["peak_gflops"]["bf16"] > 0
    assert on_disk["machine"]["cores"] >= 1 and "torch" in on_disk["versions"]
    labels = {r["label"] for r in result["results"]}
    expected = {"torch-fp32", "onnxruntime-fp32"} | ({"torch-bf16"} if cpu_has_fast_bf16() else set())
    assert labels == expected
    for r in result["results"]:
        lat = r["latency_ms"]
        assert len(r["latencies_ms"]) == 3 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / lat["p50"] * 1e3, rel=1e-2)
        assert r["gflops_per_s"] > 0 and 0 < r["fraction_of_peak"] and r["peak_key"] in on_disk["peak_gflops"]
    assert {r["batch"] for r in result["results"]} == {1, 4}
    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size[0] > 600


def test_flops_match_a_hand_count_of_the_first_layer(tiny):
    """FlopCounterMode's total includes the 1x1 -> 4x4 transposed conv: 2 * z_dim * out_ch * 16 flops."""
    gen, _ = tiny
    info = B.generator_info(gen)
    G, _ = artifacts.load_generator(gen)
    init = 2 * G.init.in_channels * G.init.out_channels * 16
    assert info["flops_per_image"] > init and info["params"] == sum(p.numel() for p in G.parameters())


def test_backend_selection(tiny):
    gen, onnx = tiny
    assert [v.label for v in B.plan(onnx, "cpu")] == ["onnxruntime-fp32"]
    variants = B.plan(gen, "cpu", onnx)
    assert [v.label for v in B._select(variants, ("onnxruntime",))] == ["onnxruntime-fp32"]
    with pytest.raises(UserError, match="tensorrt"):
        B._select(variants, ("tensorrt",))
    with pytest.raises(UserError):
        B.bench(BenchConfig(source=str(gen), train=True))


def test_bench_metrics_and_plots_import_with_torch_alone():
    import subprocess
    import sys

    code = ("import sys, projgan.evaluation.bench, projgan.evaluation.metrics, projgan.evaluation.plots\n"
            "print(' '.join(sys.modules))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    heavy = {"onnxruntime", "onnx", "matplotlib", "cleanfid", "torchvision", "timm", "fastapi", "gradio"}
    assert not {m.split(".")[0] for m in mods} & heavy
    assert not any(m.startswith("projgan.train") for m in mods)
