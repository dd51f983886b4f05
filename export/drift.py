"""Distribution drift of a reduced-precision artifact: has its *distribution* of images moved?

Per-seed PSNR/SSIM (``projgan.similarity``) say each image is close to torch fp32's; they do not
say whether small errors all push the same way (a colour cast, softer textures) so that FID of the
served model differs from the trained one's. Here both are measured where users measure them: the
Fréchet distance (FD) between feature sets of the backend's and torch fp32's images on the same
seeds ``0..n-1``.

FD's scale depends on the extractor (Inception, DINOv2, the random proxy) and on ``n``, so the
drift is divided by a noise floor: the FD between torch fp32 on seeds ``0..n-1`` and on the
disjoint seeds ``n..2n-1``, i.e. what sampling alone moves an ``n``-image FD by. A ratio of 1 means
the artifact's distribution is as far from fp32's as two draws of fp32 are from each other.

Inputs are fed as the parity certificate feeds them: a conditional model's seeds get
``classes_for_seeds`` (seed % K), and a style model runs at psi = 1 (``PSI``: the untruncated
distribution, the one FID is quoted for; the per-seed certificate covers the truncated one).

The extractor comes from ``projgan.evaluation`` (imported lazily: ``import projgan.export`` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from projgan.hardware import fp32_exact

CUDA_IMAGES = 2048  # a few thousand where the generator runs on a GPU
CPU_IMAGES = 256  # on a CPU a 256 px generator makes ~2-5 images/s: 3n images are minutes already
PSI = 1.0  # style models: the drift is measured on the untruncated distribution


def images_for(requested: int, device: str) -> int:
    """``requested`` images, or the auto default (0) for a backend running on ``device``."""
    if requested > 0:
        return int(requested)
    return CUDA_IMAGES if str(device).startswith("cuda") else CPU_IMAGES


def load_extractor(name: str, device: str):
    """The extractor (``auto``: the best one on disk, else the random proxy; never downloads)."""
    from projgan.evaluation import features as F

    return F.load_extractor(name, "", device)


def _features(backend, seeds: np.ndarray, chunk: int, ref, advance=None) -> np.ndarray:
    """Features of a backend's uint8 images, generated and extracted ``chunk`` seeds at a time."""
    from projgan.evaluation import features as F
    from projgan.generator import sample_latents, to_uint8

    out = []
    for i in range(0, len(seeds), chunk):
        part = seeds[i : i + chunk]
        psi = PSI if backend.truncation else None
        x = backend.generate_float(sample_latents(part, backend.z_dim), backend.default_classes(part), psi)
        images = to_uint8(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0))  # NaN is parity's to report
        out.append(F.features(images, ref.extractor, ref.device, batch=chunk))
        if advance:
            advance(len(images))
    return np.concatenate(out).astype(np.float64)


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    from projgan.evaluation import fid

    fd = fid.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    return max(0.0, float(fd))  # sqrtm round-off can leave identical sets a hair below zero


def _sig(x: float) -> float:
    """Six significant figures: fp16's drift is ~1e-6 of the floor, fixed decimals would read 0."""
    return float(f"{x:.6g}")


@dataclass
class Reference:
    """torch fp32 features on seeds ``0..n-1`` (``a``) and ``n..2n-1`` (``b``), and the floors per size."""

    extractor: Any
    device: str
    a: np.ndarray
    b: np.ndarray
    floors: dict[int, float] = field(default_factory=dict)

    def floor(self, n: int) -> float:
        """FD between fp32 on the first ``n`` seeds of each disjoint set: the sampling-noise floor."""
        if n not in self.floors:
            self.floors[n] = _fd(self.a[:n], self.b[:n])
        return self.floors[n]

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the extractor (the proxy's numbers mean nothing elsewhere)."""
        from projgan.evaluation import features as F

        d = F.describe(self.extractor)
        return {"extractor": d["name"], "identity": d["identity"], "feature_dim": int(self.a.shape[1])}


def reference(open_fp32, extractor: str, device: str, n: int, chunk: int, advance=None) -> Reference:
    """Run torch fp32 (``open_fp32(device)``) on ``2n`` seeds and keep their features."""
    ext = load_extractor(extractor, device)
    ref = Reference(ext, device, np.empty((0, 0)), np.empty((0, 0)))
    backend = open_fp32(device)
    try:
        with fp32_exact():  # the fp32 reference and its features: cuDNN defaults to TF32
            ref.a = _features(backend, np.arange(n), chunk, ref, advance)
            ref.b = _features(backend, np.arange(n, 2 * n), chunk, ref, advance)
    finally:
        backend.close()
    return ref


def verdict(fd: float, floor: float, n: int, max_ratio: float, extractor: str = "") -> dict[str, Any]:
    """Pass when ``fd / floor <= max_ratio``: a ratio, so the extractor's scale cancels out."""
    if floor > 0:
        ratio = fd / floor
    else:  # fp32 makes one image whatever the seed: any distance at all is drift
        ratio = 0.0 if fd == 0 else None
    passed = ratio is not None and ratio <= max_ratio
    shown = "inf" if ratio is None else f"{ratio:.3g}"
    return {
        "images": n,
        "fd": _sig(fd),
        "noise_floor": _sig(floor),
        "ratio": None if ratio is None else _sig(ratio),
        "max_ratio": max_ratio,
        "passed": bool(passed),
        "reason": f"drift FD {fd:.4g} = {shown} x the noise floor {floor:.4g} "
        f"({'<=' if passed else '>'} {max_ratio:g}; {n} images, {extractor or '?'} features)",
    }


def measure(backend, ref: Reference, n: int, max_ratio: float, chunk: int, advance=None) -> dict[str, Any]:
    """The drift entry of one backend: FD to fp32 on the same ``n`` seeds, the floor, the ratio, pass."""
    if not 2 <= n <= len(ref.a):
        raise ValueError(f"drift on {n} images, but the reference holds {len(ref.a)} per seed set")
    feats = _features(backend, np.arange(n), chunk, ref, advance)
    info = ref.describe()
    if backend.num_classes:
        info["classes"] = "seed % num_classes"
    if backend.truncation:
        info["psi"] = PSI
    return {**info, **verdict(_fd(feats, ref.a[:n]), ref.floor(n), n, max_ratio, info["extractor"])}


class Checker:
    """The drift check of one certificate (``reduced``: its reduced-precision candidates, each with a ``key``
    and a ``device``); torch fp32's features are made once, at the first of them."""

    def __init__(self, export_dir: Path, cfg, reduced: list, chunk: int, progress):
        self.export_dir, self.cfg, self.chunk, self.progress = export_dir, cfg, chunk, progress
        self.n_max = max((images_for(cfg.drift_images, c.device) for c in reduced), default=0)
        self.ref = None

    def _open_fp32(self, device: str):
        from projgan import artifacts
        from projgan.serve import backends

        G, config = artifacts.load_generator(self.export_dir / artifacts.GENERATOR_DIR)
        return backends.TorchBackend(G, config, device, "fp32")

    def _tracked(self, label: str, total: int, fn):
        task = self.progress.add_task(label, total=total)
        try:
            return fn(lambda n: self.progress.advance(task, n))
        finally:
            self.progress.remove_task(task)

    def measure(self, c, b) -> dict[str, Any]:
        import time

        from projgan.hardware import resolve_device

        t0 = time.perf_counter()
        if self.ref is None:  # where generation is fastest: thousands of images on a GPU
            device, n = resolve_device("auto"), self.n_max
            self.ref = self._tracked(
                "fp32 drift ref",
                2 * n,
                lambda adv: reference(self._open_fp32, self.cfg.drift_extractor, device, n, self.chunk, adv),
            )
        n = images_for(self.cfg.drift_images, c.device)
        entry = self._tracked(
            f"{c.key} drift",
            n,
            lambda adv: measure(b, self.ref, n, self.cfg.drift_max_ratio, self.chunk, adv),
        )
        return {**entry, "reference_device": self.ref.device, "seconds": round(time.perf_counter() - t0, 2)}


def cell(d: dict[str, Any] | None) -> str:
    """The certificate table's drift cell: ratio @ images, red when it failed."""
    if d is None:
        return "-"
    if "ratio" not in d:
        return "[red]error[/]"
    text = f"{'inf' if d['ratio'] is None else format(d['ratio'], '.2g')} @{d['images']}"
    return text if d["passed"] else f"[red]{text}[/]"


def summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's word on the drift check: which extractor, which mark, how many images per backend."""
    entries = {k: e["drift"] for k, e in results.items() if "ratio" in e.get("drift", {})}
    if not entries:
        return None
    first = next(iter(entries.values()))
    keep = ("extractor", "identity", "feature_dim", "max_ratio", "reference_device")
    return {
        **{k: first[k] for k in keep if k in first},
        "images": {k: e["images"] for k, e in entries.items()},
        "rule": "FD(backend, torch fp32) on seeds 0..n-1 / FD(torch fp32 on seeds 0..n-1, on n..2n-1) <= max_ratio",
    }
