"""The metrics behind the parity certificate and the serving self-check (projgan.similarity)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projgan import similarity
from projgan.config import ExportConfig


def images(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    # smooth random images: SSIM is meaningful on structure, not on white noise
    base = rng.uniform(0, 255, (n, size // 4, size // 4, 3))
    return np.clip(np.repeat(np.repeat(base, 4, axis=1), 4, axis=2), 0, 255).astype(np.uint8)


def test_psnr_known_values():
    a = images()
    assert np.all(similarity.psnr(a, a) == similarity.PSNR_CAP)
    b = a.astype(np.int16)
    b = np.where(b < 255, b + 1, b - 1).astype(np.uint8)  # every pixel off by exactly one level
    np.testing.assert_allclose(similarity.psnr(a, b), 10 * np.log10(255**2), atol=1e-9)  # 48.13 dB


def test_ssim_is_one_for_identical_and_drops_with_noise():
    a = images()
    np.testing.assert_allclose(similarity.ssim(a, a), 1.0, atol=1e-12)
    rng = np.random.default_rng(1)
    light = np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    s_light, s_heavy = similarity.ssim(a, light), similarity.ssim(a, heavy)
    assert np.all(s_light > 0.97) and np.all(s_heavy < 0.85)
    assert np.all(s_heavy < s_light)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.5, 30))
def test_ssim_symmetric_and_bounded(seed, sigma):
    a = images(2, 32, seed)
    rng = np.random.default_rng(seed)
    b = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)
    s1, s2 = similarity.ssim(a, b), similarity.ssim(b, a)
    np.testing.assert_allclose(s1, s2, atol=1e-12)
    assert np.all(s1 <= 1.0 + 1e-12) and np.all(s1 > -1.0)


def test_compare_names_the_worst_seed_of_each_metric_and_counts_nan():
    rng = np.random.default_rng(0)
    base = rng.uniform(-0.8, 0.8, (4, 3, 8, 8))
    ref = np.repeat(np.repeat(base, 4, axis=2), 4, axis=3).astype(np.float32)  # smooth: SSIM sees structure
    out = ref.copy()
    out[1] += 0.12  # a brightness shift: the worst PSNR, structure kept
    out[2] += rng.normal(0, 0.04, ref[2].shape).astype(np.float32)  # noise: the worst SSIM
    out[3, 0, 5, 5] = np.nan  # one NaN pixel: the worst max abs
    m = similarity.compare(ref, out, seeds=[10, 11, 12, 13])
    assert m["nan_images"] == 1
    assert m["max_abs"] >= 1.0 and m["max_abs_seed"] == 13  # a NaN pixel counts as the largest possible error
    assert m["psnr_min_seed"] == 11 and m["ssim_min_seed"] == 12
    assert 0.4 < m["ref_std"] < 0.6
    ok, why = similarity.judge(m, reduced=True)
    assert not ok and "NaN" in why
    m["nan_images"] = 0  # judged on its numbers alone, each failure names its own seed
    ok, why = similarity.judge(m, reduced=True, t=similarity.Thresholds(min_psnr=30, min_ssim=0.995))
    assert not ok and "seed 11: PSNR" in why and "seed 12: SSIM" in why


def test_thresholds_are_the_export_configs():
    d = ExportConfig()
    assert similarity.Thresholds() == similarity.Thresholds(d.fp32_max_abs, d.fp16_min_psnr, d.fp16_min_ssim)
    cfg = ExportConfig(fp32_max_abs=1e-3, fp16_min_psnr=30.0, fp16_min_ssim=0.9)
    assert similarity.Thresholds.of(cfg).as_dict() == {"fp32_max_abs": 1e-3, "min_psnr": 30.0, "min_ssim": 0.9}


def test_judge_thresholds():
    ref = np.zeros((2, 3, 32, 32), np.float32)
    ref[:, :, :16] = 0.5
    m = similarity.compare(ref, ref + 5e-5)
    assert similarity.judge(m, reduced=False)[0]
    m = similarity.compare(ref, ref + 5e-4)
    ok, why = similarity.judge(m, reduced=False)
    assert not ok and "max abs" in why
    assert similarity.judge(m, reduced=True)[0]  # well within uint8 rounding
    bad = ref.copy()
    bad[1] += 0.1  # ~13 uint8 levels on one seed: PSNR ~ 26 dB
    m = similarity.compare(ref, bad, seeds=[7, 8])
    ok, why = similarity.judge(m, reduced=True)
    assert not ok and "seed 8" in why and "PSNR" in why
    strict = similarity.Thresholds(min_psnr=10, min_ssim=0.9999)
    ok, why = similarity.judge(m, reduced=True, t=strict)
    assert not ok and "SSIM" in why


def test_compare_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        similarity.compare(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 16, 16)))
    with pytest.raises(ValueError, match="uint8"):
        similarity.psnr(images().astype(np.float32), images().astype(np.float32))
