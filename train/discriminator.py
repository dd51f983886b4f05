"""Projected multi-scale discriminator: one small conv net per feature scale of the frozen network.

Each mini-discriminator halves its feature map with DownBlocks (spectral-normed 4x4 stride-2 conv,
BatchNorm, LeakyReLU 0.2) until it is at most 8x8, then a 4x4 conv gives a small map of logits.
The feature network (backbone + random projections) is a submodule, so D's state dict holds it
and a resumed run sees exactly the same projections.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from projgan.train.features import FeatureNetwork

# Channels by feature-map size (the Projected GAN / FastGAN discriminator widths).
WIDTHS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}


def width(size: int) -> int:
    p = 4
    while p < size and p < 1024:
        p *= 2
    return WIDTHS[p]


class DownBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1, bias=False)),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
        )


class MiniDiscriminator(nn.Sequential):
    """Feature map ``[B, cin, size, size]`` -> logits ``[B, 1, h, w]``."""

    def __init__(self, cin: int, size: int):
        layers = []
        while size > 8:
            cout = width(size // 2)
            layers.append(DownBlock(cin, cout))
            cin, size = cout, (size - 2) // 2 + 1
        pad = max(0, (4 - size + 1) // 2)  # maps smaller than 4x4 (tiny test backbones) still give a logit
        layers.append(spectral_norm(nn.Conv2d(cin, 1, 4, 1, pad, bias=False)))
        super().__init__(*layers)


class ProjectedDiscriminator(nn.Module):
    """Images in [-1, 1] -> one logit tensor ``[B, L_k]`` per scale (finest first)."""

    def __init__(self, features: FeatureNetwork, num_discs: int = 4):
        super().__init__()
        self.features = features
        self.discs = nn.ModuleList(
            MiniDiscriminator(c, s) for c, s in zip(features.channels[:num_discs], features.sizes[:num_discs], strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.features(x)
        return [d(f).flatten(1) for d, f in zip(self.discs, feats, strict=False)]  # num_discs may be < 4
