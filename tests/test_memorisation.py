"""The memorisation check: copies are flagged, fresh draws are not, and the pictures show the right pairs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from projgan.evaluation.memorisation import (
    HIST_PNG,
    PAIRS_PNG,
    QUANTILE,
    memorisation,
    plot_memorisation,
)


def _gauss(n: int, f: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, f))


def test_noised_copies_of_training_images_are_flagged():
    train = _gauss(200, 16, 0)
    rng = np.random.default_rng(1)
    source = rng.choice(200, size=100, replace=True)
    samples = train[source] + rng.normal(scale=1e-3, size=(100, 16))
    r = memorisation(train, samples, k=3)
    assert r["fraction_closer"] > 0.99
    assert r["memorised"] is True
    assert r["median_ratio"] < 0.01
    np.testing.assert_array_equal(r["sample_nn_index"][:, 0], source)
    assert np.all(np.diff(r["sample_nn_dist"], axis=1) >= 0)  # ascending per row


def test_fresh_draws_from_the_same_distribution_are_not_flagged():
    train, samples = _gauss(300, 8, 2), _gauss(2000, 8, 3)
    r = memorisation(train, samples)
    assert r["expected_fraction"] == QUANTILE == 0.05
    assert abs(r["fraction_closer"] - r["expected_fraction"]) < 0.04
    assert r["memorised"] is False
    assert 0.8 < r["median_ratio"] < 1.2


def test_a_generator_copying_a_third_of_the_time_is_flagged():
    train, fresh = _gauss(300, 8, 4), _gauss(200, 8, 5)
    fresh[:70] = train[:70] + 1e-4
    r = memorisation(train, fresh)
    assert 0.3 < r["fraction_closer"] < 0.45
    assert r["memorised"] is True


@pytest.mark.parametrize(("copies", "flagged"), [(1, False), (2, True)])
def test_flag_rule_needs_the_margin_not_just_twice_expected(copies, flagged):
    train = _gauss(300, 8, 19)
    samples = train[:8] + 100.0  # far from everything: never closer
    samples[:copies] = train[:copies]
    r = memorisation(train, samples)
    assert r["fraction_closer"] == copies / 8  # 0.125 is > 2 x 0.05 but within 0.05 + 0.1; 0.25 is past both
    assert r["memorised"] is flagged


def test_hand_made_neighbours_distances_and_threshold():
    train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, 12.0]])
    samples = np.array([[9.0, 1.0], [1.0, 0.5], [0.0, 7.0]])
    r = memorisation(train, samples, k=2)
    np.testing.assert_array_equal(r["sample_nn_index"], [[1, 0], [0, 1], [2, 3]])
    np.testing.assert_allclose(r["sample_nn_dist"], [[np.sqrt(2), np.sqrt(82)], [np.sqrt(1.25), np.sqrt(81.25)],
                                                     [3.0, 5.0]])
    np.testing.assert_allclose(r["train_loo_dist"], [10.0, 10.0, 2.0, 2.0])
    assert r["threshold"] == pytest.approx(2.0)
    assert r["fraction_closer"] == pytest.approx(2 / 3)  # sqrt(2) and sqrt(1.25) are below 2, 3 is not
    assert r["median_ratio"] == pytest.approx(np.sqrt(2) / 6.0)
    assert r["sample_nn_index"].dtype == np.int64 and r["sample_nn_dist"].shape == (3, 2)
    scalars = {key: v for key, v in r.items() if not isinstance(v, np.ndarray)}
    assert json.loads(json.dumps(scalars)) == scalars  # the numbers are plain JSON types
    assert memorisation(train, samples)["sample_nn_index"].shape == (3, 1)


def test_duplicated_training_set_gives_zero_loo_and_no_ratio():
    train = np.repeat(_gauss(5, 4, 6), 2, axis=0)
    r = memorisation(train, train[:3])
    np.testing.assert_array_equal(r["train_loo_dist"], 0.0)
    assert r["threshold"] == 0.0 and r["fraction_closer"] == 0.0 and r["median_ratio"] is None


@pytest.mark.parametrize(
    ("train", "samples", "k", "match"),
    [
        (np.zeros((1, 4)), np.zeros((3, 4)), 1, "at least 2 training"),
        (np.zeros((5, 4)), np.zeros((3, 5)), 1, "feature sizes differ"),
        (np.zeros(5), np.zeros((3, 5)), 1, "2-D"),
        (np.zeros((5, 4)), np.zeros((0, 4)), 1, "non-empty"),
        (np.zeros((5, 4)), np.full((3, 4), np.nan), 1, "NaN"),
        (np.zeros((5, 4)), np.zeros((3, 4)), 0, "k must be"),
        (np.zeros((5, 4)), np.zeros((3, 4)), 6, "k must be"),
        (np.zeros((5, 4)), np.zeros((3, 4)), 1.0, "k must be"),
        (np.array([["a", "b"]] * 3), np.zeros((3, 2)), 1, "numeric"),
    ],
)
def test_bad_features_raise(train, samples, k, match):
    with pytest.raises(ValueError, match=match):
        memorisation(train, samples, k=k)


def _images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_pngs_written_with_the_closest_pair_first(tmp_path):
    train_imgs, sample_imgs = _images(20, 7), _images(10, 8)
    train, samples = _gauss(20, 6, 9), _gauss(10, 6, 10)
    samples[6] = train[13] + 1e-6  # sample 6 is the closest pair, a copy of training image 13
    r = memorisation(train, samples, k=2)
    paths = plot_memorisation(r, train_imgs, sample_imgs, tmp_path / "mem", pairs=4)
    assert [p.name for p in paths] == [HIST_PNG, PAIRS_PNG]
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == sorted([HIST_PNG, PAIRS_PNG])  # no temp files
    assert all(p.stat().st_size > 5000 for p in paths)
    with Image.open(paths[0]) as h:
        assert h.format == "PNG" and min(h.size) > 200
    with Image.open(paths[1]) as im:
        grid = np.asarray(im.convert("RGB"))
    # 32 px images upscale x3 to 96 px cells; 3 columns (sample + k=2), 4 rows with a 26 px label, 4 px gaps.
    assert grid.shape == (4 + 4 * (96 + 26 + 4), 4 + 3 * (96 + 4), 3)
    up = lambda img: np.repeat(np.repeat(img, 3, axis=0), 3, axis=1)  # noqa: E731
    np.testing.assert_array_equal(grid[4:100, 4:100], up(sample_imgs[6]))
    np.testing.assert_array_equal(grid[4:100, 104:200], up(train_imgs[13]))
    second = r["sample_nn_index"][6, 1]
    np.testing.assert_array_equal(grid[4:100, 204:300], up(train_imgs[second]))


def test_pairs_capped_by_sample_count_and_large_images_downscaled(tmp_path):
    r = memorisation(_gauss(4, 3, 11), _gauss(2, 3, 12))
    _, pairs_png = plot_memorisation(r, _images(4, 13, 300), _images(2, 14, 300), tmp_path, pairs=16)
    with Image.open(pairs_png) as im:
        assert im.size == (4 + 2 * (256 + 4), 4 + 2 * (256 + 26 + 4))


def test_bad_plot_inputs_raise(tmp_path):
    r = memorisation(_gauss(4, 3, 15), _gauss(2, 3, 16))
    good_t, good_s = _images(4, 17), _images(2, 18)
    with pytest.raises(ValueError, match="uint8"):
        plot_memorisation(r, good_t.astype(np.float32), good_s, tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        plot_memorisation(r, good_t[..., :1], good_s, tmp_path)
    with pytest.raises(ValueError, match="report has 2"):
        plot_memorisation(r, good_t, good_s[:1], tmp_path)
    with pytest.raises(ValueError, match="pairs"):
        plot_memorisation(r, good_t, good_s, tmp_path, pairs=0)
    with pytest.raises(ValueError, match="threshold"):
        plot_memorisation({k: v for k, v in r.items() if k != "threshold"}, good_t, good_s, tmp_path)
    assert not any(tmp_path.iterdir())


def test_import_needs_numpy_only():
    code = ("import sys, projgan.evaluation.memorisation; "
            "print(sorted(m for m in ('scipy', 'matplotlib', 'PIL', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
