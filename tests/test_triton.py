"""The Triton model repository: config text parsed back, dims without the batch axis."""

from __future__ import annotations

import pytest

from projgan.export import triton


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

    onnx_cfg = triton.parse_pbtxt((tmp_path / "triton/projgan_generator/config.pbtxt").read_text())
    assert onnx_cfg["name"] == "projgan_generator" and onnx_cfg["platform"] == "onnxruntime_onnx"
    assert onnx_cfg["max_batch_size"] == 32
    (inp,), (out,) = onnx_cfg["input"], onnx_cfg["output"]
    assert inp == {"name": "z", "data_type": "TYPE_FP32", "dims": [256]}  # no batch axis
    assert out == {"name": "image", "data_type": "TYPE_FP32", "dims": [3, 64, 64]}
    db = onnx_cfg["dynamic_batching"]
    assert db["preferred_batch_size"] == [8, 32] and db["max_queue_delay_microseconds"] == 5000
    assert all(s <= onnx_cfg["max_batch_size"] for s in db["preferred_batch_size"])
    assert "instance_group" not in onnx_cfg  # Triton picks GPU or CPU for ONNX

    trt_cfg = triton.parse_pbtxt((tmp_path / "triton/projgan_generator_trt/config.pbtxt").read_text())
    assert trt_cfg["platform"] == "tensorrt_plan"
    assert trt_cfg["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


def test_parser_handles_comments_repeats_and_rejects_garbage():
    text = """
    # a comment
    name: "m"  # trailing comment
    input { name: "a" dims: [ 1, 2 ] }
    input { name: "b" dims: [ 3 ] }
    parameters { key: "x" value: { string_value: "y" } }
    """
    cfg = triton.parse_pbtxt(text)
    assert cfg["name"] == "m"
    assert [i["name"] for i in cfg["input"]] == ["a", "b"]
    assert cfg["input"][0]["dims"] == [1, 2]
    assert cfg["parameters"]["value"]["string_value"] == "y"
    with pytest.raises(ValueError):
        triton.parse_pbtxt('name: "m" input { name: "a" ')
    with pytest.raises(ValueError):
        triton.parse_pbtxt("{ }")


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
    cfg = triton.parse_pbtxt((out / "triton/projgan_generator/config.pbtxt").read_text())
    assert cfg["max_batch_size"] == m["batch_profile"]["max"] == 16
    model = onnx.load(str(out / "triton/projgan_generator/1/model.onnx"))
    dims = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and cfg["output"][0]["dims"] == dims[1:]
    assert cfg["input"][0]["dims"] == m["inputs"][0]["shape"][1:]
    assert "triton/projgan_generator/1/model.onnx" in m["files"]
