"""Sample grids of a run: fixed seeds drawn by the EMA generator, written as PNG.

Fixed seeds make successive grids of one run differ by the model only. A conditional model's grid has
one row per class with the same seeds in every row, so a row shows what the class changes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from projgan import artifacts
from projgan.generator import classes_for_seeds, model_inputs, run_torch, sample_latents, to_uint8


def image_grid(images: np.ndarray, nrow: int = 0) -> np.ndarray:
    """uint8 NHWC -> one uint8 HWC grid, ``nrow`` images per row (default near-square; torchvision's
    make_grid, no padding)."""
    from torchvision.utils import make_grid

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return make_grid(t, nrow=nrow or math.ceil(math.sqrt(len(images))), padding=0).permute(1, 2, 0).numpy()


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    artifacts.atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def generate(G: torch.nn.Module, seeds, device, classes=None) -> np.ndarray:
    """uint8 NHWC images of ``G`` for the given seeds, 64 at a time (what FID and the grids see); a
    conditional model's classes default to ``classes_for_seeds``."""
    seeds = np.asarray(seeds)
    if G.cfg.conditional and classes is None:
        classes = classes_for_seeds(seeds, G.cfg.num_classes)
    out = []
    for ix in np.array_split(np.arange(len(seeds)), max(1, math.ceil(len(seeds) / 64))):
        inputs = model_inputs(G.cfg, sample_latents(seeds[ix], G.cfg.z_dim),
                              None if classes is None else np.asarray(classes)[ix])
        out.append(to_uint8(run_torch(G, inputs, device)))
    return np.concatenate(out)


def sample_grid(G: torch.nn.Module, n: int, device) -> np.ndarray:
    """The snapshot grid of ``n`` seeds; for a conditional model one row per class (``n // classes`` seeds)."""
    cfg = G.cfg
    if not cfg.conditional:
        return image_grid(generate(G, range(n), device))
    cols = max(1, n // cfg.num_classes)
    seeds = np.tile(np.arange(cols), cfg.num_classes)
    return image_grid(generate(G, seeds, device, np.repeat(np.arange(cfg.num_classes), cols)), nrow=cols)
