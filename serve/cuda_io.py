"""Host <-> GPU transfers of a serving backend: pinned staging, uploads on a copy stream, results through an event.

Pageable uploads make the driver stage every copy through its own pinned buffer, and copies issued on the
compute stream serialise with the kernels. Here each input is written into a pinned host buffer (grown to
the largest batch seen, then reused), copied on a side stream that the compute stream waits on (an event,
not the host), and the uint8 images come back into pinned buffers the caller keeps, after one event. Used by the torch
backend (eager and graphed) and by ONNX Runtime's device-resident IOBinding.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch


class ResultBuffers:
    """Flat host buffers handed out as numpy views without a copy; one is reused only once no array made from
    it is alive any more (a view keeps its base array referenced: numpy's ``base`` rule).

    Results outlive the call (the batcher hands rows to requests whose encoding may take a while), so a
    fixed pinned buffer would need a copy per call (5 ms for a batch of 256 images at 256 px); with these,
    the GPU writes straight into memory the caller keeps. ``alloc(nbytes)`` makes a new one (pinned on a
    GPU); beyond ``limit`` busy buffers a plain copy is returned instead."""

    def __init__(self, alloc, limit: int = 8):
        self.alloc, self.limit = alloc, limit
        self.buffers: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray | None:
        """A free buffer of at least ``nbytes`` (allocated if needed), or None when ``limit`` are all busy."""
        for i in range(len(self.buffers)):
            if sys.getrefcount(self.buffers[i]) == 2:  # the list and getrefcount's argument: no view is alive
                if self.buffers[i].nbytes >= nbytes:
                    return self.buffers[i]
                del self.buffers[i]  # free but too small: replaced below
                break
        if len(self.buffers) >= self.limit:
            return None
        buf = self.alloc(nbytes)
        self.buffers.append(buf)
        return buf


def _pinned_bytes(nbytes: int) -> np.ndarray:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()


class DeviceIO:
    """Transfers for one backend on one GPU; not thread-safe (backends hold a lock around every call)."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            self.copy_stream = torch.cuda.Stream()
            self.done = torch.cuda.Event()
        self._pinned: dict[str, torch.Tensor] = {}
        self.results = ResultBuffers(_pinned_bytes)

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
        """The uint8 images (4x fewer bytes than float) back as a numpy array: one copy on the compute stream
        into a pinned buffer the caller keeps (``ResultBuffers``), one event sync."""
        if x.dtype != torch.uint8:
            return x.cpu().numpy()
        n = x.numel()
        buf = self.results.take(n)
        if buf is None:  # every pinned buffer is still held by earlier results
            return x.cpu().numpy()
        host = torch.from_numpy(buf[:n]).view(x.shape)
        host.copy_(x, non_blocking=True)
        self.done.record(torch.cuda.current_stream(self.device))
        self.done.synchronize()
        return buf[:n].reshape(x.shape)
