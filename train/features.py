"""The frozen feature network D looks through: a timm backbone plus random projections (CCM, CSM).

Projected GAN's discriminators never see pixels: they see four feature maps (strides 4/8/16/32) of a
pretrained classifier, mixed across channels (CCM: random 1x1 convs) and across scales (CSM:
top-down, each coarser map upsampled x2, passed through a random 3x3 conv and added to the finer
one). Everything here is frozen (no parameter needs a gradient, BatchNorm stays in eval mode even
when a parent calls ``.train()``) but differentiable with respect to the input, so G learns
through it.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from projgan.errors import UserError

STRIDES = (4, 8, 16, 32)
CCM_CHANNELS = (64, 128, 256, 512)
HF_FILES = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------- weights


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A TCP connect with a hard deadline (DNS included, which socket timeouts do not bound)."""
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
    if cfg.url:
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
        kwargs = {}
        if weights is not None:
            kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=weights))
        try:
            self.backbone = timm.create_model(
                backbone, features_only=True, out_indices=_stage_indices(backbone), **kwargs
            )
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load backbone weights {weights}: {msg}", f"pass weights for {backbone}") from None
        info = self.backbone.feature_info
        assert tuple(info.reduction()) == STRIDES, info.reduction()
        self.backbone_channels = tuple(info.channels())
        mean = torch.tensor(self.backbone.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
        std = torch.tensor(self.backbone.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
        # [-1, 1] -> backbone normalisation in one affine map: (x + 1) / 2 - mean) / std.
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1))

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # same random projections on every rank and every run
            if projection == "none":
                self.channels = self.backbone_channels
                self.ccm = None
            else:
                self.channels = CCM_CHANNELS
                self.ccm = nn.ModuleList(
                    nn.Conv2d(c, o, 1, bias=True) for c, o in zip(self.backbone_channels, CCM_CHANNELS, strict=True)
                )
            self.csm = None
            if projection == "ccm+csm":
                # csm[i] maps the (upsampled) map of scale i+1 to the channels of scale i.
                self.csm = nn.ModuleList(
                    nn.Conv2d(CCM_CHANNELS[i + 1], CCM_CHANNELS[i], 3, padding=1, bias=True) for i in range(3)
                )
        self.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, input_resolution, input_resolution)
            self.sizes = tuple(int(f.shape[-1]) for f in self(probe))

    def train(self, mode: bool = True):
        """Frozen: BatchNorm keeps its pretrained statistics whatever the parent's mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != self.input_resolution or x.shape[-2] != self.input_resolution:
            down = x.shape[-1] > self.input_resolution
            x = F.interpolate(x, size=(self.input_resolution,) * 2, mode="bilinear", align_corners=False, antialias=down)
        x = x * self.scale + self.shift
        feats = self.backbone(x)
        if self.ccm is not None:
            feats = [conv(f) for conv, f in zip(self.ccm, feats, strict=True)]
        if self.csm is not None:
            out = [feats[3]]
            for i in (2, 1, 0):
                up = F.interpolate(out[0], size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
                out.insert(0, feats[i] + self.csm[i](up))
            feats = out
        return list(feats)
