"""Numbers that say whether two renderings of the same seeds are the same images.

NumPy (and scipy's Gaussian filter, imported lazily) only, so the serving backends can self-check a
reduced precision with the very metrics the export certificate records.

- ``max_abs``/``mean_abs``: on the raw float output in [-1, 1] (what an fp32 backend must match).
- ``psnr``/``ssim``: on the uint8 images users receive (what reduced precision must preserve).
  PSNR depends on the image content: a near-constant image scores high whatever the error, so
  every comparison also reports the reference output's standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FP32_MAX_ABS = 1e-4
MIN_PSNR = 40.0
MIN_SSIM = 0.99
PSNR_CAP = 100.0  # identical images: reported as this instead of infinity (JSON has no inf)


@dataclass(frozen=True)
class Thresholds:
    fp32_max_abs: float = FP32_MAX_ABS
    min_psnr: float = MIN_PSNR
    min_ssim: float = MIN_SSIM


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 ``[N, H, W, C]`` images (capped at ``PSNR_CAP``)."""
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = (d * d).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of uint8 ``[N, H, W, C]`` images.

    Gaussian window (sigma 1.5, truncated at 3.5 sigma: 11x11), K1 = 0.01, K2 = 0.03, data range
    255, population statistics, border of one window radius dropped; mean over pixels and channels.
    Matches scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, channel_axis=-1)`` to 1e-15 (checked where it is
    installed; it is not a dependency).
    """
    from scipy.ndimage import gaussian_filter

    x, y = a.astype(np.float64), b.astype(np.float64)
    truncate = 3.5
    sig = (0, sigma, sigma, 0)

    def blur(t):
        return gaussian_filter(t, sig, mode="reflect", truncate=truncate)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    r = int(truncate * sigma + 0.5)
    if s.shape[1] > 2 * r and s.shape[2] > 2 * r:
        s = s[:, r:-r, r:-r, :]
    return s.reshape(len(s), -1).mean(axis=1)


def _float_to_uint8(x: np.ndarray) -> np.ndarray:
    from projgan.generator import to_uint8

    return to_uint8(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0))


def compare(ref: np.ndarray, out: np.ndarray, seeds=None) -> dict[str, Any]:
    """Compare float NCHW outputs ``out`` against ``ref`` for the same seeds; JSON-ready numbers."""
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
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = float((d * d).mean())
    total_psnr = PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))
    worst = int(np.lexsort((-per_max, per_ssim, per_psnr))[0])
    return {
        "images": n,
        "max_abs": float(per_max.max()),
        "mean_abs": float(diff.mean()),
        "nan_images": int(bad.sum()),
        "psnr": round(float(total_psnr), 3),
        "psnr_min": round(float(per_psnr.min()), 3),
        "ssim": round(float(per_ssim.mean()), 6),
        "ssim_min": round(float(per_ssim.min()), 6),
        "worst_seed": seeds[worst],
        "ref_std": round(float(np.nanstd(ref)), 4),
    }


def judge(metrics: dict[str, Any], reduced: bool, t: Thresholds | None = None) -> tuple[bool, str]:
    """Pass/fail of one comparison, with the reason in words.

    fp32 must match the float output (max abs); reduced precision must keep every seed's uint8
    image: its worst PSNR and worst SSIM are judged, not the averages.
    """
    t = t or Thresholds()
    if metrics["nan_images"]:
        return False, f"{metrics['nan_images']} of {metrics['images']} images contain NaN/Inf"
    if not reduced:
        ok = metrics["max_abs"] <= t.fp32_max_abs
        return ok, f"max abs {metrics['max_abs']:.2e} {'<=' if ok else '>'} {t.fp32_max_abs:.0e}"
    if metrics["psnr_min"] < t.min_psnr:
        return False, f"seed {metrics['worst_seed']}: PSNR {metrics['psnr_min']:.1f} dB < {t.min_psnr:g} dB"
    if metrics["ssim_min"] < t.min_ssim:
        return False, f"seed {metrics['worst_seed']}: SSIM {metrics['ssim_min']:.4f} < {t.min_ssim:g}"
    return True, f"PSNR >= {metrics['psnr_min']:.1f} dB, SSIM >= {metrics['ssim_min']:.4f}"
