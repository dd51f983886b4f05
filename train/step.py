"""The models, optimisers and one training step: shared by the loop and the benchmark.

Imports torch (and timm, through the feature network) only, so ``bench`` can time exactly the
step the loop runs without the dataset, Rich or the metrics stack.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from projgan.config import TrainConfig
from projgan.generator import build_generator
from projgan.train import dist
from projgan.train.diffaug import diff_augment, parse_policy
from projgan.train.discriminator import ProjectedDiscriminator
from projgan.train.ema import ema_beta, update_ema
from projgan.train.features import FeatureNetwork
from projgan.train.losses import d_hinge_loss, g_loss
from projgan.train.optim import apply_schedule, build_optimizer, load_optimizer_state
from projgan.train.pixel_discriminators import DCGANDiscriminator, FastGANDiscriminator

STATE_FORMAT = "projgan.training-state"


def backbone_resolution(cfg: TrainConfig) -> int:
    """224 below 224 px (the size the backbone was trained at), else the training resolution."""
    if cfg.backbone_resolution > 0:
        return cfg.backbone_resolution
    return 224 if cfg.generator.resolution < 224 else cfg.generator.resolution


@dataclass
class Trainer:
    """Everything one training process holds; ``G``/``D`` are the plain modules, ``*_fwd`` maybe compiled."""

    cfg: TrainConfig
    rt: dist.Runtime
    G: nn.Module  # projgan.generator.Generator (FastGAN) or projgan.stylegan2.StyleGenerator
    G_ema: nn.Module
    D: nn.Module  # ProjectedDiscriminator, or a pixel baseline (FastGAN / DCGAN)
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    precision: str
    policy: tuple[str, ...]
    channels_last: bool = True
    G_fwd: nn.Module = None
    D_fwd: nn.Module = None
    F_fwd: nn.Module = None  # the projected D's frozen feature network (maybe compiled)
    H_fwd: nn.Module = None  # ... and its mini-discriminators
    reals_seen: tuple | None = None  # features and classes of the D step's reals, for the G step (joint BN)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    steps_in_stats: int = 0

    @property
    def device(self) -> torch.device:
        return self.rt.device

    @property
    def batch_per_rank(self) -> int:
        return self.cfg.batch // self.rt.world


def build_discriminator(cfg: TrainConfig, backbone_weights: str | None) -> nn.Module:
    """``--discriminator``: the projected D (frozen backbone + random projections) or a pixel baseline."""
    k = cfg.generator.num_classes
    if cfg.discriminator == "fastgan":
        return FastGANDiscriminator(cfg.generator.resolution, cfg.d_width)
    if cfg.discriminator == "dcgan":
        return DCGANDiscriminator(cfg.generator.resolution, cfg.d_width, num_classes=k)
    feats = FeatureNetwork(cfg.backbone, backbone_weights, cfg.projection, backbone_resolution(cfg), seed=cfg.seed + 1)
    # separable mini-discriminators with the StyleGAN2 generator, as the paper's code configures it
    return ProjectedDiscriminator(feats, cfg.num_discs, num_classes=k, separable=cfg.generator.arch == "stylegan2",
                                  mbstd=cfg.d_mbstd)


def build(cfg: TrainConfig, rt: dist.Runtime, backbone_weights: str | None = None) -> Trainer:
    """Generator (spectral norm on), its EMA, the discriminator, optimisers and grad scalers.

    Models are initialised from ``cfg.seed`` identically on every rank, then broadcast from rank 0.
    """
    if cfg.batch % rt.world:
        from projgan.errors import UserError

        raise UserError(f"--batch {cfg.batch} is not divisible by the {rt.world} processes")
    precision = dist.resolve_precision(cfg.precision, rt.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = build_generator(cfg.generator, spectral=True)
        D = build_discriminator(cfg, backbone_weights)
    # Under torch.compile, inductor picks conv layouts itself; hand-set channels_last there made
    # torch 2.11's inductor assert on a conv-backward stride (D frozen in the G step) on an H100.
    channels_last = cfg.channels_last and not cfg.compile
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G = G.to(rt.device, memory_format=fmt).train()
    D = D.to(rt.device, memory_format=fmt).train()
    dist.broadcast_module(G, rt)
    dist.broadcast_module(D, rt)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = build_optimizer(G.parameters(), cfg, "G")
    opt_D = build_optimizer([p for p in D.parameters() if p.requires_grad], cfg, "D")
    fp16 = precision == "fp16"
    t = Trainer(
        cfg=cfg, rt=rt, G=G, G_ema=G_ema, D=D, opt_G=opt_G, opt_D=opt_D,
        scaler_G=torch.amp.GradScaler(rt.device.type, enabled=fp16),
        scaler_D=torch.amp.GradScaler(rt.device.type, enabled=fp16),
        precision=precision, policy=parse_policy(cfg.augment), channels_last=channels_last,
    )
    maybe_compile = torch.compile if cfg.compile else (lambda m: m)
    t.G_fwd, t.D_fwd = maybe_compile(G), maybe_compile(D)
    if isinstance(D, ProjectedDiscriminator):
        t.F_fwd, t.H_fwd = maybe_compile(D.features), maybe_compile(D.discs)
    return t


def _autocast(t: Trainer):
    dtype = dist.autocast_dtype(t.precision)
    return torch.autocast(t.device.type, dtype=dtype, enabled=dtype is not None)


def _latents(t: Trainer, n: int) -> torch.Tensor:
    return torch.randn(n, t.cfg.generator.z_dim, device=t.device)


def _prep(t: Trainer, x: torch.Tensor) -> torch.Tensor:
    x = diff_augment(x, t.policy) if t.policy else x
    return x.contiguous(memory_format=torch.channels_last) if t.channels_last else x


def _accumulate(t: Trainer, **values: torch.Tensor) -> None:
    for k, v in values.items():
        v = v.detach().float()
        t.stats[k] = t.stats[k] + v if k in t.stats else v


def _D(t: Trainer, x: torch.Tensor, c: torch.Tensor | None):
    return t.D_fwd(x) if c is None else t.D_fwd(x, c)


def _joint(t: Trainer) -> bool:
    """Whether the projected D's BatchNorm sees reals and fakes as one batch (``--d-batchnorm joint``).

    With each kind in a batch of its own (the paper's code), BatchNorm removes whatever all fakes of a
    batch share (one background colour, one disc colour) before D can see it, and removes it from G's
    gradient too: G collapses to one colour scheme that D cannot tell from the reals (measured in
    benchmarks/convergence/). One batch of both kinds keeps that difference visible in both steps.
    """
    return t.cfg.d_batchnorm == "joint" and t.H_fwd is not None


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else torch.cat([a, b])


def _judge_with_reals(t: Trainer, real_feats: list, fake_feats: list, real_c, fake_c) -> list[torch.Tensor]:
    """Mini-discriminator logits of reals and fakes judged as one batch (reals first)."""
    return t.H_fwd([torch.cat(pair) for pair in zip(real_feats, fake_feats, strict=True)], _cat(real_c, fake_c))


def d_step(t: Trainer, reals: torch.Tensor, c: torch.Tensor | None = None) -> None:
    """Hinge loss on augmented reals vs augmented fakes (G frozen for this step); FastGAN's D adds
    its reconstruction loss on the reals. ``c``: the reals' classes, also given to the fakes."""
    n = reals.shape[0]
    with torch.no_grad(), _autocast(t):
        fakes = t.G_fwd(_latents(t, n), c)
    # Separate batches: D sees reals and fakes in two calls, its spectral-normed weights computed once
    # for both (one power iteration per D step).
    with _autocast(t), parametrize.cached():
        recon = None
        if _joint(t):
            with torch.no_grad():  # frozen features of inputs that need no gradient
                real_feats, fake_feats = t.F_fwd(_prep(t, reals)), t.F_fwd(_prep(t, fakes.float()))
            logits = _judge_with_reals(t, real_feats, fake_feats, c, c)
            real_logits, fake_logits = [lg[:n] for lg in logits], [lg[n:] for lg in logits]
            t.reals_seen = (real_feats, c)
        elif isinstance(t.D, FastGANDiscriminator):
            real_logits, recon = t.D_fwd(_prep(t, reals), reconstruct=True)
        else:
            real_logits = _D(t, _prep(t, reals), c)
        if not _joint(t):
            fake_logits = _D(t, _prep(t, fakes.float()), c)
        loss = d_hinge_loss(real_logits, fake_logits)
        if recon is not None:
            loss = loss + recon
    t.opt_D.zero_grad(set_to_none=True)
    t.scaler_D.scale(loss).backward()
    dist.all_reduce_grads(t.opt_D.param_groups[0]["params"], t.rt)
    t.scaler_D.step(t.opt_D)
    t.scaler_D.update()
    _accumulate(
        t, loss_D=loss,
        D_real=sum(r.float().mean() for r in real_logits) / len(real_logits),
        D_fake=sum(f.float().mean() for f in fake_logits) / len(fake_logits),
    )
    if recon is not None:
        _accumulate(t, loss_recon=recon)


def g_step(t: Trainer, n: int, c: torch.Tensor | None = None) -> None:
    """-D(G(z)) through the augmentation (and the frozen feature network); D's weights get no grad.
    ``c``: classes of the fakes (conditional models)."""
    trainable = t.opt_D.param_groups[0]["params"]
    for p in trainable:
        p.requires_grad_(False)
    try:
        with _autocast(t):
            fakes = _prep(t, t.G_fwd(_latents(t, n), c))
            if _joint(t) and t.reals_seen is not None:  # judged beside the D step's reals (features reused)
                real_feats, real_c = t.reals_seen
                m = real_feats[0].shape[0]
                logits = [lg[m:] for lg in _judge_with_reals(t, real_feats, t.F_fwd(fakes), real_c, c)]
            else:
                logits = _D(t, fakes, c)
            loss = g_loss(logits)
        t.opt_G.zero_grad(set_to_none=True)
        t.scaler_G.scale(loss).backward()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    dist.all_reduce_grads(t.opt_G.param_groups[0]["params"], t.rt)
    t.scaler_G.step(t.opt_G)
    t.scaler_G.update()
    t.reals_seen = None
    _accumulate(t, loss_G=loss)


def train_step(t: Trainer, reals: torch.Tensor, cur_nimg: int, c: torch.Tensor | None = None) -> int:
    """One D step, one G step, one EMA update. Returns the new image count (global batch added).
    ``c``: class indices of the reals for a conditional model (the fakes get the same classes)."""
    if t.cfg.lr_schedule != "constant":
        apply_schedule(t.opt_G, t.opt_D, t.cfg, cur_nimg)
    d_step(t, reals, c)
    g_step(t, reals.shape[0], c)
    cur_nimg += t.cfg.batch
    beta = ema_beta(t.cfg.batch, cur_nimg, t.cfg.ema_half_life_kimg, t.cfg.ema_rampup)
    update_ema(t.G_ema, t.G, beta)
    t.steps_in_stats += 1
    return cur_nimg


def pop_stats(t: Trainer) -> dict[str, float]:
    """Mean losses and logits since the last call (one host sync per tick, not per step)."""
    n = max(t.steps_in_stats, 1)
    keys = sorted(t.stats)
    if not keys:
        return {}
    values = torch.stack([t.stats[k] for k in keys]) / n
    if t.rt.world > 1:  # every rank's batch counts
        torch.distributed.all_reduce(values)
        values /= t.rt.world
    out = {k: round(float(v), 5) for k, v in zip(keys, values.tolist(), strict=True)}
    t.stats, t.steps_in_stats = {}, 0
    return out


# ---------------------------------------------------------------- resume state


def state_dict(t: Trainer) -> dict:
    """Tensors, numbers, strings, dicts and lists only: ``torch.load(weights_only=True)`` reads it."""
    return {
        "format": STATE_FORMAT,
        "G": t.G.state_dict(),
        "G_ema": t.G_ema.state_dict(),
        "D": t.D.state_dict(),  # includes the backbone and its random projections
        "opt_G": t.opt_G.state_dict(),
        "opt_D": t.opt_D.state_dict(),
        "scaler_G": t.scaler_G.state_dict(),
        "scaler_D": t.scaler_D.state_dict(),
    }


def load_state_dict(t: Trainer, state: dict) -> None:
    if state.get("format") != STATE_FORMAT:
        from projgan.errors import UserError

        raise UserError("the resume state is not a projgan training state", "move training-state.pt away to restart")
    try:
        t.G.load_state_dict(state["G"])
        t.G_ema.load_state_dict(state["G_ema"])
        t.D.load_state_dict(state["D"])
        load_optimizer_state(t.opt_G, state["opt_G"])
        load_optimizer_state(t.opt_D, state["opt_D"])
    except (RuntimeError, ValueError, KeyError) as e:
        from projgan.errors import UserError

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"the resume state does not match the requested model ({first})",
            "resume with the options the run was started with, or use a new --out",
        ) from None
    if state.get("scaler_G"):
        t.scaler_G.load_state_dict(state["scaler_G"])
    if state.get("scaler_D"):
        t.scaler_D.load_state_dict(state["scaler_D"])


def rng_state(device: torch.device) -> dict:
    """Every RNG a resumed run must continue from (torch, NumPy, CUDA), as tensors and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
