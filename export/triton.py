"""A Triton Inference Server model repository for the same certified files.

``triton/<model>/config.pbtxt`` + ``triton/<model>/1/model.onnx`` (and a second model with
``1/model.plan`` where a TensorRT engine was built), with Triton's dynamic batcher configured from
the export's batch profile. Dims exclude the batch axis: ``max_batch_size > 0`` makes it implicit.
Triton's own protobuf schema is not available here, so ``parse_pbtxt`` reads back the subset of the
text format we write (tests use it to validate the files).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

ONNX_MODEL = "projgan_generator"
TRT_MODEL = "projgan_generator_trt"


def config_text(
    name: str,
    platform: str,
    max_batch: int,
    z_dim: int,
    image_shape: tuple[int, int, int],
    preferred: list[int],
    max_queue_delay_us: int,
    gpu_only: bool = False,
) -> str:
    """The ``config.pbtxt`` of one model (protobuf text format)."""
    prefs = ", ".join(str(p) for p in preferred)
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        '    name: "z"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {z_dim} ]",
        "  }",
        "]",
        "output [",
        "  {",
        '    name: "image"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {', '.join(map(str, image_shape))} ]",
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {prefs} ]",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
    ]
    if gpu_only:  # a TensorRT plan runs only on the GPU type that built it
        lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_GPU", "  }", "]"]
    return "\n".join(lines) + "\n"


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
) -> list[Path]:
    """Write the repository under ``root``; returns the files written."""
    root = Path(root)
    _, opt, hi = batch_sizes
    preferred = sorted({opt, hi})
    written = []
    models = [(ONNX_MODEL, "onnxruntime_onnx", onnx_path, "model.onnx", False)]
    if plan_path is not None:
        models.append((TRT_MODEL, "tensorrt_plan", plan_path, "model.plan", True))
    for name, platform, src, filename, gpu_only in models:
        cfg = root / name / "config.pbtxt"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(config_text(name, platform, hi, z_dim, image_shape, preferred, max_queue_delay_us, gpu_only))
        _place(src, root / name / "1" / filename)
        written += [cfg, root / name / "1" / filename]
    return written


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([\[\]{}:,])|([^\s\[\]{}:,"]+))')


def _tokens(text: str):
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot parse config text at {text[pos : pos + 20]!r}")
            return
        pos = m.end()
        comment, string, punct, word = m.groups()
        if comment:
            continue
        if string is not None:
            yield ("str", string[1:-1])
        elif punct is not None:
            yield ("p", punct)
        elif word is not None:
            yield ("word", word)


def _scalar(kind: str, v: str):
    if kind == "str":
        return v
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v  # an enum such as TYPE_FP32


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse the protobuf text-format subset we emit: scalars, messages ``{}``, lists ``[]``.

    A repeated field (``key [ ... ]`` or the key given twice) becomes a Python list.
    """
    toks = list(_tokens(text))
    pos = 0

    def value():
        nonlocal pos
        kind, v = toks[pos]
        if (kind, v) == ("p", "{"):
            pos += 1
            return message("}")
        if (kind, v) == ("p", "["):
            pos += 1
            items = []
            while toks[pos] != ("p", "]"):
                items.append(value())
                if toks[pos] == ("p", ","):
                    pos += 1
            pos += 1
            return items
        pos += 1
        return _scalar(kind, v)

    def message(end):
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(toks) and toks[pos] != ("p", end):
            kind, key = toks[pos]
            if kind != "word":
                raise ValueError(f"expected a field name, got {key!r}")
            pos += 1
            if toks[pos] == ("p", ":"):
                pos += 1
            v = value()
            if key in out:
                prev = out[key] if isinstance(out[key], list) else [out[key]]
                out[key] = prev + (v if isinstance(v, list) else [v])
            else:
                out[key] = v
        if end is not None:
            if pos >= len(toks):
                raise ValueError("unterminated message")
            pos += 1
        return out

    try:
        return message(None)
    except IndexError:
        raise ValueError("config text ends inside a field") from None
