"""Projected multi-scale discriminator: one small conv net per feature scale of the frozen network.

As the paper's code builds it: each mini-discriminator has a fixed number of DownBlocks
(spectral-normed 4x4 stride-2 conv, BatchNorm, LeakyReLU 0.2) set by its scale's *nominal* size
from a 256 px reference (with CSM: 128/64/32/16 -> 4/3/2/1 blocks, whatever the data resolution),
widths from the FastGAN table, then a spectral-normed 4x4 conv to a map of logits. The feature
network (backbone + random projections) is a submodule, so D's state dict holds it and a resumed
run sees exactly the same projections.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from projgan.train.features import FeatureNetwork, ScaleSpec

# Channels by nominal feature-map size (the Projected GAN / FastGAN discriminator widths).
WIDTHS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}
END_SIZE = 8  # nominal size after the last DownBlock


class DownBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1, bias=False)),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
        )


def _nearest_nominal(size: int) -> int:
    return min(WIDTHS, key=lambda s: abs(s - size))


class MiniDiscriminator(nn.Sequential):
    """Feature map ``[B, spec.channels, spec.size, spec.size]`` -> logits ``[B, 1, h, w]``.

    Depth comes from ``spec.nominal``. Backbone inputs far below 224 px give maps too small for
    that depth: a block is then dropped rather than shrink a map below one pixel, and the last
    conv pads so that at least one logit remains.
    """

    def __init__(self, spec: ScaleSpec):
        nominal, size, cin = _nearest_nominal(spec.nominal), spec.size, spec.channels
        layers = []
        while nominal > END_SIZE and size >= 2:
            cout = WIDTHS[nominal // 2]
            layers.append(DownBlock(cin, cout))
            cin, nominal, size = cout, nominal // 2, size // 2
        pad = max(0, (4 - size + 1) // 2)
        layers.append(spectral_norm(nn.Conv2d(cin, 1, 4, 1, pad, bias=False)))
        super().__init__(*layers)


class ProjectedDiscriminator(nn.Module):
    """Images in [-1, 1] -> one logit tensor ``[B, L_k]`` per scale (finest first)."""

    def __init__(self, features: FeatureNetwork, num_discs: int = 4):
        super().__init__()
        self.features = features
        self.discs = nn.ModuleList(MiniDiscriminator(spec) for spec in features.scales[:num_discs])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.features(x)
        return [d(f).flatten(1) for d, f in zip(self.discs, feats, strict=False)]  # num_discs may be < 4
