"""The one home for running a generator: torch, ONNX Runtime, TensorRT behind one interface.

``Backend.generate(z, classes=None, psi=None) -> uint8[B, H, W, 3]`` is what the server calls;
``Backend.generate_float`` returns the raw ``[-1, 1]`` NCHW output the export parity check compares.
``classes`` (int64 ``[B]``, conditional models) and ``psi`` (float32 ``[B]``, style models) are
validated by ``projgan.generator.model_inputs``, the one place inputs are checked (ValueError).
Style models can also ``map_w`` (z -> w) and ``synthesize_w`` (w -> image) where ``supports_w``:
torch always, ONNX Runtime when the export holds the certified w-space graphs.
Serving and parity run this same code, so a certificate speaks for what is served.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from projgan import artifacts
from projgan.config import RESOLUTIONS, GeneratorConfig
from projgan.errors import UserError
from projgan.generator import classes_for_seeds, input_names, model_inputs, sample_latents, to_uint8
from projgan.hardware import cpu_has_fast_bf16, is_cuda, resolve_device  # noqa: F401 - parity asks here

BACKENDS = ("torch", "onnxruntime", "tensorrt")
SELF_CHECK_SEEDS = 4  # seeds a reduced-precision torch backend must pass at load
SELF_CHECK_PSI = (1.0, 0.7)  # style models: the self-check alternates these truncations
W_PARITY_KEY = "onnxruntime-w"  # the certificate's entry for the w-space graphs
log = logging.getLogger("projgan.serve")


def check_inputs(cfg: GeneratorConfig, names) -> None:
    """A graph's or engine's input names must be the ones the model's config implies."""
    want = input_names(cfg)
    if set(names) != set(want):
        raise UserError(
            f"the model takes inputs {list(names)}, but its config ({cfg.arch}, {cfg.num_classes} classes) "
            f"implies {list(want)}",
            "re-run pipeline export",
        )


def plain_config(z_dim: int, resolution: int = 0) -> GeneratorConfig:
    """What a graph with only ``z`` and no config (an export older than classes) is: unconditional FastGAN."""
    return GeneratorConfig(resolution=resolution if resolution in RESOLUTIONS else 256, z_dim=z_dim)


@dataclass
class Backend:
    """Base: subclasses implement ``_run(inputs) -> float32 NCHW`` (numpy or torch) for the named
    inputs of ``model_inputs``; style-capable ones also ``_map_w(inputs)`` and ``_synthesize(w)``."""

    name: str
    device: str
    precision: str
    resolution: int
    z_dim: int
    providers: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # model card extras (kimg, fid, parity, files)
    max_batch: int = 1024  # largest batch the backend accepts (TensorRT: the profile's max)
    cfg: GeneratorConfig | None = None  # what the inputs are (classes, truncation); None: z only
    supports_w: bool = False  # can map z -> w and synthesise from w
    buckets: tuple[int, ...] | None = None  # the batch sizes it runs (serve/buckets.py); None: any size

    def __post_init__(self):
        if self.cfg is None:
            self.cfg = plain_config(self.z_dim, self.resolution)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.cfg.names()

    @property
    def truncation(self) -> bool:
        return self.cfg.truncation

    @property
    def w_dim(self) -> int:
        return (self.cfg.w_dim or self.cfg.z_dim) if self.cfg.truncation else 0

    def default_classes(self, seeds) -> np.ndarray | None:
        """The classes seeds get when the caller names none (``classes_for_seeds``); None if unconditional."""
        return classes_for_seeds(seeds, self.num_classes) if self.cfg.conditional else None

    def inputs(self, z: np.ndarray, classes=None, psi=None) -> dict[str, np.ndarray]:
        feeds = model_inputs(self.cfg, z, classes, psi)
        if feeds["z"].ndim != 2 or feeds["z"].shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {list(feeds['z'].shape)}")
        return feeds

    def _run(self, inputs: dict[str, np.ndarray]):
        raise NotImplementedError

    def generate_float(self, z: np.ndarray, classes=None, psi=None) -> np.ndarray:
        return _numpy(self._run(self.inputs(z, classes, psi)))

    def generate(self, z: np.ndarray, classes=None, psi=None) -> np.ndarray:
        return to_uint8(self._run(self.inputs(z, classes, psi)))

    def _need_w(self) -> None:
        if not self.supports_w:
            raise NotImplementedError(f"{self.name} ({self.cfg.arch}) cannot map to or synthesise from w here")

    def map_w(self, z: np.ndarray, classes=None, psi=None) -> np.ndarray:
        """z (and class, psi) -> w ``float32 [B, w_dim]``, truncation applied."""
        self._need_w()
        return _numpy(self._map_w(self.inputs(z, classes, psi)))

    def synthesize_w_float(self, w: np.ndarray) -> np.ndarray:
        self._need_w()
        w = np.ascontiguousarray(w, dtype=np.float32)
        if w.ndim != 2 or w.shape[1] != self.w_dim:
            raise ValueError(f"w must be [B, {self.w_dim}], got {list(w.shape)}")
        return _numpy(self._synthesize(w))

    def synthesize_w(self, w: np.ndarray) -> np.ndarray:
        """w ``float32 [B, w_dim]`` -> uint8 ``[B, H, W, 3]``: interpolation frames in w space."""
        return to_uint8(self.synthesize_w_float(w))

    def _map_w(self, inputs: dict[str, np.ndarray]):
        raise NotImplementedError

    def _synthesize(self, w: np.ndarray):
        raise NotImplementedError

    def warmup(self, batch_sizes=(1,)) -> None:
        for b in batch_sizes:
            seeds = range(min(b, self.max_batch))
            self.generate(sample_latents(seeds, self.z_dim), self.default_classes(seeds))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "providers": self.providers,
            "resolution": self.resolution,
            "z_dim": self.z_dim,
            "arch": self.cfg.arch,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "truncation": self.truncation,
            "supports_w": self.supports_w,
            **self.info,
        }

    def close(self) -> None:
        pass


def _numpy(out) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.float().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------- choosing and loading


def _parity_ok(manifest: dict[str, Any], key: str) -> bool | None:
    entry = manifest.get("parity", {}).get(key)
    return None if entry is None else bool(entry.get("passed"))


def _manifest_config(manifest: dict[str, Any] | None) -> GeneratorConfig | None:
    """The export's generator config (old manifests without the new fields read as unconditional FastGAN)."""
    if not manifest or not manifest.get("generator"):
        return None
    return GeneratorConfig.from_dict(manifest["generator"])


def load_backend(
    source: str | Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    force: bool = False,
    torch_mode: str = "auto",
    max_batch: int = 64,
) -> Backend:
    """Open SOURCE (export dir, run dir, generator dir, .onnx or .plan file) with a backend.

    ``auto`` picks the fastest backend that exists here and passed parity: TensorRT, then
    ONNX Runtime CUDA, then torch CUDA; on a CPU, ONNX Runtime fp32 (measured fastest at batch 1
    on our CPU machines, benchmarks/cpu_generator256.json), then torch (bf16 where the CPU has
    AMX/AVX512-BF16 and the bf16 self-check passes). ``torch_mode`` and ``max_batch``: the torch
    backend's eager / graphs / compile choice and the largest batch it captures (``serve/torch_backend.py``).
    """
    device = resolve_device(device)
    cuda = is_cuda(device)
    TorchBackend = _torch().TorchBackend  # imported when first used
    src = Path(source)
    if not src.exists():
        raise UserError(f"{src} does not exist", "pass an export directory, a run directory or a generator/ folder")
    if src.is_file() and src.suffix == ".onnx":
        if backend not in ("auto", "onnxruntime"):
            raise UserError(f"{src} is an ONNX file: use --backend onnxruntime")
        return _onnxruntime().OnnxRuntimeBackend(src, device, "fp16" if ".fp16" in src.name else "fp32",
                                                 max_batch=max_batch)
    if src.is_file() and src.suffix in (".plan", ".engine"):
        if backend not in ("auto", "tensorrt"):
            raise UserError(f"{src} is a TensorRT engine: use --backend tensorrt")
        # its export's config (tensorrt.config_beside) says what the extra inputs are
        return _tensorrt().TensorRTBackend(src, device=device if cuda else "cuda")

    manifest = None
    if (src / artifacts.MANIFEST).exists():
        manifest = artifacts.read_manifest(src, verify=True)
    if manifest is None:  # a run or generator folder: only torch can run it
        if backend not in ("auto", "torch"):
            raise UserError(f"{src} has no export; --backend {backend} needs one", f"run: pipeline export {src}")
        G, config = artifacts.load_generator(src)
        return TorchBackend(G, config, device, precision, mode=torch_mode, max_batch=max_batch)

    def usable(key: str) -> bool:
        ok = _parity_ok(manifest, key)
        return bool(ok) or force

    def info(key: str) -> dict[str, Any]:
        return {"parity": manifest.get("parity", {}).get(key), "meta": manifest.get("generator_meta", {})}

    files = manifest.get("files", {})
    cfg = _manifest_config(manifest)
    plan = src / artifacts.TRT_PLAN
    onnx16, onnx32 = src / artifacts.ONNX_FP16, src / artifacts.ONNX_FP32
    w_graphs = None
    if all(f in files for f in artifacts.W_FILES.values()) and usable(W_PARITY_KEY):
        w_graphs = (src / artifacts.W_FILES["mapping"], src / artifacts.W_FILES["synthesis"])
    candidates: list[str] = [backend] if backend != "auto" else []
    if backend == "auto":
        if cuda:
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
                return _tensorrt().TensorRTBackend(plan, info("tensorrt"), cfg, device=device)
            except UserError as e:
                if backend != "auto":
                    raise
                reasons.append(f"tensorrt: {e}")
        elif name == "onnxruntime":
            # fp16 only pays off on a GPU; on a CPU it was measured no faster than fp32.
            order = [("onnxruntime-fp16", onnx16), ("onnxruntime-fp32", onnx32)] if cuda else []
            order.append(("onnxruntime-fp32", onnx32))
            for key, path in order:
                if path.name in files and usable(key):
                    try:
                        return _onnxruntime().OnnxRuntimeBackend(path, device, key.split("-")[1], info(key), w_graphs,
                                                                 max_batch=max_batch)
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
            b = TorchBackend(G, config, device, precision, parity=None if force else certified, mode=torch_mode,
                             max_batch=max_batch)
            b.info["parity"] = manifest.get("parity", {}).get(f"torch-{b.precision}")
            return b
        else:
            raise UserError(f"unknown backend {name!r}", f"choose one of auto, {', '.join(BACKENDS)}")
    raise UserError(f"no usable backend for {src}: " + "; ".join(reasons), "re-run pipeline export, or pass --force")


def describe_json(b: Backend) -> str:
    return json.dumps(b.describe(), default=str)


def _torch():
    """serve/torch_backend.py, imported when first used (it subclasses Backend from this module)."""
    from projgan.serve import torch_backend

    return torch_backend


def _onnxruntime():
    """serve/onnxruntime.py, imported when first used (it subclasses Backend from this module)."""
    from projgan.serve import onnxruntime

    return onnxruntime


def _tensorrt():
    """serve/tensorrt.py, imported when first used (``tensorrt`` itself only when an engine is opened)."""
    from projgan.serve import tensorrt

    return tensorrt


def __getattr__(name: str):  # the torch, ONNX Runtime and TensorRT backends live in their own modules; reachable here
    if name in ("OnnxRuntimeBackend", "graph_config"):
        return getattr(_onnxruntime(), name)
    if name == "TorchBackend":
        return _torch().TorchBackend
    if name == "TensorRTBackend":
        return _tensorrt().TensorRTBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
