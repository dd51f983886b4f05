"""A Triton Inference Server model repository for the same certified files.

``triton/<model>/config.pbtxt`` + ``triton/<model>/1/model.onnx`` (and a second model with
``1/model.plan`` where a TensorRT engine was built), with Triton's dynamic batcher configured from
the export's batch profile. Dims exclude the batch axis: ``max_batch_size > 0`` makes it implicit.
The per-image scalars of conditional and style models (``class`` int64, ``psi`` float32, each ``[batch]``
in the graph) are declared as Triton's convention for batch-only tensors: ``dims: [1]`` with an empty
``reshape``, so clients send ``[batch, 1]`` and the model sees ``[batch]``.

Each config is built as Triton's own ``inference.ModelConfig`` protobuf message (``model_config_pb2``
from ``tritonclient[grpc]``) and written with protobuf's ``text_format``, so a misspelt field or
enum fails here, not when Triton loads the repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from projgan.export.onnx import INPUT, OUTPUT

SCALAR_INPUTS = {"class": mc.TYPE_INT64, "psi": mc.TYPE_FP32}  # one value per image

ONNX_MODEL = "projgan_generator"
TRT_MODEL = "projgan_generator_trt"
HEADER = "# Triton model configuration (inference.ModelConfig, protobuf text format) written by pipeline export\n"


def model_config(
    name: str,
    platform: str,
    max_batch: int,
    z_dim: int,
    image_shape: tuple[int, int, int],
    preferred: list[int],
    max_queue_delay_us: int,
    gpu_only: bool = False,
    extra_inputs: tuple[str, ...] = (),
) -> mc.ModelConfig:
    """The ``ModelConfig`` of one model: float32 ``z`` (+ ``extra_inputs``: ``class``, ``psi``) in,
    float32 NCHW ``image`` out."""
    cfg = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch)
    cfg.input.add(name=INPUT, data_type=mc.TYPE_FP32, dims=[z_dim])
    for extra in extra_inputs:
        if extra not in SCALAR_INPUTS:
            raise ValueError(f"unknown generator input {extra!r} (known: z, {', '.join(SCALAR_INPUTS)})")
        inp = cfg.input.add(name=extra, data_type=SCALAR_INPUTS[extra], dims=[1])
        inp.reshape.SetInParent()  # reshape { shape: [] }: [batch, 1] on the wire, [batch] in the graph
    cfg.output.add(name=OUTPUT, data_type=mc.TYPE_FP32, dims=list(image_shape))
    cfg.dynamic_batching.preferred_batch_size.extend(preferred)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if gpu_only:  # a TensorRT plan runs only on the GPU type that built it
        cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU)
    check(cfg)
    return cfg


def check(cfg: mc.ModelConfig) -> None:
    """The rules Triton applies at load time that the schema alone cannot express."""
    problems = []
    if cfg.max_batch_size < 1:
        problems.append("max_batch_size must be >= 1 (the batch axis is implicit)")
    for p in cfg.dynamic_batching.preferred_batch_size:
        if not 1 <= p <= cfg.max_batch_size:
            problems.append(f"preferred_batch_size {p} outside 1..{cfg.max_batch_size}")
    for io in (*cfg.input, *cfg.output):
        if not io.name or not io.dims or any(d < 1 for d in io.dims):
            problems.append(f"tensor {io.name!r} needs a name and positive dims (got {list(io.dims)})")
    if problems:
        raise ValueError(f"invalid Triton config for {cfg.name!r}: " + "; ".join(problems))


def config_text(cfg: mc.ModelConfig) -> str:
    """``config.pbtxt`` text; parsed back with the same schema before it is written."""
    text = HEADER + text_format.MessageToString(cfg)
    if parse(text) != cfg:
        raise ValueError(f"Triton config for {cfg.name!r} does not survive a text round trip")
    return text


def parse(text: str) -> mc.ModelConfig:
    """Read a ``config.pbtxt`` with Triton's schema (unknown fields and bad enums raise ParseError)."""
    return text_format.Parse(text, mc.ModelConfig())


def _place(src: Path, dst: Path) -> None:
    """Hard-link where the filesystem allows (no second copy of the weights on disk), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_repository(
    root: str | Path,
    onnx_path: Path,
    plan_path: Path | None,
    z_dim: int,
    image_shape: tuple[int, int, int],
    batch_sizes: tuple[int, int, int],
    max_queue_delay_us: int = 5000,
    extra_inputs: tuple[str, ...] = (),
) -> list[Path]:
    """Write the repository under ``root``; returns the files written. ``extra_inputs``: the graph's
    inputs after ``z`` (``input_names(cfg)[1:]``)."""
    root = Path(root)
    _, opt, hi = batch_sizes
    preferred = sorted({opt, hi})
    written = []
    models = [(ONNX_MODEL, "onnxruntime_onnx", onnx_path, "model.onnx", False)]
    if plan_path is not None:
        models.append((TRT_MODEL, "tensorrt_plan", plan_path, "model.plan", True))
    for name, platform, src, filename, gpu_only in models:
        cfg = model_config(
            name, platform, hi, z_dim, image_shape, preferred, max_queue_delay_us, gpu_only, tuple(extra_inputs)
        )
        path = root / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config_text(cfg))
        _place(src, root / name / "1" / filename)
        written += [path, root / name / "1" / filename]
    return written
