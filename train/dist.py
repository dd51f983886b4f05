"""Process group, device and precision: the few facts every part of training asks about.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on ``batch / world`` images and the
gradients are averaged with one flattened all-reduce per step (as StyleGAN2-ADA does), which stays
correct when D runs several forwards before one backward. NCCL on CUDA, gloo on CPU. Only rank 0
writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import distributed as dist

from projgan.errors import UserError
from projgan.hardware import auto_precision, resolve_device, tf32_state

# Collectives in the training step time out after this (a hung peer should not hang the job forever);
# PROJGAN_DIST_TIMEOUT_S overrides it. Rank-0-only work (FID, snapshots) is waited for on a separate
# group with MAIN_WAIT instead, so a long FID never trips the step's timeout.
STEP_TIMEOUT_S = 1800.0
MAIN_WAIT = timedelta(hours=6)


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    wait_group: Any = None  # gloo group with a long timeout, for wait_for_main
    cuda_settings: dict | None = None  # cuDNN autotuning and TF32 state the run trained with (tune_cuda)

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> ``hardware.auto_precision``, the rule serving uses too (bf16 where native, fp16 on older GPUs)."""
    if precision == "auto":
        return auto_precision(device)
    if precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 is for CUDA", "use bf16 (fast on AMX CPUs) or fp32 on the CPU")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def tune_cuda(device: torch.device) -> dict | None:
    """cuDNN autotuning on for training on a GPU (every step has the same shapes: the search pays once).

    Returns what the run records beside its numbers: autotuning and the TF32 state (None on a CPU)."""
    if device.type != "cuda":
        return None
    torch.backends.cudnn.benchmark = True
    return {"cudnn_benchmark": True, "tf32": tf32_state()}


def process_group_options(dev: torch.device, timeout: timedelta) -> dict[str, Any]:
    """``init_process_group`` arguments: NCCL on GPUs, bound to this process's GPU at init (``device_id``)
    rather than guessed at the first collective; gloo on CPUs."""
    if dev.type != "cuda":
        return {"backend": "gloo", "timeout": timeout}
    return {"backend": "nccl", "timeout": timeout, "device_id": dev}


def init(device: str = "auto") -> Runtime:
    """Join the torchrun process group when there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(resolve_device(device, local_rank))
    wait_group = None
    if world > 1:
        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            timeout = timedelta(seconds=float(os.environ.get("PROJGAN_DIST_TIMEOUT_S", STEP_TIMEOUT_S)))
            dist.init_process_group(**process_group_options(dev, timeout))
        wait_group = dist.new_group(backend="gloo", timeout=MAIN_WAIT)
    return Runtime(rank=rank, world=world, local_rank=local_rank, device=dev, wait_group=wait_group,
                   cuda_settings=tune_cuda(dev))


def shutdown(rt: Runtime) -> None:
    if rt.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_main(rt: Runtime) -> None:
    """Every rank waits here until rank 0 is done with work only it does (dataset cache, FID, files).

    A barrier on the long-timeout gloo group: the step's collectives keep their short timeout."""
    if rt.world > 1:
        dist.barrier(group=rt.wait_group)


def broadcast_module(module: torch.nn.Module, rt: Runtime) -> None:
    """Make every rank hold rank 0's parameters and buffers."""
    if rt.world > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_reduce_grads(params: list[torch.nn.Parameter], rt: Runtime) -> None:
    """Average gradients over ranks with one flattened all-reduce (missing grads count as zero)."""
    if rt.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= rt.world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        g.copy_(flat[offset : offset + g.numel()].view_as(g))  # copy_ keeps the grad's memory format
        p.grad = g
        offset += g.numel()


def any_rank(flag: bool, rt: Runtime) -> bool:
    """True on every rank when it is true on any (stop requests must be agreed on). Several ranks: a
    collective and a host sync, so the loop asks at ticks only; one process: free."""
    if rt.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=rt.device if rt.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)



def assert_in_sync(module: torch.nn.Module, rt: Runtime, what: str) -> None:
    """Every rank must hold the same weights (same init, same averaged gradients); checked at snapshots."""
    if rt.world == 1:
        return
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().view(1)
    low, high = total.clone(), total.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if float(high - low) > 1e-6 * max(1.0, float(total.abs())):
        raise RuntimeError(f"{what} weights differ across ranks ({float(low)} vs {float(high)})")
