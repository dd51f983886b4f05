"""`pipeline evaluate` end to end: two servable sources, an injected extractor, JSONL rows; and the
real CLI failing clearly when clean-fid's Inception weights cannot be had."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from projgan import artifacts
from projgan.config import EvalConfig
from projgan.evaluation import fid as M
from projgan.evaluation.evaluate import default_out, evaluate
from tests.conftest import make_generator, make_images
from tests.test_metrics import TinyExtractor


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A 32 px generator artifact and the same generator as an ONNX file."""
    root = tmp_path_factory.mktemp("eval")
    gen = make_generator(root / "run" / "generator", resolution=32, ngf=16)
    G, _ = artifacts.load_generator(gen)
    onnx = root / "onnx" / "generator.onnx"
    onnx.parent.mkdir()
    torch.onnx.export(
        G,
        (torch.zeros(2, G.cfg.z_dim),),
        str(onnx),
        input_names=["z"],
        output_names=["image"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256)},),
        verbose=False,
    )
    data = make_images(root / "data", n=40, size=48)
    return gen, onnx, data


def test_evaluate_two_sources_appends_rows(sources, tmp_path):
    gen, onnx, data = sources
    out = tmp_path / "eval.jsonl"
    ext = TinyExtractor()
    rows = []
    for src, backend in ((gen, "torch"), (onnx, "onnxruntime")):
        cfg = EvalConfig(
            source=str(src),
            data=str(data),
            num_images=24,
            metrics=("fid", "kid"),
            backend=backend,
            device="cpu",
            batch=8,
            out=str(out),
        )
        rows += evaluate(cfg, extractor=ext, cache_dir=tmp_path / "cache", progress=False)
    on_disk = artifacts.read_jsonl(out)
    assert [r["backend"] for r in on_disk] == ["torch", "onnxruntime"] and on_disk == rows
    torch_row, ort_row = rows
    for r in rows:
        assert r["fid"] > 0 and np.isfinite(r["kid"]) and r["num_images"] == 24 and r["num_reals"] == 40
        assert r["resolution"] == 32 and r["extractor"].startswith("module:") and "torch" in r["versions"]
    assert ort_row["precision"] == "fp32" and ort_row["reference_cached"] and not torch_row["reference_cached"]
    # Same weights through two runtimes: the distributions (and so the FIDs) nearly coincide.
    assert ort_row["fid"] == pytest.approx(torch_row["fid"], rel=0.1)


def test_evaluate_ranks_a_better_generator_lower(sources, tmp_path):
    """Reals vs a generator with realistic contrast vs a nearly constant one: FID orders them."""
    gen, _, data = sources
    flat = make_generator(tmp_path / "flat" / "generator", resolution=32, ngf=16, target_std=0.02)
    fids = {}
    for name, src in (("contrast", gen), ("flat", flat)):
        cfg = EvalConfig(
            source=str(src),
            data=str(data),
            num_images=24,
            metrics=("fid",),
            backend="torch",
            device="cpu",
            batch=8,
            out=str(tmp_path / "e.jsonl"),
        )
        fids[name] = evaluate(cfg, extractor=TinyExtractor(), cache_dir=tmp_path, progress=False)[0]["fid"]
    assert fids["contrast"] < fids["flat"]


def test_default_out_sits_beside_the_source(sources, tmp_path):
    gen, onnx, _ = sources
    assert default_out(gen) == gen.parent / "evaluation.jsonl"  # not inside generator/, which training replaces
    assert default_out(onnx) == onnx.parent / "evaluation.jsonl"
    assert default_out(gen.parent) == gen.parent / "evaluation.jsonl"


@pytest.mark.skipif((M.CLEANFID_CACHE / M.INCEPTION_FILE).exists(), reason="clean-fid's Inception is cached here")
def test_cli_without_inception_weights_fails_with_the_option_named(sources):
    gen, _, data = sources
    env = dict(os.environ, https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")  # never download
    r = subprocess.run(
        [sys.executable, "-m", "projgan", "evaluate", str(gen), "--data", str(data), "--num-images", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert r.returncode == 2, r.stderr
    assert "--inception-weights" in r.stderr and M.INCEPTION_FILE in r.stderr and "nvlabs-fi-cdn" in r.stderr
    assert "Traceback" not in r.stderr
