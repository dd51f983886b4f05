"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real and fake images alike.

Because every op is differentiable with respect to the image, the same augmentation can sit in
front of D in both the D step and the G step, which keeps D from memorising a small dataset
without leaking augmentations into G's outputs. Policy: comma-separated subset of
``color,translation,cutout``; ``""`` disables.
"""

from __future__ import annotations

import torch


def color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per image."""
    b = x.shape[0]
    r = torch.rand(b, 3, 1, 1, 1, dtype=x.dtype, device=x.device)
    x = x + (r[:, 0] - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (r[:, 1] * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r[:, 2] + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size (integer pixels), zero-filling the border."""
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    iy = torch.arange(h, device=x.device).view(1, h, 1) + dy
    ix = torch.arange(w, device=x.device).view(1, 1, w) + dx
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    index = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
    return out * inside.unsqueeze(1).to(x.dtype)


def cutout(x: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """Zero one square of ``ratio`` x size at a random place in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h, (b, 1, 1), device=x.device)
    cx = torch.randint(0, w, (b, 1, 1), device=x.device)
    yy = torch.arange(h, device=x.device).view(1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (yy >= cy - ch // 2) & (yy < cy - ch // 2 + ch) & (xx >= cx - cw // 2) & (xx < cx - cw // 2 + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


OPS = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [n for n in names if n not in OPS]
    if bad:
        from projgan.errors import UserError

        raise UserError(f"unknown DiffAugment op {bad[0]!r}", f"use a subset of {','.join(OPS)} or ''")
    return names


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...]) -> torch.Tensor:
    names = parse_policy(policy) if isinstance(policy, str) else policy
    for name in names:
        x = OPS[name](x)
    return x
