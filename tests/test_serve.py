"""The HTTP API on a real uvicorn server with real httpx clients, for the torch and ONNX Runtime backends.

Every image the server returns is compared with the same backend run directly, so "correct"
means exactly what the model produces for that seed, whatever batch it was computed in.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import zipfile

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from projgan.config import ServeConfig
from projgan.generator import sample_latents
from projgan.serve.app import create_app
from projgan.serve.backends import load_backend
from projgan.serve.threaded import background_server
from tests.conftest import make_generator

BACKENDS = ["torch", "onnxruntime"]


def export_onnx(gen_dir, dest):
    """A dynamic-batch ONNX file of the generator, written by the real export code."""
    from projgan import artifacts
    from projgan.export.onnx import export_fp32

    G, _ = artifacts.load_generator(gen_dir)
    export_fp32(G, dest)
    return dest


@pytest.fixture(scope="module")
def generator_32(tmp_path_factory):
    return make_generator(tmp_path_factory.mktemp("gen") / "generator", resolution=32, ngf=16)


@pytest.fixture(scope="module")
def onnx_32(generator_32, tmp_path_factory):
    return export_onnx(generator_32, tmp_path_factory.mktemp("onnx") / "generator.onnx")


def source_for(kind, generator_32, request):
    return request.getfixturevalue("onnx_32") if kind == "onnxruntime" else generator_32


@pytest.fixture(scope="module", params=BACKENDS)
def api(request, generator_32):
    """(base URL, a second copy of the same backend for reference images) per backend."""
    source = source_for(request.param, generator_32, request)
    cfg = ServeConfig(source=str(source), backend=request.param, device="cpu", max_batch=16, ui=False)
    reference = load_backend(source, request.param, "cpu")
    with background_server(create_app(cfg)) as url:  # the lifespan loads the model itself
        yield url, reference, request.param
    reference.close()


def decode_png(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.mode == "RGB"
    return np.asarray(im)


def npy(resp) -> np.ndarray:
    return np.load(io.BytesIO(resp.content), allow_pickle=False)


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_health_readiness_and_model_card(api):
    url, ref, kind = api
    with httpx.Client(base_url=url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready"}
        card = c.get("/v1/model").json()
        assert card["backend"] == kind and card["resolution"] == 32 and card["z_dim"] == ref.z_dim
        assert card["precision"] == ref.precision and card["max_batch"] == 16
        assert card["limits"]["max_images"] == 64 and card["limits"]["seed_range"] == [0, 2**32 - 1]
        if kind == "onnxruntime":
            assert card["providers"] == ["CPUExecutionProvider"] and card["mode"] is None
        else:  # a CPU runs eager torch; the self-check of auto bf16 (where it ran) is on the card
            assert card["mode"] == "eager" and card["buckets"] == []
            assert card["checks"].get("precision_check", {}).get("precision", ref.precision) in ("bf16", "fp32")
        schema = c.get("/openapi.json").json()
        for path in ("/v1/generate", "/v1/images/{seed}.png", "/v1/interpolate", "/v1/model", "/healthz", "/readyz"):
            assert path in schema["paths"], path
        assert "GenerateRequest" in schema["components"]["schemas"]
        assert c.get("/docs").status_code == 200
        assert c.get("/", follow_redirects=False).headers["location"] == "/docs"  # ui=False here


def test_every_format_returns_exactly_the_models_images(api):
    url, ref, _ = api
    seeds = [3, 7, 2**32 - 1]
    expected = ref.generate(sample_latents(seeds, ref.z_dim))
    with httpx.Client(base_url=url, timeout=30) as c:
        body = c.post("/v1/generate", json={"seeds": seeds}).json()
        assert [im["seed"] for im in body["images"]] == seeds and body["resolution"] == 32
        as_png = np.stack([decode_png(base64.b64decode(im["png"])) for im in body["images"]])

        r = c.post("/v1/generate", json={"seeds": seeds, "format": "zip"})
        assert r.headers["content-type"] == "application/zip"
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        assert zf.namelist() == [f"seed_{s}.png" for s in seeds]
        as_zip = np.stack([decode_png(zf.read(f"seed_{s}.png")) for s in seeds])

        r = c.post("/v1/generate", json={"seeds": seeds, "format": "npy"})
        as_npy = npy(r)
        assert as_npy.dtype == np.uint8 and as_npy.shape == (3, 32, 32, 3)
        assert r.headers["x-seeds"] == ",".join(map(str, seeds))

        one = decode_png(c.get("/v1/images/7.png").content)
    for got in (as_png, as_zip, as_npy):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(one, expected[1])
    assert expected.std() > 20  # realistic contrast, so equality means something


def test_n_and_seed_form(api):
    url, _, _ = api
    with httpx.Client(base_url=url, timeout=30) as c:
        a = npy(c.post("/v1/generate", json={"n": 4, "seed": 100, "format": "npy"}))
        b = npy(c.post("/v1/generate", json={"seeds": [100, 101, 102, 103], "format": "npy"}))
        np.testing.assert_array_equal(a, b)
        body = c.post("/v1/generate", json={"n": 2}).json()  # no seed: random consecutive seeds
        s0, s1 = (im["seed"] for im in body["images"])
        assert s1 == s0 + 1 and 0 <= s0 < 2**32 - 1


def test_same_seed_same_bytes_across_requests_and_batches(api):
    url, _, _ = api

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            alone = [(await c.get("/v1/images/42.png")).content for _ in range(2)]
            in_batch = await c.post("/v1/generate", json={"seeds": [1, 42, 5], "format": "zip"})
            # 42 at different positions of concurrent requests that the batcher mixes together
            mixed = await asyncio.gather(
                *(
                    c.post("/v1/generate", json={"seeds": [s, 42, s + 1][: 1 + k % 3], "format": "npy"})
                    for k, s in enumerate(range(200, 216))
                )
            )
            npy_alone = await c.post("/v1/generate", json={"seeds": [42], "format": "npy"})
        return alone, in_batch, mixed, npy_alone

    alone, in_batch, mixed, npy_alone = asyncio.run(main())
    assert alone[0] == alone[1]
    assert zipfile.ZipFile(io.BytesIO(in_batch.content)).read("seed_42.png") == alone[0]
    ref = npy(npy_alone)[0]
    rows = [npy(r)[1] for k, r in enumerate(mixed) if 1 + k % 3 >= 2]
    assert rows and all(np.array_equal(row, ref) for row in rows)


def test_image_route_is_cacheable(api):
    url, _, _ = api
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/v1/images/9.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
        assert r.headers["cache-control"].startswith("public") and "vary" not in r.headers  # no key: shareable
        again = c.get("/v1/images/9.png", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert c.get("/v1/images/10.png").headers["etag"] != r.headers["etag"]


def test_interpolation_gif_and_zip(api):
    url, ref, _ = api
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/interpolate", json={"from": 4, "to": 8, "steps": 6})
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
        gif = Image.open(io.BytesIO(r.content))
        assert gif.n_frames == 2 * 6 - 2 and gif.size == (32, 32)  # forth and back
        r = c.post("/v1/interpolate", json={"from": 4, "to": 8, "steps": 6, "format": "zip"})
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        frames = np.stack([decode_png(zf.read(n)) for n in sorted(zf.namelist())])
    assert len(frames) == 6
    ends = ref.generate(sample_latents([4, 8], ref.z_dim)).astype(int)
    assert np.abs(frames[0].astype(int) - ends[0]).max() <= 1  # slerp's ends are the seeds' latents
    assert np.abs(frames[-1].astype(int) - ends[1]).max() <= 1
    assert not np.array_equal(frames[2], frames[3])


def test_64_concurrent_requests_are_correct_and_coalesced(api):
    url, ref, _ = api
    requests = [[1000 + k] if k % 2 else [1000 + k, 5000 + k] for k in range(64)]

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            before = (await c.get("/metrics")).text
            resps = await asyncio.gather(
                *(c.post("/v1/generate", json={"seeds": s, "format": "npy"}) for s in requests)
            )
            after = (await c.get("/metrics")).text
        return before, resps, after

    before, resps, after = asyncio.run(main())
    assert all(r.status_code == 200 for r in resps)
    for seeds, r in zip(requests, resps, strict=True):
        np.testing.assert_array_equal(npy(r), ref.generate(sample_latents(seeds, ref.z_dim)))
    batches = metric(after, "projgan_batch_size_count") - metric(before, "projgan_batch_size_count")
    images = metric(after, "projgan_batch_size_sum") - metric(before, "projgan_batch_size_sum")
    singles = metric(after, "projgan_batch_size_bucket", '{le="1.0"}') - metric(
        before, "projgan_batch_size_bucket", '{le="1.0"}'
    )
    assert images == sum(map(len, requests))
    assert batches < len(requests) and singles < batches  # coalesced: some batch held more than one image
    assert 'route="/v1/generate",status="200"' in after
    assert metric(after, "projgan_queue_depth_images") == 0
    assert metric(after, "projgan_queue_wait_seconds_count") > 0


BAD_BODIES = [
    {},
    {"seeds": []},
    {"seeds": [-1]},
    {"seeds": [2**32]},
    {"seeds": ["1"]},
    {"seeds": [1.5]},
    {"seeds": [True]},
    {"seeds": list(range(65))},
    {"n": 0},
    {"n": 65},
    {"seed": 5},
    {"seeds": None, "n": 2},
    {"seeds": [1], "seed": None},
    {"seeds": [1], "n": 1},
    {"seeds": [1], "seed": 1},
    {"seeds": [1], "format": "bmp"},
    {"seeds": [1], "color": "red"},
    [1, 2],
]


def test_invalid_input_is_422_with_a_message_and_the_server_stays_healthy(api):
    url, _, _ = api
    with httpx.Client(base_url=url, timeout=30) as c:
        for body in BAD_BODIES:
            r = c.post("/v1/generate", json=body)
            assert r.status_code == 422, body
            assert r.json()["error"], body
        r = c.post("/v1/generate", content=b'{"seeds": [1,', headers={"content-type": "application/json"})
        assert r.status_code == 422
        for path in ("/v1/images/abc.png", "/v1/images/-1.png", f"/v1/images/{2**32}.png", "/v1/images/+0.0.png",
                     "/v1/images/1e3.png", "/v1/images/7.0.png"):
            assert c.get(path).status_code == 422, path
        for body in (
            {"from": 1, "to": 2, "steps": 1},
            {"from": 1, "to": 2, "steps": 65},
            {"to": 2},
            {"from": 1, "to": 2, "format": "mp4"},
        ):
            assert c.post("/v1/interpolate", json=body).status_code == 422, body
        msg = c.post("/v1/generate", json={"seeds": list(range(65))}).json()["error"]
        assert "seeds" in msg and "64" in msg
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/generate", json={"seeds": [1]}).status_code == 200


def test_oversize_bodies_are_413(api):
    url, _, _ = api
    big = json.dumps({"seeds": [1]}) + " " * 70_000  # valid JSON, too long

    def chunks():
        for _ in range(70):
            yield b" " * 1024  # no Content-Length: the limit is on the bytes really sent

    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/generate", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "bytes" in r.json()["error"]
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "transfer-encoding" not in r.headers
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/generate", json={"seeds": [1]}).status_code == 200
        assert 'status="413"' in c.get("/metrics").text


def test_full_queue_is_503_with_retry_after(tmp_path):
    """A tiny queue and slow batches (256 px): a burst overflows it; accepted requests still succeed."""
    from projgan import artifacts
    from projgan.config import GeneratorConfig
    from projgan.generator import Generator

    torch.manual_seed(0)
    gen = artifacts.save_generator(tmp_path / "gen256", Generator(GeneratorConfig(resolution=256, ngf=32)))
    cfg = ServeConfig(
        source=str(gen),
        backend="torch",
        device="cpu",
        max_batch=8,
        max_images=8,
        max_interpolation_steps=8,
        queue_size=8,
        ui=False,
    )

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            resps = await asyncio.gather(
                *(c.post("/v1/generate", json={"n": 8, "seed": 10 * k, "format": "npy"}) for k in range(10))
            )
            after = await c.post("/v1/generate", json={"seeds": [1], "format": "npy"})
            metrics = (await c.get("/metrics")).text
            health = await c.get("/healthz")
        return resps, after, metrics, health

    with background_server(create_app(cfg)) as url:
        resps, after, metrics, health = asyncio.run(burst(url))
    codes = [r.status_code for r in resps]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    for r in resps:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "queue full" in r.json()["error"]
        else:
            assert npy(r).shape == (8, 256, 256, 3)
    assert after.status_code == 200 and health.status_code == 200
    assert metric(metrics, "projgan_queue_rejections_total") == codes.count(503)


def test_api_key_guards_generation_but_not_health(generator_32):
    cfg = ServeConfig(source=str(generator_32), backend="torch", device="cpu", api_key="s3cret", ui=False)
    with background_server(create_app(cfg)) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.post("/v1/generate", json={"seeds": [1]}).status_code == 401
        assert c.get("/v1/images/1.png", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/interpolate", json={"from": 1, "to": 2}).status_code == 401
        assert c.get("/v1/images/1.png", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/generate", json={"seeds": [1]}, headers={"X-API-Key": "s3cret"}).status_code == 200


def test_keyed_images_are_not_cacheable_by_shared_caches(generator_32):
    """Behind a key, a proxy or CDN must not serve one caller's cached image to callers without it."""
    cfg = ServeConfig(source=str(generator_32), backend="torch", device="cpu", api_key="s3cret", ui=False)
    key = {"X-API-Key": "s3cret"}
    with background_server(create_app(cfg)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/v1/images/9.png", headers=key)
        again = c.get("/v1/images/9.png", headers={**key, "If-None-Match": r.headers["etag"]})
        refused = c.get("/v1/images/9.png")
    for resp in (r, again):
        directives = {d.strip().split("=")[0] for d in resp.headers["cache-control"].split(",")}
        assert "private" in directives and "public" not in directives and "max-age" in directives
        assert "x-api-key" in resp.headers["vary"].lower()
        assert resp.headers["etag"] == r.headers["etag"]
    assert r.status_code == 200 and again.status_code == 304
    assert refused.status_code == 401 and "public" not in refused.headers.get("cache-control", "")


@pytest.mark.gpu
def test_cuda_backend_serves_batch_independent_images(generator_32):
    cfg = ServeConfig(source=str(generator_32), backend="torch", device="cuda", max_batch=16, ui=False)

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            alone = await c.post("/v1/generate", json={"seeds": [42], "format": "npy"})
            mixed = await asyncio.gather(
                *(c.post("/v1/generate", json={"seeds": [s, 42], "format": "npy"}) for s in range(300, 316))
            )
            card = (await c.get("/v1/model")).json()
        return alone, mixed, card

    with background_server(create_app(cfg)) as url:
        alone, mixed, card = asyncio.run(main(url))
    from projgan.hardware import auto_precision

    assert card["device"] == "cuda" and card["precision"] == auto_precision("cuda")  # bf16 on Ampere and later
    ref = npy(alone)[0]
    diffs = [int(np.abs(npy(r)[1].astype(int) - ref).max()) for r in mixed]
    assert max(diffs) == 0, diffs
