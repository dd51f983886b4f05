"""export/tensorrt_build.py: the whole build call sequence, against a faithful fake ``tensorrt``.

TensorRT cannot be installed here; tests/fake_tensorrt.py models exactly the TensorRT 10 names the
build uses (and raises on any other), so a renamed or misused call fails here, not on a user's GPU.
The ONNX file is a real export of a tiny generator. The real engine is built by the ``tensorrt``
tests in test_backends.py where TensorRT exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from projgan import artifacts
from projgan.export import tensorrt_build
from tests import fake_tensorrt


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from projgan.export.onnx import export_fp32
    from tests.conftest import make_generator

    root = tmp_path_factory.mktemp("trt")
    G, _ = artifacts.load_generator(make_generator(root / "generator", resolution=32, ngf=16))
    export_fp32(G, root / "generator.onnx")
    return root / "generator.onnx"


def install(monkeypatch, **kw):
    fake = fake_tensorrt.make(**kw)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def read_plan(path):
    raw = path.read_bytes()
    assert raw.startswith(b"fake-plan\n")
    return json.loads(raw[len(b"fake-plan\n") :])


def test_build_runs_the_documented_sequence_and_writes_plan_and_cache(monkeypatch, onnx_file, tmp_path):
    install(monkeypatch)
    plan, cache = tmp_path / "g.plan", tmp_path / "cache" / "tc"
    info = tensorrt_build.build_engine(onnx_file, plan, (1, 8, 64), workspace_gib=0.5, timing_cache_path=cache)

    calls = fake_tensorrt.STATE.calls
    order = [
        "Builder",
        ("create_network", 1 << int(fake_tensorrt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)),
        "parse_from_file",
        "create_builder_config",
        "set_memory_pool_limit",
        "create_optimization_profile",
        "set_shape",
        "add_optimization_profile",
        "create_timing_cache",
        "set_timing_cache",
        "build_serialized_network",
        "get_timing_cache",
    ]
    assert [c for c in calls if c in order] == order
    built = read_plan(plan)
    assert built["flags"] == 2 and built["workspace"] == 1 << 29
    assert built["profiles"] == [{"z": [[1, 256], [8, 256], [64, 256]]}]  # batch axis only; z_dim from the ONNX
    assert cache.read_bytes().startswith(fake_tensorrt.CACHE_MAGIC)
    assert info["version"] == "10.9.0" and info["profile"] == {"min": 1, "opt": 8, "max": 64}
    assert info["strongly_typed"] is True and info["network_flags"] == ["STRONGLY_TYPED"]
    assert info["timing_cache"] == {"path": str(cache), "loaded": "new", "saved": True}
    json.dumps(info)  # the manifest records it as is

    again = tensorrt_build.build_engine(onnx_file, tmp_path / "g2.plan", (1, 8, 64), 0.5, cache)
    assert again["timing_cache"]["loaded"] == "reused"
    assert len(json.loads(cache.read_bytes()[len(fake_tensorrt.CACHE_MAGIC) :])["entries"]) == 2


def test_a_cache_from_another_gpu_is_replaced_not_trusted(monkeypatch, onnx_file, tmp_path):
    cache = tmp_path / "tc"
    install(monkeypatch, device="GPU-A")
    tensorrt_build.build_engine(onnx_file, tmp_path / "a.plan", (1, 4, 8), 0.5, cache)
    install(monkeypatch, device="GPU-B")  # set_timing_cache(cache, False) returns False for A's cache
    info = tensorrt_build.build_engine(onnx_file, tmp_path / "b.plan", (1, 4, 8), 0.5, cache)
    assert info["timing_cache"]["loaded"].startswith("stale cache replaced") and info["timing_cache"]["saved"]
    assert json.loads(cache.read_bytes()[len(fake_tensorrt.CACHE_MAGIC) :])["header"] == "GPU-B/10.9.0"
    assert fake_tensorrt.STATE.calls.count("set_timing_cache") == 2

    cache.write_bytes(b"not a timing cache")  # create_timing_cache returns None: start afresh
    info = tensorrt_build.build_engine(onnx_file, tmp_path / "c.plan", (1, 4, 8), 0.5, cache)
    assert info["timing_cache"]["loaded"].startswith("stale cache replaced")


def test_no_timing_cache_returned_means_none_saved(monkeypatch, onnx_file, tmp_path):
    install(monkeypatch, lose_cache=True)  # get_timing_cache() -> None, as documented
    info = tensorrt_build.build_engine(onnx_file, tmp_path / "g.plan", (1, 8, 16), 0.5, tmp_path / "tc")
    assert (tmp_path / "g.plan").exists() and not (tmp_path / "tc").exists()
    assert info["timing_cache"]["saved"] is False

    install(monkeypatch)
    info = tensorrt_build.build_engine(onnx_file, tmp_path / "h.plan", (1, 8, 16), 0.5, None)
    assert info["timing_cache"] == {"path": None, "loaded": "disabled", "saved": False}
    assert "create_timing_cache" not in fake_tensorrt.STATE.calls


def test_strongly_typed_is_recorded_only_where_the_flag_exists(monkeypatch, onnx_file, tmp_path):
    install(monkeypatch, strongly_typed=False)
    info = tensorrt_build.build_engine(onnx_file, tmp_path / "g.plan", (1, 1, 4), 0.5, None)
    assert "strongly_typed" not in info and info["network_flags"] == []
    assert ("create_network", 0) in fake_tensorrt.STATE.calls
    assert read_plan(tmp_path / "g.plan")["flags"] == 0


def test_parse_errors_and_a_refused_build_fail_loudly(monkeypatch, onnx_file, tmp_path):
    install(monkeypatch)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(RuntimeError, match="could not parse .*broken.onnx"):
        tensorrt_build.build_engine(broken, tmp_path / "g.plan", (1, 8, 64))
    with pytest.raises(RuntimeError, match="rejected the batch profile 8,1,64"):
        tensorrt_build.build_engine(onnx_file, tmp_path / "g.plan", (8, 1, 64))
    assert not (tmp_path / "g.plan").exists()


def test_the_fake_refuses_names_outside_the_tensorrt_10_api(monkeypatch):
    """What makes the tests above able to fail: old or misspelt calls raise, as the bindings do."""
    trt = install(monkeypatch)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    with pytest.raises(AttributeError):
        builder.build_engine  # noqa: B018 - removed in TensorRT 10
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1  # removed in TensorRT 10: set_memory_pool_limit
    with pytest.raises(AttributeError):
        trt.BuilderFlag  # noqa: B018 - not used by the build; modelled names only
    with pytest.raises(TypeError):  # pybind11 takes a str path, not a pathlib.Path
        trt.OnnxParser(builder.create_network(0), builder.logger).parse_from_file(Path(__file__))
