"""The FID path of training (and its other distribution metrics), driven end to end with an injected
(tiny, fixed) feature extractor."""

from __future__ import annotations

import json

import pytest
import torch

from projgan import artifacts
from projgan.errors import UserError
from projgan.train.loop import train
from tests.conftest import tiny_train_cfg

pytest.importorskip("projgan.evaluation.fid")
pytest.importorskip("projgan.evaluation.plots")


class TinyExtractor(torch.nn.Module):
    """Float 0..255 [B, 3, H, W] -> [B, 48]: pooled colour statistics through a fixed random map."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 16, 48, generator=g))

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)
        return x @ self.proj


def _cfg(tmp_path, **kw):
    base = dict(snapshot_ticks=100, metrics=("fid", "kid"), fid_every=0.004, fid_images=16)
    return tiny_train_cfg(tmp_path, **{**base, **kw})


def test_fid_rows_plot_and_best_generator(tmp_path):
    run = train(_cfg(tmp_path), feature_extractor=TinyExtractor())
    rows = artifacts.read_jsonl(run / artifacts.METRICS)
    fid_rows = [r for r in rows if "fid" in r]
    assert [r["kimg"] for r in fid_rows] == [0.004, 0.008]
    assert all("kid" in r and r["wall"] > 0 for r in fid_rows)
    # The record is the FID of the saved EMA weights: `pipeline evaluate` on generator/ gives the same number.
    from projgan.config import EvalConfig
    from projgan.evaluation.evaluate import evaluate

    again = evaluate(EvalConfig(source=str(run / artifacts.GENERATOR_DIR), data=str(tmp_path / "data"), num_images=16,
                                metrics=("fid",), backend="torch", precision="fp32", out=str(tmp_path / "e.jsonl")),
                     extractor=TinyExtractor(), cache_dir=tmp_path / "cache", progress=False)[0]
    assert again["fid"] == pytest.approx(fid_rows[-1]["fid"], rel=1e-3)
    assert fid_rows[-1]["fid"] > 1e-3  # an almost untrained generator is far from the data
    assert len([r for r in rows if r.get("kind") == "tick"]) == 2
    assert (run / artifacts.FID_PLOT).stat().st_size > 1000
    assert list(run.glob("fid-ref-*.npz"))  # reference statistics cached in the run

    best_row = min(fid_rows, key=lambda r: r["fid"])
    best = json.loads((run / artifacts.BEST_GENERATOR_DIR / artifacts.CONFIG_JSON).read_text())["meta"]
    assert best["fid"] == pytest.approx(best_row["fid"]) and best["kimg"] == best_row["kimg"]
    latest = json.loads((run / artifacts.GENERATOR_DIR / artifacts.CONFIG_JSON).read_text())["meta"]
    assert latest["fid"] == pytest.approx(fid_rows[-1]["fid"]) and latest["kimg"] == 0.008
    state = torch.load(run / artifacts.TRAINING_STATE, weights_only=True)
    assert state["counters"]["best_score"] == pytest.approx(best_row["fid"])

    # generator-best only moves when a later record beats it: resume, and compare with the new rows.
    train(_cfg(tmp_path, kimg=0.012), feature_extractor=TinyExtractor())
    fid_rows = [r for r in artifacts.read_jsonl(run / artifacts.METRICS) if "fid" in r]
    assert [r["kimg"] for r in fid_rows] == [0.004, 0.008, 0.012]
    best_row = min(fid_rows, key=lambda r: r["fid"])
    best = json.loads((run / artifacts.BEST_GENERATOR_DIR / artifacts.CONFIG_JSON).read_text())["meta"]
    assert best["kimg"] == best_row["kimg"]


def test_missing_inception_weights_fail_before_training(tmp_path):
    cfg = _cfg(tmp_path, metrics=("fid",), inception_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(UserError) as e:
        train(cfg)
    assert "--inception-weights" in str(e.value) + (e.value.hint or "")
    assert not (tmp_path / "run" / artifacts.TRAINING_STATE).exists()
    assert not (tmp_path / "run" / artifacts.METRICS).exists()


def test_every_metric_kind_is_recorded_per_fid_record_and_plotted(tmp_path):
    from PIL import Image

    metrics = ("fid", "kid", "pr", "fd_proxy", "kd_proxy")
    run = train(_cfg(tmp_path, metrics=metrics, kimg=0.008), feature_extractor=TinyExtractor())
    rows = [r for r in artifacts.read_jsonl(run / artifacts.METRICS) if r.get("kind") == "metric"]
    assert [r["kimg"] for r in rows] == [0.004, 0.008]
    for r in rows:
        for key in ("fid", "kid", "kid_se", "fd_proxy", "kd_proxy", "kd_proxy_se", "pr_precision", "pr_recall",
                    "pr_density", "pr_coverage"):
            assert isinstance(r[key], float), key
        assert r["extractor"].startswith("module:TinyExtractor")
    assert len(list(run.glob("fid-ref-*.npz"))) == 2  # one reference per extractor, shared by its metrics
    with Image.open(run / artifacts.FID_PLOT) as im:  # three panels: FID/KID, FD/KD on proxy, P/R/D/C
        assert im.width > 1400


def test_train_fd_dinov2_without_weights_fails_before_training(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="DINOv2"):
        train(_cfg(tmp_path, metrics=("fid", "fd_dinov2")), feature_extractor=TinyExtractor())
    assert not (tmp_path / "run" / artifacts.METRICS).exists()
    with pytest.raises(UserError, match="unknown metric 'fd_clip'"):
        _cfg(tmp_path, metrics=("fd_clip",))
