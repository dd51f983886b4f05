"""Exponential moving average of the generator (what gets saved, exported and served).

Half-life in thousands of images (``batch * 10 / 32`` kimg by default, as in Projected GAN) with a
ramp-up that caps it at ``rampup * images seen`` early on, so the average does not drag the
random initialisation along. Buffers (BatchNorm statistics, spectral-norm u/v) are copied, not
averaged.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch: int, cur_nimg: int, half_life_kimg: float, rampup: float | None) -> float:
    ema_nimg = half_life_kimg * 1000
    if rampup:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters (one fused call); buffers copied."""
    p_ema = list(ema.parameters())
    p_model = [p.detach() for p in model.parameters()]
    if len(p_ema) != len(p_model):
        raise ValueError("EMA and model have different parameter lists")
    torch._foreach_lerp_(p_ema, p_model, 1.0 - beta)
    b_ema, b_model = list(ema.buffers()), list(model.buffers())
    if len(b_ema) != len(b_model):
        raise ValueError("EMA and model have different buffer lists")
    if b_ema:
        torch._foreach_copy_(b_ema, b_model)
