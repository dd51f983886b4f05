"""Numbers that say whether two renderings of the same seeds are the same images.

The one home of the parity maths: export's certificate and serve's load-time self-check both call
``compare`` and ``judge``, so a served precision is held to exactly what was certified.

- ``max_abs``/``mean_abs``: on the raw float output in [-1, 1] (what an fp32 backend must match).
- ``psnr``/``ssim``: scikit-image's, on the uint8 images users receive (what reduced precision must
  preserve), per seed; the worst seed of each metric is named. PSNR depends on the image content:
  a near-constant image scores high whatever the error, so every comparison also reports the
  reference output's standard deviation.

scikit-image is imported inside the functions: the core must import with torch alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from projgan.config import ExportConfig

PSNR_CAP = 100.0  # identical images: reported as this instead of infinity (JSON has no inf)
SSIM_SIGMA = 1.5  # Wang et al. 2004: Gaussian window, sigma 1.5 (11x11 at skimage's 3.5-sigma truncation)

_DEFAULTS = ExportConfig()  # the pass marks are written once, as ExportConfig's defaults


@dataclass(frozen=True)
class Thresholds:
    """Pass marks: fp32 must match the float output; reduced precision must keep every seed's image."""

    fp32_max_abs: float = _DEFAULTS.fp32_max_abs
    min_psnr: float = _DEFAULTS.fp16_min_psnr
    min_ssim: float = _DEFAULTS.fp16_min_ssim

    @classmethod
    def of(cls, cfg: ExportConfig) -> Thresholds:
        """The marks an export was asked to certify with (``--fp16-min-psnr`` and friends)."""
        return cls(cfg.fp32_max_abs, cfg.fp16_min_psnr, cfg.fp16_min_ssim)

    def as_dict(self) -> dict[str, float]:
        return {"fp32_max_abs": self.fp32_max_abs, "min_psnr": self.min_psnr, "min_ssim": self.min_ssim}


def _check_uint8(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected two uint8 [N, H, W, C] arrays of one shape, got {a.shape} {a.dtype}, {b.shape} {b.dtype}")


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 ``[N, H, W, C]`` images (capped at ``PSNR_CAP``)."""
    from skimage.metrics import peak_signal_noise_ratio

    _check_uint8(a, b)
    with np.errstate(divide="ignore"):  # identical images: log10(inf), capped below
        out = np.array([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b, strict=True)])
    return np.minimum(out, PSNR_CAP)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of uint8 ``[N, H, W, C]`` images, mean over pixels and channels.

    Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 255, population statistics: the
    parameters of the paper, not scikit-image's uniform-window default. Images need sides >= 11.
    """
    from skimage.metrics import structural_similarity

    _check_uint8(a, b)
    kw = dict(gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False, data_range=255, channel_axis=-1)
    return np.array([structural_similarity(x, y, **kw) for x, y in zip(a, b, strict=True)], dtype=np.float64)


def _float_to_uint8(x: np.ndarray) -> np.ndarray:
    from projgan.generator import to_uint8

    return to_uint8(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0))


def compare(ref: np.ndarray, out: np.ndarray, seeds=None) -> dict[str, Any]:
    """Compare float NCHW outputs ``out`` against ``ref`` for the same seeds; JSON-ready numbers.

    ``max_abs_seed``, ``psnr_min_seed`` and ``ssim_min_seed`` name the worst seed of each metric.
    """
    ref = np.asarray(ref, dtype=np.float32)
    out = np.asarray(out, dtype=np.float32)
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape}, output {out.shape}")
    n = len(ref)
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    bad = ~np.isfinite(out).reshape(n, -1).all(axis=1)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64)).reshape(n, -1)
    diff = np.where(np.isfinite(diff), diff, 2.0)  # a NaN pixel counts as the largest possible error
    per_max = diff.max(axis=1)
    a, b = _float_to_uint8(ref), _float_to_uint8(out)
    per_psnr, per_ssim = psnr(a, b), ssim(a, b)
    from skimage.metrics import peak_signal_noise_ratio

    with np.errstate(divide="ignore"):
        total_psnr = min(PSNR_CAP, float(peak_signal_noise_ratio(a, b, data_range=255)))
    return {
        "images": n,
        "max_abs": float(per_max.max()),
        "max_abs_seed": seeds[int(per_max.argmax())],
        "mean_abs": float(diff.mean()),
        "nan_images": int(bad.sum()),
        "psnr": round(total_psnr, 3),
        "psnr_min": round(float(per_psnr.min()), 3),
        "psnr_min_seed": seeds[int(per_psnr.argmin())],
        "ssim": round(float(per_ssim.mean()), 6),
        "ssim_min": round(float(per_ssim.min()), 6),
        "ssim_min_seed": seeds[int(per_ssim.argmin())],
        "ref_std": round(float(np.nanstd(ref)), 4),
    }


def image_rule(precision: str, device: str, reference_device: str = "cpu") -> bool:
    """Whether a backend is judged on its uint8 images (PSNR/SSIM) rather than on its float output (max abs).

    fp32 on the reference's kind of device must match the float output. Reduced precision keeps images.
    So does fp32 on a GPU against a CPU reference: cuDNN and the CPU sum convolutions in other orders
    (and pick other algorithms per shape), so their fp32 outputs differ by more than the CPU's 1e-4 rule
    allows while the images stay the same; the project's CUDA test has always judged them so."""
    same_kind = str(device).startswith("cuda") == str(reference_device).startswith("cuda")
    return precision != "fp32" or not same_kind


def judge(metrics: dict[str, Any], reduced: bool, t: Thresholds | None = None) -> tuple[bool, str]:
    """Pass/fail of one comparison, with the reason in words.

    fp32 must match the float output (max abs); reduced precision must keep every seed's uint8
    image: its worst PSNR and worst SSIM are judged, not the averages, each naming its seed.
    """
    t = t or Thresholds()
    if metrics["nan_images"]:
        return False, f"{metrics['nan_images']} of {metrics['images']} images contain NaN/Inf"
    if not reduced:
        ok = metrics["max_abs"] <= t.fp32_max_abs
        where = "" if ok else f"seed {metrics['max_abs_seed']}: "
        return ok, f"{where}max abs {metrics['max_abs']:.2e} {'<=' if ok else '>'} {t.fp32_max_abs:.0e}"
    fails = []
    if metrics["psnr_min"] < t.min_psnr:
        fails.append(f"seed {metrics['psnr_min_seed']}: PSNR {metrics['psnr_min']:.1f} dB < {t.min_psnr:g} dB")
    if metrics["ssim_min"] < t.min_ssim:
        fails.append(f"seed {metrics['ssim_min_seed']}: SSIM {metrics['ssim_min']:.4f} < {t.min_ssim:g}")
    if fails:
        return False, "; ".join(fails)
    return True, f"PSNR >= {metrics['psnr_min']:.1f} dB, SSIM >= {metrics['ssim_min']:.4f}"
