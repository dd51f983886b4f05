"""Host <-> GPU transfers of a serving backend: pinned staging, uploads on a copy stream, results through an event.

Pageable uploads make the driver stage every copy through its own pinned buffer, and copies issued on the
compute stream serialise with the kernels. Here each input is written into a pinned host buffer (grown to
the largest batch seen, then reused), copied on a side stream that the compute stream waits on (an event,
not the host), and the uint8 images come back through a pinned buffer and one event. Used by the torch
backend (eager and graphed) and by ONNX Runtime's device-resident IOBinding.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class DeviceIO:
    """Transfers for one backend on one GPU; not thread-safe (backends hold a lock around every call)."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            self.copy_stream = torch.cuda.Stream()
            self.done = torch.cuda.Event()
        self._pinned: dict[str, torch.Tensor] = {}

    def _staging(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A pinned host buffer viewed as ``shape`` (reallocated only when a larger batch arrives)."""
        numel = math.prod(shape)
        buf = self._pinned.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype, pin_memory=True)
            self._pinned[key] = buf
        return buf[:numel].view(shape)

    def upload(self, feeds: dict[str, np.ndarray], into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``feeds`` on the GPU, ordered before the current stream's next kernel.

        ``into``: static buffers to fill (their first rows; CUDA graphs read fixed addresses), else new tensors.
        The host waits for nothing here: the previous call ended with an event sync, so the pinned buffers
        are free, and the compute stream waits on the copy stream."""
        compute = torch.cuda.current_stream(self.device)
        hosts, out = {}, {}
        for name, value in feeds.items():
            src = torch.from_numpy(np.ascontiguousarray(value))
            hosts[name] = self._staging(name, tuple(src.shape), src.dtype)
            hosts[name].copy_(src)
            if into is not None:
                out[name] = into[name][: len(value)]
            else:  # allocated on the compute stream, which uses it; the copy stream only writes it in between
                out[name] = torch.empty(src.shape, dtype=src.dtype, device=self.device)
        self.copy_stream.wait_stream(compute)  # earlier kernels are done reading the destination buffers
        with torch.cuda.stream(self.copy_stream):
            for name, host in hosts.items():
                out[name].copy_(host, non_blocking=True)
        compute.wait_stream(self.copy_stream)
        return out

    def download(self, x: torch.Tensor) -> np.ndarray:
        """A device tensor (the uint8 images: 4x fewer bytes than float) back as a numpy array: one pinned
        copy on the compute stream and one event sync."""
        host = self._staging(f"out-{x.dtype}", tuple(x.shape), x.dtype)
        host.copy_(x, non_blocking=True)
        self.done.record(torch.cuda.current_stream(self.device))
        self.done.synchronize()
        return host.numpy().copy()  # the pinned buffer is reused by the next call
