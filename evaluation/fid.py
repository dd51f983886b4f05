"""FID and KID with clean-fid's "clean" mode, for any callable that produces uint8 images.

``MetricTracker(metrics, reals, cache_dir, num_images, extractor)`` holds a dataset's reference
statistics (computed once, cached on disk keyed by a hash of the images and the extractor) and,
called with ``generate(seeds) -> uint8 NHWC``, returns ``{"fid": ..., "kid": ...}`` for seeds
``0..num_images-1``: fixed seeds, so successive records of one run differ by the model, not the draw.

Images are resized exactly as clean-fid does (its own PIL bicubic float resizer to 299 px) and
scored with clean-fid's ``frechet_distance`` and ``kernel_distance``. What is written here is only
what clean-fid does not offer: its feature helpers read folders or draw ``torch.randn`` latents,
while we score a seed-addressed callable and a uint8 array already in memory, and cache the
reference statistics per dataset and extractor.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from projgan.artifacts import sha256_file
from projgan.errors import UserError
from projgan.hardware import resolve_device

INCEPTION_FILE = "inception-2015-12-05.pt"
CLEANFID_CACHE = Path("./" if os.name == "nt" else "/tmp")  # where clean-fid's feature_extractor keeps it
REF_PREFIX = "fid-ref"
Extractor = Callable[[torch.Tensor], torch.Tensor]  # float 0..255 [B, 3, H, W] -> [B, F]
Progress = Callable[[str, int, int], None]  # (stage, images just done, total)


def _inception_url() -> str:
    from cleanfid.downloads_helper import inception_url

    return inception_url


def _missing_weights(detail: str) -> UserError:
    cache = CLEANFID_CACHE / INCEPTION_FILE
    return UserError(
        f"clean-fid's Inception weights are not available ({detail})",
        f"download {_inception_url()} and pass --inception-weights PATH, or put it at {cache} "
        "(clean-fid's cache); pipeline train also accepts --metrics none",
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
        raise _missing_weights(f"offline? download failed: {type(e).__name__}: {reason}") from None
    return dest


class InceptionExtractor:
    """clean-fid's TorchScript Inception-v3 (pool3, 2048 features), "clean" mode (resize outside).

    The file is NVIDIA's TorchScript archive, loaded with ``torch.jit.load`` as clean-fid does:
    this model exists in no weights-only format, so load only the file from the official URL.
    """

    feature_dim = 2048

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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x.to(self.device))


def load_extractor(inception_weights: str = "", device: str = "cpu") -> InceptionExtractor:
    """clean-fid's Inception: from ``inception_weights`` (a local file), clean-fid's cache, or a
    quick download attempt; otherwise a ``UserError`` that says what to download and where."""
    device = resolve_device(device)
    if inception_weights:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise UserError(
                f"--inception-weights {inception_weights}: no such file",
                f"download {_inception_url()} and pass its path",
            )
        return InceptionExtractor(path, device)
    cached = CLEANFID_CACHE / INCEPTION_FILE
    path = cached if cached.is_file() else _fetch_inception()
    return InceptionExtractor(path, device)


def proxy_extractor():
    """A fixed, seeded random conv net: the offline stand-in for Inception when its weights are absent.

    Random features still separate distributions (the curve falls as samples improve), but the
    numbers are not comparable with published FIDs; callers say so when they use it.
    """
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
    net.eval().requires_grad_(False)

    def extract(x):  # float 0..255 [B,3,H,W] -> [B,512]
        with torch.no_grad():
            x = torch.nn.functional.interpolate(x.float() / 127.5 - 1, size=(64, 64), mode="bilinear", antialias=True)
            return net(x)

    extract.identity = "quickstart-random-proxy-v1"  # stable key for the reference-statistics cache
    return extract


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


# ---------------------------------------------------------------- distances


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's Fréchet distance, falling back to ``frechet_distance_eig`` where its sqrtm gives
    up (a large imaginary part: fewer samples than feature dimensions make both covariances
    singular, e.g. a quick FID record of a few hundred images against 2048 Inception features)."""
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    try:
        return float(cleanfid_frechet(mu1, sigma1, mu2, sigma2))
    except ValueError:
        return frechet_distance_eig(mu1, sigma1, mu2, sigma2)


def frechet_distance_eig(mu1, sigma1, mu2, sigma2) -> float:
    """Tr sqrt(S1 S2) as the sum of square roots of the eigenvalues of S1 S2, which are real and
    non-negative for positive semi-definite S1, S2: stable where sqrtm of a singular product is not."""
    ev = np.linalg.eigvals(np.asarray(sigma1) @ np.asarray(sigma2))
    diff = np.asarray(mu1) - np.asarray(mu2)
    tr = float(np.sqrt(np.clip(ev.real, 0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr)


def kernel_distance(feats_gen: np.ndarray, feats_real: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID (cubic polynomial kernel, 100 subsets of at most 1000). It draws subsets
    from NumPy's global RNG; seed it here and restore it so records are reproducible and the
    caller's RNG stream is untouched."""
    from cleanfid.fid import kernel_distance as cleanfid_kid

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(cleanfid_kid(feats_gen, feats_real))
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------------- features


def clean_resize_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float 0..255 [B, 3, 299, 299] with clean-fid's "clean" resizer (PIL bicubic
    on float channels, no quantisation), as clean-fid feeds its extractors."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    out = np.stack([resize(np.asarray(im)) for im in images])  # [B, 299, 299, 3] float32
    return torch.from_numpy(out.transpose(0, 3, 1, 2).copy())


def features(images: np.ndarray, extractor: Extractor, device: str = "cpu", batch: int = 64,
             progress: Progress | None = None, stage: str = "features") -> np.ndarray:
    """Features ``[N, F]`` (float32) of uint8 NHWC images, ``batch`` at a time."""
    from cleanfid.fid import get_batch_features

    device = resolve_device(device)
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        out.append(np.asarray(get_batch_features(clean_resize_batch(chunk), extractor, device), dtype=np.float32))
        if progress:
            progress(stage, len(chunk), len(images))
    return np.concatenate(out).reshape(len(images), -1)


def _check_images(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what} must be uint8 [N, H, W, 3], got {x.dtype} {list(x.shape)}")
    return x


def data_hash(images: np.ndarray) -> str:
    """sha256 of the images' shape and bytes: the dataset half of the cache key."""
    images = np.ascontiguousarray(images)
    h = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    flat = images.reshape(-1)
    step = 64 << 20
    for i in range(0, flat.size, step):
        h.update(memoryview(flat[i : i + step]))
    return h.hexdigest()


class MetricTracker:
    """FID/KID of a seed-addressed generator against fixed reals, with cached reference statistics.

    ``reals``: uint8 NHWC (all of them are used for the reference); ``num_images``: generated
    images per record (seeds 0..num_images-1); ``cache_dir``: where ``fid-ref-<key>.npz`` lives.
    """

    def __init__(self, metrics: tuple[str, ...], reals: np.ndarray, cache_dir: str | Path, num_images: int,
                 extractor: Extractor | None = None, device: str = "cpu", batch: int = 64):
        bad = [m for m in metrics if m not in ("fid", "kid")]
        if bad or not metrics:
            raise UserError(f"unknown metric {bad[0]!r}" if bad else "no metric requested", "use fid, kid or fid,kid")
        if num_images < 2:
            raise UserError(f"FID needs at least 2 generated images (got {num_images})")
        self.metrics = tuple(metrics)
        self.reals = _check_images(reals, "reals")
        if len(self.reals) < 2:
            raise UserError(f"FID needs at least 2 reference images (got {len(self.reals)})")
        self.cache_dir = Path(cache_dir)
        self.num_images = int(num_images)
        self.device = resolve_device(device)
        self.extractor = extractor if extractor is not None else load_extractor("", self.device)
        self.identity = extractor_identity(self.extractor)
        self.batch = int(batch)
        self._ref: dict[str, np.ndarray] | None = None
        self._ref_path: Path | None = None
        self.cache_hit: bool | None = None  # set once the reference is resolved

    @property
    def ref_path(self) -> Path:
        if self._ref_path is None:
            key = hashlib.sha256(f"{data_hash(self.reals)}|{self.identity}|clean-299".encode()).hexdigest()
            self._ref_path = self.cache_dir / f"{REF_PREFIX}-{key[:20]}.npz"
        return self._ref_path

    def reference(self, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """mu, sigma and features of the reals: from the cache, or computed once and cached."""
        if self._ref is not None:
            return self._ref
        path = self.ref_path
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    self._ref = {k: z[k] for k in ("mu", "sigma", "feats")}
                self.cache_hit = True
                return self._ref
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file: recompute and overwrite it
        feats = features(self.reals, self.extractor, self.device, self.batch, progress, "reference features")
        self._ref = {"mu": feats.mean(0, dtype=np.float64), "sigma": np.cov(feats, rowvar=False), "feats": feats}
        self.cache_hit = False
        from projgan.artifacts import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **self._ref, identity=np.array(self.identity))
        atomic_write_bytes(path, buf.getvalue())
        return self._ref

    def __call__(self, generate: Callable[[np.ndarray], np.ndarray], progress: Progress | None = None) -> dict:
        ref = self.reference(progress)
        feats = []
        seeds = np.arange(self.num_images, dtype=np.int64)
        for i in range(0, self.num_images, self.batch):
            chunk = seeds[i : i + self.batch]
            images = _check_images(generate(chunk), "generate(seeds)")
            if len(images) != len(chunk):
                raise ValueError(f"generate returned {len(images)} images for {len(chunk)} seeds")
            feats.append(features(images, self.extractor, self.device, self.batch))
            if progress:
                progress("generate + features", len(chunk), self.num_images)
        gen = np.concatenate(feats)
        out = {}
        if "fid" in self.metrics:
            mu, sigma = gen.mean(0, dtype=np.float64), np.cov(gen, rowvar=False)
            out["fid"] = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
        if "kid" in self.metrics:
            out["kid"] = kernel_distance(gen, ref["feats"])
        return out
