"""Feature network: stages from timm's feature_info, frozen everything, gradients reach the input."""

from __future__ import annotations

import time

import pytest
import torch

from projgan.errors import UserError
from projgan.train.backbone_weights import load_backbone_weights, resolve_backbone_weights
from projgan.train.features import (
    CCM_CHANNELS,
    CSM_CHANNELS,
    STRIDES,
    FeatureNetwork,
)

BACKBONE = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def net():
    return FeatureNetwork(BACKBONE, None, "ccm+csm", input_resolution=64)


def test_stages_come_from_feature_info(net):
    info = net.backbone.feature_info
    assert tuple(info.reduction()) == STRIDES
    assert net.backbone_channels == tuple(info.channels()) == (24, 40, 112, 320)
    # CSM upsamples x2: the discriminators see strides 2/4/8/16 with 64/64/128/256 channels
    assert net.channels == CSM_CHANNELS == (64, 64, 128, 256)
    assert net.sizes == (32, 16, 8, 4)
    assert [s.nominal for s in net.scales] == [128, 64, 32, 16]  # from a 256 px reference, whatever the input


def test_csm_fuses_top_down_as_the_paper_builds_it(net):
    """fused3 = conv(up(ccm3)); fused_i = conv(up(ccm_i + fused_{i+1})), up = bilinear x2 with aligned
    corners, conv = random 1x1 halving the channels except at the finest scale."""
    import torch.nn.functional as F

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw = net.backbone(x * net.scale + net.shift)
        ccm = [conv(f) for conv, f in zip(net.ccm, raw, strict=True)]

        def up(t):
            return F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=True)

        fused = [None] * 4
        fused[3] = net.csm[3].conv(up(ccm[3]))
        for i in (2, 1, 0):
            fused[i] = net.csm[i].conv(up(ccm[i] + fused[i + 1]))
        got = net(x)
    for a, b in zip(got, fused, strict=True):
        torch.testing.assert_close(a, b)
    assert [c.conv.out_channels for c in net.csm] == [64, 64, 128, 256]
    assert all(c.conv.kernel_size == (1, 1) for c in net.csm)


@pytest.mark.parametrize("projection,channels", [("none", (24, 40, 112, 320)), ("ccm", CCM_CHANNELS)])
def test_projection_choices(projection, channels):
    f = FeatureNetwork(BACKBONE, None, projection, input_resolution=64)
    feats = f(torch.zeros(1, 3, 64, 64))
    assert tuple(x.shape[1] for x in feats) == channels
    assert tuple(x.shape[-1] for x in feats) == (16, 8, 4, 2)  # strides 4..32: no upsampling without CSM
    assert [s.nominal for s in f.scales] == [64, 32, 16, 8]
    assert (f.ccm is None) == (projection == "none") and f.csm is None


def test_everything_is_frozen_and_stays_in_eval_mode(net):
    assert all(not p.requires_grad for p in net.parameters())
    net.train()
    parent = torch.nn.Sequential(net).train()
    assert parent[0].training is False
    assert all(not m.training for m in net.modules())
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)


def test_gradient_flows_to_the_input_only(net):
    x = torch.randn(2, 3, 32, 32, requires_grad=True)  # 32 px is resized to the backbone's 64
    feats = net(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    sum(f.square().mean() for f in feats).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.parameters())


def test_normalisation_uses_the_backbone_mean_and_std(net):
    cfg = net.backbone.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    x = torch.rand(1, 3, 1, 1) * 2 - 1
    expected = ((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(x * net.scale + net.shift, expected)


def test_projections_are_seeded():
    a = FeatureNetwork(BACKBONE, None, "ccm+csm", input_resolution=64, seed=1)
    b = FeatureNetwork(BACKBONE, None, "ccm+csm", input_resolution=64, seed=1)
    c = FeatureNetwork(BACKBONE, None, "ccm+csm", input_resolution=64, seed=2)
    torch.testing.assert_close(a.ccm[0].weight, b.ccm[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(a.csm[2].conv.weight, b.csm[2].conv.weight, rtol=0, atol=0)
    assert not torch.equal(a.ccm[0].weight, c.ccm[0].weight)


def test_local_weights_file_is_loaded(tmp_path, net):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model(BACKBONE, pretrained=False)  # a full classifier state dict, as downloaded
    with torch.no_grad():
        src.conv_stem.weight.fill_(0.25)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "lite0.safetensors"))
    path = resolve_backbone_weights(BACKBONE, str(tmp_path / "lite0.safetensors"))
    f = FeatureNetwork(BACKBONE, path, "ccm", input_resolution=64)
    assert torch.all(f.backbone.conv_stem.weight == 0.25)


def _classifier_state(**changes):
    import timm

    sd = {k: v.contiguous() for k, v in timm.create_model(BACKBONE, pretrained=False).state_dict().items()}
    for k, v in changes.items():
        sd.pop(k) if v is None else sd.__setitem__(k, v)
    return sd


def test_wrongly_keyed_weights_are_refused_with_counts(tmp_path):
    """timm loads features_only models non-strictly: a file of other keys would load nothing, silently."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(BACKBONE, features_only=True, out_indices=(1, 2, 3, 4))
    renamed = {"encoder." + k: v for k, v in _classifier_state().items()}  # e.g. a checkpoint of a wrapper
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(UserError) as e:
        load_backbone_weights(model, BACKBONE, str(tmp_path / "renamed.safetensors"))
    assert "0/288 keys matched" in str(e.value) and "missing" in str(e.value) and "unexpected" in str(e.value)
    one_missing = _classifier_state(**{"conv_stem.weight": None})
    torch.save(one_missing, tmp_path / "one_missing.pth")
    with pytest.raises(UserError, match=r"287/288 keys matched; 1 missing \(e.g. conv_stem.weight\)"):
        load_backbone_weights(model, BACKBONE, str(tmp_path / "one_missing.pth"))
    wrong_shape = _classifier_state(**{"conv_stem.weight": torch.zeros(8, 3, 3, 3)})
    torch.save(wrong_shape, tmp_path / "wrong_shape.pth")
    with pytest.raises(UserError, match="with other shapes"):
        load_backbone_weights(model, BACKBONE, str(tmp_path / "wrong_shape.pth"))
    torch.save({"state_dict": _classifier_state()}, tmp_path / "wrapped.pth")  # a common wrapper is fine
    load_backbone_weights(model, BACKBONE, str(tmp_path / "wrapped.pth"))


def test_cli_refuses_wrong_weights_in_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import save_file

    from projgan.evaluation.laws import make_law_dataset

    save_file({"encoder." + k: v for k, v in _classifier_state().items()}, str(tmp_path / "bad.safetensors"))
    data = make_law_dataset(tmp_path / "data", "disk", n=8, resolution=32)
    r = subprocess.run(
        [sys.executable, "-m", "projgan", "train", "--data", str(data), "--out", str(tmp_path / "run"),
         "--resolution", "32", "--ngf", "16", "--batch", "4", "--kimg", "0.004", "--metrics", "none",
         "--backbone-weights", str(tmp_path / "bad.safetensors"), "--backbone-resolution", "32"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "0/288 keys matched" in error_lines[0]
    assert not (tmp_path / "run" / "training-state.pt").exists()


def test_weights_errors_are_user_errors(tmp_path, monkeypatch):
    assert resolve_backbone_weights(BACKBONE, "none") is None
    with pytest.raises(UserError, match="no such file"):
        resolve_backbone_weights(BACKBONE, str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load backbone weights"):
        FeatureNetwork(BACKBONE, str(tmp_path / "junk.pth"), "ccm", input_resolution=64)
    with pytest.raises(UserError, match="strides|backbone"):
        FeatureNetwork("definitely_not_a_model", None, "ccm", input_resolution=64)


def test_pretrained_offline_fails_fast_with_what_to_do(monkeypatch, tmp_path):
    """A backbone no installed package covers (resnet18), offline with an empty cache."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache, whatever this machine has
    t0 = time.time()
    with pytest.raises(UserError) as e:
        resolve_backbone_weights("resnet18", "pretrained")
    assert time.time() - t0 < 5
    assert "--backbone-weights" in e.value.hint and "huggingface.co" in e.value.hint


def test_pretrained_weights_found_in_the_hub_cache_are_used(monkeypatch, tmp_path):
    """The online path ends in the hub cache; a file placed there the way the hub does is found offline."""
    import huggingface_hub.constants as hf_constants
    import timm
    from safetensors.torch import save_file

    cache = tmp_path / "hf"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    repo = timm.models.get_pretrained_cfg(BACKBONE).hf_hub_id
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    save_file(_classifier_state(), str(snap / "model.safetensors"))
    path = resolve_backbone_weights(BACKBONE, "pretrained")
    assert path == str(snap / "model.safetensors")
    FeatureNetwork(BACKBONE, path, "ccm", input_resolution=64)  # and it loads strictly
