"""Training on a GPU without stalls: fused optimisers, indices drawn where the images are, NCCL bound at init.

The GPU itself is not here; what is tested is the logic a GPU run relies on (which optimiser, where random
numbers come from, what a resumed state keeps, which arguments start the process group).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import torch

from projgan.config import TrainConfig
from projgan.train import dist
from projgan.train.dataset import ImageDataset
from projgan.train.optim import build_optimizer, fused_ok, load_optimizer_state


def _params(seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]


def _step(opt, params):
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()


def test_fused_kernels_only_where_every_parameter_is_on_a_gpu():
    assert not fused_ok(_params())
    assert not fused_ok([])
    opt = build_optimizer(_params(), TrainConfig(), "G")
    assert not opt.param_groups[0].get("fused")


def test_a_resumed_state_keeps_this_runs_own_fused_choice():
    """A state saved by a fused (GPU) run loads into an unfused one and back, keeping each run's own
    kernels; torch's load_state_dict alone would copy the saved run's ``fused`` flag."""
    cfg = TrainConfig()
    a = _params()
    fused = torch.optim.Adam(a, lr=1e-2, betas=cfg.betas, fused=True)  # fused CPU kernels: torch >= 2.4
    _step(fused, a)
    b = _params()
    plain = build_optimizer(b, cfg, "G")
    load_optimizer_state(plain, fused.state_dict())
    assert not plain.param_groups[0].get("fused")
    _step(plain, b)  # runs the for-each kernels on the restored moments
    c = _params()
    again = torch.optim.Adam(c, lr=1e-2, betas=cfg.betas, fused=True)
    load_optimizer_state(again, plain.state_dict())
    assert again.param_groups[0]["fused"] is True
    _step(again, c)
    assert float(again.state[c[0]]["step"]) == 3.0  # one step per run, the count carried through both loads


def test_batch_indices_and_labels_are_drawn_where_the_images_are():
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    ds = ImageDataset(images, "cpu", xflip=True, labels=labels, balanced=True)
    assert ds.labels.device == ds.images.device and ds.weights.device == ds.images.device
    x1, c1 = ds.sample_labeled(16, "cpu", generator=torch.Generator().manual_seed(5))
    x2, c2 = ds.sample_labeled(16, "cpu", generator=torch.Generator().manual_seed(5))
    assert torch.equal(x1, x2) and torch.equal(c1, c2)  # a caller's generator decides, as before
    torch.manual_seed(1)
    x, c = ds.sample_labeled(300, "cpu")
    assert x.shape == (300, 3, 8, 8) and c.dtype == torch.int64
    counts = torch.bincount(c, minlength=3)
    assert counts.min() > 60  # balanced: every class drawn about a third of the time


def test_nccl_is_bound_to_this_processs_gpu_at_init():
    t = timedelta(seconds=5)
    gpu = dist.process_group_options(torch.device("cuda:1"), t)
    assert gpu == {"backend": "nccl", "timeout": t, "device_id": torch.device("cuda:1")}
    assert dist.process_group_options(torch.device("cpu"), t) == {"backend": "gloo", "timeout": t}
    assert dist.tune_cuda(torch.device("cpu")) is None  # CPU runs record no cuDNN settings
