"""The ONNX Runtime backend: sessions with providers chosen from what the machine has, the model config an
exported graph records, and the w-space graph pair of style exports.

Subclasses ``projgan.serve.backends.Backend``; ``load_backend`` there picks it for ``.onnx`` files and
export folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from projgan.config import GeneratorConfig
from projgan.errors import UserError
from projgan.generator import input_names
from projgan.serve.backends import Backend, check_inputs, plain_config


def _ort_session(path: Path, device: str, precision: str):
    """An ONNX Runtime session with providers chosen from what the machine really has."""
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
        raise UserError("ONNX Runtime has no CUDA provider here", "pip install onnxruntime-gpu, or use --device cpu")
    else:
        providers = ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:
        raise UserError(f"cannot load {path}: {str(e).splitlines()[0]}", "re-run pipeline export") from None


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


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with providers chosen from what the machine really has; IOBinding on CUDA.

    ``w_graphs`` (mapping, synthesis): a style export's certified w-space graphs, for ``map_w``/``synthesize_w``.
    """

    def __init__(
        self,
        onnx_path: Path,
        device: str,
        precision: str,
        info: dict[str, Any] | None = None,
        w_graphs: tuple[Path, Path] | None = None,
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
        self.w_sessions = None
        if w_graphs is not None:
            if not cfg.truncation:
                raise UserError(f"{onnx_path} is not a style model: it has no w space")
            self.w_sessions = tuple(_ort_session(Path(p), device, "fp32") for p in w_graphs)
            _check_w_graphs(cfg, *self.w_sessions, w_graphs)
            self.supports_w = True
            self.info["w_files"] = [str(p) for p in w_graphs]

    def _session_run(self, session, feeds: dict[str, np.ndarray]) -> np.ndarray:
        output = session.get_outputs()[0].name
        if self.device != "cuda":
            return session.run([output], feeds)[0]
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(output, "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        out = self._session_run(self.session, inputs)
        if not self.resolution:
            self.resolution = int(out.shape[-1])
        return out

    def _map_w(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._session_run(self.w_sessions[0], inputs)

    def _synthesize(self, w: np.ndarray) -> np.ndarray:
        return self._session_run(self.w_sessions[1], {"w": w})


