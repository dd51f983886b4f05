"""Feature extractors as one concept: clean-fid's Inception, DINOv2 ViT-B/14 (timm), the offline proxy.

Every extractor is callable on float 0..255 ``[B, 3, H, W]`` tensors and returns ``[B, F]``; it has a
``name``, an ``identity`` (stable across processes: half of the reference-statistics cache key), a
``preprocessing`` sentence (recorded in every result row) and a ``prepare(uint8 NHWC) -> tensor`` that
resizes on the host the way its metric's literature does. ``features()`` turns images into ``[N, F]``
arrays; distances live in ``evaluation/fid.py``.

Weights are never fetched silently: Inception from ``--inception-weights``, clean-fid's cache or a quick
download attempt; DINOv2 from ``--dinov2-weights`` or the Hugging Face cache only, found by
``evaluation/extractor_weights.py`` (torch-free, so the CLI refuses a missing file before loading
anything; offline that is a ``UserError`` at once, not timm's minute of hub retries). ``load_extractor("auto")`` takes the
best one found locally and falls back to the proxy, saying so. timm and clean-fid are imported lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from projgan.artifacts import sha256_file
from projgan.config import EXTRACTORS
from projgan.errors import UserError
from projgan.evaluation.extractor_weights import (  # noqa: F401 (re-exported: one import for callers)
    DINOV2_MODEL,
    DINOV2_REPO,
    dinov2_hint,
    find_dinov2_weights,
    require_dinov2,
)
from projgan.hardware import resolve_device

INCEPTION_FILE = "inception-2015-12-05.pt"
CLEANFID_CACHE = Path("./" if os.name == "nt" else "/tmp")  # where clean-fid's feature_extractor keeps it
DINOV2_SIZE = 224  # FD_DINOv2 (Stein et al. 2023, dgm-eval) feeds DINOv2 224 px images, not its 518 px default
CLEAN_TAG = "clean-299"  # the input every clean-fid-style extractor sees (part of the cache key)
DEFAULT_PREPROCESSING = ("clean-fid 'clean' resize to 299x299 (PIL bicubic on float pixels, no quantisation), "
                         "pixels 0..255 handed to the extractor")
Extractor = Callable[[torch.Tensor], torch.Tensor]  # float 0..255 [B, 3, H, W] -> [B, F]
Progress = Callable[[str, int, int], None]  # (stage, images just done, total)


# ---------------------------------------------------------------- host-side resizing


def _pil_resize_batch(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 NHWC -> float 0..255 [B, 3, size, size] with clean-fid's PIL bicubic resizer on float
    channels (no quantisation): clean-fid's "clean" mode, at any output size."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (size, size))
    out = np.stack([resize(np.asarray(im)) for im in images]).astype(np.float32)  # [B, size, size, 3]
    return torch.from_numpy(out.transpose(0, 3, 1, 2).copy())


def clean_resize_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float 0..255 [B, 3, 299, 299], as clean-fid feeds its extractors."""
    return _pil_resize_batch(images, 299)


# ---------------------------------------------------------------- Inception


def _inception_url() -> str:
    from cleanfid.downloads_helper import inception_url

    return inception_url


def _missing_inception(detail: str) -> UserError:
    cache = CLEANFID_CACHE / INCEPTION_FILE
    return UserError(
        f"clean-fid's Inception weights are not available ({detail})",
        f"download {_inception_url()} and pass --inception-weights PATH, or put it at {cache} "
        "(clean-fid's cache); or choose --extractor dinov2|proxy|auto (pipeline train: --metrics none)",
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _fetch_inception() -> Path:
    """clean-fid's own download into its cache, but failing within seconds when offline
    (its ``urlopen`` has no timeout) and never leaving a truncated file behind."""
    from cleanfid.downloads_helper import check_download_inception

    dest = CLEANFID_CACHE / INCEPTION_FILE
    print(f"downloading clean-fid's Inception weights (~95 MB) to {dest} ...", file=sys.stderr, flush=True)
    try:
        with _socket_timeout(15.0):
            check_download_inception(fpath=str(CLEANFID_CACHE))
    except Exception as e:  # URLError, timeouts, HTTP errors, a full disk
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise _missing_inception(f"offline? download failed: {type(e).__name__}: {reason}") from None
    return dest


class InceptionExtractor:
    """clean-fid's TorchScript Inception-v3 (pool3, 2048 features), "clean" mode (resize outside).

    The file is NVIDIA's TorchScript archive, loaded with ``torch.jit.load`` as clean-fid does:
    this model exists in no weights-only format, so load only the file from the official URL.
    """

    name = "inception"
    feature_dim = 2048
    cache_tag = CLEAN_TAG
    preprocessing = ("clean-fid 'clean' mode: PIL bicubic resize to 299x299 on float pixels (no quantisation, "
                     "no crop), Inception's own scaling (x - 128) / 128; pool3 features (2048)")

    def __init__(self, path: Path, device: str = "cpu"):
        import tempfile

        from cleanfid.inception_torchscript import InceptionV3W

        path = Path(path)
        try:
            with tempfile.TemporaryDirectory(prefix="projgan-inception-") as tmp, warnings.catch_warnings():
                folder = path.parent
                if path.name != INCEPTION_FILE:  # InceptionV3W takes a folder holding that exact file name
                    folder = Path(tmp)
                    (folder / INCEPTION_FILE).symlink_to(path.resolve())
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ calls torch.jit.load deprecated
                self.model = InceptionV3W(str(folder), download=False, resize_inside=False).to(device).eval()
        except Exception as e:
            raise UserError(
                f"{path} is not clean-fid's Inception TorchScript file ({type(e).__name__})",
                f"download it again from {_inception_url()}",
            ) from None
        self.device = device
        self.identity = f"clean-fid:{INCEPTION_FILE}:{sha256_file(path)[:16]}"

    prepare = staticmethod(clean_resize_batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x.to(self.device))


def _load_inception(weights: str, device: str) -> InceptionExtractor:
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"--inception-weights {weights}: no such file",
                            f"download {_inception_url()} and pass its path")
        return InceptionExtractor(path, device)
    cached = CLEANFID_CACHE / INCEPTION_FILE
    return InceptionExtractor(cached if cached.is_file() else _fetch_inception(), device)


# ---------------------------------------------------------------- DINOv2


class DINOv2Extractor:
    """DINOv2 ViT-B/14 through timm: the CLS token after the final norm (768 features), as FD_DINOv2 uses."""

    name = "dinov2"
    feature_dim = 768
    cache_tag = f"pil-bicubic-{DINOV2_SIZE}-imagenet"
    preprocessing = (f"PIL bicubic resize to {DINOV2_SIZE}x{DINOV2_SIZE} on float pixels (clean-fid's resizer, "
                     "no crop), x / 255 normalised with ImageNet mean/std; CLS token after the final norm (768), "
                     f"position embeddings resampled from 518 to {DINOV2_SIZE} px by timm")

    def __init__(self, path: Path, device: str = "cpu"):
        import timm

        try:
            model = timm.create_model(DINOV2_MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                      num_classes=0, img_size=DINOV2_SIZE)
        except Exception as e:  # wrong keys or shapes, not a state dict, a truncated file
            raise UserError(f"{path} is not a DINOv2 ViT-B/14 state dict for timm's {DINOV2_MODEL} "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                            dinov2_hint()) from None
        self.model = model.to(device).eval().requires_grad_(False)
        cfg = model.pretrained_cfg
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1) * 255
        self.device = device
        self.identity = f"timm:{DINOV2_MODEL}:{DINOV2_SIZE}:{sha256_file(path)[:16]}"

    @staticmethod
    def prepare(images: np.ndarray) -> torch.Tensor:
        return _pil_resize_batch(images, DINOV2_SIZE)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = x.to(self.device, torch.float32)
            if x.shape[-2:] != (DINOV2_SIZE, DINOV2_SIZE):  # tensors not made by prepare()
                x = torch.nn.functional.interpolate(x, size=(DINOV2_SIZE, DINOV2_SIZE), mode="bicubic",
                                                    antialias=True, align_corners=False)
            return self.model((x - self.mean) / self.std)


def _load_dinov2(weights: str, device: str) -> DINOv2Extractor:
    return DINOv2Extractor(require_dinov2(weights), device)


# ---------------------------------------------------------------- offline proxy


class ProxyExtractor:
    """A fixed, seeded random conv net: the offline stand-in when no pretrained extractor is available.

    Random features still separate distributions (the curve falls as samples improve), but the
    numbers are not comparable with published FIDs; callers say so when they use it.
    """

    name = "proxy"
    feature_dim = 512
    cache_tag = CLEAN_TAG
    identity = "quickstart-random-proxy-v1"  # unchanged since the convergence benchmark: cached references stay valid
    preprocessing = ("clean-fid 'clean' resize to 299x299, then bilinear antialiased resize to 64x64, x / 127.5 - 1; "
                     "3 random strided convs (seed 1234), 2x2 average pool (512 features)")

    def __init__(self, device: str = "cpu"):
        from torch import nn

        g = torch.Generator().manual_seed(1234)
        net = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(p[0].numel(), 1)) ** 0.5)
        self.net = net.eval().requires_grad_(False).to(device)
        self.device = device

    prepare = staticmethod(clean_resize_batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = x.to(self.device, torch.float32) / 127.5 - 1
            return self.net(torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True))


def proxy_extractor(device: str = "cpu") -> ProxyExtractor:
    return ProxyExtractor(resolve_device(device))


# ---------------------------------------------------------------- choosing one


def _looks_like_torchscript(path: Path) -> bool:
    """TorchScript archives (Inception) hold a ``code/`` folder; torch.save and safetensors files do not."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _auto(weights: str, device: str):
    """DINOv2, else Inception, from local files only; else the proxy. Never fails; says what it chose."""
    try:
        if weights:
            path = Path(weights).expanduser()
            return _load_inception(weights, device) if _looks_like_torchscript(path) else _load_dinov2(weights, device)
        if find_dinov2_weights() is not None:
            return _load_dinov2("", device)
        if (CLEANFID_CACHE / INCEPTION_FILE).is_file():
            return _load_inception("", device)
        why = (f"neither DINOv2 ({DINOV2_REPO} in the Hugging Face cache) nor clean-fid's Inception "
               f"({CLEANFID_CACHE / INCEPTION_FILE}) is on this machine")
    except UserError as e:
        why = str(e)
    ext = proxy_extractor(device)
    ext.note = (f"--extractor auto: {why}; using the offline random-feature proxy (numbers not comparable "
                "with published FIDs)")
    print(f"note: {ext.note}", file=sys.stderr, flush=True)
    return ext


def load_extractor(name: str = "inception", weights: str = "", device: str = "cpu"):
    """An extractor by name: ``inception``, ``dinov2``, ``proxy`` or ``auto`` (the best found locally:
    DINOv2, then Inception, else the proxy; it never fails). ``weights``: a local weights file."""
    device = resolve_device(device)
    name = name.strip().lower()
    if name == "auto":
        return _auto(weights, device)
    if name not in EXTRACTORS:
        raise UserError(f"unknown extractor {name!r}", f"choose one of {', '.join(EXTRACTORS)} or auto")
    if name == "inception":
        return _load_inception(weights, device)
    if name == "dinov2":
        return _load_dinov2(weights, device)
    if weights:
        raise UserError("the proxy extractor has no weights file", "drop the weights option")
    return proxy_extractor(device)


# ---------------------------------------------------------------- any extractor


def extractor_identity(extractor) -> str:
    """A stable name for an extractor, part of the reference-statistics cache key."""
    ident = getattr(extractor, "identity", None)
    if ident:
        return str(ident)
    if isinstance(extractor, torch.nn.Module):
        h = hashlib.sha256(type(extractor).__qualname__.encode())
        for k, v in extractor.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return f"module:{type(extractor).__qualname__}:{h.hexdigest()[:16]}"
    return f"callable:{getattr(extractor, '__module__', '')}.{getattr(extractor, '__qualname__', repr(extractor))}"


def describe(extractor) -> dict[str, str]:
    """name, identity and preprocessing of any extractor (an injected one gets clean-fid's convention)."""
    return {"name": str(getattr(extractor, "name", None) or "custom"), "identity": extractor_identity(extractor),
            "preprocessing": str(getattr(extractor, "preprocessing", None) or DEFAULT_PREPROCESSING)}


def cache_tag(extractor) -> str:
    return str(getattr(extractor, "cache_tag", None) or CLEAN_TAG)


def features(images_uint8_nhwc: np.ndarray, extractor, device: str = "cpu", batch: int = 64,
             progress: Progress | None = None, stage: str = "") -> np.ndarray:
    """Features ``[N, F]`` (float64) of uint8 NHWC images, ``batch`` at a time, each image prepared the
    extractor's way (an injected callable gets clean-fid's 299 px "clean" resize)."""
    device = resolve_device(device)
    prepare = getattr(extractor, "prepare", clean_resize_batch)
    images = images_uint8_nhwc
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        with torch.no_grad():
            f = extractor(prepare(chunk).to(getattr(extractor, "device", device)))
        out.append(f.detach().float().cpu().numpy().reshape(len(chunk), -1))
        if progress:
            progress(stage or "features", len(chunk), len(images))
    if not out:
        return np.zeros((0, 0), np.float64)
    return np.concatenate(out).astype(np.float64)
