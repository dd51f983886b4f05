"""Optimisers and learning-rate schedules for G and D (``--optimizer``, ``--lr-schedule``).

The schedule is a pure function of the images shown (kimg), not a stateful scheduler object: a
resumed run computes the same learning rate from its image counter, so nothing extra needs saving.
"""

from __future__ import annotations

import math

import torch

from projgan.config import TrainConfig


def base_lr(cfg: TrainConfig, net: str) -> float:
    """``--lr`` for D; ``--g-lr`` (when set) for G."""
    return cfg.g_lr if net == "G" and cfg.g_lr > 0 else cfg.lr


def build_optimizer(params, cfg: TrainConfig, net: str) -> torch.optim.Optimizer:
    params, lr = list(params), base_lr(cfg, net)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.betas[1], eps=cfg.eps)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov")


def lr_factor(cfg: TrainConfig, cur_nimg: int) -> float:
    """The schedule's multiplier of the base learning rates after ``cur_nimg`` images."""
    kimg = cur_nimg / 1000
    decay = cfg.lr_decay_kimg or cfg.kimg / 4
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** math.floor(kimg / decay)
    if cfg.lr_schedule == "exponential":
        return cfg.lr_gamma ** (kimg / decay)
    if cfg.lr_schedule == "cosine":
        return cfg.lr_min + (1 - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * min(kimg / cfg.kimg, 1.0)))
    return 1.0


def lr_at(cfg: TrainConfig, cur_nimg: int, net: str = "D") -> float:
    """Learning rate of ``net`` (G or D) after ``cur_nimg`` images."""
    return base_lr(cfg, net) * lr_factor(cfg, cur_nimg)


def apply_schedule(opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, cfg: TrainConfig, cur_nimg: int) -> None:
    for opt, net in ((opt_G, "G"), (opt_D, "D")):
        lr = lr_at(cfg, cur_nimg, net)
        for group in opt.param_groups:
            group["lr"] = lr
