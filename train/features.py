"""The frozen feature network D looks through: a timm backbone plus random projections (CCM, CSM).

Projected GAN's discriminators never see pixels: they see four feature maps of a pretrained
classifier (strides 4/8/16/32), mixed across channels (CCM: a random 1x1 conv per scale, to
64/128/256/512 channels) and across scales (CSM: top-down, each map is added to the fused coarser
one, upsampled x2 bilinearly and passed through a random 1x1 conv that halves its channels, except
the finest). With CSM the discriminators see strides 2/4/8/16 with 64/64/128/256 channels, as the
paper's code builds them. Everything here is frozen (no parameter needs a gradient; BatchNorm stays
in eval mode even when a parent calls ``.train()``) but differentiable with respect to the input,
so G learns through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from projgan.errors import UserError
from projgan.train.backbone_weights import load_backbone_weights

STRIDES = (4, 8, 16, 32)
CCM_CHANNELS = (64, 128, 256, 512)  # cout 64, expanded x2 per scale
CSM_CHANNELS = (64, 64, 128, 256)  # each fusion halves the channels, except the finest
# Nominal map sizes, fixed from a 256 px reference whatever the data resolution (the paper's code does
# this: it found the same number of down blocks per discriminator works best at every resolution).
REFERENCE_RESOLUTION = 256


# ---------------------------------------------------------------- network


def check_backbone_weights(backbone: str, path: str) -> None:
    """Refuse a weights file that does not fit ``backbone`` (a throwaway model; about a second)."""
    import timm

    load_backbone_weights(timm.create_model(backbone, features_only=True, out_indices=_stage_indices(backbone)),
                          backbone, path)


def _stage_indices(backbone: str) -> tuple[int, ...]:
    """Indices of the last feature stage at each stride 4/8/16/32, read from timm's feature_info."""
    import timm

    try:
        probe = timm.create_model(backbone, features_only=True, pretrained=False)
    except RuntimeError as e:  # unknown model, or no features_only support
        raise UserError(f"--backbone {backbone}: {str(e).splitlines()[0]}", "pick a timm CNN, e.g. resnet50") from None
    reductions = probe.feature_info.reduction()
    missing = [s for s in STRIDES if s not in reductions]
    if missing:
        raise UserError(
            f"--backbone {backbone} has no feature stages at strides {missing} (it has {reductions})",
            "choose a CNN with strides 4/8/16/32, e.g. tf_efficientnet_lite0 or resnet50",
        )
    return tuple(max(i for i, r in enumerate(reductions) if r == s) for s in STRIDES)


class ScaleFusion(nn.Module):
    """One CSM step: add the fused coarser map (if any), upsample x2 (bilinear, corners aligned),
    then a random 1x1 conv (halving the channels when ``halve``)."""

    def __init__(self, channels: int, halve: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // 2 if halve else channels, 1, bias=True)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        if coarser is not None:  # sizes differ only for backbone inputs that are not multiples of 32
            x = x + (coarser if coarser.shape[-2:] == x.shape[-2:] else F.interpolate(coarser, size=x.shape[-2:]))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True))


@dataclass(frozen=True)
class ScaleSpec:
    """What one discriminator sees: channels, actual map size, and nominal size (which sets its depth)."""

    channels: int
    size: int
    nominal: int


class FeatureNetwork(nn.Module):
    """Images in [-1, 1] -> four projected feature maps (finest first)."""

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        weights: str | None = None,
        projection: str = "ccm+csm",
        input_resolution: int = 224,
        seed: int = 0,
    ):
        super().__init__()
        import timm

        self.input_resolution = input_resolution
        self.projection = projection
        self.backbone = timm.create_model(backbone, features_only=True, out_indices=_stage_indices(backbone))
        if weights is not None:
            load_backbone_weights(self.backbone, backbone, weights)
        info = self.backbone.feature_info
        assert tuple(info.reduction()) == STRIDES, info.reduction()
        self.backbone_channels = tuple(info.channels())
        mean = torch.tensor(self.backbone.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
        std = torch.tensor(self.backbone.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
        # [-1, 1] -> backbone normalisation in one affine map: ((x + 1) / 2 - mean) / std.
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1))

        self.ccm = self.csm = None
        channels, strides = self.backbone_channels, STRIDES
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # same random projections on every rank and every run
            if projection != "none":
                self.ccm = nn.ModuleList(nn.Conv2d(c, o, 1, bias=True) for c, o in zip(channels, CCM_CHANNELS, strict=True))
                channels = CCM_CHANNELS
            if projection == "ccm+csm":
                # csm[i] fuses scale i (and everything coarser); built coarsest first like the paper's code.
                fusions = [ScaleFusion(CCM_CHANNELS[i], halve=i > 0) for i in (3, 2, 1, 0)]
                self.csm = nn.ModuleList(reversed(fusions))
                channels, strides = CSM_CHANNELS, tuple(s // 2 for s in STRIDES)
        self.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, input_resolution, input_resolution)
            sizes = [int(f.shape[-1]) for f in self(probe)]
        self.scales = tuple(ScaleSpec(c, s, REFERENCE_RESOLUTION // st) for c, s, st in zip(channels, sizes, strides, strict=True))
        self.channels = tuple(channels)
        self.sizes = tuple(sizes)

    def train(self, mode: bool = True):
        """Frozen: BatchNorm keeps its pretrained statistics whatever the parent's mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != self.input_resolution or x.shape[-2] != self.input_resolution:
            down = x.shape[-1] > self.input_resolution
            # antialiased resizing has no bf16 kernel on the CPU: resize in fp32
            x = F.interpolate(x.float() if down else x, size=(self.input_resolution,) * 2, mode="bilinear",
                              align_corners=False, antialias=down)
        x = x * self.scale + self.shift
        feats = self.backbone(x)
        if self.ccm is not None:
            feats = [conv(f) for conv, f in zip(self.ccm, feats, strict=True)]
        if self.csm is not None:
            fused = [None] * 4
            coarser = None
            for i in (3, 2, 1, 0):
                coarser = fused[i] = self.csm[i](feats[i], coarser)
            feats = fused
        return list(feats)
