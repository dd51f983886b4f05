"""TensorRT 10/11 at serving time: run a serialized plan (building one is ``projgan.export.tensorrt_build``).

``tensorrt`` is imported only inside these functions, so the rest of the project runs where
TensorRT is absent (it cannot be installed on our CI machines). Written against NVIDIA's
documented Python API shared by TensorRT 10 and 11: name-based I/O (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); device buffers are torch CUDA tensors (no pycuda).
A generator engine takes ``z`` and, where the model has them, ``class`` (int64) and ``psi`` (float32),
all on the one batch axis; the feed logic (``as_feeds``, ``split_batches``, ``pad_batch``) is plain numpy
so it is tested where TensorRT is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from projgan.config import GeneratorConfig
from projgan.errors import UserError
from projgan.serve.backends import Backend, check_inputs, plain_config
from projgan.serve.buckets import pad_rows

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


INPUT_DTYPES = {"z": np.float32, "class": np.int64, "psi": np.float32}  # the generator graphs' inputs


def order_inputs(names) -> tuple[str, ...]:
    """An engine's input names in the graph's order (z, class, psi); anything else is not our engine."""
    unknown = [n for n in names if n not in INPUT_DTYPES]
    if "z" not in names or unknown:
        raise UserError(f"the engine has inputs {list(names)}; a generator engine takes z (and class, psi)")
    return tuple(n for n in INPUT_DTYPES if n in names)


def as_feeds(inputs, names: tuple[str, ...], z_dim: int) -> dict[str, np.ndarray]:
    """``{name: array}`` for exactly ``names``, each contiguous in its graph dtype and with one batch size;
    a bare array is ``z`` (the engines of unconditional models)."""
    if not isinstance(inputs, dict):
        inputs = {"z": inputs}
    if set(inputs) != set(names):
        raise ValueError(f"the engine takes {list(names)}, got {sorted(inputs)}")
    feeds = {n: np.ascontiguousarray(inputs[n], dtype=INPUT_DTYPES[n]) for n in names}
    z = feeds["z"]
    if z.ndim != 2 or z.shape[1] != z_dim:
        raise ValueError(f"z must be [B, {z_dim}], got {list(z.shape)}")
    for n in names[1:]:
        if feeds[n].shape != (len(z),):
            raise ValueError(f"{n} must be [{len(z)}] like z's batch, got {list(feeds[n].shape)}")
    return feeds


def split_batches(feeds: dict[str, np.ndarray], max_batch: int) -> list[dict[str, np.ndarray]]:
    """Batches above the profile's max run as several calls, every input cut at the same rows."""
    n = len(feeds["z"])
    return [{k: v[i : i + max_batch] for k, v in feeds.items()} for i in range(0, max(n, 1), max_batch)]


def pad_batch(feeds: dict[str, np.ndarray], min_batch: int) -> dict[str, np.ndarray]:
    """A profile with min > 1: repeat the last row of every input up to ``min_batch`` (dropped after the run),
    as ``serve/buckets.py`` pads every bucket (a repeated real row keeps a class index in range)."""
    return pad_rows(feeds, max(min_batch, len(feeds["z"])))


def set_shape(context, name: str, shape: tuple[int, ...]) -> None:
    """``set_input_shape`` returns False (it does not raise) for a shape outside the profile: refuse it here,
    or the engine runs on the previous shape's bindings."""
    if not context.set_input_shape(name, shape):
        raise RuntimeError(f"TensorRT refused input {name!r} of shape {list(shape)} (outside the engine's profile)")


class EngineRunner:
    """One deserialized plan with one execution context; ``run`` holds a lock, so calls are serialised."""

    def __init__(self, plan_path: str | Path, device: str = "cuda"):
        ok, why = available()
        if not ok:
            raise UserError(f"cannot run {plan_path}: {why}", "serve with --backend onnxruntime or torch instead")
        import threading

        import torch

        trt = import_tensorrt()
        self._trt, self._torch = trt, torch
        self.device = torch.device(device)
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
        if len(outputs) != 1:
            raise UserError(f"{plan_path} has outputs {outputs}; expected one image")
        self.input_names, self.output_name = order_inputs(inputs), outputs[0]
        self.input_name = "z"
        lo, _, hi = self.engine.get_tensor_profile_shape("z", 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.z_dim = int(self.engine.get_tensor_shape("z")[1])
        self.resolution = int(self.engine.get_tensor_shape(self.output_name)[-1])
        self._dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in self.input_names}
        self._out_dtype = self._torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        with torch.cuda.device(self.device):
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream()

    def _torch_dtype(self, dt):
        trt, torch = self._trt, self._torch
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        for name, t in (("INT64", torch.int64), ("INT32", torch.int32)):  # class indices
            if hasattr(trt.DataType, name):
                table[getattr(trt.DataType, name)] = t
        if dt not in table:
            raise UserError(f"unsupported TensorRT I/O dtype {dt}")
        return table[dt]

    def run(self, inputs) -> np.ndarray:
        """``{"z": float32 [B, z_dim], "class": int64 [B], "psi": float32 [B]}`` (the engine's inputs; a bare
        array is z) -> float32 ``[B, 3, H, W]``; batches above the profile are split."""
        feeds = as_feeds(inputs, self.input_names, self.z_dim)
        parts = [self._run_one(part) for part in split_batches(feeds, self.max_batch)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run_one(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        b = len(feeds["z"])
        feeds = pad_batch(feeds, self.min_batch)
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            # named I/O (TensorRT 10): a shape and an address per input; the tensors live until the sync
            held = {n: torch.from_numpy(v).to(self.device).to(self._dtypes[n]).contiguous() for n, v in feeds.items()}
            for n, t in held.items():
                set_shape(self.context, n, tuple(t.shape))
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=self._out_dtype, device=self.device)
            for n, t in held.items():
                self.context.set_tensor_address(n, t.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            self.stream.synchronize()
            return out[:b].float().cpu().numpy()


def config_beside(plan_path: str | Path) -> GeneratorConfig | None:
    """The generator config of the export a plan sits in: its manifest, else (during ``pipeline export``, before
    the manifest is written) its ``generator/`` artifact; None for a plan on its own.

    An engine cannot say what its ``class`` input means; without this a conditional or style engine opened by
    path would fail as "could not open" and never be certified or served."""
    from projgan import artifacts

    d = Path(plan_path).parent
    if (d / artifacts.MANIFEST).exists():
        gen = artifacts.read_manifest(d, verify=False).get("generator")
        return GeneratorConfig.from_dict(gen) if gen else None
    if (d / artifacts.GENERATOR_DIR / artifacts.CONFIG_JSON).exists():
        return GeneratorConfig.from_dict(artifacts.read_generator_config(d / artifacts.GENERATOR_DIR)["generator"])
    return None


class TensorRTBackend(Backend):
    """A serialized TensorRT plan, run by ``projgan.serve.tensorrt`` (built by ``projgan.export.tensorrt_build``).

    ``cfg``: the export's generator config [default: ``config_beside(plan_path)``]; a plan with more inputs
    than ``z`` needs it.
    """

    def __init__(self, plan_path: Path, info: dict[str, Any] | None = None, cfg: GeneratorConfig | None = None,
                 device: str = "cuda"):
        self.runner = EngineRunner(plan_path, device)
        cfg = cfg or config_beside(plan_path)
        if cfg is None:
            if self.runner.input_names != ("z",):
                raise UserError(
                    f"{plan_path} takes {list(self.runner.input_names)}: serve its export directory",
                    "the manifest there says what the classes are",
                )
            cfg = plain_config(self.runner.z_dim, self.runner.resolution)
        check_inputs(cfg, self.runner.input_names)
        super().__init__(
            "tensorrt",
            str(self.runner.device),
            "fp16",
            self.runner.resolution,
            self.runner.z_dim,
            ["TensorRT"],
            dict(info or {}, file=str(plan_path)),
            max_batch=self.runner.max_batch,
            cfg=cfg,
        )

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.runner.run(inputs)
