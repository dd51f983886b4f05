"""Projected multi-scale discriminator: one small conv net per feature scale of the frozen network.

As the paper's code builds it: each mini-discriminator has a fixed number of DownBlocks
(spectral-normed 4x4 stride-2 conv, BatchNorm, LeakyReLU 0.2) set by its scale's *nominal* size
from a 256 px reference (with CSM: 128/64/32/16 -> 4/3/2/1 blocks, whatever the data resolution),
widths from the FastGAN table, then a spectral-normed 4x4 conv to a map of logits. The feature
network (backbone + random projections) is a submodule, so D's state dict holds it and a resumed
run sees exactly the same projections.

Class-conditional (``num_classes`` > 0): as in the paper's code, each mini-discriminator ends in a
64-channel map that is projected onto an embedding of the class (Miyato & Koyama's projection
discriminator): logit = <map, cmap(c)> / sqrt(64). ``separable`` (used with the StyleGAN2 generator,
as the paper's code does) builds the DownBlocks from depthwise-separable 3x3 convs and average pooling.
"""

from __future__ import annotations

import math

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


class SeparableDownBlock(nn.Sequential):
    """Depthwise 3x3 conv, pointwise 1x1 conv (both spectral-normed), 2x2 average pool, BN, LeakyReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            spectral_norm(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)),
            spectral_norm(nn.Conv2d(cin, cout, 1, bias=False)),
            nn.AvgPool2d(2, 2),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
        )


class ClassProjection(nn.Module):
    """Projects a ``[B, CMAP, h, w]`` map onto a learned embedding of each sample's class: ``[B, 1, h, w]``."""

    CMAP = 64  # the paper's code: cmap_dim 64 from a 128-wide embedding

    def __init__(self, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, 128)
        self.proj = nn.Sequential(nn.Linear(128, self.CMAP), nn.LeakyReLU(0.2))

    def forward(self, out: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if c is None:
            raise ValueError("a class-conditional discriminator needs class indices")
        cmap = self.proj(self.embed(c.long())).to(out.dtype)
        return (out * cmap[:, :, None, None]).sum(1, keepdim=True) * (1 / math.sqrt(self.CMAP))


class ConditionalSequential(nn.Sequential):
    """A Sequential of numbered layers plus an optional ``cond`` ClassProjection applied to its output.
    Keeping the layers numbered keeps the unconditional state dict keys (old runs resume)."""

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        for name, m in self._modules.items():
            if name != "cond":
                x = m(x)
        cond = self._modules.get("cond")
        return cond(x, c) if cond is not None else x


class MinibatchStd(nn.Module):
    """Appends one channel: the standard deviation of the features across groups of ``group`` samples,
    averaged, broadcast over each map (ProGAN / StyleGAN's minibatch standard deviation).

    A per-sample discriminator cannot see that a generator gives every sample the same colours: each
    sample alone looks real. This channel lets it see how alike the samples of a group are. Groups are
    consecutive samples, so a batch of reals followed by fakes (multiples of ``group`` each) never mixes
    the kinds in a group.
    """

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.group if b % self.group == 0 else b  # a batch that does not split: one group
        y = x.float().reshape(b // g, g, c, h, w)  # group k: samples k*g ... k*g + g - 1
        y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [b // g]
        y = y.to(x.dtype).repeat_interleave(g).reshape(b, 1, 1, 1).expand(b, 1, h, w)
        return torch.cat([x, y], dim=1)


def _nearest_nominal(size: int) -> int:
    return min(WIDTHS, key=lambda s: abs(s - size))


class MiniDiscriminator(ConditionalSequential):
    """Feature map ``[B, spec.channels, spec.size, spec.size]`` -> logits ``[B, 1, h, w]``.

    Depth comes from ``spec.nominal``. Backbone inputs far below 224 px give maps too small for
    that depth: a block is then dropped rather than shrink a map below one pixel, and the last
    conv pads so that at least one logit remains.
    """

    def __init__(self, spec: ScaleSpec, num_classes: int = 0, separable: bool = False, mbstd: int = 0):
        nominal, size, cin = _nearest_nominal(spec.nominal), spec.size, spec.channels
        layers = []
        while nominal > END_SIZE and size >= 2:
            cout = WIDTHS[nominal // 2]
            layers.append(SeparableDownBlock(cin, cout) if separable else DownBlock(cin, cout))
            cin, nominal, size = cout, nominal // 2, size // 2
        if mbstd:
            layers.append(MinibatchStd(mbstd))
            cin += 1
        pad = max(0, (4 - size + 1) // 2)
        cout = ClassProjection.CMAP if num_classes else 1
        layers.append(spectral_norm(nn.Conv2d(cin, cout, 4, 1, pad, bias=False)))
        super().__init__(*layers)
        if num_classes:
            self.cond = ClassProjection(num_classes)


class MiniDiscriminators(nn.ModuleList):
    """The trainable part of D: feature maps (finest first) -> one logit tensor ``[B, L_k]`` per scale."""

    def forward(self, feats: list[torch.Tensor], c: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [d(f, c).flatten(1) for d, f in zip(self, feats, strict=False)]  # num_discs may be < 4


class ProjectedDiscriminator(nn.Module):
    """Images in [-1, 1] (and class indices when conditional) -> one logit tensor ``[B, L_k]`` per scale.

    ``features`` (frozen) and ``discs`` (trained) are also called apart by the training step, so that
    features of reals computed once serve both the D and the G step.
    """

    def __init__(self, features: FeatureNetwork, num_discs: int = 4, num_classes: int = 0, separable: bool = False,
                 mbstd: int = 0):
        super().__init__()
        self.features = features
        self.discs = MiniDiscriminators(MiniDiscriminator(spec, num_classes, separable, mbstd)
                                        for spec in features.scales[:num_discs])

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.discs(self.features(x), c)
