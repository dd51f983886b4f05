"""TensorRT 10/11 at serving time: run a serialized plan (building one is ``projgan.export.tensorrt_build``).

``tensorrt`` is imported only inside these functions, so the rest of the project runs where
TensorRT is absent (it cannot be installed on our CI machines). Written against NVIDIA's
documented Python API shared by TensorRT 10 and 11: name-based I/O (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); device buffers are torch CUDA tensors (no pycuda).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from projgan.errors import UserError

MIN_MAJOR = 10


def import_tensorrt():
    """The ``tensorrt`` module (imported here only, so everything else runs without it)."""
    import tensorrt as trt  # optional dependency: pip install 'projgan[tensorrt]'

    return trt


def available() -> tuple[bool, str]:
    """Whether an engine can be built and run here, and if not, why (one line)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU on this machine"
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False, "torch is not installed"
    try:
        trt = import_tensorrt()
    except ImportError as e:
        return False, f"TensorRT is not installed ({e}); pip install 'projgan[tensorrt]'"
    except Exception as e:  # broken installs raise OSError/RuntimeError while loading libraries
        return False, f"TensorRT failed to load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_MAJOR:
        return False, f"TensorRT {trt.__version__} is too old (need {MIN_MAJOR} or newer)"
    return True, f"TensorRT {trt.__version__}"


def make_logger(trt):
    """Warnings and errors only: the build log is long and the export shows its own progress."""
    return trt.Logger(trt.Logger.WARNING)


class EngineRunner:
    """One deserialized plan with one execution context; ``run`` is not re-entrant (callers lock)."""

    def __init__(self, plan_path: str | Path):
        ok, why = available()
        if not ok:
            raise UserError(f"cannot run {plan_path}: {why}", "serve with --backend onnxruntime or torch instead")
        import threading

        import torch

        trt = import_tensorrt()
        self._trt, self._torch = trt, torch
        self._lock = threading.Lock()
        self.runtime = trt.Runtime(make_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise UserError(
                f"TensorRT {trt.__version__} cannot load {plan_path}",
                "plans only run on the TensorRT version and GPU type that built them: re-run pipeline export here",
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{plan_path} has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.z_dim = int(self.engine.get_tensor_shape(self.input_name)[1])
        self.resolution = int(self.engine.get_tensor_shape(self.output_name)[-1])
        self._in_dtype = self._torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self._out_dtype = self._torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, dt):
        trt, torch = self._trt, self._torch
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        if dt not in table:
            raise UserError(f"unsupported TensorRT I/O dtype {dt}")
        return table[dt]

    def run(self, z: np.ndarray) -> np.ndarray:
        """``z`` float32 ``[B, z_dim]`` -> float32 ``[B, 3, H, W]``; batches above the profile are split."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {list(z.shape)}")
        parts = [self._run_one(z[i : i + self.max_batch]) for i in range(0, len(z), self.max_batch)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run_one(self, z: np.ndarray) -> np.ndarray:
        torch = self._torch
        b = len(z)
        pad = max(0, self.min_batch - b)  # a profile with min > 1: pad, then drop the padding
        with self._lock, torch.cuda.stream(self.stream):
            zt = torch.from_numpy(np.concatenate([z, np.zeros((pad, self.z_dim), np.float32)]) if pad else z)
            zt = zt.to("cuda", non_blocking=False).to(self._in_dtype).contiguous()
            self.context.set_input_shape(self.input_name, tuple(zt.shape))
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=self._out_dtype, device="cuda")
            self.context.set_tensor_address(self.input_name, zt.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            self.stream.synchronize()
            return out[:b].float().cpu().numpy()
