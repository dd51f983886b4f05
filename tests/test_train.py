"""Training stage: D, losses, DiffAugment, EMA, exact resume, and the loop's run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from projgan import artifacts, hardware
from projgan.config import GeneratorConfig
from projgan.errors import UserError
from projgan.generator import sample_latents
from projgan.train import diffaug, dist, step
from projgan.train.discriminator import MiniDiscriminator, ProjectedDiscriminator
from projgan.train.ema import ema_beta, update_ema
from projgan.train.features import FeatureNetwork, ScaleSpec
from projgan.train.loop import train
from projgan.train.losses import d_hinge_loss, g_loss
from tests.conftest import tiny_train_cfg as tiny_cfg

# ---------------------------------------------------------------- pieces


@pytest.fixture(scope="module")
def features():
    return FeatureNetwork("tf_efficientnet_lite0", None, "ccm+csm", input_resolution=64)


@pytest.mark.parametrize("num_discs", [1, 4])
def test_discriminator_gives_logits_per_scale(features, num_discs):
    D = ProjectedDiscriminator(features, num_discs)
    logits = D(torch.randn(3, 3, 32, 32))
    assert len(logits) == num_discs
    assert all(lg.shape[0] == 3 and lg.dim() == 2 for lg in logits)
    assert any("parametrizations" in k for k in D.state_dict())  # spectral norm
    assert any(k.startswith("features.ccm") for k in D.state_dict())  # random projections are in D's state


def test_mini_discriminator_depth_and_widths_follow_the_paper():
    # Backbone at 224 px with CSM: maps 112/56/28/14, nominal 128/64/32/16 -> 4/3/2/1 blocks, 4x4 logits each.
    for size, nominal, blocks in ((112, 128, 4), (56, 64, 3), (28, 32, 2), (14, 16, 1)):
        d = MiniDiscriminator(ScaleSpec(64, size, nominal))
        assert len(d) == blocks + 1
        assert d(torch.randn(2, 64, size, size)).shape == (2, 1, 4, 4)
    widths = [blk[0].out_channels for blk in list(MiniDiscriminator(ScaleSpec(64, 112, 128)))[:-1]]
    assert widths == [64, 128, 256, 512]  # the FastGAN table at 64, 32, 16, 8
    # A map too small for its depth (a tiny backbone input) keeps at least one pixel and one logit.
    tiny = MiniDiscriminator(ScaleSpec(16, 2, 128))
    assert len(tiny) == 2 and tiny(torch.randn(2, 16, 2, 2)).shape[-1] == 2


def test_losses_average_all_logits_as_one_tensor():
    ones = [torch.ones(2, 5), torch.ones(2, 1)]
    assert float(d_hinge_loss([2 * o for o in ones], [-2 * o for o in ones])) == 0.0
    assert float(d_hinge_loss([0 * o for o in ones], [0 * o for o in ones])) == 2.0  # relu(1) + relu(1)
    assert float(d_hinge_loss([0.5 * o for o in ones], [-0.5 * o for o in ones])) == 1.0
    assert float(g_loss([3 * o for o in ones])) == -3.0
    # Concatenated, not per scale: the 5-logit scale weighs 5x the 1-logit one.
    assert float(g_loss([torch.zeros(2, 5), torch.full((2, 1), 6.0)])) == -1.0


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diffaugment_is_differentiable(policy):
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    y = diffaug.diff_augment(x, policy)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_diffaugment_ops_do_what_they_say():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 20, 20) + 1  # strictly positive, so zeros mark removed pixels
    zero_frac = float((diffaug.cutout(x) == 0).float().mean())
    assert 0.01 < zero_frac < 0.05  # a 4x4 hole (0.2 x 20) in 400 pixels, minus clipping at borders
    t = diffaug.translation(x)
    assert float((t == 0).float().mean()) > 0  # some images shifted in zeros
    kept = t != 0
    assert torch.isin(t[kept], x).all()  # pixels move, values stay
    assert diffaug.diff_augment(x, "") is x
    with pytest.raises(UserError):
        diffaug.parse_policy("color,blur")


def test_ema_beta_and_update():
    assert ema_beta(32, 10**9, 10.0, None) == pytest.approx(0.5 ** (32 / 10000))
    assert ema_beta(32, 100, 10.0, 0.05) == pytest.approx(0.5 ** (32 / 5))  # ramp-up caps the half-life
    a, b = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        a.weight.fill_(0.0)
        b.weight.fill_(1.0)
        b.running_mean.fill_(3.0)
    update_ema(a, b, 0.75)
    assert torch.allclose(a.weight, torch.full((2,), 0.25))
    assert torch.equal(a.running_mean, b.running_mean)  # buffers copied, not averaged


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert dist.resolve_precision("auto", cpu) == ("bf16" if hardware.cpu_has_fast_bf16() else "fp32")
    assert dist.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(UserError):
        dist.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_g_step_judges_fakes_beside_the_reals_only_with_joint_batchnorm(tmp_path, mode):
    """joint: the G step's logits come from one BatchNorm batch of the D step's reals and the fakes, so they
    change with the reals; separate (the paper's code): fakes alone, the reals play no part."""
    import copy

    t = step.build(tiny_cfg(tmp_path, precision="fp32", augment="", d_batchnorm=mode), dist.Runtime())
    losses = []
    for seed in (1, 2):
        u = copy.deepcopy(t)
        reals = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        with torch.no_grad():
            u.reals_seen = (u.F_fwd(reals), None)
        torch.manual_seed(0)  # the same latents for both
        step.g_step(u, 4)
        losses.append(step.pop_stats(u)["loss_G"])
        assert u.reals_seen is None  # released after the G step
    assert (losses[0] != losses[1]) == (mode == "joint"), losses


# ---------------------------------------------------------------- exact resume


def _d_out(t, x):
    with torch.no_grad():
        return torch.cat([lg.float() for lg in t.D(x)], 1)


def test_training_state_restores_d_projections_and_ema_exactly(tmp_path):
    cfg = tiny_cfg(tmp_path, precision="fp32")
    rt = dist.Runtime()
    a = step.build(cfg, rt)
    reals = torch.rand(4, 3, 32, 32) * 2 - 1
    nimg = 0
    for _ in range(2):
        nimg = step.train_step(a, reals, nimg)
    artifacts.save_training_state(tmp_path / "state.pt", step.state_dict(a))
    state = torch.load(tmp_path / "state.pt", weights_only=True)

    b = step.build(tiny_cfg(tmp_path, precision="fp32", seed=7), rt)  # other random projections and weights
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    a.D.eval(), b.D.eval()  # (a train-mode forward would run one more spectral-norm power iteration on a)
    assert not torch.allclose(_d_out(a, x), _d_out(b, x))
    a.D.train(), b.D.train()
    assert not torch.equal(a.D.features.ccm[0].weight, b.D.features.ccm[0].weight)
    step.load_state_dict(b, state)
    torch.testing.assert_close(b.D.features.ccm[0].weight, a.D.features.ccm[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(b.D.features.csm[1].conv.weight, a.D.features.csm[1].conv.weight, rtol=0, atol=0)
    torch.testing.assert_close(_d_out(b, x), _d_out(a, x), rtol=0, atol=0)
    a.D.eval(), b.D.eval()
    torch.testing.assert_close(_d_out(b, x), _d_out(a, x), rtol=0, atol=0)
    a.D.train(), b.D.train()
    z = torch.from_numpy(sample_latents(range(3), 256))
    with torch.no_grad():
        torch.testing.assert_close(b.G_ema(z), a.G_ema(z), rtol=0, atol=0)
    # One more step from the same RNG state lands on the same weights: nothing was lost in the state.
    for t in (a, b):
        torch.manual_seed(123)
        step.train_step(t, reals, nimg)
    for pa, pb in zip(a.G.parameters(), b.G.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    for pa, pb in zip(a.D.parameters(), b.D.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_fp16_grad_scaler_path_scales_skips_non_finite_steps_and_resumes(tmp_path, monkeypatch):
    """The fp16 (CUDA) path's GradScaler logic, run on the CPU: ``resolve_precision`` refuses fp16
    there only because it is slow, so the test lifts that refusal and runs the real step."""
    monkeypatch.setattr(dist, "resolve_precision", lambda precision, device: "fp16")
    cfg = tiny_cfg(tmp_path, precision="fp16")
    rt = dist.Runtime()
    a = step.build(cfg, rt)
    assert a.precision == "fp16" and a.scaler_D.is_enabled() and a.scaler_G.is_enabled()
    reals = torch.rand(4, 3, 32, 32) * 2 - 1
    nimg = step.train_step(a, reals, 0)
    assert all(v == v and abs(v) != float("inf") for v in step.pop_stats(a).values())
    scale = a.scaler_D.get_scale()
    assert 0 < scale < float("inf")

    # A non-finite D loss must not reach the weights: the scaler skips the step and backs off.
    before = [p.detach().clone() for p in a.D.discs.parameters()]
    bad = reals.clone()
    bad[0, 0, 0, 0] = float("nan")
    step.d_step(a, bad)
    assert a.scaler_D.get_scale() == scale * a.scaler_D.get_backoff_factor()
    for p, q in zip(a.D.discs.parameters(), before, strict=True):
        assert torch.equal(p, q)

    # The scalers' state survives save/load with the rest.
    artifacts.save_training_state(tmp_path / "state.pt", step.state_dict(a))
    b = step.build(tiny_cfg(tmp_path, precision="fp16", seed=3), rt)
    step.load_state_dict(b, torch.load(tmp_path / "state.pt", weights_only=True))
    assert b.scaler_D.get_scale() == a.scaler_D.get_scale()
    assert b.scaler_G.get_scale() == a.scaler_G.get_scale()
    assert step.train_step(b, reals, nimg) == nimg + cfg.batch


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tmp_path):
    """--compile runs the same step: same losses, and Adam's first update (about +-lr per weight)
    lands within a sign flip of the eager one. About 70 s of inductor compilation on 2 cores."""
    reals = torch.rand(4, 3, 32, 32) * 2 - 1
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        # No augmentation: inductor draws random numbers differently from eager.
        t = step.build(tiny_cfg(tmp_path, precision="fp32", compile=compiled, augment=""), dist.Runtime())
        assert (t.G_fwd is not t.G) == compiled
        torch.manual_seed(5)
        step.train_step(t, reals, 0)
        runs[compiled] = (step.pop_stats(t), [p.detach().clone() for p in t.G.parameters()])
    (eager_stats, eager_w), (comp_stats, comp_w) = runs[False], runs[True]
    assert eager_stats.keys() == comp_stats.keys()
    for k in eager_stats:
        assert comp_stats[k] == pytest.approx(eager_stats[k], rel=1e-3, abs=1e-4), k
    lr = tiny_cfg(tmp_path).lr
    assert max((a - b).abs().max().item() for a, b in zip(eager_w, comp_w, strict=True)) <= 2 * lr + 1e-6


# ---------------------------------------------------------------- the loop


def _rows(run, kind="tick"):
    return [r for r in artifacts.read_jsonl(run / artifacts.METRICS) if r.get("kind") == kind]


def test_train_writes_the_run_directory_and_resumes(tmp_path):
    run = train(tiny_cfg(tmp_path))
    assert (run / artifacts.TRAIN_CONFIG).exists()
    assert json.loads((run / artifacts.TRAIN_CONFIG).read_text())["kimg"] == 0.008
    rows = _rows(run)
    assert [r["kimg"] for r in rows] == [0.004, 0.008] and [r["tick"] for r in rows] == [1, 2]
    assert all(r["sec_per_kimg"] > 0 and "loss_D" in r and "loss_G" in r and r["wall"] > 0 for r in rows)
    G, config = artifacts.load_generator(run / artifacts.GENERATOR_DIR)
    assert config["meta"]["kimg"] == 0.008 and config["meta"]["dataset"] == "data"
    assert G.cfg.resolution == 32
    samples = sorted(p.name for p in (run / artifacts.SAMPLES_DIR).iterdir())
    assert samples == ["kimg00000.004.png", "kimg00000.008.png", "reals.png"]
    state = torch.load(run / artifacts.TRAINING_STATE, weights_only=True)
    assert state["counters"]["cur_nimg"] == 8
    assert {"G", "G_ema", "D", "opt_G", "opt_D", "rng"} <= set(state)
    assert not list(run.glob(".*tmp*"))
    for f in (run / artifacts.GENERATOR_DIR / artifacts.WEIGHTS, run / artifacts.METRICS, run / artifacts.TRAINING_STATE):
        assert f.stat().st_mode & 0o044, f"{f} is not readable by group/others"  # e.g. a server running as another user

    # A row newer than the state (written after the last snapshot of a killed run) is dropped on resume.
    artifacts.append_jsonl(run / artifacts.METRICS, {"kind": "tick", "tick": 3, "kimg": 0.012, "wall": 1.0})
    train(tiny_cfg(tmp_path, kimg=0.016))
    rows = _rows(run)
    assert [r["kimg"] for r in rows] == [0.004, 0.008, 0.012, 0.016]
    assert [r["tick"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["wall"] > rows[1]["wall"]  # wall time continues
    assert torch.load(run / artifacts.TRAINING_STATE, weights_only=True)["counters"]["cur_nimg"] == 16

    before = (run / artifacts.METRICS).read_text()
    train(tiny_cfg(tmp_path, kimg=0.016))  # budget reached: nothing to do
    assert (run / artifacts.METRICS).read_text() == before


def test_resume_refuses_a_different_architecture(tmp_path):
    train(tiny_cfg(tmp_path, kimg=0.004))
    with pytest.raises(UserError, match="generator"):
        train(tiny_cfg(tmp_path, kimg=0.008, generator=GeneratorConfig(resolution=32, ngf=24)))


def test_unwritable_run_directory_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        train(tiny_cfg(tmp_path, out=str(tmp_path / "file" / "run")))


def test_sigint_finishes_the_step_and_writes_a_snapshot(tmp_path):
    cfg = tiny_cfg(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "projgan", "train", "--data", cfg.data, "--out", str(run), "--resolution", "32",
         "--ngf", "16", "--batch", "4", "--kimg", "1000", "--backbone-weights", "none", "--backbone-resolution", "32",
         "--metrics", "none", "--tick-kimg", "0.004", "--snapshot-ticks", "1000", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not _rows_safe(run):
            time.sleep(0.2)
        assert _rows_safe(run), "no tick row appeared"
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out
    assert "SIGINT" in out and "stopped at" in out
    state = torch.load(run / artifacts.TRAINING_STATE, weights_only=True)
    assert 0 < state["counters"]["cur_nimg"] < 1_000_000
    assert json.loads((run / artifacts.GENERATOR_DIR / artifacts.CONFIG_JSON).read_text())["meta"]["kimg"] > 0


def _rows_safe(run):
    try:
        return _rows(run)
    except OSError:
        return []


def _offline_env(tmp_path) -> dict:
    """No network, empty Hugging Face and torch hub caches: a new user's machine."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th"),
            "OMP_NUM_THREADS": "2"}


def test_pretrained_offline_trains_on_the_installed_weights(tmp_path):
    """The default --backbone-weights pretrained starts offline, on the weights package, and says so."""
    from projgan.train.backbone_weights import PACKAGES, package_file

    cfg = tiny_cfg(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "projgan", "train", "--data", cfg.data, "--out", str(tmp_path / "run"),
         "--resolution", "32", "--ngf", "16", "--batch", "4", "--kimg", "0.004", "--metrics", "none",
         "--backbone-resolution", "32", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path),
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "RANDOM" not in r.stdout
    info = json.loads((tmp_path / "run" / artifacts.TRAIN_CONFIG).read_text())["backbone_info"]
    assert info["weights"] == "pretrained" and PACKAGES["tf_efficientnet_lite0"].distribution in info["source"]
    assert info["sha256"] == artifacts.sha256_file(package_file("tf_efficientnet_lite0")[0])


def test_pretrained_backbone_missing_offline_is_one_clear_line_at_start(tmp_path):
    """A backbone whose weights no installed package ships (resnet18), offline with empty caches."""
    cfg = tiny_cfg(tmp_path)
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "projgan", "train", "--data", cfg.data, "--out", str(tmp_path / "run"),
         "--resolution", "32", "--metrics", "none", "--backbone", "resnet18"],
        capture_output=True, text=True, timeout=120, env=_offline_env(tmp_path),
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "pretrained resnet18 weights" in r.stderr and "--backbone-weights PATH" in r.stderr
    assert "Traceback" not in r.stderr and time.time() - t0 < 60
    assert not (tmp_path / "run" / artifacts.TRAINING_STATE).exists()


# ---------------------------------------------------------------- what a run records


def test_backbone_weights_are_recorded_everywhere(tmp_path, capsys):
    import hashlib

    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()},
              str(weights))
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    run = train(tiny_cfg(tmp_path, backbone_weights=str(weights)))
    info = json.loads((run / artifacts.TRAIN_CONFIG).read_text())["backbone_info"]
    assert info["weights"] == "pretrained" and info["sha256"] == sha and info["name"] == "tf_efficientnet_lite0"
    header = artifacts.read_jsonl(run / artifacts.METRICS)[0]
    assert header["kind"] == "header" and header["backbone"]["sha256"] == sha
    meta = json.loads((run / artifacts.GENERATOR_DIR / artifacts.CONFIG_JSON).read_text())["meta"]
    assert meta["backbone"]["sha256"] == sha and meta["discriminator"] == "projected"  # the model card shows meta
    assert "RANDOM" not in capsys.readouterr().out
    # Resuming keeps the record (the weights now live in the training state) and adds a header row.
    train(tiny_cfg(tmp_path, backbone_weights=str(weights), kimg=0.012))
    headers = [r for r in artifacts.read_jsonl(run / artifacts.METRICS) if r["kind"] == "header"]
    assert [h["resumed"] for h in headers] == [False, True] and headers[1]["backbone"]["sha256"] == sha


def test_random_backbone_is_said_loudly_and_recorded(tmp_path, capsys):
    run = train(tiny_cfg(tmp_path))
    assert capsys.readouterr().out.count("RANDOM weights") == 1
    info = json.loads((run / artifacts.TRAIN_CONFIG).read_text())["backbone_info"]
    assert info["weights"] == "random" and info["sha256"] is None


def test_resume_takes_unset_options_from_the_run(tmp_path):
    from projgan.evaluation.laws import make_law_dataset

    data = make_law_dataset(tmp_path / "data", "disk", n=8, resolution=32)
    base = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", "--metrics", "none"]
    first = base + ["--resolution", "32", "--ngf", "16", "--batch", "4", "--kimg", "0.004", "--tick-kimg", "0.004",
                    "--discriminator", "dcgan", "--d-width", "16", "--optimizer", "nesterov", "--lr-schedule", "cosine"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-m", "projgan", *first], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "projgan", *base, "--kimg", "0.008"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming at 0.004 kimg" in r.stdout
    saved = json.loads((tmp_path / "run" / artifacts.TRAIN_CONFIG).read_text())
    assert (saved["discriminator"], saved["optimizer"], saved["lr_schedule"], saved["kimg"]) == (
        "dcgan", "nesterov", "cosine", 0.008)
