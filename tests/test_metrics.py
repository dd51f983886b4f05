"""FID/KID building blocks: distances against SciPy, the tracker with an injected extractor, caching.

More metric maths (KD standard error, precision/recall) is in test_distribution_metrics.py; the extractors
themselves in test_extractors.py."""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from projgan.errors import UserError
from projgan.evaluation import features as F
from projgan.evaluation import fid as M
from projgan.evaluation.plots import plot_fid
from projgan.evaluation.reference import load_reference_images
from tests.conftest import make_images


class TinyExtractor(torch.nn.Module):
    """A fixed random conv + pooling: float 0..255 [B,3,H,W] -> [B,64]; counts the images it sees."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 16, 5, 4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.zero_()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        h = torch.relu(self.conv(torch.nn.functional.avg_pool2d(x / 127.5 - 1, 4)))
        return torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _scipy_fid(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_matches_scipy_on_known_gaussians():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-6)
    assert M.frechet_distance_eig(mu1, s1, mu2, s2) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-6)
    # Diagonal covariances have a closed form: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-9)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_of_samples_approaches_the_analytic_value():
    rng = np.random.default_rng(1)
    d = 4
    mu1, mu2, s1, s2 = np.zeros(d), np.full(d, 0.5), _spd(rng, d), _spd(rng, d)
    x = rng.multivariate_normal(mu1, s1, 20000)
    y = rng.multivariate_normal(mu2, s2, 20000)
    est = M.frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert est == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=0.05)


def test_eig_fallback_is_stable_for_singular_covariances():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 32)), rng.standard_normal((6, 32)) + 0.3  # 6 samples, 32 dims: rank 5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # Reference: Tr sqrt(A^1/2 B A^1/2) with PSD square roots from eigh (exact for PSD matrices).
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    ref = (
        ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    )
    got = M.frechet_distance_eig(x.mean(0), s1, y.mean(0), s2)
    assert got == pytest.approx(ref, rel=1e-6)
    assert M.frechet_distance(x.mean(0), s1, y.mean(0), s2) == pytest.approx(ref, rel=1e-3)


def test_kid_is_reproducible_and_leaves_numpy_rng_alone():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((50, 8)) + 1.0
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    k1, k2 = M.kernel_distance(a, b), M.kernel_distance(a, b)
    assert k1 == k2 and k1 > 0.01
    assert np.array_equal(np.random.get_state()[1], before)
    assert abs(M.kernel_distance(a, a)) < k1 / 10


@pytest.fixture(scope="module")
def reals(tmp_path_factory):
    folder = make_images(tmp_path_factory.mktemp("reals"), n=48, size=32)
    arr, skipped = load_reference_images(folder, 32)
    assert skipped == 0
    return arr


def test_tracker_fid_zero_for_reals_and_large_for_noise(reals, tmp_path):
    ext = TinyExtractor()
    tracker = M.MetricTracker(("fid", "kid"), reals, tmp_path, num_images=len(reals), extractor=ext, batch=16)
    same = tracker(lambda seeds: reals[seeds])
    rng = np.random.default_rng(0)
    noise = tracker(lambda seeds: rng.integers(0, 256, (len(seeds), 32, 32, 3), dtype=np.uint8))
    assert abs(same["fid"]) < 1e-4 and noise["fid"] > 10
    # Unbiased KID of a set against itself is slightly negative (the self-pairs are dropped only
    # on one side); noise must score clearly above it.
    assert noise["kid"] > 0 and noise["kid"] > 2 * abs(same["kid"])
    assert set(same) == {"fid", "kid", "kid_se"} and 0 < noise["kid_se"] < noise["kid"]


def test_tracker_uses_fixed_seeds_and_the_reference_cache(reals, tmp_path):
    seen_seeds = []

    def generate(seeds):
        seen_seeds.append(np.asarray(seeds).copy())
        return reals[np.asarray(seeds) % len(reals)][:, ::-1]  # mirrored reals: close but not equal

    ext = TinyExtractor()
    first = M.MetricTracker(("fid",), reals, tmp_path, num_images=20, extractor=ext, batch=8)
    v1 = first(generate)
    assert first.cache_hit is False and first.ref_path.exists()
    assert np.array_equal(np.concatenate(seen_seeds), np.arange(20))
    assert ext.seen == len(reals) + 20

    ext2 = TinyExtractor()  # same weights -> same identity -> cache hit
    second = M.MetricTracker(("fid",), reals, tmp_path, num_images=20, extractor=ext2, batch=8)
    assert second(generate) == v1
    assert second.cache_hit is True and ext2.seen == 20  # only the generated images were embedded

    other = M.MetricTracker(("fid",), reals, tmp_path, num_images=20, extractor=TinyExtractor(seed=1), batch=8)
    assert other.ref_path != first.ref_path  # another extractor gets its own statistics
    changed = reals.copy()
    changed[0, 0, 0, 0] ^= 1
    assert M.MetricTracker(("fid",), changed, tmp_path, 20, extractor=ext).ref_path != first.ref_path


def test_tracker_rejects_bad_input(reals, tmp_path):
    with pytest.raises(UserError):
        M.MetricTracker(("is",), reals, tmp_path, 10, extractor=TinyExtractor())
    t = M.MetricTracker(("fid",), reals, tmp_path, 4, extractor=TinyExtractor())
    with pytest.raises(ValueError, match="uint8"):
        t(lambda seeds: np.zeros((len(seeds), 32, 32, 3), np.float32))


def test_missing_inception_weights_name_the_option(tmp_path):
    with pytest.raises(UserError) as e:
        F.load_extractor("inception", str(tmp_path / "nope.pt"))
    assert "--inception-weights" in str(e.value)
    bad = tmp_path / "inception-2015-12-05.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(UserError, match="not clean-fid's Inception"):
        F.load_extractor("inception", str(bad))


def test_reference_images_from_folder_and_zip_agree(tmp_path):
    folder = make_images(tmp_path / "imgs", n=6, size=40)
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGBA", (50, 30), (10, 20, 30, 0)).save(folder / "wide_rgba.png")
    arr, skipped = load_reference_images(folder, 16)
    assert arr.shape == (7, 16, 16, 3) and arr.dtype == np.uint8 and skipped == 1
    z = tmp_path / "imgs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"sub/{p.name}")
    arr_zip, _ = load_reference_images(z, 16)
    assert np.array_equal(arr, arr_zip)
    with pytest.raises(UserError):
        load_reference_images(tmp_path / "missing", 16)


def test_plot_fid_writes_png(tmp_path):
    rows = [{"kimg": k, "wall": 600.0 * k, "fid": 100 / (1 + k), "kid": 0.1 / (1 + k)} for k in range(5)]
    rows.insert(2, {"kimg": 1.5, "loss_g": 1.0})  # a tick row without FID is ignored
    out = plot_fid(rows, tmp_path / "fid.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert plot_fid([{"kimg": 1}], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def _fake_inception(path):
    """A TorchScript file shaped like NVIDIA's (a ``layers`` submodule giving [B, 2048, 1, 1]): the real
    one cannot be downloaded here, this drives our loading and wrapping code around clean-fid's class."""

    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2048, 1)

        def forward(self, x):  # pool first: a 2048-channel map at 299 px would need ~1 GB per image
            return self.conv(torch.nn.functional.adaptive_avg_pool2d(x, 1))

    class Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but is clean-fid's format
        torch.jit.script(Base()).save(str(path))
    return path


def test_local_inception_file_loads_through_clean_fid(reals, tmp_path):
    path = _fake_inception(tmp_path / "my-inception.pt")  # any file name works
    ext = F.load_extractor("inception", str(path))
    assert ext.identity.startswith("clean-fid:") and ext.identity.endswith(F.sha256_file(path)[:16])
    assert ext.name == "inception" and "299" in ext.preprocessing
    feats = F.features(reals[:3], ext)
    assert feats.shape == (3, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert M.MetricTracker(("fid",), reals, tmp_path, 8, extractor=ext).identity == ext.identity
