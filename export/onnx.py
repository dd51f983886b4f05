"""The fp32 ONNX graph: ``z float32 [batch, z_dim]`` (+ ``class int64 [batch]`` for a conditional model,
+ ``psi float32 [batch]`` for a style model) ``-> image float32 [batch, 3, H, W]`` in [-1, 1].

Exported with the current dynamo-based ``torch.onnx.export`` (needs ``onnxscript``) from the
eval-mode generator: BatchNorm uses its running statistics (the exporter folds it into the
convolutions), spectral norm is already folded into the artifact's plain weights, and nothing in
``forward`` is random, so a sample never depends on the rest of its batch. The uint8 conversion is
not in the graph: ``projgan.generator.to_uint8`` is the one place it happens.

Graph inputs are ``projgan.generator.input_names(cfg)``, in that order, all sharing one dynamic
``batch`` axis. An unconditional FastGAN is exported exactly as before (the generator itself, one input).
Style models also get the w-space graphs (``generator.mapping.onnx``: inputs -> ``w [batch, w_dim]``;
``generator.synthesis.onnx``: ``w -> image``) so ONNX Runtime serving can interpolate in w.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from projgan.artifacts import W_FILES
from projgan.errors import UserError
from projgan.generator import input_names
from projgan.stylegan2 import WMapping, WSynthesis

INPUT, OUTPUT, BATCH = "z", "image", "batch"
W_OUTPUT = "w"
DTYPES = {"z": "float32", "class": "int64", "psi": "float32", "w": "float32"}


@contextlib.contextmanager
def _quiet():
    """The exporter and its optimiser print progress and warnings we replace with our own status."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class Positional(nn.Module):
    """Calls ``module(z, c=..., psi=...)`` with the graph inputs given positionally in ``names`` order."""

    def __init__(self, module: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.module, self.names = module, names

    def forward(self, *args):
        d = dict(zip(self.names, args, strict=True))
        return self.module(d["z"], c=d.get("class"), psi=d.get("psi"))


def example_inputs(cfg, names: tuple[str, ...], batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Batch 2: a batch of 1 would let the exporter specialise the axis."""
    make = {
        "z": lambda: torch.zeros(batch, cfg.z_dim),
        "class": lambda: torch.arange(batch, dtype=torch.int64) % max(cfg.num_classes, 1),
        "psi": lambda: torch.ones(batch),
        "w": lambda: torch.zeros(batch, cfg.w_dim or cfg.z_dim),
    }
    return tuple(make[n]() for n in names)


def _to_onnx(module: nn.Module, args, names, output: str, opset: int, max_batch: int):
    """One dynamo export with every input sharing the dynamic batch axis; returns the ModelProto."""
    batch = torch.export.Dim(BATCH, min=1, max=max(max_batch, 2))
    if isinstance(module, Positional) or len(names) > 1:
        dynamic: Any = (tuple({0: batch} for _ in names),)
    else:  # the generator itself, one keyword-named input: the graph every old export has
        dynamic = {names[0]: {0: batch}}
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            input_names=list(names),
            output_names=[output],
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    got = {o.domain: o.version for o in model.opset_import}.get("", 0)
    if got != opset:
        raise UserError(f"the exporter produced opset {got}, not the requested {opset}", "use --opset 18")
    return model


def _finish(model, cfg, path: str | Path, names, output: str) -> dict[str, Any]:
    """Simplify, annotate, check, save and load in ONNX Runtime; the facts the manifest records."""
    import onnx

    model, simplified = _simplify(model)
    _annotate(model, cfg, names, output)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    load_check(path)
    return {"simplified": simplified, "nodes": len(model.graph.node), "ops": sorted({n.op_type for n in model.graph.node})}


def export_fp32(G: torch.nn.Module, path: str | Path, opset: int = 18, max_batch: int = 1024) -> dict[str, Any]:
    """Write the fp32 graph to ``path`` (checked, simplified where that helps). Returns its facts.

    ``opset`` is validated by ``ExportConfig``; the exporter's result is still checked against it,
    because below its lowest opset the dynamo exporter silently emits 18.
    """
    G = G.eval().requires_grad_(False).cpu()
    cfg = G.cfg
    names = input_names(cfg)
    module = G if names == (INPUT,) else Positional(G, names)
    model = _to_onnx(module, example_inputs(cfg, names), names, OUTPUT, opset, max_batch)
    return {
        "opset": opset,
        **_finish(model, cfg, path, names, OUTPUT),
        "inputs": list(names),
        "parameters": sum(int(p.numel()) for p in G.parameters()),
    }


def export_w_space(G: torch.nn.Module, folder: str | Path, opset: int = 18, max_batch: int = 1024) -> dict[str, Any]:
    """Style models: write the mapping (inputs -> w) and synthesis (w -> image) graphs into ``folder``."""
    G = G.eval().requires_grad_(False).cpu()
    cfg = G.cfg
    names = input_names(cfg)
    out: dict[str, Any] = {}
    for part, module, ins, output in (
        ("mapping", Positional(WMapping(G), names), names, W_OUTPUT),
        ("synthesis", WSynthesis(G), ("w",), OUTPUT),
    ):
        model = _to_onnx(module, example_inputs(cfg, ins), ins, output, opset, max_batch)
        path = Path(folder) / W_FILES[part]
        out[part] = {"file": path.name, "inputs": list(ins), "output": output, **_finish(model, cfg, path, ins, output)}
    return out


def _simplify(model):
    """onnxslim folds what the exporter's optimiser left; keep its result only if it is valid
    and not larger (the dynamo exporter already folds BatchNorm and constants, so often a no-op)."""
    import onnx

    try:
        import onnxslim

        with _quiet():
            slim = onnxslim.slim(model)
        onnx.checker.check_model(slim, full_check=True)
    except Exception:  # a simplifier bug must not break the export; the plain graph is valid
        return model, False
    if len(slim.graph.node) <= len(model.graph.node):
        return slim, len(slim.graph.node) < len(model.graph.node)
    return model, False


def signature(cfg, names=None, output: str = OUTPUT) -> dict[str, Any]:
    """Names, dtypes and shapes of a graph's inputs and output (``batch`` is the dynamic axis)."""
    names = input_names(cfg) if names is None else names
    w_dim = cfg.w_dim or cfg.z_dim
    shapes = {"z": [BATCH, cfg.z_dim], "class": [BATCH], "psi": [BATCH], "w": [BATCH, w_dim]}
    image = {
        "name": OUTPUT,
        "dtype": "float32",
        "shape": [BATCH, cfg.channels, cfg.resolution, cfg.resolution],
        "layout": "NCHW",
        "range": [-1.0, 1.0],
    }
    outputs = [image] if output == OUTPUT else [{"name": W_OUTPUT, "dtype": "float32", "shape": shapes["w"]}]
    return {"inputs": [{"name": n, "dtype": DTYPES[n], "shape": shapes[n]} for n in names], "outputs": outputs}


def _annotate(model, cfg, names=None, output: str = OUTPUT) -> None:
    """Metadata a deployment engineer finds with Netron or ``onnx.load``: what the inputs and output mean.

    ``generator`` holds the whole GeneratorConfig: serving rebuilds the input validation from it.
    """
    meta = {
        "producer": "projgan",
        "resolution": str(cfg.resolution),
        "z_dim": str(cfg.z_dim),
        "arch": cfg.arch,
        "num_classes": str(cfg.num_classes),
        "class_names": json.dumps(list(cfg.names())),
        "truncation": "w = w_avg[class] + psi * (w - w_avg[class])" if cfg.truncation else "none",
        "signature": json.dumps(signature(cfg, names, output)),
        "output_range": "[-1, 1]" if output == OUTPUT else "w space",
        "output_layout": "NCHW RGB" if output == OUTPUT else "[batch, w_dim]",
        "to_uint8": "clip(image * 127.5 + 128, 0, 255)",
        "latents": "z[i] = numpy.random.Generator(PCG64(seed)).standard_normal(z_dim)",
        "classes": "class[i] = seed % num_classes unless the caller names one" if cfg.conditional else "none",
        "generator": json.dumps(dataclasses.asdict(cfg)),
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "projgan"


def load_check(path: str | Path) -> None:
    """Every file we write must load in ONNX Runtime (the checker alone misses kernel gaps)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RuntimeError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from e


def io_spec(cfg) -> dict[str, Any]:
    """Names, shapes and dtypes of the main graph's inputs and output, plus the model facts serving
    needs (classes, truncation), as the manifest records them."""
    return {
        **signature(cfg),
        "arch": cfg.arch,
        "num_classes": cfg.num_classes,
        "class_names": list(cfg.names()),
        "truncation": cfg.truncation,
    }
