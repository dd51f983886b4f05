"""Build a TensorRT 10/11 engine (a ``.plan``) from the fp16 ONNX; serving only runs plans.

Written against NVIDIA's documented Python API, the same names in TensorRT 10 and 11:
``Builder.create_network``, ``OnnxParser.parse_from_file``, one optimization profile over the batch
axis (shared by ``z`` and, where the model has them, ``class`` and ``psi``), a workspace memory-pool limit, a persisted timing cache, ``build_serialized_network``.
Precision comes from the ONNX itself: TensorRT 10.12 deprecated and 11 removed the FP16 builder
flag, so the network is created strongly typed where the enum has that flag. ``tensorrt`` is
imported inside ``build_engine`` only (it cannot be installed on our CI machines);
tests/test_tensorrt_build.py runs this code against a fake of exactly these API names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from projgan import artifacts
from projgan.serve.tensorrt import INPUT_DTYPES as GRAPH_INPUTS
from projgan.serve.tensorrt import import_tensorrt, make_logger


def _network_flags(trt) -> tuple[int, list[str]]:
    """STRONGLY_TYPED where this TensorRT has it (10.x: opt-in; 11.x: accepted, always on).

    EXPLICIT_BATCH is not set: it is the only mode since 10.0 and deprecated there.
    """
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return (0, []) if flag is None else (1 << int(flag), ["STRONGLY_TYPED"])


def _attach_timing_cache(config, path: Path | None) -> str:
    """Load the cache at ``path`` into ``config``; a stale one (other GPU or version) is replaced.

    ``set_timing_cache`` returns False when the cache's header does not match this GPU and
    TensorRT (``ignore_mismatch=False``: such timings would mislead tactic choice).
    """
    if path is None:
        return "disabled"
    blob = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return "reused" if blob else "new"
    if blob:
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, False):
            return "stale cache replaced (another GPU or TensorRT version wrote it)"
    return "refused by TensorRT; built without one"


def _save_timing_cache(config, path: Path | None) -> bool:
    """Write the cache back; ``get_timing_cache`` returns None when the config holds none."""
    cache = config.get_timing_cache() if path is not None else None
    if cache is None:
        return False
    artifacts.atomic_write_bytes(path, bytes(cache.serialize()))
    return True


def profile_shapes(inputs, profile: tuple[int, int, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes per network input: the batch axis from the profile, the rest as parsed.

    Every input (z ``[batch, z_dim]``, class and psi ``[batch]``) shares the one batch axis, so one
    profile covers them all; TensorRT requires a shape for each dynamic input.
    """
    lo, opt, hi = profile
    out = {}
    for t in inputs:
        rest = tuple(int(d) for d in t.shape[1:])
        out[t.name] = ((lo, *rest), (opt, *rest), (hi, *rest))
    return out


def _gpu() -> dict[str, str]:
    """The GPU the plan was built for: a plan runs only on the same GPU type and TensorRT version."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
    }


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: tuple[int, int, int],
    workspace_gib: float = 4.0,
    timing_cache_path: str | Path | None = None,
) -> dict[str, Any]:
    """Parse ``onnx_path``, build a plan for batches ``min..max`` (tuned for ``opt``), write it.

    ``profile`` is the export's validated batch profile (``ExportConfig.batch_sizes``). Returns
    what the manifest records: TensorRT version, GPU, profile, flags and the timing cache's fate.
    """
    trt = import_tensorrt()
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flags, flag_names = _network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors[:3]))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    if "z" not in names or not set(names) <= set(GRAPH_INPUTS):
        raise RuntimeError(f"{onnx_path} has inputs {names}; a generator graph takes z (and class, psi)")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    lo, opt, hi = profile
    shapes = builder.create_optimization_profile()
    for name, dims in profile_shapes(inputs, profile).items():
        shapes.set_shape(name, *dims)
    if config.add_optimization_profile(shapes) < 0:
        raise RuntimeError(f"TensorRT rejected the batch profile {lo},{opt},{hi} for inputs {names}")
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    cache_state = _attach_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    artifacts.atomic_write_bytes(plan_path, bytes(serialized))
    saved = _save_timing_cache(config, cache_path)
    info: dict[str, Any] = {
        "version": trt.__version__,
        **_gpu(),
        "profile": {"min": lo, "opt": opt, "max": hi},
        "inputs": names,
        "workspace_gib": workspace_gib,
        "network_flags": flag_names,
        "timing_cache": {"path": str(cache_path) if cache_path else None, "loaded": cache_state, "saved": saved},
    }
    if flag_names:  # recorded only where this TensorRT has the flag, never guessed
        info["strongly_typed"] = True
    return info
