"""Baseline discriminators, optimisers and schedules behind the same loop, checkpoints and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from projgan import artifacts
from projgan.config import TrainConfig
from projgan.errors import UserError
from projgan.train import dist, step
from projgan.train.loop import train
from projgan.train.optim import lr_at
from projgan.train.pixel_discriminators import DCGANDiscriminator, FastGANDiscriminator
from tests.conftest import tiny_train_cfg as tiny_cfg


@pytest.mark.parametrize("res", [32, 64, 128])
def test_fastgan_discriminator_shapes_and_reconstruction(res):
    D = FastGANDiscriminator(res, ndf=16)
    x = torch.rand(2, 3, res, res) * 2 - 1
    logits = D(x)
    assert [lg.shape for lg in logits] == [(2, 25), (2, 25)]  # 5x5 logits from each 8x8 map
    logits, recon = D(x, reconstruct=True)
    assert recon.dim() == 0 and float(recon) > 0
    recon.backward()
    decoders = [D.decode_big, D.decode_small, D.decode_part]
    assert all(p.grad is not None for dec in decoders for p in dec.parameters() if p.requires_grad)
    assert (len(D.sles) > 0) == (res >= 64)  # skip-layer excitation from each map to the one 8x smaller
    assert any("parametrizations" in k for k in D.state_dict())  # spectral norm, as FastGAN's D has


def test_dcgan_discriminator_is_plain():
    D = DCGANDiscriminator(64, ndf=16)
    assert [lg.shape for lg in D(torch.randn(3, 3, 64, 64))] == [(3, 1)]
    widths = [m.out_channels for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [16, 32, 64, 128, 1]  # 64 -> 32 -> 16 -> 8 -> 4, then one logit
    assert not any("parametrizations" in k for k in D.state_dict())


@pytest.mark.parametrize("name", ["fastgan", "dcgan"])
def test_baseline_trains_and_resumes_exactly(tmp_path, name):
    """Same step, checkpoints and resume as the projected D: one step after a reload equals one more step."""
    cfg = tiny_cfg(tmp_path, discriminator=name, d_width=16, precision="fp32")
    rt = dist.Runtime()
    a = step.build(cfg, rt)
    reals = torch.rand(4, 3, 32, 32) * 2 - 1
    nimg = step.train_step(a, reals, 0)
    artifacts.save_training_state(tmp_path / "s.pt", step.state_dict(a))
    b = step.build(tiny_cfg(tmp_path, discriminator=name, d_width=16, precision="fp32", seed=5), rt)
    step.load_state_dict(b, torch.load(tmp_path / "s.pt", weights_only=True))
    for t in (a, b):
        torch.manual_seed(1)
        step.train_step(t, reals, nimg)
    for p, q in zip(a.D.parameters(), b.D.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    stats = step.pop_stats(a)
    assert all(math.isfinite(v) for v in stats.values())
    assert ("loss_recon" in stats) == (name == "fastgan")


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop),
                                      ("sgd", torch.optim.SGD), ("nesterov", torch.optim.SGD)])
def test_optimizers(tmp_path, name, cls):
    t = step.build(tiny_cfg(tmp_path, optimizer=name, momentum=0.8), dist.Runtime())
    assert type(t.opt_G) is cls and type(t.opt_D) is cls
    if name in ("sgd", "nesterov"):
        assert t.opt_G.defaults["nesterov"] == (name == "nesterov") and t.opt_G.defaults["momentum"] == 0.8


def test_lr_schedules_are_functions_of_kimg():
    base = dict(lr=1e-3, kimg=8.0, lr_decay_kimg=2.0, lr_gamma=0.5, lr_min=0.1)
    const, stepped, expo, cos = (TrainConfig(lr_schedule=s, **base) for s in ("constant", "step", "exponential", "cosine"))
    assert lr_at(const, 7000) == 1e-3
    assert [lr_at(stepped, n) for n in (0, 1999, 2000, 4500)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    assert lr_at(expo, 1000) == pytest.approx(1e-3 * 0.5**0.5)
    assert lr_at(cos, 0) == pytest.approx(1e-3) and lr_at(cos, 8000) == pytest.approx(1e-4)
    assert lr_at(cos, 4000) == pytest.approx(5.5e-4)
    two_scale = TrainConfig(lr_schedule="step", g_lr=4e-3, **base)
    assert lr_at(two_scale, 2000, "G") == pytest.approx(2e-3) and lr_at(two_scale, 2000, "D") == pytest.approx(5e-4)
    with pytest.raises(UserError):
        TrainConfig(lr_schedule="linear")


def test_schedule_and_optimizer_are_recorded_and_applied_after_resume(tmp_path):
    kw = dict(optimizer="rmsprop", lr_schedule="step", lr_decay_kimg=0.004, lr_gamma=0.5, lr=1e-3)
    run = train(tiny_cfg(tmp_path, **kw))
    saved = json.loads((run / artifacts.TRAIN_CONFIG).read_text())
    assert {k: saved[k] for k in kw} == kw
    headers = [r for r in artifacts.read_jsonl(run / artifacts.METRICS) if r["kind"] == "header"]
    assert headers[0]["optimizer"] == "rmsprop" and headers[0]["lr_schedule"] == "step"
    # Resume with another optimiser: refused (its state would not fit); with the same one, the lr follows kimg.
    with pytest.raises(UserError, match="optimizer"):
        train(tiny_cfg(tmp_path, **{**kw, "optimizer": "adam", "kimg": 0.016}))
    t = step.build(tiny_cfg(tmp_path, **kw), dist.Runtime())
    step.load_state_dict(t, artifacts.load_training_state(run / artifacts.TRAINING_STATE))
    step.train_step(t, torch.rand(4, 3, 32, 32) * 2 - 1, 8)  # 8 images = 0.008 kimg: two decays
    assert t.opt_G.param_groups[0]["lr"] == pytest.approx(2.5e-4)
