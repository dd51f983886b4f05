"""Feature network: stages from timm's feature_info, frozen everything, gradients reach the input."""

from __future__ import annotations

import time

import pytest
import torch

from projgan.errors import UserError
from projgan.train.features import CCM_CHANNELS, STRIDES, FeatureNetwork, resolve_backbone_weights

BACKBONE = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def net():
    return FeatureNetwork(BACKBONE, None, "ccm+csm", input_resolution=64)


def test_stages_come_from_feature_info(net):
    info = net.backbone.feature_info
    assert tuple(info.reduction()) == STRIDES
    assert net.backbone_channels == tuple(info.channels()) == (24, 40, 112, 320)
    assert net.channels == CCM_CHANNELS
    assert net.sizes == (16, 8, 4, 2)


@pytest.mark.parametrize("projection,channels", [("none", (24, 40, 112, 320)), ("ccm", CCM_CHANNELS)])
def test_projection_choices(projection, channels):
    f = FeatureNetwork(BACKBONE, None, projection, input_resolution=64)
    feats = f(torch.zeros(1, 3, 64, 64))
    assert tuple(x.shape[1] for x in feats) == channels
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
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]
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
    torch.testing.assert_close(a.csm[2].weight, b.csm[2].weight, rtol=0, atol=0)
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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t0 = time.time()
    try:
        path = resolve_backbone_weights(BACKBONE, "pretrained")
    except UserError as e:
        assert time.time() - t0 < 5
        assert "--backbone-weights" in e.hint and "huggingface.co" in e.hint
    else:  # the weights are in this machine's Hugging Face cache
        assert path.endswith((".safetensors", ".bin", ".pth"))
