"""Memorisation check: is a generated sample just a (near) copy of a training image?

Works on features from any extractor (DINOv2, Inception, the offline proxy): float [N, F] arrays, Euclidean
distance. A sample's distance to its nearest training image means little alone, so it is compared with the
training set's own spacing: each training image's distance to its nearest *other* training image
(leave-one-out). A generator that draws new images from the data distribution lands about as close to the
training set as training images are to each other; one that copies lands much closer.

Only numpy is imported here; scipy (nearest neighbours), matplotlib and Pillow (plots) are imported by the
functions that need them, so wiring this into ``pipeline evaluate`` costs nothing until it runs.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

# The rule, in one place (see ``memorisation``'s docstring for why these values).
QUANTILE = 0.05  # threshold = this quantile of the training leave-one-out NN distances
FLAG_RATIO = 2.0  # flag when fraction_closer > FLAG_RATIO * expected ...
FLAG_MARGIN = 0.1  # ... and > expected + FLAG_MARGIN

HIST_PNG = "memorisation_hist.png"
PAIRS_PNG = "memorisation_pairs.png"

# Pairs grid geometry: small images are upscaled (nearest) so a two-line label fits under each; large
# ones are downscaled (Lanczos) so 16 rows stay a viewable PNG.
_PAD = 4
_LABEL_H = 26
_MIN_CELL = 96
_MAX_CELL = 256


def _features(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [count, features] array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def memorisation(train_feats: np.ndarray, sample_feats: np.ndarray, k: int = 1) -> dict:
    """Nearest training images of each sample, against the training set's own leave-one-out spacing.

    Returns a dict. JSON-ready scalars: ``num_train``, ``num_samples``, ``k``, ``quantile`` (0.05),
    ``threshold`` (the 5th percentile of ``train_loo_dist``), ``fraction_closer`` (fraction of samples whose
    nearest distance is strictly below ``threshold``), ``expected_fraction`` (= ``quantile``: what a
    generator drawing fresh images from the training distribution gives, since its samples sit like one more
    training image), ``memorised`` (bool), ``rule`` (the flag rule in words), ``median_sample_nn_dist``,
    ``median_train_loo_dist``, ``median_ratio`` (their quotient; None when the training median is 0).
    numpy arrays: ``sample_nn_dist`` [N, k] float64 and ``sample_nn_index`` [N, k] int64 (ascending
    distance), ``train_loo_dist`` [M] float64.

    Choices. A *low* quantile, because copying shows up as an excess of very close samples; the median
    would hide a generator that copies a few images and invents the rest. ``memorised`` is
    ``fraction_closer > max(2 * expected, expected + 0.1)``, i.e. above 0.15 at the 5% quantile. The
    additive margin guards small N (with 20 samples one extra close sample moves the fraction by 0.05; at
    0.15 a fresh generator's binomial noise is 2 standard deviations away at N = 20, 4.6 at N = 100) and
    absorbs the small bias that a fresh sample sees M training images where a left-out one sees M - 1; the
    ratio keeps the rule meaningful if QUANTILE is raised above 0.1.
    Exact ties (threshold 0 because the training set holds duplicates) count as not closer.
    """
    train = _features(train_feats, "train_feats")
    samples = _features(sample_feats, "sample_feats")
    m, n = train.shape[0], samples.shape[0]
    if m < 2:
        raise ValueError(f"need at least 2 training images for leave-one-out distances, got {m}")
    if samples.shape[1] != train.shape[1]:
        raise ValueError(f"feature sizes differ: train_feats has {train.shape[1]}, sample_feats {samples.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= m:
        raise ValueError(f"k must be an integer in [1, {m}] (the number of training images), got {k!r}")
    k = int(k)

    from scipy.spatial import cKDTree

    tree = cKDTree(train)
    # k=2 on the training set itself: column 0 is the point (distance 0), column 1 its nearest other point.
    # With duplicates either column may name the twin; the distance, 0, is right either way.
    loo, _ = tree.query(train, k=2, workers=-1)
    train_loo = np.ascontiguousarray(loo[:, 1], dtype=np.float64)
    dist, index = tree.query(samples, k=k, workers=-1)
    dist = np.asarray(dist, dtype=np.float64).reshape(n, k)
    index = np.asarray(index, dtype=np.int64).reshape(n, k)

    threshold = float(np.quantile(train_loo, QUANTILE))
    fraction = float(np.mean(dist[:, 0] < threshold))
    expected = QUANTILE
    med_sample, med_train = float(np.median(dist[:, 0])), float(np.median(train_loo))
    return {
        "num_train": m,
        "num_samples": n,
        "k": k,
        "quantile": QUANTILE,
        "threshold": threshold,
        "fraction_closer": fraction,
        "expected_fraction": expected,
        "memorised": bool(fraction > max(FLAG_RATIO * expected, expected + FLAG_MARGIN)),
        "rule": f"fraction_closer > max({FLAG_RATIO:g} * expected_fraction, expected_fraction + {FLAG_MARGIN:g})",
        "median_sample_nn_dist": med_sample,
        "median_train_loo_dist": med_train,
        "median_ratio": med_sample / med_train if med_train > 0 else None,
        "sample_nn_dist": dist,
        "sample_nn_index": index,
        "train_loo_dist": train_loo,
    }


def _images(x, name: str, count: int) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or min(a.shape[1:3], default=0) < 1:
        raise ValueError(f"{name} must be uint8 [N, H, W, 3], got {a.dtype} {a.shape}")
    if a.shape[0] != count:
        raise ValueError(f"{name} has {a.shape[0]} images but the report has {count}")
    return a


def _cell_size(h: int, w: int) -> tuple[int, int]:
    """(width, height) of one grid cell's image: integer upscale below _MIN_CELL, downscale above _MAX_CELL."""
    scale = math.ceil(_MIN_CELL / w) if w < _MIN_CELL else (_MAX_CELL / w if w > _MAX_CELL else 1)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _write_png(fig_or_image, path: Path) -> Path:
    from projgan.artifacts import atomic_write_bytes  # the project's one atomic write (temp, fsync, rename)

    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        import matplotlib.pyplot as plt

        fig_or_image.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig_or_image)
    else:
        fig_or_image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _histogram(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    sample_d = np.asarray(report["sample_nn_dist"])[:, 0]
    train_d = np.asarray(report["train_loo_dist"])
    bins = np.histogram_bin_edges(np.concatenate([sample_d, train_d]), bins=30)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(train_d, bins=bins, density=True, alpha=0.55, color="tab:blue",
            label=f"training images to the rest (leave-one-out, {train_d.size})")
    ax.hist(sample_d, bins=bins, density=True, alpha=0.55, color="tab:orange",
            label=f"samples to nearest training image ({sample_d.size})")
    ax.axvline(report["threshold"], color="tab:red", ls="--",
               label=f"threshold: {report['quantile']:.0%} quantile of leave-one-out = {report['threshold']:.3g}")
    ax.set_xlabel("nearest-neighbour distance in feature space")
    ax.set_ylabel("density")
    ax.legend(fontsize=7, loc="upper right")
    verdict = "MEMORISED" if report["memorised"] else "not memorised"
    ax.set_title(f"{report['fraction_closer']:.1%} of samples below the threshold "
                 f"(expected {report['expected_fraction']:.0%}): {verdict}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _write_png(fig, path)


def _pairs_grid(report: dict, train: np.ndarray, samples: np.ndarray, pairs: int, path: Path) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    dist, index = np.asarray(report["sample_nn_dist"]), np.asarray(report["sample_nn_index"])
    k, threshold = dist.shape[1], float(report["threshold"])
    order = np.argsort(dist[:, 0], kind="stable")[: min(pairs, dist.shape[0])]
    cw, ch = _cell_size(samples.shape[1], samples.shape[2])
    grid = Image.new("RGB", (_PAD + (k + 1) * (cw + _PAD), _PAD + len(order) * (ch + _LABEL_H + _PAD)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()

    def cell(img: np.ndarray, col: int, row: int, lines: tuple[str, str], color: str) -> None:
        tile = Image.fromarray(img)
        if tile.size != (cw, ch):
            upscale = cw >= tile.size[0] and ch >= tile.size[1]
            tile = tile.resize((cw, ch), Image.Resampling.NEAREST if upscale else Image.Resampling.LANCZOS)
        x, y = _PAD + col * (cw + _PAD), _PAD + row * (ch + _LABEL_H + _PAD)
        grid.paste(tile, (x, y))
        draw.text((x + 1, y + ch + 1), "\n".join(lines), fill=color, font=font, spacing=1)

    for row, s in enumerate(order):
        cell(samples[s], 0, row, (f"sample {s}", "nearest:"), "black")
        for j in range(k):
            close = dist[s, j] < threshold  # red: closer than 95% of training images are to each other
            cell(train[index[s, j]], j + 1, row, (f"train {index[s, j]}", f"d={dist[s, j]:.4g}"),
                 "red" if close else "black")
    return _write_png(grid, path)


def plot_memorisation(report: dict, train_images: np.ndarray, sample_images: np.ndarray, out_dir,
                      pairs: int = 16) -> list[Path]:
    """Write the distance histogram and the closest-pairs grid; return their paths [histogram, pairs].

    The histogram shows whether samples sit closer to the training set than it is spaced (the red line is
    the threshold). The grid lets a person see what "close" means: the ``pairs`` samples with the smallest
    nearest distance, one per row, followed by their k nearest training images, labelled with index and
    distance (red when below the threshold). Images are uint8 [N, H, W, 3] in the order of the features.
    """
    for key in ("sample_nn_dist", "sample_nn_index", "train_loo_dist", "threshold", "quantile",
                "fraction_closer", "expected_fraction", "memorised"):
        if key not in report:
            raise ValueError(f"report lacks {key!r}: pass the dict returned by memorisation()")
    if isinstance(pairs, bool) or not isinstance(pairs, (int, np.integer)) or pairs < 1:
        raise ValueError(f"pairs must be a positive integer, got {pairs!r}")
    train = _images(train_images, "train_images", len(report["train_loo_dist"]))
    samples = _images(sample_images, "sample_images", len(report["sample_nn_dist"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [_histogram(report, out / HIST_PNG), _pairs_grid(report, train, samples, int(pairs), out / PAIRS_PNG)]
