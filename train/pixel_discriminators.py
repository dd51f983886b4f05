"""Baselines that see pixels: FastGAN's discriminator and a DCGAN discriminator.

They exist to test the claim that projected discriminators converge faster: same generator, loop,
DiffAugment, losses, checkpoints and resume; only D changes (``--discriminator fastgan|dcgan``).
Both return a list of logit tensors like the projected one.

FastGAN's D (Liu et al., ICLR 2021) is scaled to any resolution from its 256/1024 px design: a
"big" path at full resolution of residual DownBlockComps down to 8x8, with skip-layer excitation
from each map to the one 8x smaller; a "small" path on the half-resolution image; and, on real
images only, three small decoders that rebuild the image, the half-resolution image and one random
quadrant from 8x8 features (a self-supervised reconstruction loss that keeps D's features
descriptive). The paper's reconstruction loss is LPIPS, which needs pretrained VGG weights; here
it is L1 on pixels, so it works offline.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from projgan.generator import SLE, add_spectral_norm
from projgan.train.discriminator import ClassProjection, ConditionalSequential

FASTGAN_WIDTH = {4: 16, 8: 16, 16: 8, 32: 4, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125, 2048: 0.0625}


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class DownBlockComp(nn.Module):
    """Halves the map: mean of a two-conv path and an avg-pool + 1x1 path."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), _lrelu(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), _lrelu(),
        )
        self.direct = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), _lrelu())

    def forward(self, x):
        return (self.main(x) + self.direct(x)) / 2


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), _lrelu())


def _decoder(cin: int, steps: int, width: dict[int, int]) -> nn.Sequential:
    """8x8 features -> an RGB picture 2**steps times larger (nearest x2, conv, BN, GLU per step)."""
    layers, size, c = [], 8, cin
    for _ in range(steps):
        size *= 2
        cout = max(width[min(size, 1024)] // 2, 8)
        layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, cout * 2, 3, 1, 1, bias=False),
                   nn.BatchNorm2d(cout * 2), nn.GLU(dim=1)]
        c = cout
    layers += [nn.Conv2d(c, 3, 3, 1, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


class FastGANDiscriminator(nn.Module):
    """Images ``[B, 3, R, R]`` in [-1, 1] -> [logits of the big path, logits of the small path]."""

    def __init__(self, resolution: int, ndf: int = 64):
        super().__init__()
        # Channels by map size: FastGAN's table, shifted one octave (its first map at 256 px has nfc[512]).
        width = {s: max(int(FASTGAN_WIDTH[2 * s] * ndf), 8) for s in FASTGAN_WIDTH if s <= 1024}
        self.resolution = resolution
        self.stem = nn.Sequential(nn.Conv2d(3, width[resolution], 3, 1, 1, bias=False), _lrelu())
        sizes = [resolution // 2**i for i in range(int(math.log2(resolution // 8)) + 1)]  # R, R/2, ..., 8
        self.downs = nn.ModuleList(DownBlockComp(width[s], width[s // 2]) for s in sizes[:-1])
        # Skip-layer excitation: the map at size s gates the map at size s/8.
        self.sles = nn.ModuleDict({str(s // 8): SLE(width[s], width[s // 8], s) for s in sizes if s // 8 >= 8})
        self.head_big = nn.Sequential(nn.Conv2d(width[8], width[4], 1, bias=False), nn.BatchNorm2d(width[4]), _lrelu(),
                                      nn.Conv2d(width[4], 1, 4, 1, 0, bias=False))
        small = resolution // 2
        s_sizes = [small // 2**i for i in range(int(math.log2(small // 8)) + 1)]
        path = [nn.Conv2d(3, width[small // 2], 4, 2, 1, bias=False), _lrelu()] if small > 8 else [
            nn.Conv2d(3, width[8], 3, 1, 1, bias=False), _lrelu()]
        path += [_down(width[s], width[s // 2]) for s in s_sizes[1:-1]]
        self.small = nn.Sequential(*path)
        self.head_small = nn.Conv2d(width[8], 1, 4, 1, 0, bias=False)
        self.recon_size = min(resolution, 128)
        steps = int(math.log2(self.recon_size // 8))
        self.decode_big = _decoder(width[8], steps, width)
        self.decode_small = _decoder(width[8], steps, width)
        self.decode_part = _decoder(width[16], steps, width)
        add_spectral_norm(self)

    def _big(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = {self.resolution: self.stem(x)}
        h = feats[self.resolution]
        for down in self.downs:
            h = down(h)
            s = h.shape[-1]
            if str(s) in self.sles:
                h = self.sles[str(s)](feats[s * 8], h)
            feats[s] = h
        return h, feats[16]

    def forward(self, x: torch.Tensor, reconstruct: bool = False):
        """Logits; with ``reconstruct`` also the L1 reconstruction loss of the three decoders."""
        # (antialiased resizing has no bf16 kernel on the CPU: resize in fp32, autocast takes it from there)
        small_in = F.interpolate(x.float(), size=self.resolution // 2, mode="bilinear", align_corners=False,
                                 antialias=True)
        big, f16 = self._big(x)
        small = self.small(small_in)
        logits = [self.head_big(big).flatten(1), self.head_small(small).flatten(1)]
        if not reconstruct:
            return logits
        size = self.recon_size
        q = int(torch.randint(4, ()))  # one random quadrant per batch, as FastGAN does
        qy, qx = divmod(q, 2)
        crop_f = f16[:, :, qy * 8 : qy * 8 + 8, qx * 8 : qx * 8 + 8]
        h = x.shape[-1] // 2
        crop_x = x[:, :, qy * h : qy * h + h, qx * h : qx * h + h]

        def target(img):
            return F.interpolate(img.float(), size=size, mode="bilinear", align_corners=False,
                                 antialias=img.shape[-1] > size)

        loss = (F.l1_loss(self.decode_big(big).float(), target(x).float())
                + F.l1_loss(self.decode_small(small).float(), target(small_in).float())
                + F.l1_loss(self.decode_part(crop_f).float(), target(crop_x).float()))
        return logits, loss


class DCGANDiscriminator(ConditionalSequential):
    """Radford et al. 2016: 4x4 stride-2 convs doubling the width (BatchNorm after the first),
    LeakyReLU 0.2, down to 4x4, then one 4x4 conv to a single logit (to a 64-channel map projected
    onto the class embedding when conditional, as the projected discriminator does)."""

    def __init__(self, resolution: int, ndf: int = 64, num_classes: int = 0):
        layers, c, size = [nn.Conv2d(3, ndf, 4, 2, 1, bias=False), _lrelu()], ndf, resolution // 2
        while size > 4:
            cout = min(c * 2, 8 * ndf)
            layers += [nn.Conv2d(c, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), _lrelu()]
            c, size = cout, size // 2
        layers.append(nn.Conv2d(c, ClassProjection.CMAP if num_classes else 1, 4, 1, 0, bias=False))
        super().__init__(*layers)
        if num_classes:
            self.cond = ClassProjection(num_classes)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [super().forward(x, c).flatten(1)]
