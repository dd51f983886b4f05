"""The frozen feature network D looks through: a timm backbone plus random projections (CCM, CSM).

Projected GAN's discriminators never see pixels: they see four feature maps of a pretrained
classifier (strides 4/8/16/32), mixed across channels (CCM: a random 1x1 conv per scale, to
64/128/256/512 channels) and across scales (CSM: top-down, each map is added to the fused coarser
one, upsampled x2 bilinearly and passed through a random 1x1 conv that halves its channels, except
the finest). With CSM the discriminators see strides 2/4/8/16 with 64/64/128/256 channels, as the
paper's code builds them. Everything here is frozen (no parameter needs a gradient; BatchNorm stays
in eval mode even when a parent calls ``.train()``) but differentiable with respect to the input,
so G learns through it.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from projgan.errors import UserError

STRIDES = (4, 8, 16, 32)
CCM_CHANNELS = (64, 128, 256, 512)  # cout 64, expanded x2 per scale
CSM_CHANNELS = (64, 64, 128, 256)  # each fusion halves the channels, except the finest
HF_FILES = ("model.safetensors", "pytorch_model.bin")
# Nominal map sizes, fixed from a 256 px reference whatever the data resolution (the paper's code does
# this: it found the same number of down blocks per discriminator works best at every resolution).
REFERENCE_RESOLUTION = 256


# ---------------------------------------------------------------- weights


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A TCP connect with a hard deadline (DNS included, which socket timeouts do not bound).

    Hand-written because the library is worse here: offline, ``hf_hub_download`` retries for 23 s
    (measured, huggingface_hub 2.4) before it gives up; this says "unreachable" in 3.
    """
    ok = [False]

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return ok[0]


def resolve_backbone_weights(backbone: str, weights: str) -> str | None:
    """``none`` -> None (random init); ``PATH`` -> that file; ``pretrained`` -> a local file.

    ``pretrained`` looks in the Hugging Face and torch hub caches first and downloads only when
    the hub answers within seconds; offline it fails at once with what to download and where to
    put it (timm alone would retry for ~40 s and end in a traceback).
    """
    if weights == "none":
        return None
    if weights != "pretrained":
        p = Path(weights).expanduser()
        if not p.is_file():
            raise UserError(
                f"--backbone-weights {weights}: no such file",
                "pass a local state dict (.safetensors/.pth), 'pretrained' or 'none'",
            )
        return str(p)

    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"timm has no pretrained weights for {backbone!r}", "pass --backbone-weights PATH or none")
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for name in HF_FILES:
            hit = try_to_load_from_cache(cfg.hf_hub_id, name)
            if isinstance(hit, str):
                return hit
    if cfg.url:  # torch.hub has no cache-only lookup: its download cache is this folder
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if cached.is_file():
            return str(cached)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    where = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors" if cfg.hf_hub_id else cfg.url
    if offline or not _reachable(endpoint.split(":")[0]):
        raise UserError(
            f"pretrained {backbone} weights are not cached and {endpoint} cannot be reached",
            f"download {where} and pass --backbone-weights PATH (or --backbone-weights none: random init, "
            "much slower convergence)",
        )
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        for name in HF_FILES:
            try:
                return hf_hub_download(cfg.hf_hub_id, name)
            except Exception:  # noqa: BLE001 - try the next file name, report below
                continue
    raise UserError(f"could not download pretrained {backbone} weights", f"download {where} and pass its path")


def describe_weights(weights: str, path: str | None) -> dict:
    """What the run records about the backbone's weights: where they came from, their sha256, random or not."""
    if path is None:
        return {"weights": "random", "source": "none", "sha256": None}
    from projgan.artifacts import sha256_file

    return {"weights": "pretrained", "source": "pretrained" if weights == "pretrained" else str(Path(path).resolve()),
            "sha256": sha256_file(path)}


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, without unpickling arbitrary objects."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load backbone weights {path}: {msg}", "pass a .safetensors or .pth state dict") from None
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers around the weights
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"cannot load backbone weights {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_backbone_weights(model: nn.Module, backbone: str, path: str) -> None:
    """Load ``path`` into a timm ``features_only`` model, strictly.

    timm loads ``features_only`` models non-strictly, so a file with the wrong keys would load
    nothing and leave a random feature network: the worst silent failure a Projected GAN can have.
    Every key the feature model needs must be in the file with its shape; the file may hold more
    only where the full classifier has it (its head).
    """
    import timm

    sd = _read_state_dict(path)
    need = model.state_dict()
    known = set(timm.create_model(backbone, pretrained=False).state_dict()) | set(need)
    missing = [k for k in need if k not in sd]
    unexpected = [k for k in sd if k not in known]
    wrong = [k for k in need if k in sd and tuple(sd[k].shape) != tuple(need[k].shape)]
    if missing or unexpected or wrong:
        matched = len(need) - len(missing) - len(wrong)
        parts = [f"{len(v)} {name} (e.g. {', '.join(v[:3])})"
                 for name, v in (("missing", missing), ("unexpected", unexpected), ("with other shapes", wrong)) if v]
        raise UserError(
            f"--backbone-weights {path} does not fit {backbone}: {matched}/{len(need)} keys matched; "
            + "; ".join(parts),
            f"pass the state dict of timm's {backbone} (torch.save(timm.create_model('{backbone}', "
            "pretrained=True).state_dict(), PATH)) or --backbone-weights none",
        )
    model.load_state_dict({k: sd[k] for k in need}, strict=True)


def check_backbone_weights(backbone: str, path: str) -> None:
    """Refuse a weights file that does not fit ``backbone`` (a throwaway model; about a second)."""
    import timm

    load_backbone_weights(timm.create_model(backbone, features_only=True, out_indices=_stage_indices(backbone)),
                          backbone, path)


# ---------------------------------------------------------------- network


def _stage_indices(backbone: str) -> tuple[int, ...]:
    """Indices of the last feature stage at each stride 4/8/16/32, read from timm's feature_info."""
    import timm

    try:
        probe = timm.create_model(backbone, features_only=True, pretrained=False)
    except RuntimeError as e:  # unknown model, or no features_only support
        raise UserError(f"--backbone {backbone}: {str(e).splitlines()[0]}", "pick a timm CNN, e.g. resnet50") from None
    reductions = probe.feature_info.reduction()
    missing = [s for s in STRIDES if s not in reductions]
    if missing:
        raise UserError(
            f"--backbone {backbone} has no feature stages at strides {missing} (it has {reductions})",
            "choose a CNN with strides 4/8/16/32, e.g. tf_efficientnet_lite0 or resnet50",
        )
    return tuple(max(i for i, r in enumerate(reductions) if r == s) for s in STRIDES)


class ScaleFusion(nn.Module):
    """One CSM step: add the fused coarser map (if any), upsample x2 (bilinear, corners aligned),
    then a random 1x1 conv (halving the channels when ``halve``)."""

    def __init__(self, channels: int, halve: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // 2 if halve else channels, 1, bias=True)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        if coarser is not None:  # sizes differ only for backbone inputs that are not multiples of 32
            x = x + (coarser if coarser.shape[-2:] == x.shape[-2:] else F.interpolate(coarser, size=x.shape[-2:]))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True))


@dataclass(frozen=True)
class ScaleSpec:
    """What one discriminator sees: channels, actual map size, and nominal size (which sets its depth)."""

    channels: int
    size: int
    nominal: int


class FeatureNetwork(nn.Module):
    """Images in [-1, 1] -> four projected feature maps (finest first)."""

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        weights: str | None = None,
        projection: str = "ccm+csm",
        input_resolution: int = 224,
        seed: int = 0,
    ):
        super().__init__()
        import timm

        self.input_resolution = input_resolution
        self.projection = projection
        self.backbone = timm.create_model(backbone, features_only=True, out_indices=_stage_indices(backbone))
        if weights is not None:
            load_backbone_weights(self.backbone, backbone, weights)
        info = self.backbone.feature_info
        assert tuple(info.reduction()) == STRIDES, info.reduction()
        self.backbone_channels = tuple(info.channels())
        mean = torch.tensor(self.backbone.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
        std = torch.tensor(self.backbone.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
        # [-1, 1] -> backbone normalisation in one affine map: ((x + 1) / 2 - mean) / std.
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1))

        self.ccm = self.csm = None
        channels, strides = self.backbone_channels, STRIDES
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # same random projections on every rank and every run
            if projection != "none":
                self.ccm = nn.ModuleList(nn.Conv2d(c, o, 1, bias=True) for c, o in zip(channels, CCM_CHANNELS, strict=True))
                channels = CCM_CHANNELS
            if projection == "ccm+csm":
                # csm[i] fuses scale i (and everything coarser); built coarsest first like the paper's code.
                fusions = [ScaleFusion(CCM_CHANNELS[i], halve=i > 0) for i in (3, 2, 1, 0)]
                self.csm = nn.ModuleList(reversed(fusions))
                channels, strides = CSM_CHANNELS, tuple(s // 2 for s in STRIDES)
        self.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, input_resolution, input_resolution)
            sizes = [int(f.shape[-1]) for f in self(probe)]
        self.scales = tuple(ScaleSpec(c, s, REFERENCE_RESOLUTION // st) for c, s, st in zip(channels, sizes, strides, strict=True))
        self.channels = tuple(channels)
        self.sizes = tuple(sizes)

    def train(self, mode: bool = True):
        """Frozen: BatchNorm keeps its pretrained statistics whatever the parent's mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != self.input_resolution or x.shape[-2] != self.input_resolution:
            down = x.shape[-1] > self.input_resolution
            # antialiased resizing has no bf16 kernel on the CPU: resize in fp32
            x = F.interpolate(x.float() if down else x, size=(self.input_resolution,) * 2, mode="bilinear",
                              align_corners=False, antialias=down)
        x = x * self.scale + self.shift
        feats = self.backbone(x)
        if self.ccm is not None:
            feats = [conv(f) for conv, f in zip(self.ccm, feats, strict=True)]
        if self.csm is not None:
            fused = [None] * 4
            coarser = None
            for i in (3, 2, 1, 0):
                coarser = fused[i] = self.csm[i](feats[i], coarser)
            feats = fused
        return list(feats)
