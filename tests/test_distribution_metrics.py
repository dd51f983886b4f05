"""FD, KD with its standard error, precision/recall/density/coverage: against SciPy, clean-fid and analytic
or independently computed expectations; and the tracker's one feature pass shared by every metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.spatial.distance import cdist

from projgan.evaluation import fid as M


class ChannelMean(torch.nn.Module):
    """Features = the mean colour of the image. On constant-colour images that is the colour itself
    (a bicubic resize keeps a constant image constant), so known Gaussian colours are known features."""

    def __init__(self, name: str = "custom"):
        super().__init__()
        self.name, self.seen = name, 0

    def forward(self, x):
        self.seen += len(x)
        return x.mean((2, 3))


def colour_images(rng, mu, cov, n, size=4) -> tuple[np.ndarray, np.ndarray]:
    """n constant-colour uint8 images whose colours are drawn from N(mu, cov); returns (images, colours)."""
    colours = np.clip(np.rint(rng.multivariate_normal(mu, cov, n)), 0, 255)
    return np.broadcast_to(colours.astype(np.uint8)[:, None, None, :], (n, size, size, 3)).copy(), colours


def scipy_fd(x, y):
    """The textbook Fréchet distance of two samples with scipy.linalg.sqrtm."""
    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def test_fd_through_an_injected_extractor_equals_scipy_on_known_gaussians(tmp_path):
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([120.0, 100.0, 140.0]), np.array([130.0, 95.0, 150.0])
    cov1 = np.array([[300.0, 80, 20], [80, 200, -30], [20, -30, 250]])
    cov2 = np.array([[200.0, -40, 0], [-40, 300, 60], [0, 60, 150]])
    reals, c_real = colour_images(rng, mu1, cov1, 600)
    fakes, c_fake = colour_images(rng, mu2, cov2, 400)
    tracker = M.MetricTracker(("fid",), reals, tmp_path, num_images=len(fakes), extractor=ChannelMean(), batch=200)
    got = tracker(lambda seeds: fakes[seeds])["fid"]
    assert got == pytest.approx(scipy_fd(c_fake, c_real), rel=1e-4)
    # ... and it estimates the populations' distance (|dmu|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)) within sampling error.
    population = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * linalg.sqrtm(cov1 @ cov2).real))
    assert got == pytest.approx(population, rel=0.15)


def test_kd_mean_is_clean_fids_and_its_standard_error_shrinks_with_more_samples():
    from cleanfid.fid import kernel_distance as cleanfid_kid

    rng = np.random.default_rng(1)
    for n in (300, 1500):  # all subsets the whole set; real subsets of 1000
        a, b = rng.standard_normal((n, 16)), rng.standard_normal((n, 16)) + 0.3
        np.random.seed(7)
        assert M.kernel_distance(a, b, seed=7) == pytest.approx(cleanfid_kid(a, b), rel=1e-12)
    ses, kds = [], []
    for n in (50, 200, 800, 3200):
        x, y = rng.standard_normal((n, 16)), rng.standard_normal((n, 16)) + 0.3
        kd, se = M.kernel_distance_se(x, y)
        kds.append(kd)
        ses.append(se)
    assert ses[0] > ses[1] > ses[2] > ses[3] > 0
    assert ses[3] < ses[0] / 4  # ~1/sqrt(N): 8x at 64x the images
    assert kds[3] > 5 * ses[3]  # the shift is detected well beyond the error
    assert len(M.kernel_distance_subsets(x, y, num_subsets=10)) == 10


def test_kd_standard_error_matches_the_spread_over_independent_datasets():
    """Calibration: the standard error one dataset reports is about the standard deviation of KD over many
    independent datasets of the same size (here 60 of them, so each side is known to ~10%)."""
    rng = np.random.default_rng(8)
    kds, ses = [], []
    for rep in range(60):
        kd, se = M.kernel_distance_se(rng.standard_normal((150, 16)), rng.standard_normal((150, 16)) + 0.3, seed=rep)
        kds.append(kd)
        ses.append(se)
    assert 0.75 < np.mean(ses) / np.std(kds, ddof=1) < 1.33


def test_precision_recall_of_identical_sets_is_one():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 8))
    r = M.precision_recall(x, x)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["coverage"] == 1.0


def test_density_and_coverage_of_one_distribution_match_their_expectations():
    """Naeem et al. (2020): for real and fake samples of the same distribution, E[density] = 1 and
    E[coverage] = 1 - prod_{i<k} (N-1-i) / (M+N-1-i) (0.969 for N = M = 2000, k = 5)."""
    rng = np.random.default_rng(3)
    n, k = 2000, M.PR_K
    r = M.precision_recall(rng.standard_normal((n, 8)), rng.standard_normal((n, 8)))
    expected_cov = 1 - np.prod([(n - 1 - i) / (2 * n - 1 - i) for i in range(k)])
    assert r["coverage"] == pytest.approx(expected_cov, abs=0.015)
    assert r["density"] == pytest.approx(1.0, abs=0.06)


def test_precision_recall_on_shifted_uniform_squares_match_the_overlap():
    """Uniform squares [0,1]^2 and [s,1+s]^2: as N grows the k-NN manifold tends to the support, so precision
    and recall tend to the overlap (1-s)^2. At finite N the manifold reaches past the real square's edge by
    about the mean k-NN radius r = Gamma(k+1/2) / (Gamma(k) sqrt(pi N)), so the expectation is ~(1-s+r)^2."""
    from math import gamma, pi, sqrt

    rng = np.random.default_rng(4)
    n, s, k = 4000, 0.5, M.PR_K
    r = M.precision_recall(rng.uniform(0, 1, (n, 2)), rng.uniform(0, 1, (n, 2)) + s)
    reach = gamma(k + 0.5) / gamma(k) / sqrt(pi * n)
    for key in ("precision", "recall"):
        assert (1 - s) ** 2 < r[key] == pytest.approx((1 - s + reach) ** 2, abs=0.025)
    far = M.precision_recall(rng.uniform(0, 1, (1000, 2)), rng.uniform(0, 1, (1000, 2)) + 2.0)
    assert far["precision"] == far["recall"] == far["coverage"] == 0.0


def _manifold_fraction(support: np.ndarray, queries: np.ndarray, k: int) -> float:
    """The definition, computed independently of prdc/scikit-learn: the fraction of ``queries`` inside
    the union of the balls reaching each support point's k-th nearest other support point."""
    radii = np.sort(cdist(support, support), axis=1)[:, k]  # column 0 is the point itself
    return float(np.mean([(cdist(q, support) < radii).any(1).mean() for q in np.array_split(queries, 10)]))


@pytest.mark.parametrize("shift", [1.0, 2.0])
def test_precision_recall_on_shifted_gaussian_clouds_match_a_large_sample_reference(shift):
    """Given the reals, precision is a mean over M fakes of "inside the real manifold", so its expectation is
    the probability of that event: estimated from 20,000 fresh fakes (binomial error < 0.004). Recall likewise
    with the roles swapped. The tolerance is ~3 standard errors of a 1,000-image estimate."""
    rng = np.random.default_rng(5)
    n, dim = 1000, 4
    mu = np.zeros(dim)
    mu[0] = shift
    real, fake = rng.standard_normal((n, dim)), rng.standard_normal((n, dim)) + mu
    r = M.precision_recall(real, fake)
    ref_p = _manifold_fraction(real, rng.standard_normal((20000, dim)) + mu, M.PR_K)
    ref_r = _manifold_fraction(fake, rng.standard_normal((20000, dim)), M.PR_K)
    assert r["precision"] == pytest.approx(ref_p, abs=0.04)
    assert r["recall"] == pytest.approx(ref_r, abs=0.04)
    assert ref_p < 0.99 and ref_r < 0.99  # the shift is visible


def test_tracker_computes_every_metric_from_one_pass_and_caches_per_extractor(tmp_path):
    rng = np.random.default_rng(6)
    reals, _ = colour_images(rng, np.full(3, 128.0), np.eye(3) * 400, 300)
    fakes, _ = colour_images(rng, np.full(3, 140.0), np.eye(3) * 300, 120)
    selected, other = ChannelMean(), ChannelMean(name="proxy")
    calls = []

    def generate(seeds):
        calls.append(len(seeds))
        return fakes[seeds]

    metrics = ("fid", "kid", "pr", "fd_proxy", "kd_proxy")
    t = M.MetricTracker(metrics, reals, tmp_path, num_images=120, extractor=selected, batch=50,
                        extractors={"proxy": other})
    v = t(generate)
    assert sum(calls) == 120  # one generation pass for all metrics and both extractors
    # Each extractor embeds the samples once; the reals once per identity: `other` is an identical module
    # (same identity and preprocessing), so it reads the reference `selected` just wrote.
    assert selected.seen == 300 + 120 and other.seen == 120
    assert set(v) == {"fid", "kid", "kid_se", "fd_proxy", "kd_proxy", "kd_proxy_se",
                      "pr_precision", "pr_recall", "pr_density", "pr_coverage"}
    assert v["fd_proxy"] == pytest.approx(v["fid"]) and v["kd_proxy"] == pytest.approx(v["kid"])  # same features
    assert 0 <= v["pr_precision"] <= 1 and v["kid_se"] > 0
    assert len(list(tmp_path.glob("fid-ref-*.npz"))) == 1  # same identity and preprocessing: one cached reference
    assert t.last_features["custom"].shape == (120, 3) and t.reference_features().shape == (300, 3)
    assert t.describe()["proxy"]["reference_cached"] is True  # the second name found the first one's file

    again = M.MetricTracker(("pr",), reals, tmp_path, num_images=len(reals), extractor=ChannelMean())
    same = again(lambda seeds: reals[seeds])
    assert again.cache_hit is True and same["pr_precision"] == same["pr_recall"] == 1.0
