"""Projected GAN losses: hinge for D, ``-D(G(z))`` for G.

D returns one logit tensor per feature scale (or per path, for the pixel baselines). As in the
paper's code, they are concatenated and averaged as one tensor: scales with more logits weigh more
(with the published geometry every scale has the same 4x4 map, so they weigh the same).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _cat(logits: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x.float().flatten(1) for x in logits], dim=1)


def d_hinge_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))) over all logits."""
    return F.relu(1.0 - _cat(real_logits)).mean() + F.relu(1.0 + _cat(fake_logits)).mean()


def g_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """-mean(D(G(z))) over all logits."""
    return -_cat(fake_logits).mean()
