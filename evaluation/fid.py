"""Distances between feature sets, and the tracker that scores a seed-addressed generator with them.

``MetricTracker(metrics, reals, cache_dir, num_images, extractor)`` holds a dataset's reference
statistics per extractor (mu, sigma and features: one pass over the reals, cached on disk keyed by a
hash of the images and the extractor's identity) and, called with ``generate(seeds) -> uint8 NHWC``,
returns e.g. ``{"fid": ..., "kid": ..., "kid_se": ..., "fd_dinov2": ..., "pr_recall": ...}`` for seeds
``0..num_images-1``: fixed seeds, so successive records of one run differ by the model, not the draw.
Every extractor sees each generated batch once; all metrics of that extractor share those features.

Metric names (``projgan.config.parse_metric``): ``fid``/``kid``/``pr`` on the selected extractor
(Inception unless another is chosen or injected), ``fd_<name>``/``kd_<name>`` on a named one.
Extractors themselves live in ``evaluation/features.py``. The Fréchet distance is clean-fid's; KID's
subset estimates follow clean-fid's kernel and draws; precision/recall/density/coverage are the
``prdc`` package's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from projgan.config import parse_metric
from projgan.errors import UserError
from projgan.evaluation import features as F
from projgan.hardware import resolve_device

REF_PREFIX = "fid-ref"
KD_SUBSETS, KD_SUBSET_SIZE = 100, 1000  # clean-fid's (and Binkowski et al.'s) KID defaults
PR_K = 5  # k of the k-NN manifolds: Naeem et al.'s recommendation for density/coverage
PR_MAX_IMAGES = 10000  # prdc holds N x N distance matrices: 10k images ~ 1.2 GB
Progress = F.Progress


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


def kernel_distance_subsets(feats_gen: np.ndarray, feats_real: np.ndarray, num_subsets: int = KD_SUBSETS,
                            max_subset_size: int = KD_SUBSET_SIZE, seed: int = 0) -> np.ndarray:
    """The unbiased MMD^2 estimate (cubic polynomial kernel) of each of ``num_subsets`` random subsets of
    ``min(N, max_subset_size)``. Written here because clean-fid's ``kernel_distance`` returns only their
    mean; same kernel, subset size and draw order (from ``RandomState(seed)``), so the mean equals it."""
    x_all, y_all = np.asarray(feats_real, np.float64), np.asarray(feats_gen, np.float64)
    d = x_all.shape[1]
    m = min(len(x_all), len(y_all), max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images on each side (got {len(y_all)} and {len(x_all)})")
    rng = np.random.RandomState(seed)
    out = np.empty(num_subsets)
    for i in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        out[i] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
    return out


def kernel_distance(feats_gen: np.ndarray, feats_real: np.ndarray, seed: int = 0) -> float:
    """KID as clean-fid computes it (mean over 100 subsets of at most 1000), reproducible by ``seed``."""
    return float(kernel_distance_subsets(feats_gen, feats_real, seed=seed).mean())


def kernel_distance_se(feats_gen: np.ndarray, feats_real: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(KID, its standard error). KID is clean-fid's mean over subsets. Its error comes from the spread s of
    subset estimates at ``m = min(1000, N // 2)`` images (below 1000 images clean-fid's subsets are all the
    whole set and show no spread): a subset of m drawn from N varies like an m-sample estimate times
    (1 - m/N), and such estimates vary as 1/m (a non-degenerate U-statistic), so Var(N images) =
    s^2 m / (N - m); plus the variance of averaging 100 subsets instead of all pairs. Where the two
    distributions coincide the variance falls as 1/N^2 instead, so the error is then an overestimate."""
    n = min(len(feats_gen), len(feats_real))
    est = kernel_distance_subsets(feats_gen, feats_real, seed=seed)
    m = min(KD_SUBSET_SIZE, n // 2)
    if m < 2:
        return float(est.mean()), float("nan")
    spread = est if m == min(n, KD_SUBSET_SIZE) else kernel_distance_subsets(feats_gen, feats_real,
                                                                              max_subset_size=m, seed=seed + 1)
    var = spread.var(ddof=1) * m / (n - m) + est.var(ddof=1) / len(est)
    return float(est.mean()), float(np.sqrt(var))


def precision_recall(feats_real: np.ndarray, feats_gen: np.ndarray, k: int = PR_K,
                     max_images: int = PR_MAX_IMAGES, seed: int = 0) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al.), density and coverage (Naeem et al.) from k-NN manifolds,
    by the ``prdc`` package. Each side is subsampled (fixed seed) to at most ``max_images`` and the reals to
    as many as the generated images: the density/coverage expectations assume equal counts."""
    from prdc import compute_prdc

    rng = np.random.default_rng(seed)
    n = min(len(feats_gen), max_images)
    gen = np.asarray(feats_gen)[np.sort(rng.permutation(len(feats_gen))[:n])] if len(feats_gen) > n else feats_gen
    real = np.asarray(feats_real)
    if len(real) > n:
        real = real[np.sort(rng.permutation(len(real))[:n])]
    if min(len(real), len(gen)) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} images on each side "
                        f"(got {len(gen)} generated, {len(real)} real)", "raise --num-images")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(np.asarray(real, np.float32), np.asarray(gen, np.float32), nearest_k=k)
    return {key: float(out[key]) for key in ("precision", "recall", "density", "coverage")}


# ---------------------------------------------------------------- the tracker


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


def load_metric_extractors(metrics: tuple[str, ...], extractor: F.Extractor | None = None,
                           weights: dict[str, str] | None = None, selected: str = "inception", device: str = "cpu",
                           need_selected: bool = False, ready: dict[str, F.Extractor] | None = None):
    """(selected extractor or None, {name: extractor}) that ``metrics`` need, loaded up front so that missing
    weights fail before anything slow. ``weights``: a local file per extractor name (and ``auto``);
    ``ready``: extractors already loaded, by name; ``need_selected``: load the selected one regardless."""
    weights = weights or {}
    kinds = [parse_metric(m) for m in metrics if m != "law"]
    if extractor is None and (need_selected or any(k is not None and k[1] == "" for k in kinds)):
        extractor = F.load_extractor(selected, weights.get(selected, ""), device)
    ready, named = dict(ready or {}), {}
    if extractor is not None:
        named[F.describe(extractor)["name"]] = extractor
    for k in kinds:
        if k is not None and k[1] and k[1] not in named:
            named[k[1]] = ready.get(k[1]) or F.load_extractor(k[1], weights.get(k[1], ""), device)
    return extractor, named


class MetricTracker:
    """FD/KD/precision-recall of a seed-addressed generator against fixed reals, on one or more extractors.

    ``reals``: uint8 NHWC (all of them are used for the reference); ``num_images``: generated
    images per record (seeds 0..num_images-1); ``cache_dir``: where ``fid-ref-<key>.npz`` lives.
    ``extractor``: the selected extractor behind ``fid``/``kid``/``pr`` (default: clean-fid's
    Inception); ``extractors``: ready extractors by name for ``fd_<name>``/``kd_<name>`` (others are
    loaded from local weights). ``keep_images``: keep the last record's generated images
    (``last_images``) for plots such as the memorisation check. After a call, ``last_features`` holds
    the generated features per extractor name, ``reference_features(name)`` the reals'.
    """

    def __init__(self, metrics: tuple[str, ...], reals: np.ndarray, cache_dir: str | Path, num_images: int,
                 extractor: F.Extractor | None = None, device: str = "cpu", batch: int = 64,
                 extractors: dict[str, F.Extractor] | None = None, keep_images: bool = False):
        plan = [(m, parse_metric(m)) for m in metrics]
        bad = [m for m, p in plan if p is None or p[0] == "law"]
        if bad or not (metrics or extractor is not None):
            raise UserError(f"unknown metric {bad[0]!r}" if bad else "no metric requested",
                            "use fid, kid, pr, fd_<extractor> or kd_<extractor>")
        if num_images < 2:
            raise UserError(f"FID needs at least 2 generated images (got {num_images})")
        self.metrics = tuple(metrics)
        self.reals = _check_images(reals, "reals")
        if len(self.reals) < 2:
            raise UserError(f"FID needs at least 2 reference images (got {len(self.reals)})")
        self.cache_dir = Path(cache_dir)
        self.num_images = int(num_images)
        self.device = resolve_device(device)
        self.batch = int(batch)
        self.keep_images = keep_images
        extractor, self.extractors = load_metric_extractors(metrics, extractor, device=self.device, ready=extractors)
        self.extractor = extractor
        self.selected = F.describe(extractor)["name"] if extractor is not None else ""
        self.jobs = [(m, kind, ext or self.selected) for m, (kind, ext) in plan]
        main = extractor if extractor is not None else next(iter(self.extractors.values()))
        self.identity = F.extractor_identity(main)
        self._main = F.describe(main)["name"]
        self._refs: dict[str, dict[str, np.ndarray]] = {}
        self._data_hash: str | None = None
        self.cache_hits: dict[str, bool] = {}
        self.last_features: dict[str, np.ndarray] = {}
        self.last_images: np.ndarray | None = None

    def ref_path_for(self, name: str) -> Path:
        ext = self.extractors[name]
        if self._data_hash is None:
            self._data_hash = data_hash(self.reals)
        key = hashlib.sha256(f"{self._data_hash}|{F.extractor_identity(ext)}|{F.cache_tag(ext)}".encode()).hexdigest()
        return self.cache_dir / f"{REF_PREFIX}-{key[:20]}.npz"

    @property
    def ref_path(self) -> Path:
        return self.ref_path_for(self._main)

    @property
    def cache_hit(self) -> bool | None:
        """Whether every reference came from the cache (None until they are resolved)."""
        return all(self.cache_hits.values()) if len(self.cache_hits) == len(self.extractors) else None

    def describe(self) -> dict[str, dict]:
        """Per extractor name: identity, preprocessing and whether its reference was cached (for result rows)."""
        return {n: {**F.describe(e), "reference_cached": self.cache_hits.get(n)} for n, e in self.extractors.items()}

    def reference(self, progress: Progress | None = None) -> dict[str, np.ndarray]:
        return self.reference_for(self._main, progress)

    def reference_features(self, name: str = "") -> np.ndarray:
        return self.reference_for(name or self._main)["feats"]

    def reference_for(self, name: str, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """mu, sigma and features of the reals for one extractor: from the cache, or computed once and cached."""
        if name in self._refs:
            return self._refs[name]
        path = self.ref_path_for(name)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    ref = {"mu": z["mu"], "sigma": z["sigma"], "feats": z["feats"].astype(np.float64)}
                self._refs[name], self.cache_hits[name] = ref, True
                return ref
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file: recompute and overwrite it
        stage = "reference features" + (f" ({name})" if len(self.extractors) > 1 else "")
        feats = F.features(self.reals, self.extractors[name], self.device, self.batch, progress, stage)
        ref = {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False), "feats": feats}
        self._refs[name], self.cache_hits[name] = ref, False
        f32 = feats.astype(np.float32)
        stored = f32 if np.array_equal(f32, feats) else feats  # float32 network outputs: half the file, no loss
        from projgan.artifacts import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, mu=ref["mu"], sigma=ref["sigma"], feats=stored,
                 identity=np.array(F.extractor_identity(self.extractors[name])))
        atomic_write_bytes(path, buf.getvalue())
        return ref

    def __call__(self, generate: Callable[[np.ndarray], np.ndarray], progress: Progress | None = None) -> dict:
        refs = {n: self.reference_for(n, progress) for n in self.extractors}
        feats: dict[str, list[np.ndarray]] = {n: [] for n in self.extractors}
        kept = []
        seeds = np.arange(self.num_images, dtype=np.int64)
        for i in range(0, self.num_images, self.batch):
            chunk = seeds[i : i + self.batch]
            images = _check_images(generate(chunk), "generate(seeds)")
            if len(images) != len(chunk):
                raise ValueError(f"generate returned {len(images)} images for {len(chunk)} seeds")
            for n, ext in self.extractors.items():  # one generation, every extractor sees it once
                feats[n].append(F.features(images, ext, self.device, self.batch))
            if self.keep_images:
                kept.append(images)
            if progress:
                progress("generate + features", len(chunk), self.num_images)
        gen = {n: np.concatenate(f) for n, f in feats.items()}
        self.last_features = gen
        self.last_images = np.concatenate(kept) if kept else None
        out: dict[str, float] = {}
        done: dict[tuple[str, str], Any] = {}  # fid and fd_<its name> are one computation
        for metric, kind, name in self.jobs:
            g, ref = gen[name], refs[name]
            if (kind, name) not in done:
                if kind == "fd":
                    done[kind, name] = frechet_distance(g.mean(0), np.cov(g, rowvar=False), ref["mu"], ref["sigma"])
                elif kind == "kd":
                    done[kind, name] = kernel_distance_se(g, ref["feats"])
                else:
                    done[kind, name] = precision_recall(ref["feats"], g)
            value = done[kind, name]
            if kind == "fd":
                out[metric] = value
            elif kind == "kd":
                out[metric], out[f"{metric}_se"] = value
            else:
                out.update({f"pr_{k}": v for k, v in value.items()})
        return out
