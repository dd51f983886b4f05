"""The Triton model repository: configs read back with Triton's own ModelConfig schema."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from projgan.export import triton


def read_config(path) -> mc.ModelConfig:
    """Parse as Triton does: unknown fields, wrong types and bad enum names raise ParseError."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_config_parses_back_with_batch_axis_implicit(tmp_path):
    onnx_file = tmp_path / "generator.onnx"
    onnx_file.write_bytes(b"onnx bytes")
    plan = tmp_path / "generator.fp16.plan"
    plan.write_bytes(b"plan bytes")
    written = triton.write_repository(tmp_path / "triton", onnx_file, plan, 256, (3, 64, 64), (1, 8, 32))
    names = {p.relative_to(tmp_path / "triton").as_posix() for p in written}
    assert names == {
        "projgan_generator/config.pbtxt",
        "projgan_generator/1/model.onnx",
        "projgan_generator_trt/config.pbtxt",
        "projgan_generator_trt/1/model.plan",
    }
    assert (tmp_path / "triton/projgan_generator/1/model.onnx").read_bytes() == b"onnx bytes"

    onnx_cfg = read_config(tmp_path / "triton/projgan_generator/config.pbtxt")
    assert onnx_cfg.name == "projgan_generator" and onnx_cfg.platform == "onnxruntime_onnx"
    assert onnx_cfg.max_batch_size == 32
    (inp,), (out,) = onnx_cfg.input, onnx_cfg.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("z", mc.TYPE_FP32, [256])  # no batch axis
    assert (out.name, out.data_type, list(out.dims)) == ("image", mc.TYPE_FP32, [3, 64, 64])
    db = onnx_cfg.dynamic_batching
    assert list(db.preferred_batch_size) == [8, 32] and db.max_queue_delay_microseconds == 5000
    assert not onnx_cfg.instance_group  # Triton picks GPU or CPU for ONNX

    trt_cfg = read_config(tmp_path / "triton/projgan_generator_trt/config.pbtxt")
    assert trt_cfg.platform == "tensorrt_plan"
    (group,) = trt_cfg.instance_group
    assert (group.count, group.kind) == (1, mc.ModelInstanceGroup.KIND_GPU)


def test_schema_and_load_rules_reject_bad_configs():
    with pytest.raises(text_format.ParseError):  # the schema our old hand parser could not enforce
        text_format.Parse('name: "m" max_batch_size: 4 dynamic_batching { preferred_batch: 2 }', mc.ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "m" input { name: "z" data_type: TYPE_FLOAT32 }', mc.ModelConfig())
    with pytest.raises(ValueError, match="preferred_batch_size 64 outside 1..32"):
        triton.model_config("m", "onnxruntime_onnx", 32, 256, (3, 8, 8), [8, 64], 100)
    with pytest.raises(ValueError, match="positive dims"):
        triton.model_config("m", "onnxruntime_onnx", 32, 0, (3, 8, 8), [8], 100)


def test_exported_repository_matches_the_manifest(tmp_path):
    """The config written by a real export agrees with the ONNX file's I/O."""
    import onnx

    from projgan import artifacts
    from projgan.config import ExportConfig
    from projgan.export.pipeline import export
    from tests.conftest import make_generator

    src = make_generator(tmp_path / "generator")
    out = tmp_path / "exp"
    assert export(ExportConfig(source=str(src), out=str(out), triton=True, parity_seeds=2, batch_sizes=(1, 4, 16)))
    m = artifacts.read_manifest(out)
    cfg = read_config(out / "triton/projgan_generator/config.pbtxt")
    assert cfg.max_batch_size == m["batch_profile"]["max"] == 16
    model = onnx.load(str(out / "triton/projgan_generator/1/model.onnx"))
    dims = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and list(cfg.output[0].dims) == dims[1:]
    assert list(cfg.input[0].dims) == m["inputs"][0]["shape"][1:]
    assert (cfg.input[0].name, cfg.output[0].name) == (model.graph.input[0].name, model.graph.output[0].name)
    assert "triton/projgan_generator/1/model.onnx" in m["files"]
