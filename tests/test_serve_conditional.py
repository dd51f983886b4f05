"""Classes and truncation over real HTTP: a 2-class FastGAN, a 2-class StyleGAN2 and a plain FastGAN.

Every image is compared with the same model run directly through its backend with the class (and
psi) the request asked for, so "by name", "by index", "by default" and "in a mixed batch" all mean
exactly the model's output for that seed and class.
"""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

from projgan import artifacts
from projgan.config import ServeConfig
from projgan.generator import sample_latents
from projgan.serve.app import create_app
from projgan.serve.backends import load_backend
from projgan.serve.threaded import background_server
from tests.conftest import make_generator

NAMES = ("red", "blue")
ALLOWED = "red, blue (or 0..1)"


def conditional_generator(dest, arch: str):
    """A 32 px, 2-class generator of ``arch`` with realistic contrast (tests.conftest.make_generator)."""
    return make_generator(dest, ngf=8, seed=1, z_dim=32, arch=arch, num_classes=2, class_names=NAMES)


def serve(source, **kw):
    cfg = ServeConfig(source=str(source), backend="torch", device="cpu", precision="fp32", max_batch=16, ui=False, **kw)
    return background_server(create_app(cfg))


def _served(tmp_path_factory, arch: str):
    """(URL, reference backend) for a 2-class generator of ``arch``."""
    gen = conditional_generator(tmp_path_factory.mktemp(arch) / "generator", arch)
    ref = load_backend(gen, "torch", "cpu", "fp32")
    with serve(gen) as url:
        yield url, ref
    ref.close()


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    yield from _served(tmp_path_factory, "fastgan")


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    yield from _served(tmp_path_factory, "stylegan2")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    gen = make_generator(tmp_path_factory.mktemp("plain") / "generator", resolution=32, ngf=8)
    with serve(gen) as url:
        yield url


def npy(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.load(io.BytesIO(resp.content), allow_pickle=False)


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def expected(ref, seeds, classes=None, psi=None) -> np.ndarray:
    if classes is None:
        classes = ref.default_classes(seeds)
    return ref.generate(sample_latents(seeds, ref.z_dim), classes, psi)


def test_class_by_name_and_by_index_is_the_models_image_for_that_class(cond):
    url, ref = cond
    seeds = [3, 4, 11]
    with httpx.Client(base_url=url, timeout=30) as c:
        red = npy(c.post("/v1/generate", json={"seeds": seeds, "class": "red", "format": "npy"}))
        red0 = npy(c.post("/v1/generate", json={"seeds": seeds, "class": 0, "format": "npy"}))
        blue = npy(c.post("/v1/generate", json={"seeds": seeds, "class": "blue", "format": "npy"}))
        blue1 = npy(c.post("/v1/generate", json={"seeds": seeds, "class": 1.0, "format": "npy"}))
        r = c.post("/v1/generate", json={"seeds": seeds, "format": "npy"})
        default, header = npy(r), r.headers["x-classes"]
        body = c.post("/v1/generate", json={"seeds": seeds}).json()
    np.testing.assert_array_equal(red, red0)
    np.testing.assert_array_equal(blue, blue1)
    np.testing.assert_array_equal(red, expected(ref, seeds, [0, 0, 0]))
    np.testing.assert_array_equal(blue, expected(ref, seeds, [1, 1, 1]))
    assert np.abs(red.astype(int) - blue).mean() > 5  # the class really changes the image
    # no class named: seed % 2, stated per image
    np.testing.assert_array_equal(default, expected(ref, seeds, [1, 0, 1]))
    assert header == "1,0,1" and [im["class"] for im in body["images"]] == [1, 0, 1]
    np.testing.assert_array_equal(png(base64.b64decode(body["images"][1]["png"])), red[1])


def test_bad_class_or_truncation_is_422_naming_the_allowed_values(cond):
    url, _ = cond
    with httpx.Client(base_url=url, timeout=30) as c:
        for cls in ("green", 2, -1, "0", "Red"):
            r = c.post("/v1/generate", json={"seeds": [1], "class": cls})
            assert r.status_code == 422, cls
            assert ALLOWED in r.json()["error"] and "class" in r.json()["error"], r.json()
        for cls in (True, None, 0.5, [0]):
            assert c.post("/v1/generate", json={"seeds": [1], "class": cls}).status_code == 422, cls
        r = c.post("/v1/generate", json={"seeds": [1], "truncation": 0.5})  # FastGAN has no truncation
        assert r.status_code == 422 and "truncation" in r.json()["error"] and "style" in r.json()["error"]
        assert c.post("/v1/generate", json={"seeds": [1], "truncation": 1}).status_code == 200  # psi 1 = none
        assert c.post("/v1/generate", json={"seeds": [1], "truncation": 2.5}).status_code == 422
        r = c.get("/v1/images/1.png", params={"class": "green"})
        assert r.status_code == 422 and ALLOWED in r.json()["error"]
        for q in ("class=2", "class=01", "class=", "truncation=0.5", "truncation=nan"):
            assert c.get(f"/v1/images/1.png?{q}").status_code == 422, q
        r = c.post("/v1/interpolate", json={"from": 1, "to": 2, "class": "green"})
        assert r.status_code == 422 and ALLOWED in r.json()["error"]
        assert c.get("/healthz").status_code == 200


def test_unconditional_model_refuses_a_class(plain):
    with httpx.Client(base_url=plain, timeout=30) as c:
        for cls in (0, "class0"):
            r = c.post("/v1/generate", json={"seeds": [1], "class": cls})
            assert r.status_code == 422 and "unconditional" in r.json()["error"]
        assert c.get("/v1/images/1.png?class=0").status_code == 422
        assert c.post("/v1/interpolate", json={"from": 1, "to": 2, "class": 0}).status_code == 422
        r = c.post("/v1/generate", json={"seeds": [1], "truncation": 0.7})
        assert r.status_code == 422 and "truncation" in r.json()["error"]
        r = c.post("/v1/generate", json={"seeds": [1], "format": "npy"})
        assert r.status_code == 200 and "x-classes" not in r.headers
        card = c.get("/v1/model").json()
    assert card["num_classes"] == 0 and card["class_names"] == [] and not card["truncation"] and not card["supports_w"]


def test_image_route_class_is_part_of_the_etag(cond):
    url, ref = cond
    with httpx.Client(base_url=url, timeout=30) as c:
        default = c.get("/v1/images/4.png")  # seed 4: class 0 by default
        red = c.get("/v1/images/4.png?class=red")
        blue = c.get("/v1/images/4.png?class=blue")
        one = c.get("/v1/images/4.png?class=1")
        cached = c.get("/v1/images/4.png?class=blue", headers={"If-None-Match": blue.headers["etag"]})
        stale = c.get("/v1/images/4.png?class=red", headers={"If-None-Match": blue.headers["etag"]})
    assert blue.headers["etag"] != default.headers["etag"] and blue.content != default.content
    assert red.headers["etag"] == default.headers["etag"] and red.content == default.content  # the same image
    assert one.headers["etag"] == blue.headers["etag"] and one.content == blue.content
    assert cached.status_code == 304 and stale.status_code == 200
    np.testing.assert_array_equal(png(blue.content), expected(ref, [4], [1])[0])


def test_mixed_classes_share_batches_and_a_seed_keeps_its_bytes(cond):
    url, ref = cond
    # seed 42 as red at different positions of concurrent requests with other classes
    bodies = [
        {"seeds": [s, 42, s + 1][: 1 + k % 3], "class": ["red", "blue", 0, 1][k % 4], "format": "npy"}
        for k, s in enumerate(range(200, 224))
    ]

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            before = (await c.get("/metrics")).text
            alone = await c.post("/v1/generate", json={"seeds": [42], "class": "red", "format": "npy"})
            mixed = await asyncio.gather(*(c.post("/v1/generate", json=b) for b in bodies))
            after = (await c.get("/metrics")).text
        return alone, mixed, before, after

    alone, mixed, before, after = asyncio.run(main())
    red42 = npy(alone)[0]
    for body, r in zip(bodies, mixed, strict=True):
        cls = NAMES.index(body["class"]) if isinstance(body["class"], str) else body["class"]
        got = npy(r)
        np.testing.assert_array_equal(got, expected(ref, body["seeds"], [cls] * len(body["seeds"])))
        if len(body["seeds"]) > 1 and cls == 0:
            np.testing.assert_array_equal(got[1], red42)

    def count(text):
        return float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("projgan_batch_size_count ")))

    assert count(after) - count(before) < 1 + len(bodies)  # some batch held requests of both classes


def test_model_card_and_schema_list_the_classes(cond, plain):
    url, _ = cond
    with httpx.Client(base_url=url, timeout=30) as c:
        card = c.get("/v1/model").json()
        doc = c.get("/openapi.json").json()
    assert card["num_classes"] == 2 and card["class_names"] == list(NAMES)
    assert card["truncation"] is False and card["supports_w"] is False
    props = doc["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"type": "string", "enum": list(NAMES)} in props["class"]["anyOf"]
    assert {"type": "integer", "minimum": 0, "maximum": 1} in props["class"]["anyOf"]
    assert (props["truncation"]["minimum"], props["truncation"]["maximum"]) == (1, 1)
    params = {p["name"]: p for p in doc["paths"]["/v1/images/{seed}.png"]["get"]["parameters"]}
    assert params["class"]["schema"]["anyOf"] == props["class"]["anyOf"]
    plain_doc = httpx.get(plain + "/openapi.json").json()
    assert "class" not in plain_doc["components"]["schemas"]["GenerateRequest"]["properties"]
    assert "class" not in {p["name"] for p in plain_doc["paths"]["/v1/images/{seed}.png"]["get"]["parameters"]}


# ---------------------------------------------------------------- style models: truncation and w space


def test_truncation_zero_gives_the_class_average_for_every_seed(style):
    url, ref = style
    with httpx.Client(base_url=url, timeout=30) as c:
        card = c.get("/v1/model").json()
        zero = npy(c.post("/v1/generate", json={"seeds": [3, 5, 8], "truncation": 0, "class": "blue", "format": "npy"}))
        full = npy(c.post("/v1/generate", json={"seeds": [3, 5], "class": "blue", "format": "npy"}))
        half = npy(c.post("/v1/generate", json={"seeds": [3, 5], "class": "blue", "truncation": 0.5, "format": "npy"}))
        a, b = c.get("/v1/images/3.png?truncation=0"), c.get("/v1/images/5.png?truncation=0")
        plain3, half3 = c.get("/v1/images/3.png"), c.get("/v1/images/3.png?truncation=0.5&class=blue")
        one3 = c.get("/v1/images/3.png?truncation=1")
        assert c.post("/v1/generate", json={"seeds": [1], "truncation": 2.01}).status_code == 422
        assert c.post("/v1/generate", json={"seeds": [1], "truncation": -0.1}).status_code == 422
    assert card["truncation"] is True and card["supports_w"] is True and card["limits"]["truncation_range"] == [0, 2]
    np.testing.assert_array_equal(zero[0], zero[1])
    np.testing.assert_array_equal(zero[0], zero[2])
    assert not np.array_equal(full[0], full[1]) and zero[0].std() > 10
    np.testing.assert_array_equal(half, expected(ref, [3, 5], [1, 1], 0.5))
    assert a.content == b.content  # seeds 3 and 5 are both class 1 by default
    assert len({a.headers["etag"], plain3.headers["etag"], half3.headers["etag"]}) == 3
    assert one3.headers["etag"] == plain3.headers["etag"] and one3.content == plain3.content  # psi 1 = none
    np.testing.assert_array_equal(png(half3.content), half[0])


def test_interpolation_is_linear_in_w_and_ends_at_the_seeds_images(style):
    url, ref = style
    steps = 5
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/interpolate", json={"from": 4, "to": 7, "steps": steps, "format": "zip"})
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        frames = np.stack([png(zf.read(n)) for n in sorted(zf.namelist())])
        ends = [png(c.get(f"/v1/images/{s}.png").content) for s in (4, 7)]  # classes 0 and 1 by default
        r = c.post(
            "/v1/interpolate",
            json={"from": 4, "to": 7, "steps": 3, "format": "zip", "class": "blue", "truncation": 0.7},
        )
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        blue = np.stack([png(zf.read(n)) for n in sorted(zf.namelist())])
        blue_ends = [png(c.get(f"/v1/images/{s}.png?class=blue&truncation=0.7").content) for s in (4, 7)]
        gif = c.post("/v1/interpolate", json={"from": 4, "to": 7, "steps": 4})
    assert len(frames) == steps and gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    for got, want in ((frames[0], ends[0]), (frames[-1], ends[1]), (blue[0], blue_ends[0]), (blue[-1], blue_ends[1])):
        assert np.abs(got.astype(int) - want).max() <= 1
    w = ref.map_w(sample_latents([4, 7], ref.z_dim), [0, 1])
    t = np.linspace(0, 1, steps)[:, None]
    lerp = ref.synthesize_w(((1 - t) * w[0] + t * w[1]).astype(np.float32))
    assert np.abs(frames.astype(int) - lerp).max() <= 1  # linear in w, not slerp in z
    assert not np.array_equal(frames[1], frames[2])


def test_style_server_accepts_exactly_what_its_schema_allows(style):
    """Bounded schemathesis run (positive and negative) over the narrowed schema with classes and psi."""
    from tests.test_reliability_api import fuzz

    url, _ = style
    statuses = fuzz(url, examples_per_operation=12, seed=5)
    assert statuses[200] > 0 and statuses[422] > 0


def test_onnx_style_model_without_w_graphs_truncates_and_slerps_in_z(tmp_path):
    """A bare ONNX file of a style model takes class and psi inputs but has no w graphs: interpolation falls
    back to slerp in z, each frame with the named class, so the ends are that class's images of the seeds."""
    from projgan.export.onnx import export_fp32

    gen = conditional_generator(tmp_path / "generator", "stylegan2")
    onnx = tmp_path / "generator.onnx"
    export_fp32(artifacts.load_generator(gen)[0], onnx)
    ref = load_backend(onnx, "onnxruntime", "cpu")
    cfg = ServeConfig(source=str(onnx), backend="onnxruntime", device="cpu", max_batch=8, ui=False)
    with background_server(create_app(cfg)) as url, httpx.Client(base_url=url, timeout=30) as c:
        card = c.get("/v1/model").json()
        got = npy(c.post("/v1/generate", json={"seeds": [3, 6], "class": "red", "truncation": 0.6, "format": "npy"}))
        zero = npy(c.post("/v1/generate", json={"seeds": [3, 6], "class": 1, "truncation": 0, "format": "npy"}))
        r = c.post("/v1/interpolate", json={"from": 3, "to": 6, "steps": 4, "class": "blue", "format": "zip"})
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        frames = np.stack([png(zf.read(n)) for n in sorted(zf.namelist())])
        ends = [png(c.get(f"/v1/images/{s}.png?class=blue").content) for s in (3, 6)]
    assert card["backend"] == "onnxruntime" and card["class_names"] == list(NAMES)
    assert card["truncation"] is True and card["supports_w"] is False
    np.testing.assert_array_equal(got, expected(ref, [3, 6], [0, 0], 0.6))
    ref.close()
    np.testing.assert_array_equal(zero[0], zero[1])
    assert np.abs(frames[0].astype(int) - ends[0]).max() <= 1 and np.abs(frames[-1].astype(int) - ends[1]).max() <= 1
