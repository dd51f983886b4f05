"""The HTTP server: DESIGN.md's API over one dynamically batched backend, plus the Gradio UI.

``create_app(cfg, backend=None)`` builds the FastAPI app (the backend is loaded in the lifespan
unless one is passed in, then warmed up for batch sizes 1 and ``max_batch`` on the backend
thread while ``/readyz`` says 503). ``run(cfg)`` is what ``pipeline serve`` calls.

Class-conditional and style models: ``class`` (index or name) and ``truncation`` (psi) ride along
with the seeds as per-image columns through the batcher; a conditional request naming no class gives
each seed class ``seed % K``. The OpenAPI schema is narrowed to the loaded model's classes and psi
range on first use (``schemas.specialise_openapi``).
"""

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
from typing import Annotated, Any

import numpy as np

from projgan.config import ServeConfig
from projgan.errors import UserError
from projgan.serve import images as enc
from projgan.serve.batcher import BatcherClosed, QueueFull
from projgan.serve.limits import BodyLimit
from projgan.serve.schemas import (
    CLASS_QUERY_DOC,
    MAX_SEED,
    TRUNCATION_DOC,
    TRUNCATION_RANGE,
    ErrorOut,
    GenerateResponse,
    ModelCard,
    Status,
    request_models,
    specialise_openapi,
)
from projgan.serve.server import Server
from projgan.serve.telemetry import RequestMetrics

log = logging.getLogger("projgan.serve")

# The same seed always gives the same image from the same model; the ETag names the model.
CACHE_CONTROL = "public, max-age=31536000, immutable"
# Behind --api-key a shared cache must not hand an image to callers without the key: browsers only.
CACHE_CONTROL_KEYED = "private, max-age=31536000, immutable"
UI_BODY_LIMIT = 1 << 20  # Gradio's own JSON messages under /ui
def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(cfg: ServeConfig, backend=None):
    """The FastAPI app. Pass ``backend`` to serve an already loaded one (it is then not closed here)."""
    from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, RedirectResponse, Response
    from fastapi.security import APIKeyHeader
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if max(cfg.max_images, cfg.max_interpolation_steps) > cfg.queue_size:
        raise UserError(
            f"--queue-size {cfg.queue_size} is smaller than one request may be "
            f"({cfg.max_images} images, {cfg.max_interpolation_steps} interpolation frames)",
            "raise --queue-size or lower the per-request limits",
        )
    server = Server(cfg)
    GenerateRequest, InterpolateRequest = request_models(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        b = backend
        if b is None:
            b = await asyncio.to_thread(open_backend, cfg)
        await server.start(b)
        warm = asyncio.create_task(server.warm_up())  # requests queue behind warm-up meanwhile
        try:
            yield
        finally:
            server.ready = False
            with contextlib.suppress(Exception):
                await warm
            await server.stop()
            if backend is None:
                b.close()

    app = FastAPI(
        title="projgan",
        version="0.1.0",
        summary="Projected GAN generator behind a dynamically batched HTTP API.",
        description="A seed always gives the same image. Invalid input is 422, oversize bodies 413, "
        "a full queue 503 with Retry-After. The Gradio demo lives at /ui.",
        lifespan=lifespan,
    )
    app.state.server = server
    generic_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, narrowed to the loaded model's classes and psi (cached only once it is known)."""
        if app.openapi_schema is None:
            doc = generic_openapi()
            if server.backend is None:
                app.openapi_schema = None
                return doc
            app.openapi_schema = specialise_openapi(doc, server.facts)
        return app.openapi_schema

    app.openapi = openapi

    def refuse(loc: tuple, msg: str, value: Any, kind: str = "value_error"):
        """A 422 in the same shape as the request models' own."""
        raise RequestValidationError([{"type": kind, "loc": loc, "msg": msg, "input": value}])

    def model_args(where: str, cls: int | str | None, psi: float | None) -> tuple[int | None, float | None]:
        """The class index and psi a request asks for, checked against the loaded model."""
        try:
            index = server.facts.class_index(cls, url=where == "query")
        except ValueError as e:
            refuse((where, "class"), str(e), cls)
        try:
            return index, server.facts.truncation_psi(psi)
        except ValueError as e:
            refuse((where, "truncation"), str(e), psi)

    errors = {422: {"model": ErrorOut}, 503: {"model": ErrorOut, "description": "queue full (see Retry-After)"}}

    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the server has --api-key")

    async def check_key(key: Annotated[str | None, Security(key_header)] = None) -> None:  # async: no thread hop
        if not hmac.compare_digest((key or "").encode(), cfg.api_key.encode()):
            raise HTTPException(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "ApiKey"})

    guarded = [Depends(check_key)] if cfg.api_key else []
    if cfg.api_key:
        errors[401] = {"model": ErrorOut}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"error": _validation_message(detail), "detail": detail}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(BatcherClosed)
    async def closed(request: Request, exc: BatcherClosed):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and request.method == "POST":  # FastAPI's "error parsing the body" (not UTF-8)
            return JSONResponse({"error": "request body is not valid UTF-8 JSON"}, status_code=422)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        return JSONResponse({"error": f"generation failed ({type(exc).__name__})"}, status_code=500)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        dependencies=guarded,
        responses={
            **errors,
            200: {
                "content": {"application/zip": {}, "application/octet-stream": {"description": "npy uint8 [B,H,W,3]"}}
            },
        },
        summary="Generate images for seeds (png in JSON, zip or npy)",
    )
    async def generate(body: GenerateRequest):
        cls, psi = model_args("body", body.class_, body.truncation)
        seeds = body.seed_list()
        classes = server.classes(seeds, cls)
        images = await server.generate(seeds, cls, psi)
        seed_header = {"X-Seeds": ",".join(map(str, seeds))}
        if classes is not None:
            seed_header["X-Classes"] = ",".join(map(str, classes.tolist()))
        if body.format == "npy":
            data = await server.encode(enc.npy, images, cost=images.nbytes // 16)  # a copy, no compression
            headers = {"Content-Disposition": 'attachment; filename="images.npy"', **seed_header}
            return Response(data, media_type="application/octet-stream", headers=headers)
        pngs = await server.pngs(images)
        if body.format == "zip":
            named = {f"seed_{s}.png": p for s, p in zip(seeds, pngs, strict=True)}  # a repeated seed is one file
            data = await server.encode(enc.zip_of, list(named.items()), cost=sum(map(len, pngs)) // 16)
            headers = {"Content-Disposition": 'attachment; filename="images.zip"', **seed_header}
            return Response(data, media_type="application/zip", headers=headers)
        import base64

        out = {
            "resolution": int(images.shape[1]),
            "images": [{"seed": s, "png": base64.b64encode(p).decode()} for s, p in zip(seeds, pngs, strict=True)],
        }
        if classes is not None:
            for im, c in zip(out["images"], classes.tolist(), strict=True):
                im["class"] = c
        return Response(json.dumps(out), media_type="application/json")

    @app.get(
        "/v1/images/{seed}.png",
        dependencies=guarded,
        response_class=Response,
        responses={**errors, 200: {"content": {"image/png": {}}}, 304: {"description": "not modified (ETag)"}},
        summary="One image, cacheable",
    )
    async def image(
        request: Request,
        seed: Annotated[int, PathParam(ge=0, le=MAX_SEED)],
        cls: Annotated[str | None, Query(alias="class", description=CLASS_QUERY_DOC)] = None,
        truncation: Annotated[
            float | None, Query(ge=TRUNCATION_RANGE[0], le=TRUNCATION_RANGE[1], description=TRUNCATION_DOC)
        ] = None,
    ):
        if not str(request.path_params.get("seed", "")).isdigit():  # "+0.0" or "1e3": not an integer in a URL
            refuse(("path", "seed"), "seed must be written as a decimal integer", seed, kind="int_parsing")
        index, psi = model_args("query", cls, truncation)
        # The ETag names everything the bytes depend on: model, seed, the class it gets, psi.
        classes = server.classes([seed], index)
        tag = [server.fingerprint, str(seed)]
        if classes is not None:
            tag.append(f"c{int(classes[0])}")
        if psi is not None and psi != 1:
            tag.append(f"t{np.float32(psi).item()!r}")
        etag = '"' + "-".join(tag) + '"'
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        if cfg.api_key:
            headers.update({"Cache-Control": CACHE_CONTROL_KEYED, "Vary": "X-API-Key"})
        match = request.headers.get("if-none-match", "")
        if match and (match.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in match.split(",")]):
            return Response(status_code=304, headers=headers)
        images = await server.generate([seed], index, psi)
        data = await server.encode(enc.png, images[0], cost=images[0].nbytes)
        return Response(data, media_type="image/png", headers=headers)

    @app.post(
        "/v1/interpolate",
        dependencies=guarded,
        response_class=Response,
        responses={**errors, 200: {"content": {"image/gif": {}, "application/zip": {}}}},
        summary="Interpolate between two seeds (in w for style models, else slerp in z): GIF or zip of frames",
    )
    async def interpolate(body: InterpolateRequest):
        cls, psi = model_args("body", body.class_, body.truncation)
        frames = await server.interpolate(body.from_, body.to, body.steps, cls, psi)
        headers = {"X-Frames": str(len(frames))}
        if body.format == "gif":
            data = await server.encode(enc.gif, frames, body.duration_ms)
            return Response(data, media_type="image/gif", headers=headers)
        pngs = await server.pngs(frames)
        named = [(f"frame_{i:03d}.png", p) for i, p in enumerate(pngs)]
        data = await server.encode(enc.zip_of, named, cost=sum(map(len, pngs)) // 16)
        headers["Content-Disposition"] = 'attachment; filename="interpolation.zip"'
        return Response(data, media_type="application/zip", headers=headers)

    @app.get("/v1/model", response_model=ModelCard, summary="Model card: resolution, kimg, FID, backend, parity")
    async def model_card():
        return server.card()

    @app.get("/healthz", response_model=Status, summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, responses={503: {"model": Status}}, summary="Readiness")
    async def readyz():
        if server.ready:
            return {"status": "ready"}
        return JSONResponse({"status": "warming up"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics():
        data, content_type = server.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui/" if cfg.ui else "/docs")

    if cfg.ui:
        from projgan.serve.ui import mount

        mount(app, server)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes, ui_limit=max(cfg.max_body_bytes, UI_BODY_LIMIT))
    app.add_middleware(RequestMetrics, metrics=server.metrics, routes=app.router.routes)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says TCP; with proto 0 Nagle stays on and keep-alive responses stall ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", "pass another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def open_backend(cfg: ServeConfig):
    """The backend ``cfg`` asks for, its torch variants captured up to the batcher's largest batch."""
    from projgan.serve.backends import load_backend

    return load_backend(cfg.source, cfg.backend, cfg.device, cfg.precision, cfg.force, torch_mode=cfg.torch_mode,
                        max_batch=cfg.max_batch)


def run(cfg: ServeConfig) -> None:
    """``pipeline serve``: load the backend (errors are one clear line), then serve until Ctrl-C."""
    import uvicorn

    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    # The event loop and the backend thread share the GIL, and eager PyTorch re-takes it between ops: each
    # time the loop holds it, the batch waits up to the switch interval (5 ms by default). Shorten it.
    sys.setswitchinterval(float(os.environ.get("PROJGAN_SWITCH_INTERVAL_MS", "0.5")) / 1000)
    sock = _bind(cfg.host, cfg.port)
    backend = open_backend(cfg)
    try:
        app = create_app(cfg, backend)
        d = backend.describe()
        log.info(
            "backend %s on %s, precision %s, providers %s, %d px",
            d["backend"],
            d["device"],
            d["precision"],
            ",".join(d.get("providers") or []) or "-",
            d["resolution"],
        )
        if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
            log.warning("listening on %s without --api-key: anyone who can reach it can generate", cfg.host)
        port = sock.getsockname()[1]
        url = f"http://{'[' + cfg.host + ']' if ':' in cfg.host else cfg.host}:{port}"
        log.info("serving at %s  (%sAPI docs %s/docs)", url, f"UI {url}/ui, " if cfg.ui else "", url)
        config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=30, proxy_headers=False)
        # uvicorn re-raises the stop signal after its graceful shutdown; with SIGTERM's default handler that
        # would kill the process before the backend is closed (exit -15). Treat SIGTERM like Ctrl-C instead.
        previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the signal after its graceful shutdown: a clean stop
            log.info("stopped")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    finally:
        backend.close()
        sock.close()
