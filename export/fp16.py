"""The fp16 ONNX: precision lives in the graph, as strongly typed TensorRT (10.12+, 11) requires.

Converted with ``onnxconverter_common.float16`` (``keep_io_types=True``: the file still takes and
returns float32, so every backend and the server see the same I/O). ENVIRONMENT.md: the
``onnxruntime.transformers`` converter made an invalid graph from this generator; this one makes
a valid one once the exporter's stale ``value_info`` is dropped (otherwise its type annotations
contradict the converted graph and both the checker and ONNX Runtime reject it). Its default block
list keeps ``Resize`` in fp32 (the scales input must stay float32).

``keep_fp32=True`` also keeps the numerically fragile ends in fp32: what the graph inputs pass through
before the first convolution or matmul (the latent and class-embedding normalisation), and the last
convolution with the output ``tanh``. Integer inputs (``class``) are left alone by the converter: the
fp16 graph still takes int64 classes and float32 ``z``/``psi``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from projgan.export.onnx import OUTPUT, load_check


def fragile_nodes(model) -> list[str]:
    """Names of the nodes that are functions of the graph inputs alone (z's and the class embedding's
    normalisation, up to the first conv or matmul), and of those that make the output.

    A node joins only if every input is a graph input, a constant or such a node's output: the first
    node that also reads a layer's activations (a style model's w reaches every layer) ends the chain.
    """
    from_z, names = {i.name for i in model.graph.input}, []
    const = {t.name for t in model.graph.initializer} | {""}
    const.update(o for n in model.graph.node if not n.input for o in n.output)
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        if any(i in from_z for i in node.input) and all(i in from_z or i in const for i in node.input):
            names.append(node.name)
            from_z.update(node.output)
    producer = {o: n for n in model.graph.node for o in n.output}
    last = producer.get(OUTPUT)
    while last is not None and last.op_type in ("Tanh", "Conv", "Identity", "Cast"):
        names.append(last.name)
        if last.op_type == "Conv":
            break
        last = producer.get(last.input[0])
    return list(dict.fromkeys(n for n in names if n))


def convert(src: str | Path, dst: str | Path, keep_fp32: bool = False) -> dict[str, Any]:
    """Write an fp16 copy of the fp32 ONNX ``src`` to ``dst``; checked and loaded before returning."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    del model.graph.value_info[:]  # stale fp32 annotations from the exporter
    blocked = fragile_nodes(model) if keep_fp32 else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated to 1e-07"
        half = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=float16.DEFAULT_OP_BLOCK_LIST,
            node_block_list=blocked or None,
        )
    onnx.checker.check_model(half, full_check=True)
    onnx.save_model(half, str(dst))
    load_check(dst)
    return {"converter": "onnxconverter_common.float16", "keep_io_types": True, "fp32_nodes": blocked}
