"""`pipeline bench` on a tiny generator: JSON with FLOPs, percentiles, peak fractions, and the PNG;
precisions the CPU only emulates are skipped (forced with $PROJGAN_CPU_FLAGS, no mocks); the
machine facts every benchmark records (projgan.hardware)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from projgan import artifacts, hardware
from projgan.config import BenchConfig
from projgan.errors import UserError
from projgan.evaluation import bench as B
from projgan.hardware import cpu_has_fast_bf16
from tests.conftest import make_generator

NO_BF16 = "avx2 fma"  # the AVX2-only EPYC: bf16 matmuls ran at ~1.2 GFLOP/s against ~170 in fp32


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
    assert on_disk["peak_gflops"]["fp32"] > 0 and (on_disk["peak_gflops"].get("bf16", 0) > 0) == cpu_has_fast_bf16()
    assert set(on_disk["skipped_precisions"]) == (set() if cpu_has_fast_bf16() else {"bf16"})
    assert on_disk["machine"]["cores"] >= 1 and "torch" in on_disk["versions"]
    assert on_disk["machine"]["cpu_flags"] == hardware.cpu_flags() and on_disk["machine"]["cpu"]
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
    without_bf16 = B.plan(gen, "cpu", onnx, precisions=("fp32",))
    assert [v.label for v in without_bf16] == ["torch-fp32", "onnxruntime-fp32"]
    with pytest.raises(UserError, match="bf16 skipped: no bf16 here"):
        B._select(without_bf16, ("torch-bf16",), {"bf16": "no bf16 here"})


def test_bf16_is_skipped_quickly_on_a_cpu_without_bf16_instructions(tiny, tmp_path, monkeypatch, capsys):
    """The peak runs at its default size (2048) and budget: it must not try bf16, and must stay short."""
    gen, _ = tiny
    monkeypatch.setenv(hardware.CPU_FLAGS_ENV, NO_BF16)
    out = tmp_path / "b.json"
    t0 = time.perf_counter()
    result = B.bench(BenchConfig(source=str(gen), batch_sizes=(1,), device="cpu", warmup=0, repeats=2, out=str(out)),
                     progress=False)
    assert time.perf_counter() - t0 < 60
    assert "AVX512-BF16" in result["skipped_precisions"]["bf16"] and NO_BF16 in result["skipped_precisions"]["bf16"]
    assert set(result["peak_gflops"]) == {"fp32"} and {r["label"] for r in result["results"]} == {"torch-fp32"}
    assert json.loads(out.read_text())["machine"]["cpu_flags"] == ["avx2", "fma"]
    assert result["machine"]["cpu_flags_override"] == NO_BF16
    assert "skipped bf16" in capsys.readouterr().out


def test_matmul_peak_stops_at_its_time_budget():
    t0 = time.perf_counter()
    peak = B.matmul_peak("cpu", n=512, repeats=100_000, budget_s=0.3, precisions=("fp32",))
    assert time.perf_counter() - t0 < 5 and set(peak) == {"fp32"} and peak["fp32"] > 0


def test_training_bench_cli_skips_bf16_and_records_why(tmp_path):
    out = tmp_path / "train.json"
    args = ["bench", "--train", "--device", "cpu", "--resolution", "32", "--ngf", "16", "--batch", "2",
            "--backbone-resolution", "64", "--precisions", "fp32,bf16", "--channels-last", "on", "--steps", "1",
            "--warmup", "0", "--threads", "1", "--out", str(out)]
    env = {**os.environ, hardware.CPU_FLAGS_ENV: NO_BF16}
    r = subprocess.run([sys.executable, "-m", "projgan", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(x["precision"], x["resolution"], x["batch"], x["steps"]) for x in report["results"]] == [("fp32", 32, 2, 1)]
    assert "AVX512-BF16" in report["skipped_precisions"]["bf16"] and "skipped bf16" in r.stderr
    assert report["results"][0]["sec_per_kimg"] > 0 and report["machine"]["torch_threads"] == 1


def test_training_bench_starts_from_the_runs_own_config(tmp_path):
    from projgan.config import GeneratorConfig, TrainConfig
    from projgan.train.step_bench import config_for

    run = TrainConfig(data="d", generator=GeneratorConfig(resolution=128, ngf=32), batch=8, precision="fp32")
    (tmp_path / artifacts.TRAIN_CONFIG).write_text(json.dumps(run.to_dict()))
    cfg = config_for(tmp_path, "cpu", batch=4)
    assert (cfg.generator.resolution, cfg.generator.ngf, cfg.batch, cfg.precision) == (128, 32, 4, "fp32")
    assert cfg.backbone_weights == "none" and cfg.metrics == () and cfg.device == "cpu"


def test_machine_facts_have_one_home(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.CPU_FLAGS_ENV, "amx_bf16,avx512f sse4_2")
    assert hardware.cpu_flags() == ["avx512f", "amx_bf16"] and hardware.cpu_has_fast_bf16()
    assert hardware.precision_support("cpu") == {"fp32": None, "bf16": None}
    monkeypatch.delenv("PROJGAN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hardware.cache_dir() == tmp_path / "xdg" / "projgan"
    monkeypatch.setenv("PROJGAN_CACHE", str(tmp_path / "mine"))
    assert hardware.cache_dir() == tmp_path / "mine"
    from projgan.evaluation.evaluate import default_cache_dir
    from projgan.export.pipeline import _timing_cache_path

    assert default_cache_dir().parent == _timing_cache_path().parent == tmp_path / "mine"
    with pytest.raises(UserError, match="unknown --device"):
        hardware.resolve_device("tpu")
    if not torch.cuda.is_available():
        assert hardware.resolve_device("auto") == "cpu"
        with pytest.raises(UserError, match="CUDA is not available"):
            hardware.resolve_device("cuda")
    assert {"python", "torch", "numpy", "onnxruntime"} <= set(hardware.versions())


def test_bench_metrics_and_plots_import_with_torch_alone():
    import subprocess
    import sys

    code = ("import sys, projgan.evaluation.bench, projgan.evaluation.fid, projgan.evaluation.plots, projgan.hardware\n"
            "print(' '.join(sys.modules))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    heavy = {"onnxruntime", "onnx", "matplotlib", "cleanfid", "torchvision", "timm", "fastapi", "gradio"}
    assert not {m.split(".")[0] for m in mods} & heavy
    assert not any(m.startswith("projgan.train") for m in mods)


@pytest.mark.parametrize("arch,num_classes", [("stylegan2", 2), ("fastgan", 3)])
def test_synthetic_bench_of_each_arch_records_it(arch, num_classes, tmp_path, monkeypatch):
    """No source: a random generator of the named config, timed with torch at 32 px on the CPU."""
    from projgan.config import GeneratorConfig

    monkeypatch.setenv(hardware.CPU_FLAGS_ENV, NO_BF16)  # fp32 only: one row per batch size
    gen = GeneratorConfig(arch=arch, resolution=32, ngf=8, z_dim=64, num_classes=num_classes)
    out = tmp_path / "b.json"
    result = B.bench(BenchConfig(batch_sizes=(1, 2), device="cpu", warmup=1, repeats=2, out=str(out)),
                     progress=False, peak_n=256, peak_budget_s=0.2, generator=gen)
    on_disk = json.loads(out.read_text())
    assert on_disk["synthetic"] is True and arch in on_disk["source"]
    assert (on_disk["generator"]["arch"], on_disk["generator"]["num_classes"]) == (arch, num_classes)
    flops, params = B.generator_flops(gen)
    assert on_disk["generator"]["flops_per_image"] == flops > 0 and on_disk["generator"]["params"] == params
    assert [(r["label"], r["batch"], r["arch"], r["num_classes"]) for r in result["results"]] == [
        ("torch-fp32", 1, arch, num_classes), ("torch-fp32", 2, arch, num_classes)]
    assert all(r["images_per_s"] > 0 and r["gflops_per_s"] > 0 for r in result["results"])
    with pytest.raises(UserError, match="not both"):
        B.bench(BenchConfig(source=str(tmp_path), out=str(out)), generator=gen)
