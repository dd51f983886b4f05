"""Export, certificate and backends of class-conditional and style generators: real exports, real ONNX
Runtime sessions, real files (32 px, ngf 8, a few parity seeds)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from projgan import artifacts, similarity
from projgan.config import ExportConfig
from projgan.errors import UserError
from projgan.export.pipeline import export
from projgan.generator import classes_for_seeds, model_inputs, run_torch, sample_latents
from projgan.serve import backends
from projgan.serve import tensorrt as trt_runtime
from tests.conftest import make_generator

SEEDS, DRIFT, Z = 6, 16, 64
NAMES = ("cat", "dog")


def make_model(dest, arch: str = "fastgan", num_classes: int = 2, target_std: float = 0.5, seed: int = 0):
    """A 32 px generator of ``arch`` with realistic output contrast (tests.conftest.make_generator)."""
    names = NAMES[:num_classes] if num_classes == 2 else ()
    return make_generator(dest, ngf=8, target_std=target_std, seed=seed, z_dim=Z, arch=arch,
                          num_classes=num_classes, class_names=names)


def do_export(root, arch: str, num_classes: int = 2, **kw):
    src = make_model(root / "generator", arch, num_classes)
    out = root / "exp"
    cfg = ExportConfig(source=str(src), out=str(out), fp16=True, triton=True, parity_seeds=SEEDS,
                       drift_images=DRIFT, drift_extractor="proxy", **kw)
    assert export(cfg) is True
    return out


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    return do_export(tmp_path_factory.mktemp("cond"), "fastgan")


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    return do_export(tmp_path_factory.mktemp("style"), "stylegan2")


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def graph_inputs(path) -> list[tuple[str, int, list]]:
    model = onnx.load(str(path))
    return [(i.name, i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input]


def torch_reference(out, seeds, classes=None, psi=None) -> np.ndarray:
    G, _ = artifacts.load_generator(out / artifacts.GENERATOR_DIR)
    with torch.no_grad():
        return run_torch(G, model_inputs(G.cfg, sample_latents(seeds, Z), classes, psi)).numpy()


# ---------------------------------------------------------------- conditional FastGAN


def test_conditional_manifest_records_classes_and_signature(cond):
    m = artifacts.read_manifest(cond, verify=True)
    assert m["passed"] and m["format_version"] == 2
    assert m["arch"] == "fastgan" and m["num_classes"] == 2 and m["class_names"] == list(NAMES)
    assert m["truncation"] is False and m["w_space"] is None
    assert m["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["batch", Z]},
                           {"name": "class", "dtype": "int64", "shape": ["batch"]}]
    assert m["generator"]["num_classes"] == 2 and m["generator"]["class_names"] == list(NAMES)
    assert m["parity_inputs"] == [{"label": "all", "classes": "seed % num_classes", "psi": None}]
    for key, e in m["parity"].items():
        assert e["passed"], (key, e["reason"])
        assert e["images"] == SEEDS and "combinations" not in e
    assert m["parity"]["onnxruntime-fp32"]["max_abs"] <= 1e-4
    assert m["parity"]["onnxruntime-fp16"]["drift"]["classes"] == "seed % num_classes"


def test_conditional_graphs_take_int64_class_with_a_dynamic_batch(cond):
    for name in (artifacts.ONNX_FP32, artifacts.ONNX_FP16):
        assert graph_inputs(cond / name) == [("z", onnx.TensorProto.FLOAT, ["batch", Z]),
                                             ("class", onnx.TensorProto.INT64, ["batch"])]
        sess = session(cond / name)
        assert [(i.name, i.type) for i in sess.get_inputs()] == [("z", "tensor(float)"), ("class", "tensor(int64)")]
        assert sess.get_outputs()[0].type == "tensor(float)"  # fp16 graph: fp32 io kept
        meta = sess.get_modelmeta().custom_metadata_map
        assert meta["num_classes"] == "2" and json.loads(meta["class_names"]) == list(NAMES)
        assert meta["arch"] == "fastgan" and meta["truncation"] == "none"
        assert [i["name"] for i in json.loads(meta["signature"])["inputs"]] == ["z", "class"]
    sess = session(cond / artifacts.ONNX_FP32)
    seeds = list(range(5))
    z, c = sample_latents(seeds, Z), classes_for_seeds(seeds, 2)
    full = sess.run(None, {"z": z, "class": c})[0]
    np.testing.assert_allclose(full, torch_reference(cond, seeds, c), atol=1e-4)
    np.testing.assert_allclose(sess.run(None, {"z": z[:1], "class": c[:1]})[0], full[:1], atol=1e-5)


def test_fp16_keeps_the_class_path_in_fp32_when_asked(cond, tmp_path):
    """The fallback conversion keeps z's and the class embedding's normalisation in fp32, class stays int64."""
    from projgan.export import fp16

    info = fp16.convert(cond / artifacts.ONNX_FP32, tmp_path / "g16.onnx", keep_fp32=True)
    model = onnx.load(str(cond / artifacts.ONNX_FP32))
    kept = set(info["fp32_nodes"])
    gather = [n.name for n in model.graph.node if n.op_type == "Gather" and "class" in n.input]
    assert gather and set(gather) <= kept  # the embedding lookup and what follows it
    assert not kept & {n.name for n in model.graph.node if n.op_type in ("ConvTranspose", "MatMul")}
    assert graph_inputs(tmp_path / "g16.onnx")[1] == ("class", onnx.TensorProto.INT64, ["batch"])
    seeds = list(range(4))
    feeds = {"z": sample_latents(seeds, Z), "class": classes_for_seeds(seeds, 2)}
    ok, why = similarity.judge(similarity.compare(session(cond / artifacts.ONNX_FP32).run(None, feeds)[0],
                                                  session(tmp_path / "g16.onnx").run(None, feeds)[0]), reduced=True)
    assert ok, why


def test_a_class_changes_the_image(cond):
    b = backends.load_backend(cond, backend="onnxruntime", device="cpu")
    z = sample_latents([7, 7], Z)
    a, d = b.generate_float(z, classes=[0, 1])
    assert np.abs(a - d).mean() > 0.02, "the class embedding must reach the image"
    same = b.generate_float(z, classes=0)  # a scalar class applies to the whole batch
    np.testing.assert_array_equal(same[0], same[1])


def test_every_backend_validates_classes_and_describes_them(cond):
    z = sample_latents([1, 2, 3], Z)
    for name in ("torch", "onnxruntime"):
        b = backends.load_backend(cond, backend=name, device="cpu", precision="fp32")
        d = b.describe()
        assert (d["num_classes"], d["class_names"], d["truncation"], d["supports_w"]) == (2, list(NAMES), False, False)
        assert (b.num_classes, b.class_names) == (2, NAMES)
        with pytest.raises(ValueError, match="needs a class"):
            b.generate(z)
        with pytest.raises(ValueError, match="0..1"):
            b.generate(z, classes=[0, 1, 2])
        with pytest.raises(ValueError, match="truncation"):
            b.generate(z, classes=0, psi=0.5)
        with pytest.raises(NotImplementedError):
            b.map_w(z, classes=0)
        assert b.generate(z, classes=b.default_classes([1, 2, 3])).shape == (3, 32, 32, 3)
    ref = backends.load_backend(cond, backend="torch", device="cpu", precision="fp32").generate(z, classes=[1, 0, 1])
    onnx_u8 = backends.load_backend(cond, backend="onnxruntime", device="cpu").generate(z, classes=[1, 0, 1])
    assert np.abs(ref.astype(int) - onnx_u8).max() <= 1


def test_triton_config_lists_the_class_input(cond):
    cfg = text_format.Parse((cond / "triton/projgan_generator/config.pbtxt").read_text(), mc.ModelConfig())
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("z", mc.TYPE_FP32, [Z]),
                                                                        ("class", mc.TYPE_INT64, [1])]
    assert cfg.input[1].HasField("reshape") and list(cfg.input[1].reshape.shape) == []  # [batch] in the graph
    with pytest.raises(ValueError, match="unknown generator input"):
        from projgan.export import triton

        triton.model_config("m", "onnxruntime_onnx", 8, Z, (3, 32, 32), [8], 10, extra_inputs=("label",))


def test_tensorrt_build_profiles_every_input(cond, monkeypatch, tmp_path):
    from projgan.export import tensorrt_build
    from tests import fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make())
    info = tensorrt_build.build_engine(cond / artifacts.ONNX_FP16, tmp_path / "g.plan", (1, 8, 64), 0.5, None)
    plan = json.loads((tmp_path / "g.plan").read_bytes()[len(b"fake-plan\n"):])
    assert plan["profiles"] == [{"z": [[1, Z], [8, Z], [64, Z]], "class": [[1], [8], [64]]}]
    assert info["inputs"] == ["z", "class"]


def test_tensorrt_feeds_are_named_padded_and_split_together():
    """The runner's shape/binding logic, without TensorRT: every input cut and padded at the same rows."""
    assert trt_runtime.order_inputs(["psi", "z", "class"]) == ("z", "class", "psi")
    with pytest.raises(UserError, match="generator engine"):
        trt_runtime.order_inputs(["z", "label"])
    z = sample_latents(range(5), 4)
    feeds = trt_runtime.as_feeds({"z": z, "class": [0, 1, 0, 1, 1], "psi": np.full(5, 0.7)}, ("z", "class", "psi"), 4)
    assert feeds["class"].dtype == np.int64 and feeds["psi"].dtype == np.float32
    assert trt_runtime.as_feeds(z, ("z",), 4)["z"].dtype == np.float32  # a bare array is z
    with pytest.raises(ValueError, match="class must be"):
        trt_runtime.as_feeds({"z": z, "class": [0, 1]}, ("z", "class"), 4)
    with pytest.raises(ValueError, match="takes"):
        trt_runtime.as_feeds({"z": z}, ("z", "class"), 4)
    parts = trt_runtime.split_batches(feeds, 2)
    assert [len(p["z"]) for p in parts] == [2, 2, 1] and [p["class"].tolist() for p in parts] == [[0, 1], [0, 1], [1]]
    padded = trt_runtime.pad_batch(parts[-1], 4)
    assert padded["class"].tolist() == [1, 1, 1, 1] and len(padded["z"]) == len(padded["psi"]) == 4
    assert trt_runtime.pad_batch(feeds, 1) is feeds


def test_old_exports_without_the_new_fields_still_serve(tmp_path):
    """A version-1 manifest and an ONNX whose metadata predates classes: unconditional FastGAN, unchanged."""
    src = make_generator(tmp_path / "generator", resolution=32, ngf=8)
    out = tmp_path / "exp"
    assert export(ExportConfig(source=str(src), out=str(out), parity_seeds=2, drift_images=DRIFT))
    assert graph_inputs(out / artifacts.ONNX_FP32) == [("z", onnx.TensorProto.FLOAT, ["batch", 256])]
    model = onnx.load(str(out / artifacts.ONNX_FP32))
    old = {"producer": "projgan", "resolution": "32", "z_dim": "256",
           "generator": json.dumps({"resolution": 32, "z_dim": 256, "ngf": 8})}
    del model.metadata_props[:]
    for k, v in old.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(out / artifacts.ONNX_FP32))
    m = json.loads((out / artifacts.MANIFEST).read_text())
    for key in ("arch", "num_classes", "class_names", "truncation", "w_space", "parity_inputs"):
        m.pop(key)
    m["format_version"] = 1
    m["generator"] = {"resolution": 32, "z_dim": 256, "ngf": 8, "channels": 3}
    m["files"][artifacts.ONNX_FP32]["sha256"] = artifacts.sha256_file(out / artifacts.ONNX_FP32)
    m["files"][artifacts.ONNX_FP32]["bytes"] = (out / artifacts.ONNX_FP32).stat().st_size
    artifacts.write_manifest(out, m)
    z = sample_latents([1, 2], 256)
    for name in ("onnxruntime", "torch"):
        b = backends.load_backend(out, backend=name, device="cpu", precision="fp32")
        assert (b.num_classes, b.class_names, b.truncation, b.supports_w) == (0, (), False, False)
        assert b.generate(z).shape == (2, 32, 32, 3)
        with pytest.raises(ValueError, match="unconditional"):
            b.generate(z, classes=[0, 1])


# ---------------------------------------------------------------- StyleGAN2


def test_style_export_has_psi_and_certifies_both_truncations(style):
    m = artifacts.read_manifest(style, verify=True)
    assert m["passed"] and m["arch"] == "stylegan2" and m["truncation"] is True
    assert [i["name"] for i in m["inputs"]] == ["z", "class", "psi"] and m["inputs"][2]["dtype"] == "float32"
    assert [p["psi"] for p in m["parity_inputs"]] == [1.0, 0.7]
    for key in ("torch-fp32", "onnxruntime-fp32", "onnxruntime-fp16", backends.W_PARITY_KEY):
        e = m["parity"][key]
        assert e["passed"], (key, e["reason"])
        assert e["images"] == 2 * SEEDS  # both psi values
        if key != "torch-fp32":
            assert [p["label"] for p in e["combinations"]] == ["psi=1", "psi=0.7"]
            assert all(p["passed"] and p["images"] == SEEDS for p in e["combinations"])
    assert m["parity"]["onnxruntime-fp16"]["drift"]["psi"] == 1.0
    for name in (artifacts.ONNX_FP32, artifacts.ONNX_FP16):
        assert graph_inputs(style / name) == [("z", onnx.TensorProto.FLOAT, ["batch", Z]),
                                              ("class", onnx.TensorProto.INT64, ["batch"]),
                                              ("psi", onnx.TensorProto.FLOAT, ["batch"])]
    cfg = text_format.Parse((style / "triton/projgan_generator/config.pbtxt").read_text(), mc.ModelConfig())
    assert [(i.name, i.data_type) for i in cfg.input][1:] == [("class", mc.TYPE_INT64), ("psi", mc.TYPE_FP32)]


@pytest.mark.parametrize("batch", [1, 5])
def test_style_onnx_fp32_and_fp16_match_torch(style, batch):
    seeds = list(range(10, 10 + batch))
    c = classes_for_seeds(seeds, 2)
    psi = np.linspace(0.5, 1.0, batch).astype(np.float32)
    ref = torch_reference(style, seeds, c, psi)
    feeds = {"z": sample_latents(seeds, Z), "class": c, "psi": psi}
    fp32 = session(style / artifacts.ONNX_FP32).run(None, feeds)[0]
    fp16 = session(style / artifacts.ONNX_FP16).run(None, feeds)[0]
    assert fp32.shape == fp16.shape == (batch, 3, 32, 32)
    assert np.abs(fp32 - ref).max() <= 1e-4
    ok, why = similarity.judge(similarity.compare(ref, fp16), reduced=True)
    assert ok, why


def test_style_psi_truncates_toward_the_class_average(style):
    b = backends.load_backend(style, backend="onnxruntime", device="cpu")
    z = sample_latents(range(4), Z)
    avg = b.generate_float(z, classes=1, psi=0.0)
    assert np.abs(avg - avg[0]).max() <= 1e-5, "psi = 0: one image per class whatever the seed"
    assert np.abs(avg[0] - b.generate_float(z[:1], classes=0, psi=0.0)[0]).mean() > 1e-3
    full = b.generate_float(z, classes=1)  # psi defaults to 1
    np.testing.assert_array_equal(full, b.generate_float(z, classes=1, psi=1.0))
    assert np.abs(full - b.generate_float(z, classes=1, psi=0.7)).mean() > 1e-3


def test_style_w_space_graphs_serve_interpolation(style):
    m = artifacts.read_manifest(style)
    assert set(artifacts.W_FILES.values()) <= set(m["files"])
    assert m["w_space"]["mapping"]["inputs"] == ["z", "class", "psi"] and m["w_space"]["synthesis"]["inputs"] == ["w"]
    assert graph_inputs(style / artifacts.W_FILES["synthesis"]) == [("w", onnx.TensorProto.FLOAT, ["batch", Z])]
    seeds = [3, 4, 5]
    z, c = sample_latents(seeds, Z), classes_for_seeds(seeds, 2)
    imgs = {}
    for name in ("torch", "onnxruntime"):
        b = backends.load_backend(style, backend=name, device="cpu", precision="fp32")
        assert b.supports_w and b.describe()["supports_w"] and b.w_dim == Z
        w = b.map_w(z, c, psi=0.7)
        assert w.shape == (3, Z) and w.dtype == np.float32
        imgs[name] = b.synthesize_w(w)
        assert np.abs(imgs[name].astype(int) - b.generate(z, c, psi=0.7)).max() <= 1
        mid = b.synthesize_w(0.5 * (w[:1] + w[1:2]))  # a frame between two seeds, in w
        assert mid.shape == (1, 32, 32, 3) and mid.dtype == np.uint8
        with pytest.raises(ValueError, match="w must be"):
            b.synthesize_w(w[:, :4])
    assert np.abs(imgs["torch"].astype(int) - imgs["onnxruntime"]).max() <= 1


def test_style_w_graphs_are_not_served_when_their_certificate_failed(style, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(style, d)
    m = json.loads((d / artifacts.MANIFEST).read_text())
    m["parity"][backends.W_PARITY_KEY]["passed"] = False
    artifacts.write_manifest(d, m)
    b = backends.load_backend(d, backend="onnxruntime", device="cpu")
    assert not b.supports_w
    with pytest.raises(NotImplementedError):
        b.map_w(sample_latents([1], Z), classes=0)
    assert backends.load_backend(d, backend="onnxruntime", device="cpu", force=True).supports_w


def test_unconditional_style_graph_takes_z_and_psi(tmp_path):
    """The main graph only (the w-space export is the conditional fixture's): one dynamo export, fast."""
    from projgan.export.onnx import export_fp32

    G, _ = artifacts.load_generator(make_model(tmp_path / "generator", "stylegan2", num_classes=0))
    info = export_fp32(G, tmp_path / "g.onnx")
    assert info["inputs"] == ["z", "psi"]
    assert graph_inputs(tmp_path / "g.onnx") == [("z", onnx.TensorProto.FLOAT, ["batch", Z]),
                                                 ("psi", onnx.TensorProto.FLOAT, ["batch"])]
    b = backends.OnnxRuntimeBackend(tmp_path / "g.onnx", "cpu", "fp32")
    assert (b.num_classes, b.class_names, b.truncation, b.supports_w) == (0, (), True, False)
    z = sample_latents(range(5), Z)
    with torch.no_grad():
        ref = run_torch(G, model_inputs(G.cfg, z, psi=0.7)).numpy()
    assert np.abs(b.generate_float(z, psi=0.7) - ref).max() <= 1e-4
    with pytest.raises(UserError, match="not this model's w-space graphs"):  # the full graph is no stand-in
        backends.OnnxRuntimeBackend(tmp_path / "g.onnx", "cpu", "fp32", w_graphs=(tmp_path / "g.onnx",) * 2)
