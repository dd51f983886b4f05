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

import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from projgan import artifacts
from projgan.config import RESOLUTIONS, GeneratorConfig
from projgan.errors import UserError
from projgan.generator import classes_for_seeds, input_names, model_inputs, run_torch, sample_latents, to_uint8
from projgan.hardware import cpu_has_fast_bf16, resolve_device
from projgan.stylegan2 import WMapping, WSynthesis

BACKENDS = ("torch", "onnxruntime", "tensorrt")
SELF_CHECK_SEEDS = 4  # seeds a reduced-precision torch backend must pass at load
SELF_CHECK_PSI = (1.0, 0.7)  # style models: the self-check alternates these truncations
W_PARITY_KEY = "onnxruntime-w"  # the certificate's entry for the w-space graphs
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
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
        style = hasattr(G, "mapping") and hasattr(G, "synthesis")
        super().__init__("torch", device, precision, cfg.resolution, cfg.z_dim, cfg=cfg, supports_w=style)
        self.G = G.to(device).eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self._mapping, self._synthesis = (WMapping(self.G), WSynthesis(self.G)) if style else (None, None)
        self.dtype = _DTYPES[precision]
        self.info = {"meta": config.get("meta", {})}
        self._lock = threading.Lock()  # BatchNorm modules are not re-entrant across threads
        if auto and self.dtype is not None:
            self._check_reduced_precision(parity)

    def self_check_inputs(self) -> dict[str, Any]:
        """The load-time check's seeds, with their default classes and both truncations of a style model."""
        seeds = range(SELF_CHECK_SEEDS)
        psi = [SELF_CHECK_PSI[i % len(SELF_CHECK_PSI)] for i in seeds] if self.truncation else None
        return {"z": sample_latents(seeds, self.z_dim), "classes": self.default_classes(seeds), "psi": psi}

    def _check_reduced_precision(self, parity: dict[str, Any] | None) -> None:
        from projgan import similarity as metrics

        if parity is not None and not parity.get("passed", False):
            ok, why = False, f"the export's certificate failed it: {parity.get('reason', '')}"
        else:
            x = self.self_check_inputs()
            out = self.generate_float(**x)
            dtype, self.dtype = self.dtype, None
            ref = self.generate_float(**x)
            self.dtype = dtype
            m = metrics.compare(ref, out)
            ok, why = metrics.judge(m, reduced=True, t=self.self_check_thresholds)
            why += f" on {SELF_CHECK_SEEDS} seeds (reference std {m['ref_std']})"
        self.info["precision_check"] = {"precision": self.precision, "passed": ok, "reason": why}
        if not ok:
            log.warning("torch %s failed its parity self-check (%s); serving fp32", self.precision, why)
            self.precision, self.dtype = "fp32", None

    def _autocast(self):
        return contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device, dtype=self.dtype)

    def _call(self, fn, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        """``fn(tensors)`` under the lock and inference mode (``fn`` applies ``_autocast``); float32 out."""
        with self._lock, torch.inference_mode():
            n = len(next(iter(inputs.values())))
            # oneDNN takes a different fp32 conv path for a batch of one (pixels differ by 1/255
            # from the same seed in a larger batch); padding to two keeps a seed's bytes the same
            # in every batch composition.
            if self.device == "cpu" and self.dtype is None and n == 1:
                inputs = {k: np.concatenate([v, v]) for k, v in inputs.items()}
            t = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in inputs.items()}
            return fn(t).float()[:n]

    def _w(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """A style model's w in fp32 whatever the precision: the mapping is a few small matmuls, and
        truncation mixes it with the fp32 ``w_avg``."""
        return run_torch(self._mapping, t)

    def _image(self, w: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self._synthesis(w)

    def _run(self, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        if self.supports_w:
            return self._call(lambda t: self._image(self._w(t)), inputs)

        def full(t):
            with self._autocast():
                return run_torch(self.G, t)

        return self._call(full, inputs)

    def _map_w(self, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        return self._call(self._w, inputs)

    def _synthesize(self, w: np.ndarray) -> torch.Tensor:
        return self._call(lambda t: self._image(t["w"]), {"w": w})


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
        return _onnxruntime().OnnxRuntimeBackend(src, device, "fp16" if ".fp16" in src.name else "fp32")
    if src.is_file() and src.suffix in (".plan", ".engine"):
        if backend not in ("auto", "tensorrt"):
            raise UserError(f"{src} is a TensorRT engine: use --backend tensorrt")
        beside = src.parent / artifacts.MANIFEST  # its export's config says what the extra inputs are
        cfg = _manifest_config(artifacts.read_manifest(src.parent, verify=False)) if beside.exists() else None
        return _tensorrt().TensorRTBackend(src, cfg=cfg)

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
    cfg = _manifest_config(manifest)
    plan = src / artifacts.TRT_PLAN
    onnx16, onnx32 = src / artifacts.ONNX_FP16, src / artifacts.ONNX_FP32
    w_graphs = None
    if all(f in files for f in artifacts.W_FILES.values()) and usable(W_PARITY_KEY):
        w_graphs = (src / artifacts.W_FILES["mapping"], src / artifacts.W_FILES["synthesis"])
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
                return _tensorrt().TensorRTBackend(plan, info("tensorrt"), cfg)
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
                        return _onnxruntime().OnnxRuntimeBackend(path, device, key.split("-")[1], info(key), w_graphs)
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


def _onnxruntime():
    """serve/onnxruntime.py, imported when first used (it subclasses Backend from this module)."""
    from projgan.serve import onnxruntime

    return onnxruntime


def _tensorrt():
    """serve/tensorrt.py, imported when first used (``tensorrt`` itself only when an engine is opened)."""
    from projgan.serve import tensorrt

    return tensorrt


def __getattr__(name: str):  # the ONNX Runtime and TensorRT backends live in their own modules; reachable here
    if name in ("OnnxRuntimeBackend", "graph_config"):
        return getattr(_onnxruntime(), name)
    if name == "TensorRTBackend":
        return _tensorrt().TensorRTBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
