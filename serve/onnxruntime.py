"""The ONNX Runtime backend: sessions with providers chosen from what the machine has, the model config an
exported graph records, and the w-space graph pair of style exports.

Subclasses ``projgan.serve.backends.Backend``; ``load_backend`` there picks it for ``.onnx`` files and
export folders.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from projgan.config import GeneratorConfig, parse_device
from projgan.errors import UserError
from projgan.generator import input_names, to_uint8, uint8_nhwc
from projgan.hardware import is_cuda
from projgan.serve.backends import Backend, check_inputs, plain_config
from projgan.serve.buckets import buckets_up_to

CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"


def providers_for(device: str, precision: str, available: list[str]) -> list:
    """The providers a session asks for: CUDA (on the GPU ``device`` names) only where the device is a GPU
    and ONNX Runtime has it (asking on a CPU-only machine prints long errors), then the CPU."""
    if not is_cuda(device):
        return [CPU_EP]
    if CUDA_EP not in available:
        raise UserError("ONNX Runtime has no CUDA provider here (the CPU-only onnxruntime package?)",
                        "pip install onnxruntime-gpu, or use --device cpu")
    opts = {"device_id": str(parse_device(device)[1] or 0)}
    if precision == "fp32":  # fp32 means fp32: TF32 convolutions would not be what the certificate judged
        opts["use_tf32"] = "0"
    return [(CUDA_EP, opts), CPU_EP]


def check_providers(device: str, got: list[str], path) -> None:
    """A session asked for CUDA but running on the CPU is refused: ONNX Runtime falls back silently when
    the CUDA provider cannot load (a missing cuDNN or CUDA library), and a "cuda" row would be a CPU row."""
    if is_cuda(device) and (not got or got[0] != CUDA_EP):
        raise UserError(
            f"ONNX Runtime could not use CUDA for {path}: the session runs on {got}",
            "check that the CUDA and cuDNN libraries onnxruntime-gpu needs are installed, or use --device cpu",
        )


def _ort_session(path: Path, device: str, precision: str):
    """An ONNX Runtime session with providers chosen from what the machine really has, checked after it opens."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise UserError(f"onnxruntime is not installed ({e})", "pip install onnxruntime-gpu") from None
    providers = providers_for(device, precision, ort.get_available_providers())
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:
        raise UserError(f"cannot load {path}: {str(e).splitlines()[0]}", "re-run pipeline export") from None
    check_providers(device, session.get_providers(), path)
    return session


def graph_config(session) -> GeneratorConfig:
    """The GeneratorConfig an exported graph records in its metadata, checked against its inputs.

    A graph with only ``z`` and no usable record (an export older than classes) is unconditional FastGAN.
    """
    names = [i.name for i in session.get_inputs()]
    meta = session.get_modelmeta().custom_metadata_map
    z = next((i for i in session.get_inputs() if i.name == "z"), None)
    if z is None or len(z.shape) != 2 or not isinstance(z.shape[1], int):
        raise UserError(f"the graph's inputs {names} have no z [batch, z_dim]", "export it with pipeline export")
    try:
        cfg = GeneratorConfig.from_dict(json.loads(meta["generator"])) if "generator" in meta else None
    except (UserError, TypeError, ValueError):
        cfg = None
    if cfg is None:
        out = session.get_outputs()[0].shape[-1]
        cfg = plain_config(int(z.shape[1]), out if isinstance(out, int) else 0)
    if cfg.z_dim != z.shape[1]:
        raise UserError(f"the graph's z is [batch, {z.shape[1]}] but its metadata says z_dim {cfg.z_dim}")
    check_inputs(cfg, names)
    return cfg


def _check_w_graphs(cfg: GeneratorConfig, mapping, synthesis, paths) -> None:
    """The w-space pair must be what export writes: the model's inputs -> w, and w -> image."""
    m_in, m_out = [i.name for i in mapping.get_inputs()], [o.name for o in mapping.get_outputs()]
    s_in = [i.name for i in synthesis.get_inputs()]
    if set(m_in) != set(input_names(cfg)) or m_out != ["w"] or s_in != ["w"]:
        raise UserError(
            f"{paths[0]} and {paths[1]} are not this model's w-space graphs "
            f"(mapping {m_in} -> {m_out}, synthesis {s_in})",
            "re-run pipeline export",
        )


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def bind_and_run(session, inputs: dict, device_type: str, device_id: int = 0):
    """Run ``session`` on torch tensors where they are (``device_type`` "cuda" or "cpu"), writing its first
    output into a torch tensor allocated beside them: IOBinding by pointer, no host round trip.

    ONNX Runtime's ``run_with_iobinding`` returns once the outputs are complete (it synchronises its own
    stream), so the caller must only make sure the inputs are complete before the call."""
    import torch

    binding = session.io_binding()
    held = {name: t.contiguous() for name, t in inputs.items()}  # alive until the run is over
    for name, t in held.items():
        np_type = np.dtype(str(t.dtype).removeprefix("torch."))
        binding.bind_input(name, device_type, device_id, np_type, tuple(t.shape), t.data_ptr())
    spec = session.get_outputs()[0]
    shape = (len(next(iter(held.values()))), *spec.shape[1:])
    if not all(isinstance(d, int) for d in shape):  # symbolic dims: let ONNX Runtime allocate, then copy
        binding.bind_output(spec.name, device_type, device_id)
        session.run_with_iobinding(binding)
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])
    name = _ORT_TYPES[spec.type]
    out = torch.empty(shape, dtype=getattr(torch, name), device=next(iter(held.values())).device)
    binding.bind_output(spec.name, device_type, device_id, np.dtype(name), shape, out.data_ptr())
    session.run_with_iobinding(binding)
    return out


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with providers chosen from what the machine really has (and checked after the session
    opens). On a GPU: device-resident IOBinding, inputs uploaded through pinned memory on a copy stream,
    uint8 images made on the device; batch-size buckets for the batcher (each new shape costs cuDNN a search).

    ``w_graphs`` (mapping, synthesis): a style export's certified w-space graphs, for ``map_w``/``synthesize_w``.
    """

    def __init__(
        self,
        onnx_path: Path,
        device: str,
        precision: str,
        info: dict[str, Any] | None = None,
        w_graphs: tuple[Path, Path] | None = None,
        max_batch: int = 64,
    ):
        self.session = _ort_session(Path(onnx_path), device, precision)
        cfg = graph_config(self.session)
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.input_name = "z"
        resolution = int(out.shape[-1]) if isinstance(out.shape[-1], int) else 0
        super().__init__(
            "onnxruntime", device, precision, resolution, cfg.z_dim, self.session.get_providers(), cfg=cfg
        )
        self.info = dict(info or {})
        self.info["file"] = str(onnx_path)
        self._lock = threading.Lock()
        self._io = None
        if is_cuda(device):
            from projgan.serve.cuda_io import DeviceIO

            self._io = DeviceIO(device)
            self.buckets = buckets_up_to(max_batch)
        self.w_sessions = None
        if w_graphs is not None:
            if not cfg.truncation:
                raise UserError(f"{onnx_path} is not a style model: it has no w space")
            self.w_sessions = tuple(_ort_session(Path(p), device, "fp32") for p in w_graphs)
            _check_w_graphs(cfg, *self.w_sessions, w_graphs)
            self.supports_w = True
            self.info["w_files"] = [str(p) for p in w_graphs]

    def _session_run(self, session, feeds: dict[str, np.ndarray], uint8: bool = False) -> np.ndarray:
        if self._io is None:
            out = session.run([session.get_outputs()[0].name], feeds)[0]
            return to_uint8(out) if uint8 else out
        import torch

        dev = torch.device(self.device)
        with self._lock, torch.inference_mode(), torch.cuda.device(dev):
            tensors = self._io.upload(feeds)
            torch.cuda.current_stream(dev).synchronize()  # ONNX Runtime runs on its own stream
            out = bind_and_run(session, tensors, "cuda", dev.index if dev.index is not None else 0)
            return self._io.download(uint8_nhwc(out)) if uint8 else out.cpu().numpy()

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        out = self._session_run(self.session, inputs)
        if not self.resolution:
            self.resolution = int(out.shape[-1])
        return out

    def generate(self, z: np.ndarray, classes=None, psi=None) -> np.ndarray:
        return self._session_run(self.session, self.inputs(z, classes, psi), uint8=True)

    def _map_w(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._session_run(self.w_sessions[0], inputs)

    def _synthesize(self, w: np.ndarray) -> np.ndarray:
        return self._session_run(self.w_sessions[1], {"w": w})
