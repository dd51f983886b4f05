"""FastGAN-lite generator with skip-layer excitation (SLE), as used by Projected GAN.

Export-friendly by construction: inputs ``z`` (and ``class`` for a conditional model), no random ops
in ``forward``, BatchNorm uses running statistics in eval mode, and spectral norm (a training-time
parametrization) can be removed so the saved artifact holds plain weights.

Every generator takes ``forward(z, c=None, psi=None)``: ``c`` int64 class indices ``[B]`` for a
conditional model, ``psi`` float32 ``[B]`` truncation for a style model (``projgan/stylegan2.py``).
``build_generator`` picks the architecture from the config; ``model_inputs`` is the one place that
turns seeds' latents, classes and psi into the named inputs every backend feeds.

Sizes follow the Projected GAN "lite" FastGAN: channels per resolution are ``ngf`` times
{4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 1/2, 512: 1/4, 1024: 1/8}; SLE gates 64 by 4,
128 by 8, 256 by 16 and 512 by 32.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from projgan.config import GeneratorConfig

CHANNEL_MULT = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
SLE_SOURCES = {64: 4, 128: 8, 256: 16, 512: 32}  # output resolution -> low-resolution gate source
CLASS_EMBED = 64  # width of the class embedding joined to z (a quarter of the usual z_dim: the init layer stays small)


def channels(cfg: GeneratorConfig) -> dict[int, int]:
    return {res: max(int(mult * cfg.ngf), 4) for res, mult in CHANNEL_MULT.items()}


class UpBlock(nn.Module):
    """Nearest x2 upsample, 3x3 conv to twice the channels, BatchNorm, GLU (the "lite" block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 2, 3, 1, 1, bias=False)
        self.norm = nn.BatchNorm2d(cout * 2)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.glu(self.norm(self.conv(x)), dim=1)


class SLE(nn.Module):
    """Skip-layer excitation: a low-resolution map gates the channels of a high-resolution one."""

    def __init__(self, cin: int, cout: int, in_resolution: int):
        super().__init__()
        # A fixed pooling kernel instead of adaptive pooling keeps the exported graph static.
        self.pool = in_resolution // 4
        self.conv1 = nn.Conv2d(cin, cout, 4, 1, 0, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 1, 1, 0, bias=False)

    def forward(self, small, big):
        g = F.avg_pool2d(small, self.pool) if self.pool > 1 else small
        g = torch.sigmoid(self.conv2(F.silu(self.conv1(g))))
        return big * g


class Generator(nn.Module):
    """Maps ``z [B, z_dim]`` (and class indices ``c [B]`` when conditional) to images ``[B, 3, H, W]`` in [-1, 1].

    A conditional model joins a learned class embedding (64 wide, normalised like z) to z, so the
    first layer sees both; an unconditional one has exactly the parameters it always had.
    """

    def __init__(self, cfg: GeneratorConfig, spectral: bool = False):
        super().__init__()
        self.cfg = cfg
        ch = channels(cfg)
        cin = cfg.z_dim
        if cfg.num_classes:
            self.embed = nn.Embedding(cfg.num_classes, CLASS_EMBED)
            cin += CLASS_EMBED
        # 1x1 latent -> 4x4 map; GLU halves the channels to ch[4].
        self.init = nn.ConvTranspose2d(cin, ch[4] * 2, 4, 1, 0, bias=False)
        self.init_norm = nn.BatchNorm2d(ch[4] * 2)
        self.ups = nn.ModuleDict()
        res = 4
        while res < cfg.resolution:
            self.ups[str(res * 2)] = UpBlock(ch[res], ch[res * 2])
            res *= 2
        self.sles = nn.ModuleDict(
            {str(r): SLE(ch[src], ch[r], src) for r, src in SLE_SOURCES.items() if r <= cfg.resolution}
        )
        self.to_rgb = nn.Conv2d(ch[cfg.resolution], cfg.channels, 3, 1, 1, bias=True)
        if spectral:
            add_spectral_norm(self)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: torch.Tensor | None = None) -> torch.Tensor:
        # Project z onto the hypersphere (unit second moment), as FastGAN/Projected GAN do.
        z = normalize_2nd_moment(z)
        if self.cfg.num_classes:
            if c is None:
                raise ValueError("a class-conditional generator needs class indices c [B]")
            z = torch.cat([z, normalize_2nd_moment(self.embed(c.long()))], dim=1)
        x = F.glu(self.init_norm(self.init(z[:, :, None, None])), dim=1)
        feats = {4: x}
        res = 4
        while res < self.cfg.resolution:
            res *= 2
            x = self.ups[str(res)](x)
            if res in SLE_SOURCES:
                x = self.sles[str(res)](feats[SLE_SOURCES[res]], x)
            feats[res] = x
        return torch.tanh(self.to_rgb(x))


def normalize_2nd_moment(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def build_generator(cfg: GeneratorConfig, spectral: bool = False) -> nn.Module:
    """The generator ``cfg.arch`` names (``spectral``: FastGAN's training-time spectral norm; the style
    generator uses equalized learning rates instead and ignores it)."""
    if cfg.arch == "stylegan2":
        from projgan.stylegan2 import StyleGenerator

        return StyleGenerator(cfg)
    return Generator(cfg, spectral=spectral)


INPUT_NAMES = ("z", "class", "psi")  # the graph inputs, in this order, where the model has them


def input_names(cfg: GeneratorConfig) -> tuple[str, ...]:
    return ("z",) + (("class",) if cfg.conditional else ()) + (("psi",) if cfg.truncation else ())


def classes_for_seeds(seeds, num_classes: int) -> np.ndarray:
    """The class a seed gets when the caller names none: ``seed % num_classes`` (balanced over
    consecutive seeds, and the same in every batch)."""
    return (np.asarray([int(s) for s in seeds], dtype=np.int64) % max(num_classes, 1)).astype(np.int64)


def model_inputs(cfg: GeneratorConfig, z: np.ndarray, classes=None, psi=None) -> dict[str, np.ndarray]:
    """The named inputs of a batch: ``z`` float32 [B, z_dim]; ``class`` int64 [B] (required for a
    conditional model, refused otherwise); ``psi`` float32 [B] (style models; default 1 = no truncation).
    A scalar class or psi applies to the whole batch."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    b = len(z)
    out = {"z": z}
    if cfg.conditional:
        if classes is None:
            raise ValueError("a class-conditional model needs a class per image (see classes_for_seeds)")
        c = np.broadcast_to(np.asarray(classes, dtype=np.int64), (b,)).copy()
        if c.size and (c.min() < 0 or c.max() >= cfg.num_classes):
            raise ValueError(f"class indices must be in 0..{cfg.num_classes - 1} (got {sorted(set(c.tolist()))})")
        out["class"] = c
    elif classes is not None:
        raise ValueError("this model is unconditional: it takes no class")
    if cfg.truncation:
        p = np.broadcast_to(np.asarray(1.0 if psi is None else psi, dtype=np.float32), (b,)).copy()
        if not np.isfinite(p).all():
            raise ValueError("psi must be finite")
        out["psi"] = p
    elif psi is not None and not np.all(np.asarray(psi) == 1.0):
        raise ValueError("this model has no truncation (style models only)")
    return out


def run_torch(G: nn.Module, inputs: dict[str, np.ndarray] | dict[str, torch.Tensor], device=None) -> torch.Tensor:
    """Call any generator with ``model_inputs``' dict: the one place names map to forward's arguments."""
    def t(name):
        v = inputs.get(name)
        if v is None:
            return None
        v = torch.as_tensor(v)
        return v.to(device) if device is not None else v

    return G(t("z"), c=t("class"), psi=t("psi"))


def add_spectral_norm(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not parametrize.is_parametrized(m, "weight"):
            spectral_norm(m)
    return module


def remove_spectral_norm(module: nn.Module) -> nn.Module:
    """Fold spectral norm into plain weights (in place). Call in eval mode: in train mode reading
    the weight would run one more power iteration."""
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return module


def plain_state_dict(G: Generator) -> dict[str, torch.Tensor]:
    """Weights with spectral norm folded in: what the generator artifact stores.

    Reads each parametrized weight in eval mode (no power iteration) instead of removing the
    parametrization from a deep copy: a copy shares the generated ``Parametrized*`` classes, and
    removing it there deletes the ``weight`` property from the original module's class too.
    """
    suffix = ".parametrizations.weight.original"
    was_training = G.training
    G.eval()
    try:
        out = {}
        with torch.no_grad():
            for k, v in G.state_dict().items():
                if k.endswith(suffix):
                    prefix = k[: -len(suffix)]
                    out[prefix + ".weight"] = G.get_submodule(prefix).weight
                elif ".parametrizations.weight." not in k:  # spectral norm's u/v vectors are dropped
                    out[k] = v
    finally:
        G.train(was_training)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def sample_latents(seeds, z_dim: int) -> np.ndarray:
    """One standard-normal latent per seed from NumPy's PCG64 seeded with that seed.

    A seed gives the same latent on every backend, in every batch, on every machine.
    """
    seeds = [int(s) for s in seeds]
    out = np.empty((len(seeds), z_dim), dtype=np.float32)
    for i, s in enumerate(seeds):
        if not 0 <= s < 2**32:
            raise ValueError(f"seed {s} outside 0..2**32-1")
        out[i] = np.random.Generator(np.random.PCG64(s)).standard_normal(z_dim)
    return out


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between two latents for each t in [0, 1]; returns [len(t), z_dim]."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    cos = np.clip(np.dot(a64 / na, b64 / nb), -1.0, 1.0)
    omega = np.arccos(cos)
    t = np.asarray(t, dtype=np.float64)[:, None]
    if omega < 1e-6:
        out = (1 - t) * a64 + t * b64
    else:
        out = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    return out.astype(np.float32)


def uint8_nhwc(images: torch.Tensor) -> torch.Tensor:
    """``to_uint8`` on a tensor's own device, returning a tensor (no in-place ops: CUDA graphs capture it)."""
    x = (images.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def to_uint8(images):
    """[-1, 1] float NCHW -> uint8 NHWC RGB. The one place this conversion happens.

    Accepts a torch tensor (converted on its device by ``uint8_nhwc``, returned as a numpy array) or a
    numpy array (the same arithmetic in float32).
    """
    if isinstance(images, torch.Tensor):
        return uint8_nhwc(images).cpu().numpy()
    x = np.clip(np.asarray(images, dtype=np.float32) * 127.5 + 128.0, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
