"""Training learns: a short CPU run on a trivially simple law must make valid pictures of it.

The check is the law score (``evaluation/law_score.py``) of the EMA generator recorded by the loop
itself, against the untrained generator's. Sabotaged training (the generator loss with its sign
flipped, or no discriminator step) must not pass the same check: that runs with ``-m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projgan import artifacts
from projgan.config import GeneratorConfig, TrainConfig
from projgan.evaluation.law_score import law_score
from projgan.evaluation.laws import make_law_dataset
from projgan.generator import Generator, sample_latents, to_uint8
from projgan.train import step
from projgan.train.loop import LAW_IMAGES, train

KIMG = 16.0  # about 45 s on 2 CPU cores
MARGIN = 0.3  # valid fraction gained over the untrained generator (measured: about 0.45 after 16 kimg)


def _cfg(tmp_path) -> TrainConfig:
    data = tmp_path / "disk"
    if not data.exists():
        make_law_dataset(data, "disk", n=256, resolution=32, seed=0)
    return TrainConfig(
        data=str(data), out=str(tmp_path / "run"), generator=GeneratorConfig(resolution=32, ngf=8), batch=32,
        kimg=KIMG, discriminator="dcgan", d_width=16, augment="translation", g_lr=1e-3, metrics=("law",),
        fid_every=KIMG / 2, tick_kimg=4.0, snapshot_ticks=100, sample_seeds=16, device="cpu", seed=0,
    )


def _untrained_valid(cfg: TrainConfig) -> float:
    torch.manual_seed(cfg.seed)
    G = Generator(cfg.generator).eval()
    with torch.no_grad():
        images = to_uint8(G(torch.from_numpy(sample_latents(range(LAW_IMAGES), cfg.generator.z_dim))))
    return law_score(images, "disk")["valid"]


def _learned_valid(tmp_path) -> tuple[float, float]:
    cfg = _cfg(tmp_path)
    run = train(cfg)
    rows = [r for r in artifacts.read_jsonl(run / artifacts.METRICS) if "law_valid" in r]
    assert [r["kimg"] for r in rows] == [KIMG / 2, KIMG]
    return _untrained_valid(cfg), rows[-1]["law_valid"]


def test_a_short_run_learns_a_simple_law(tmp_path):
    before, after = _learned_valid(tmp_path)
    print(f"disk law: valid {before:.3f} untrained -> {after:.3f} after {KIMG:g} kimg")
    assert after >= before + MARGIN, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("sabotage", ["flipped generator loss", "no discriminator step"])
def test_sabotaged_training_fails_the_same_check(tmp_path, monkeypatch, sabotage):
    if sabotage == "flipped generator loss":
        original = step.g_loss
        monkeypatch.setattr(step, "g_loss", lambda logits: -original(logits))
    else:
        monkeypatch.setattr(step, "d_step", lambda t, reals: None)
    before, after = _learned_valid(tmp_path)
    print(f"{sabotage}: valid {before:.3f} -> {after:.3f}")
    assert after < before + MARGIN, (before, after)
    assert np.isfinite(after)
