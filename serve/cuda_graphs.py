"""CUDA graphs of a generator, one per batch-size bucket: the whole forward replayed as one launch.

An eager 256 px generator is hundreds of kernel launches; at small batches the GPU waits on Python and the
driver between them. Each bucket (``serve/buckets.py``) is captured once, largest first into one shared
memory pool: static input buffers (filled through ``DeviceIO``: pinned memory, copy stream), the float
output, and the uint8 NHWC image made inside the graph (``projgan.generator.uint8_nhwc``), so a replay
leaves only the uint8 copy back. Replays are serialised by the backend's lock and each result is copied out
before the next replay, which is what sharing one pool between graphs requires.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from projgan.generator import uint8_nhwc
from projgan.serve.buckets import bucket_for, chunks, pad_rows
from projgan.serve.cuda_io import DeviceIO

WARMUP_CALLS = 2  # per bucket before capture: lazy init, cuBLAS/cuDNN handles and workspaces, compilation


def static_inputs(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], rows: int, device) -> dict[str, torch.Tensor]:
    """Buffers for ``rows`` images, valid as they are: z zeros, class 0, psi 1 (the capture runs on them)."""
    out = {}
    for name, (tail, dtype) in specs.items():
        fill = 1.0 if name == "psi" else 0
        out[name] = torch.full((rows, *tail), fill, dtype=dtype, device=device)
    return out


class GraphSet:
    """``fn(inputs) -> float NCHW`` captured per bucket. Call inside ``torch.inference_mode()`` and the
    backend's lock, with the GPU current (``torch.cuda.device``)."""

    def __init__(self, fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], device, io: DeviceIO,
                 specs: dict[str, tuple[tuple[int, ...], torch.dtype]], buckets: tuple[int, ...]):
        self.device, self.io, self.buckets = torch.device(device), io, tuple(sorted(buckets))
        self.inputs = static_inputs(specs, self.buckets[-1], self.device)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for b in self.buckets:
                for _ in range(WARMUP_CALLS):
                    fn(self._view(b))
        torch.cuda.current_stream(self.device).wait_stream(side)
        for b in reversed(self.buckets):  # largest first: the smaller captures reuse its memory
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                images = fn(self._view(b)).float()
                pixels = uint8_nhwc(images)
            self.graphs[b] = (graph, images, pixels)
        torch.cuda.current_stream(self.device).synchronize()

    def _view(self, rows: int) -> dict[str, torch.Tensor]:
        return {k: v[:rows] for k, v in self.inputs.items()}

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def run(self, feeds: dict[str, np.ndarray], uint8: bool) -> np.ndarray:
        """``feeds`` (numpy, one row per image) -> uint8 NHWC (``uint8``) or float NCHW, any batch size:
        split at the largest bucket, each part padded to its bucket and the padding dropped."""
        n = len(feeds["z"])
        parts = [self._run_part({k: v[i:j] for k, v in feeds.items()}, uint8) for i, j in chunks(n, self.max_batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run_part(self, feeds: dict[str, np.ndarray], uint8: bool) -> np.ndarray:
        n = len(feeds["z"])
        b = bucket_for(n, self.buckets)
        self.io.upload(pad_rows(feeds, b), into=self.inputs)
        graph, images, pixels = self.graphs[b]
        graph.replay()
        if uint8:
            return self.io.download(pixels)[:n]
        return images[:n].cpu().numpy()
