"""`pipeline evaluate` end to end: two servable sources, an injected extractor, JSONL rows, every metric kind,
`--extractor auto` and `--nearest`; and the real CLI failing clearly when clean-fid's Inception weights
cannot be had (DINOv2's: tests/test_extractors.py)."""

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
from projgan.errors import UserError
from projgan.evaluation import features as F
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


@pytest.mark.skipif((F.CLEANFID_CACHE / F.INCEPTION_FILE).exists(), reason="clean-fid's Inception is cached here")
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
    assert "--inception-weights" in r.stderr and F.INCEPTION_FILE in r.stderr and "nvlabs-fi-cdn" in r.stderr
    assert "Traceback" not in r.stderr


def test_evaluate_every_metric_kind_in_one_row_and_table(sources, tmp_path, capsys):
    """fid, kid, pr on the selected (injected) extractor and fd/kd on a named one: one generation pass, each
    extractor embeds the reals and the samples once, KD printed ± its standard error with the <10k note."""
    gen, _, data = sources
    selected, proxy = TinyExtractor(), F.load_extractor("proxy")
    cfg = EvalConfig(source=str(gen), data=str(data), num_images=24, metrics=("fid", "kid", "pr", "fd_proxy", "kd_proxy"),
                     backend="torch", device="cpu", batch=8, out=str(tmp_path / "e.jsonl"))
    row = evaluate(cfg, extractor=selected, extractors={"proxy": proxy}, cache_dir=tmp_path, progress=False)[0]
    assert selected.seen == 40 + 24
    for key in ("fid", "kid", "kid_se", "fd_proxy", "kd_proxy", "kd_proxy_se", "pr_precision", "pr_recall",
                "pr_density", "pr_coverage"):
        assert isinstance(row[key], float) and np.isfinite(row[key]), key
    assert row["precision"] in ("fp32", "bf16") and row["pr_k"] == 5  # the backend's precision is kept apart
    assert set(row["extractors"]) == {"custom", "proxy"}
    assert row["extractors"]["proxy"]["identity"] == F.ProxyExtractor.identity
    assert "64x64" in row["extractors"]["proxy"]["preprocessing"] and "299" in row["preprocessing"]
    assert artifacts.read_jsonl(tmp_path / "e.jsonl") == [row]
    out = capsys.readouterr().out
    assert "±" in out and "FD proxy" in out and "coverage" in out and "prefer KD" in out


def test_evaluate_auto_extractor_falls_back_to_the_proxy_and_records_it(sources, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(F, "CLEANFID_CACHE", tmp_path / "cleanfid")
    gen, _, data = sources
    cfg = EvalConfig(source=str(gen), data=str(data), num_images=8, metrics=("fid",), extractor="auto",
                     backend="torch", device="cpu", batch=8, out=str(tmp_path / "e.jsonl"))
    row = evaluate(cfg, cache_dir=tmp_path, progress=False)[0]
    assert row["extractor"] == F.ProxyExtractor.identity and "proxy" in row["extractor_note"]
    captured = capsys.readouterr()
    assert "random-feature proxy" in captured.err + captured.out


def test_evaluate_nearest_reuses_the_feature_pass_and_writes_pngs(sources, tmp_path):
    gen, _, data = sources
    ext = TinyExtractor()
    cfg = EvalConfig(source=str(gen), data=str(data), num_images=16, metrics=("fid",), backend="torch",
                     device="cpu", batch=8, nearest=2, out=str(tmp_path / "runs" / "e.jsonl"))
    row = evaluate(cfg, extractor=ext, cache_dir=tmp_path, progress=False)[0]
    assert ext.seen == 40 + 16  # the memorisation check embedded nothing more
    memo = row["memorisation"]
    assert memo["k"] == 2 and memo["num_train"] == 40 and memo["num_samples"] == 16 and memo["extractor"] == "custom"
    assert 0 <= memo["fraction_closer"] <= 1 and isinstance(memo["memorised"], bool)
    assert len(memo["plots"]) == 2
    for p in memo["plots"]:
        assert Path(p).parent == tmp_path / "runs" and Path(p).stat().st_size > 1000
    with pytest.raises(UserError, match="--nearest"):
        EvalConfig(source=str(gen), data=str(data), nearest=-1)


def _write_samples(gen, seeds, folder: Path) -> Path:
    """The generator's own images for ``seeds``, as PNG files: a "training set" it provably copies."""
    from PIL import Image

    from projgan.generator import sample_latents, to_uint8

    G, _ = artifacts.load_generator(gen)
    with torch.no_grad():
        images = to_uint8(G.eval()(torch.from_numpy(sample_latents(seeds, G.cfg.z_dim))))
    folder.mkdir(parents=True)
    for seed, im in zip(seeds, images, strict=True):
        Image.fromarray(im).save(folder / f"{seed:05d}.png")
    return folder


def test_nearest_flags_a_generator_whose_samples_are_training_images(sources, tmp_path):
    """End to end with the real proxy extractor: evaluate samples seeds 0..N-1; a folder holding those very
    images is memorised, a folder of the same generator's images on disjoint seeds is not."""
    gen, _, _ = sources
    copied = _write_samples(gen, range(0, 100), tmp_path / "copied")
    fresh = _write_samples(gen, range(5000, 5100), tmp_path / "fresh")
    memo = {}
    for name, data in (("copied", copied), ("fresh", fresh)):
        cfg = EvalConfig(source=str(gen), data=str(data), num_images=100, metrics=(), extractor="proxy",
                         backend="torch", precision="fp32", device="cpu", batch=50, nearest=1,
                         out=str(tmp_path / f"{name}.jsonl"))
        memo[name] = evaluate(cfg, cache_dir=tmp_path, progress=False)[0]["memorisation"]
    print({k: m["fraction_closer"] for k, m in memo.items()})
    assert memo["copied"]["memorised"] and memo["copied"]["fraction_closer"] > 0.9
    assert not memo["fresh"]["memorised"] and memo["fresh"]["fraction_closer"] < 0.15
    assert memo["copied"]["extractor"] == memo["fresh"]["extractor"] == "proxy"


def test_metric_names_are_validated_up_front(sources):
    gen, _, data = sources
    for bad in (("fd_clip",), ("fidd",), ("kd_",)):
        with pytest.raises(UserError, match="unknown metric"):
            EvalConfig(source=str(gen), data=str(data), metrics=bad)
    with pytest.raises(UserError, match="--extractor"):
        EvalConfig(source=str(gen), data=str(data), extractor="clip")
    EvalConfig(source=str(gen), data=str(data), metrics=("fd_dinov2", "kd_inception", "pr", "law"))
