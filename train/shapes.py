"""A built-in procedural dataset: coloured shapes on textured backgrounds.

Used by `pipeline quickstart` and the tests, so the pipeline runs end to end with no download.
The pictures have structure a GAN can learn in minutes (smooth backgrounds, a few sharp-edged
objects, shading), and each is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two colours mixed by oriented stripes (or a radial gradient), plus fine noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    if rng.random() < 0.6:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(1.0, 6.0)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = np.clip(np.hypot(xx - cx, yy - cy) * rng.uniform(1.2, 2.5), 0, 1)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, 0.03, img.shape)
    return img


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft (anti-aliased) mask of a circle, square or triangle at a random place and scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(0.12, 0.3) * size
    cx, cy = rng.uniform(r, size - r, 2)
    kind = rng.integers(3)
    if kind == 0:  # circle: signed distance to the rim
        d = np.hypot(xx - cx, yy - cy) - r
    elif kind == 1:  # rotated square
        a = rng.uniform(0, np.pi / 2)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        d = np.maximum(np.abs(u), np.abs(v)) - r * 0.8
    else:  # triangle: intersection of three half-planes
        a0 = rng.uniform(0, 2 * np.pi)
        d = np.full_like(xx, -np.inf)
        for k in range(3):
            a = a0 + 2 * np.pi * k / 3
            d = np.maximum(d, (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a) - r * 0.55)
    return np.clip(0.5 - d, 0, 1)


def make_image(seed: int, index: int, resolution: int = 64) -> np.ndarray:
    """One RGB uint8 picture ``[H, W, 3]``, a pure function of ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, resolution)
    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    for _ in range(rng.integers(1, 4)):
        mask = _shape_mask(rng, resolution)[..., None]
        color = rng.uniform(0, 1, 3)
        # Directional shading so objects look lit rather than flat.
        a = rng.uniform(0, 2 * np.pi)
        shade = 0.75 + 0.5 * ((xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a))[..., None]
        img = img * (1 - mask) + np.clip(color[None, None] * shade, 0, 1) * mask
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_shapes_dataset(folder: str | Path, n: int = 400, resolution: int = 64, seed: int = 0) -> Path:
    """Write ``n`` PNGs ``shape_00000.png ...`` into ``folder`` (created); returns the folder."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_image(seed, i, resolution)).save(folder / f"shape_{i:05d}.png", compress_level=1)
    return folder
