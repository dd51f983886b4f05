"""The fp32 ONNX graph: ``z float32 [batch, z_dim] -> image float32 [batch, 3, H, W]`` in [-1, 1].

Exported with the current dynamo-based ``torch.onnx.export`` (needs ``onnxscript``) from the
eval-mode generator: BatchNorm uses its running statistics (the exporter folds it into the
convolutions), spectral norm is already folded into the artifact's plain weights, and nothing in
``forward`` is random, so a sample never depends on the rest of its batch. The uint8 conversion is
not in the graph: ``projgan.generator.to_uint8`` is the one place it happens.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from projgan.errors import UserError

INPUT, OUTPUT, BATCH = "z", "image", "batch"


@contextlib.contextmanager
def _quiet():
    """The exporter and its optimiser print progress and warnings we replace with our own status."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_fp32(G: torch.nn.Module, path: str | Path, opset: int = 18, max_batch: int = 1024) -> dict[str, Any]:
    """Write the fp32 graph to ``path`` (checked, simplified where that helps). Returns its facts.

    ``opset`` is validated by ``ExportConfig``; the exporter's result is still checked against it,
    because below its lowest opset the dynamo exporter silently emits 18.
    """
    import onnx

    G = G.eval().requires_grad_(False).cpu()
    cfg = G.cfg
    z = torch.zeros(2, cfg.z_dim)  # batch 2: a batch of 1 would let the exporter specialise the axis
    batch = torch.export.Dim(BATCH, min=1, max=max(max_batch, 2))
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            G,
            (z,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"z": {0: batch}},
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
    model, simplified = _simplify(model)
    _annotate(model, cfg)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    load_check(path)
    return {
        "opset": opset,
        "simplified": simplified,
        "nodes": len(model.graph.node),
        "ops": sorted({n.op_type for n in model.graph.node}),
        "parameters": sum(int(p.numel()) for p in G.parameters()),
    }


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


def _annotate(model, cfg) -> None:
    """Metadata a deployment engineer finds with Netron or ``onnx.load``: what the output means."""
    import json

    meta = {
        "producer": "projgan",
        "resolution": str(cfg.resolution),
        "z_dim": str(cfg.z_dim),
        "output_range": "[-1, 1]",
        "output_layout": "NCHW RGB",
        "to_uint8": "clip(image * 127.5 + 128, 0, 255)",
        "latents": "z[i] = numpy.random.Generator(PCG64(seed)).standard_normal(z_dim)",
        "generator": json.dumps({"resolution": cfg.resolution, "z_dim": cfg.z_dim, "ngf": cfg.ngf}),
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
    """Names, shapes and dtypes of the graph's input and output, as the manifest records them."""
    return {
        "inputs": [{"name": INPUT, "dtype": "float32", "shape": [BATCH, cfg.z_dim]}],
        "outputs": [
            {
                "name": OUTPUT,
                "dtype": "float32",
                "shape": [BATCH, cfg.channels, cfg.resolution, cfg.resolution],
                "layout": "NCHW",
                "range": [-1.0, 1.0],
            }
        ],
    }
