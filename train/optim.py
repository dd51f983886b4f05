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


def fused_ok(params: list[torch.Tensor]) -> bool:
    """Fused kernels (one launch per step for every parameter) where all parameters are on a GPU.

    On a CPU the for-each path is as fast and older torch has no fused CPU kernels."""
    return bool(params) and all(p.is_cuda for p in params)


def build_optimizer(params, cfg: TrainConfig, net: str) -> torch.optim.Optimizer:
    params, lr = list(params), base_lr(cfg, net)
    fused = {"fused": True} if fused_ok(params) else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **fused)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.betas[1], eps=cfg.eps)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov", **fused)


IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")  # how a step runs, not what it computes


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping this optimizer's own implementation choices.

    ``load_state_dict`` copies every saved group setting, ``fused`` too: a state saved on a GPU would
    make a resumed CPU run ask for fused kernels (and a CPU state would keep a GPU run unfused)."""
    mine = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, keep in zip(opt.param_groups, mine, strict=True):
        group.update(keep)
        on_device = group.get("fused") or group.get("capturable")  # fused kernels keep the step count beside p
        for p in group["params"]:
            st = opt.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(p.device if on_device else "cpu", torch.float32)


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
