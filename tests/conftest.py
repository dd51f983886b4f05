"""Shared fixtures: tiny generators and images made here, markers that skip with a reason."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import torch

# The cores this process may run on (taskset, cgroups), not the machine's: more threads than cores spin.
torch.set_num_threads(max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)))


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None and has_cuda
    has_browser = shutil.which("chromium") is not None or shutil.which("chromium-browser") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA: no GPU on this machine"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a GPU: not installed here"))
        if "browser" in item.keywords and not has_browser:
            item.add_marker(pytest.mark.skip(reason="needs chromium (apt-get install chromium)"))


def make_generator(dest, resolution: int = 32, ngf: int = 16, target_std: float = 0.5, seed: int = 0, meta=None,
                   **arch):
    """Write a generator artifact whose outputs span the range (std ~ target_std on [-1, 1]).

    A randomly initialised generator outputs nearly flat images (FastGAN std ~0.04), which makes parity
    numbers meaningless. FastGAN: BatchNorm calibrated on one batch, the last conv scaled; StyleGAN2: the
    per-class w averages set to the mean w of 64 seeds (so psi = 0 is a real image), the ToRGB convs scaled.
    ``arch``: more GeneratorConfig fields (``arch``, ``num_classes``, ``class_names``, ``z_dim``).
    """
    from projgan import artifacts
    from projgan.config import GeneratorConfig
    from projgan.generator import build_generator, classes_for_seeds, sample_latents

    torch.manual_seed(seed)
    G = build_generator(GeneratorConfig(resolution=resolution, ngf=ngf, **arch))
    cfg = G.cfg
    z = torch.from_numpy(sample_latents(range(64), cfg.z_dim))
    c = torch.from_numpy(classes_for_seeds(range(64), cfg.num_classes)) if cfg.conditional else None
    with torch.no_grad():
        if cfg.arch == "fastgan":
            # Calibrate BatchNorm on one batch so features vary spatially, then scale the last conv.
            for m in G.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = None
                    m.reset_running_stats()
            G.train()
            G(z, c)
            G.eval()
            G.to_rgb.bias.zero_()
            for _ in range(3):
                pre = torch.atanh(G(z, c).clamp(-0.999, 0.999))
                G.to_rgb.weight.mul_(target_std / max(float(pre.std()), 1e-6))
        else:
            G.eval()
            w = G.mapping(z, c)[:, 0]
            for k in range(len(G.w_avg)):
                G.w_avg[k] = w[c == k].mean(0) if c is not None else w.mean(0)
            scale = target_std / float(G(z, c).std())
            for rgb in G.synthesis_net.torgb.values():
                rgb.conv.weight.mul_(scale)
                rgb.bias.zero_()
    artifacts.save_generator(dest, G, meta or {"kimg": 0.0})
    return dest


@pytest.fixture
def generator_dir(tmp_path):
    """A 32 px, ngf-16 generator artifact with realistic output contrast."""
    return make_generator(tmp_path / "generator")


def make_images(folder, n: int = 64, size: int = 48, seed: int = 0):
    """Write n small RGB PNGs of random rectangles and ellipses (a stand-in dataset)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        bg = tuple(int(c) for c in rng.integers(0, 256, 3))
        im = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = rng.integers(0, size - 8, 2)
            x1, y1 = x0 + rng.integers(4, size // 2), y0 + rng.integers(4, size // 2)
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.rectangle if rng.random() < 0.5 else d.ellipse)([int(x0), int(y0), int(x1), int(y1)], fill=fill)
        im.save(folder / f"img_{i:04d}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path):
    return make_images(tmp_path / "images")


def tiny_train_cfg(tmp_path, **kw):
    """A training config that runs in seconds on a CPU: 16 shapes images, 32 px, ngf 16, batch 4."""
    from projgan.config import GeneratorConfig, TrainConfig
    from projgan.evaluation.laws import make_law_dataset

    data = tmp_path / "data"
    if not data.exists():
        make_law_dataset(data, "shapes", n=16, resolution=32)
    base = dict(
        data=str(data), out=str(tmp_path / "run"), generator=GeneratorConfig(resolution=32, ngf=16), batch=4,
        kimg=0.008, backbone_weights="none", backbone_resolution=32, tick_kimg=0.004, snapshot_ticks=1,
        metrics=(), sample_seeds=4, device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)
