"""The one home for running a generator: torch, ONNX Runtime, TensorRT behind one interface.

``Backend.generate(z: float32[B, z_dim]) -> uint8[B, H, W, 3]`` is what the server calls;
``Backend.generate_float`` returns the raw ``[-1, 1]`` NCHW output the export parity check
compares. Serving and parity run this same code, so a certificate speaks for what is served.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from projgan import artifacts
from projgan.errors import UserError
from projgan.generator import sample_latents, to_uint8
from projgan.hardware import cpu_has_fast_bf16, resolve_device

BACKENDS = ("torch", "onnxruntime", "tensorrt")
SELF_CHECK_SEEDS = 4  # seeds a reduced-precision torch backend must pass at load
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("projgan.serve")


@dataclass
class Backend:
    """Base: subclasses implement ``_run(z) -> float32 NCHW`` (numpy or torch)."""

    name: str
    device: str
    precision: str
    resolution: int
    z_dim: int
    providers: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # model card extras (kimg, fid, parity, files)
    max_batch: int = 1024  # largest batch the backend accepts (TensorRT: the profile's max)

    def _run(self, z: np.ndarray):
        raise NotImplementedError

    def generate_float(self, z: np.ndarray) -> np.ndarray:
        out = self._run(np.ascontiguousarray(z, dtype=np.float32))
        if isinstance(out, torch.Tensor):
            out = out.float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def generate(self, z: np.ndarray) -> np.ndarray:
        return to_uint8(self._run(np.ascontiguousarray(z, dtype=np.float32)))

    def warmup(self, batch_sizes=(1,)) -> None:
        for b in batch_sizes:
            self.generate(sample_latents(range(min(b, self.max_batch)), self.z_dim))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "providers": self.providers,
            "resolution": self.resolution,
            "z_dim": self.z_dim,
            **self.info,
        }

    def close(self) -> None:
        pass


class TorchBackend(Backend):
    """Eager PyTorch in eval + inference mode; channels_last; reduced precision where it is fast.

    With ``precision="auto"`` a reduced precision (bf16 on a CPU with AMX/AVX512-BF16, fp16 on a GPU)
    must first pass a self-check on a few seeds against fp32 with the export certificate's metrics
    and thresholds (``projgan.similarity``); if it fails, or the export's certificate says it
    failed (``parity``), the backend falls back to fp32 and says why in ``info["precision_check"]``.
    """

    self_check_thresholds = None  # None: projgan.similarity's defaults (the certificate's)

    def __init__(
        self,
        G: torch.nn.Module,
        config: dict[str, Any],
        device: str,
        precision: str,
        parity: dict[str, Any] | None = None,
    ):
        cfg = G.cfg
        auto = precision == "auto"
        if auto:
            if device == "cuda":
                precision = "fp16"
            else:
                precision = "bf16" if cpu_has_fast_bf16() else "fp32"
        if precision not in _DTYPES:
            raise UserError(f"unknown precision {precision!r}", "choose auto, fp32, bf16 or fp16")
        super().__init__("torch", device, precision, cfg.resolution, cfg.z_dim)
        self.G = G.to(device).eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.dtype = _DTYPES[precision]
        self.info = {"meta": config.get("meta", {})}
        self._lock = threading.Lock()  # BatchNorm modules are not re-entrant across threads
        if auto and self.dtype is not None:
            self._check_reduced_precision(parity)

    def _check_reduced_precision(self, parity: dict[str, Any] | None) -> None:
        from projgan import similarity as metrics

        if parity is not None and not parity.get("passed", False):
            ok, why = False, f"the export's certificate failed it: {parity.get('reason', '')}"
        else:
            z = sample_latents(range(SELF_CHECK_SEEDS), self.z_dim)
            out = self.generate_float(z)
            dtype, self.dtype = self.dtype, None
            ref = self.generate_float(z)
            self.dtype = dtype
            m = metrics.compare(ref, out)
            ok, why = metrics.judge(m, reduced=True, t=self.self_check_thresholds)
            why += f" on {SELF_CHECK_SEEDS} seeds (reference std {m['ref_std']})"
        self.info["precision_check"] = {"precision": self.precision, "passed": ok, "reason": why}
        if not ok:
            log.warning("torch %s failed its parity self-check (%s); serving fp32", self.precision, why)
            self.precision, self.dtype = "fp32", None

    def _run(self, z: np.ndarray) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            n = len(z)
            # oneDNN takes a different fp32 conv path for a batch of one (pixels differ by 1/255
            # from the same seed in a larger batch); padding to two keeps a seed's bytes the same
            # in every batch composition.
            if self.device == "cpu" and self.dtype is None and n == 1:
                z = np.concatenate([z, z])
            zt = torch.from_numpy(z).to(self.device, non_blocking=True)
            if self.dtype is None:
                return self.G(zt).float()[:n]
            with torch.autocast(self.device, dtype=self.dtype):
                return self.G(zt).float()[:n]


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with providers chosen from what the machine really has; IOBinding on CUDA."""

    def __init__(self, onnx_path: Path, device: str, precision: str, info: dict[str, Any] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError(f"onnxruntime is not installed ({e})", "pip install onnxruntime-gpu") from None
        available = ort.get_available_providers()
        # Only ask for CUDA where torch sees a GPU: asking on a CPU-only machine prints long errors.
        if device == "cuda" and "CUDAExecutionProvider" in available:
            # fp32 means fp32: TF32 convolutions would miss the certificate's 1e-4 tolerance.
            cuda_opts = {"use_tf32": "0"} if precision == "fp32" else {}
            providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
        elif device == "cuda":
            raise UserError(
                "ONNX Runtime has no CUDA provider here", "pip install onnxruntime-gpu, or use --device cpu"
            )
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as e:
            raise UserError(f"cannot load {onnx_path}: {str(e).splitlines()[0]}", "re-run pipeline export") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        z_dim = int(inp.shape[1])
        resolution = int(out.shape[-1]) if isinstance(out.shape[-1], int) else 0
        super().__init__("onnxruntime", device, precision, resolution, z_dim, self.session.get_providers())
        self.info = dict(info or {})
        self.info["file"] = str(onnx_path)

    def _run(self, z: np.ndarray) -> np.ndarray:
        if self.device == "cuda":
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, z)
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self.output_name], {self.input_name: z})[0]
        if not self.resolution:
            self.resolution = int(out.shape[-1])
        return out


class TensorRTBackend(Backend):
    """A serialized TensorRT plan, run by ``projgan.serve.tensorrt`` (built by ``projgan.export.tensorrt_build``)."""

    def __init__(self, plan_path: Path, info: dict[str, Any] | None = None):
        from projgan.serve import tensorrt as trt_runtime

        self.runner = trt_runtime.EngineRunner(plan_path)
        super().__init__(
            "tensorrt",
            "cuda",
            "fp16",
            self.runner.resolution,
            self.runner.z_dim,
            ["TensorRT"],
            dict(info or {}, file=str(plan_path)),
            max_batch=self.runner.max_batch,
        )

    def _run(self, z: np.ndarray) -> np.ndarray:
        return self.runner.run(z)


# ---------------------------------------------------------------- choosing and loading


def _parity_ok(manifest: dict[str, Any], key: str) -> bool | None:
    entry = manifest.get("parity", {}).get(key)
    return None if entry is None else bool(entry.get("passed"))


def load_backend(
    source: str | Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    force: bool = False,
) -> Backend:
    """Open SOURCE (export dir, run dir, generator dir, .onnx or .plan file) with a backend.

    ``auto`` picks the fastest backend that exists here and passed parity: TensorRT, then
    ONNX Runtime CUDA, then torch CUDA; on a CPU, ONNX Runtime fp32 (measured fastest at batch 1
    on our CPU machines, benchmarks/cpu_generator256.json), then torch (bf16 where the CPU has
    AMX/AVX512-BF16 and the bf16 self-check passes).
    """
    device = resolve_device(device)
    src = Path(source)
    if not src.exists():
        raise UserError(f"{src} does not exist", "pass an export directory, a run directory or a generator/ folder")
    if src.is_file() and src.suffix == ".onnx":
        if backend not in ("auto", "onnxruntime"):
            raise UserError(f"{src} is an ONNX file: use --backend onnxruntime")
        return OnnxRuntimeBackend(src, device, "fp16" if ".fp16" in src.name else "fp32")
    if src.is_file() and src.suffix in (".plan", ".engine"):
        if backend not in ("auto", "tensorrt"):
            raise UserError(f"{src} is a TensorRT engine: use --backend tensorrt")
        return TensorRTBackend(src)

    manifest = None
    if (src / artifacts.MANIFEST).exists():
        manifest = artifacts.read_manifest(src, verify=True)
    if manifest is None:  # a run or generator folder: only torch can run it
        if backend not in ("auto", "torch"):
            raise UserError(f"{src} has no export; --backend {backend} needs one", f"run: pipeline export {src}")
        G, config = artifacts.load_generator(src)
        return TorchBackend(G, config, device, precision)

    def usable(key: str) -> bool:
        ok = _parity_ok(manifest, key)
        return bool(ok) or force

    def info(key: str) -> dict[str, Any]:
        return {"parity": manifest.get("parity", {}).get(key), "meta": manifest.get("generator_meta", {})}

    files = manifest.get("files", {})
    plan = src / artifacts.TRT_PLAN
    onnx16, onnx32 = src / artifacts.ONNX_FP16, src / artifacts.ONNX_FP32
    candidates: list[str] = [backend] if backend != "auto" else []
    if backend == "auto":
        if device == "cuda":
            candidates = ["tensorrt", "onnxruntime", "torch"]
        else:
            candidates = ["onnxruntime", "torch"]
    reasons = []
    for name in candidates:
        if name == "tensorrt":
            if artifacts.TRT_PLAN not in files:
                reasons.append("tensorrt: no engine in this export")
                continue
            if not usable("tensorrt"):
                reasons.append("tensorrt: engine failed parity (use --force to serve it anyway)")
                continue
            try:
                return TensorRTBackend(plan, info("tensorrt"))
            except UserError as e:
                if backend != "auto":
                    raise
                reasons.append(f"tensorrt: {e}")
        elif name == "onnxruntime":
            # fp16 only pays off on a GPU; on a CPU it was measured no faster than fp32.
            order = [("onnxruntime-fp16", onnx16), ("onnxruntime-fp32", onnx32)] if device == "cuda" else []
            order.append(("onnxruntime-fp32", onnx32))
            for key, path in order:
                if path.name in files and usable(key):
                    try:
                        return OnnxRuntimeBackend(path, device, key.split("-")[1], info(key))
                    except UserError as e:
                        if backend != "auto":
                            raise
                        reasons.append(f"{key}: {e}")
                        break
            else:
                reasons.append("onnxruntime: no ONNX file that passed parity")
        elif name == "torch":
            gen_dir = src / artifacts.GENERATOR_DIR
            if not gen_dir.exists():
                reasons.append("torch: the export holds no generator/ artifact")
                continue
            if _parity_ok(manifest, "torch-fp32") is False and not force:
                reasons.append("torch: the generator failed its own reference check (use --force)")
                continue
            G, config = artifacts.load_generator(gen_dir)
            certified = manifest.get("parity", {}).get("torch-bf16") if device == "cpu" else None
            b = TorchBackend(G, config, device, precision, parity=None if force else certified)
            b.info["parity"] = manifest.get("parity", {}).get(f"torch-{b.precision}")
            return b
        else:
            raise UserError(f"unknown backend {name!r}", f"choose one of auto, {', '.join(BACKENDS)}")
    raise UserError(f"no usable backend for {src}: " + "; ".join(reasons), "re-run pipeline export, or pass --force")


def describe_json(b: Backend) -> str:
    return json.dumps(b.describe(), default=str)
