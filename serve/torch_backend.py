"""The PyTorch backend: eager, CUDA-graphed or compiled, each variant held to the certificate's rule before it serves.

``mode``: ``eager`` (any device); ``graphs`` (one CUDA graph per batch bucket, ``serve/cuda_graphs.py``);
``compile`` (``torch.compile``; on a GPU its kernels are captured per bucket the same way); ``auto`` is
graphs on a GPU and eager on a CPU. A reduced precision chosen by ``auto`` and every non-eager mode first
pass a self-check on a few seeds against eager fp32 on the same device (TF32 off) with
``projgan.similarity``'s metrics and pass marks; a failure falls back (to fp32, to eager) and says why in
``info``. On a GPU, inputs go up through pinned memory on a copy stream and images come back as uint8
(``serve/cuda_io.py``); fp32 there means fp32 (``hardware.fp32_exact``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import numpy as np
import torch

from projgan import similarity
from projgan.config import TORCH_MODES
from projgan.errors import UserError
from projgan.generator import input_names, run_torch, sample_latents, uint8_nhwc
from projgan.hardware import auto_precision, fp32_exact, is_cuda
from projgan.serve.backends import SELF_CHECK_PSI, SELF_CHECK_SEEDS, Backend
from projgan.serve.buckets import buckets_up_to
from projgan.stylegan2 import WMapping, WSynthesis

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_SPECS = {"z": None, "class": ((), torch.int64), "psi": ((), torch.float32)}  # z's tail is (z_dim,)
log = logging.getLogger("projgan.serve")


def resolve_mode(mode: str, device: str) -> str:
    """``auto`` -> graphs on a GPU, eager on a CPU; CUDA graphs asked for on a CPU is the user's mistake."""
    if mode not in TORCH_MODES:
        raise UserError(f"unknown torch mode {mode!r}", f"choose one of {', '.join(TORCH_MODES)}")
    if mode == "auto":
        return "graphs" if is_cuda(device) else "eager"
    if mode == "graphs" and not is_cuda(device):
        raise UserError("CUDA graphs need a GPU", "use --torch-mode eager or compile on a CPU")
    return mode


class TorchBackend(Backend):
    """Eager PyTorch in eval + inference mode, channels_last; reduced precision, CUDA graphs or
    ``torch.compile`` where they pass the self-check (see the module doc)."""

    self_check_thresholds = None  # None: projgan.similarity's defaults (the certificate's)

    def __init__(self, G: torch.nn.Module, config: dict[str, Any], device: str, precision: str,
                 parity: dict[str, Any] | None = None, mode: str = "eager", max_batch: int = 64):
        cfg = G.cfg
        auto = precision == "auto"
        precision = auto_precision(device) if auto else precision
        if precision not in _DTYPES:
            raise UserError(f"unknown precision {precision!r}", "choose auto, fp32, bf16 or fp16")
        mode = resolve_mode(mode, device)
        style = hasattr(G, "mapping") and hasattr(G, "synthesis")
        super().__init__("torch", device, precision, cfg.resolution, cfg.z_dim, cfg=cfg, supports_w=style)
        self.G = G.to(device).eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self._mapping, self._synthesis = (WMapping(self.G), WSynthesis(self.G)) if style else (None, None)
        self.dtype = _DTYPES[precision]
        self.info = {"meta": config.get("meta", {})}
        self._lock = threading.Lock()  # BatchNorm modules are not re-entrant across threads
        self.cuda = is_cuda(device)
        self.mode, self._variant = "eager", None
        self._io = None
        if self.cuda:
            from projgan.serve.cuda_io import DeviceIO

            self._io = DeviceIO(device)
        if auto and self.dtype is not None:
            self._check_reduced_precision(parity)
        if mode != "eager":
            self._enable(mode, max_batch)

    # ------------------------------------------------------------ running

    def _context(self):
        """The GPU current, and fp32 exact where fp32 is asked for on a GPU (cuDNN's default is TF32)."""
        stack = contextlib.ExitStack()
        if self.cuda:
            stack.enter_context(torch.cuda.device(torch.device(self.device)))
            if self.dtype is None:
                stack.enter_context(fp32_exact())
        return stack

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        # cache_enabled=False: autocast's weight cache must not outlive a CUDA graph capture
        return torch.autocast(torch.device(self.device).type, dtype=self.dtype, cache_enabled=False)

    def _forward(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inputs (tensors on the device) -> images; a style model's w stays fp32 (a few small matmuls that
        truncation mixes with the fp32 ``w_avg``)."""
        if self.supports_w:
            w = run_torch(self._mapping, t)
            with self._autocast():
                return self._synthesis(w)
        with self._autocast():
            return run_torch(self.G, t)

    def _upload(self, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if self.cuda:
            return self._io.upload(inputs)
        return {k: torch.from_numpy(v) for k, v in inputs.items()}

    def _call(self, fn, inputs: dict[str, np.ndarray], uint8: bool = False):
        """``fn(tensors)`` under the lock, inference mode and ``_context``; float32 tensor out, or uint8 NHWC
        numpy (made on the device) with ``uint8``."""
        with self._lock, torch.inference_mode(), self._context():
            return self._apply(fn, inputs, uint8)

    def _apply(self, fn, inputs: dict[str, np.ndarray], uint8: bool):
        n = len(next(iter(inputs.values())))
        # oneDNN takes a different fp32 conv path for a batch of one (pixels differ by 1/255 from the same
        # seed in a larger batch); padding to two keeps a seed's bytes the same in every batch composition.
        if not self.cuda and self.dtype is None and n == 1:
            inputs = {k: np.concatenate([v, v]) for k, v in inputs.items()}
        out = fn(self._upload(inputs))[:n]
        if not uint8:
            return out.float()
        return self._io.download(uint8_nhwc(out)) if self.cuda else uint8_nhwc(out).numpy()

    def _run(self, inputs: dict[str, np.ndarray]):
        if self._variant is not None:
            return self._run_variant(inputs, uint8=False)
        return self._call(self._forward, inputs)

    def generate(self, z: np.ndarray, classes=None, psi=None) -> np.ndarray:
        inputs = self.inputs(z, classes, psi)
        if self._variant is not None:
            return self._run_variant(inputs, uint8=True)
        return self._call(self._forward, inputs, uint8=True)

    def _run_variant(self, inputs: dict[str, np.ndarray], uint8: bool):
        with self._lock, torch.inference_mode(), self._context():
            return self._variant(inputs, uint8)

    def _map_w(self, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        return self._call(lambda t: run_torch(self._mapping, t), inputs)

    def _synthesize(self, w: np.ndarray) -> torch.Tensor:
        def synth(t):
            with self._autocast():
                return self._synthesis(t["w"])

        return self._call(synth, {"w": w})

    # ------------------------------------------------------------ self-checks

    def self_check_inputs(self) -> dict[str, Any]:
        """The load-time check's seeds, with their default classes and both truncations of a style model."""
        seeds = range(SELF_CHECK_SEEDS)
        psi = [SELF_CHECK_PSI[i % len(SELF_CHECK_PSI)] for i in seeds] if self.truncation else None
        return {"z": sample_latents(seeds, self.z_dim), "classes": self.default_classes(seeds), "psi": psi}

    def _reference(self) -> np.ndarray:
        """Eager fp32 (TF32 off) on this device: what every variant is judged against."""
        dtype, variant = self.dtype, self._variant
        self.dtype, self._variant = None, None
        try:
            return self.generate_float(**self.self_check_inputs())
        finally:
            self.dtype, self._variant = dtype, variant

    def _judge(self, out: np.ndarray, ref: np.ndarray) -> tuple[bool, str]:
        m = similarity.compare(ref, out)
        rule = similarity.image_rule(self.precision, self.device, reference_device=self.device)
        ok, why = similarity.judge(m, reduced=rule, t=self.self_check_thresholds)
        return ok, why + f" on {SELF_CHECK_SEEDS} seeds (reference std {m['ref_std']})"

    def _check_reduced_precision(self, parity: dict[str, Any] | None) -> None:
        if parity is not None and not parity.get("passed", False):
            ok, why = False, f"the export's certificate failed it: {parity.get('reason', '')}"
        else:
            ok, why = self._judge(self.generate_float(**self.self_check_inputs()), self._reference())
        self.info["precision_check"] = {"precision": self.precision, "passed": ok, "reason": why}
        if not ok:
            log.warning("torch %s failed its parity self-check (%s); serving fp32", self.precision, why)
            self.precision, self.dtype = "fp32", None

    def _build_variant(self, mode: str, max_batch: int):
        """``run(inputs, uint8)`` for ``mode``: torch.compile'd forward and/or CUDA graphs per bucket."""
        fn = self._forward
        if mode == "compile":
            fn = torch.compile(fn, dynamic=True)
        if not self.cuda:  # compile on a CPU: no graphs
            return lambda inputs, uint8: self._apply(fn, inputs, uint8)
        from projgan.serve.cuda_graphs import GraphSet

        specs = {k: ((self.z_dim,), torch.float32) if k == "z" else _SPECS[k] for k in input_names(self.cfg)}
        graphs = GraphSet(fn, self.device, self._io, specs, buckets_up_to(max_batch))
        self.buckets, self.max_batch = graphs.buckets, graphs.max_batch
        return graphs.run

    def _enable(self, mode: str, max_batch: int) -> None:
        """Build ``mode``, then serve it only if it passes the same rule as the precision did (and gives a
        seed the same image alone as in a batch)."""
        x = self.self_check_inputs()
        try:
            with self._lock, torch.inference_mode(), self._context():
                variant = self._build_variant(mode, max_batch)
            self._variant = variant
            out = self.generate_float(**x)
            alone = self.generate_float(**{k: None if v is None else v[:1] for k, v in x.items()})
        except Exception as e:  # a capture or compile failure: serve eager, say why
            self._variant, self.buckets, self.max_batch = None, None, 1024
            ok, why = False, f"could not build: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            ok, why = self._judge(out, self._reference())
            alone_ok, alone_why = self._judge(alone, out[:1])
            if not alone_ok:
                ok, why = False, f"seed 0 alone differs from seed 0 in a batch: {alone_why}"
        self.info["mode_check"] = {"mode": mode, "passed": ok, "reason": why}
        if ok:
            self.mode = mode
        else:
            self._variant, self.buckets, self.max_batch = None, None, 1024
            log.warning("torch %s %s failed its self-check (%s); serving eager", self.precision, mode, why)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode, "buckets": list(self.buckets or [])}
