"""Projected GAN losses: hinge for D, ``-D(G(z))`` for G.

D returns one logit tensor per feature scale; each scale's loss is averaged over its logits and
the scales are summed, so every mini-discriminator has the same say whatever its map size.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def d_hinge_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """sum over scales of mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))."""
    loss = 0.0
    for r, f in zip(real_logits, fake_logits, strict=True):
        loss = loss + F.relu(1.0 - r.float()).mean() + F.relu(1.0 + f.float()).mean()
    return loss


def g_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """sum over scales of -mean(D(G(z)))."""
    return sum(-f.float().mean() for f in fake_logits)
