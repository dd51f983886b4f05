"""The HTTP server: DESIGN.md's API over one dynamically batched backend, plus the Gradio UI.

``create_app(cfg, backend=None)`` builds the FastAPI app (the backend is loaded in the lifespan
unless one is passed in, then warmed up for batch sizes 1 and ``max_batch`` on the backend
thread while ``/readyz`` says 503). ``run(cfg)`` is what ``pipeline serve`` calls.
"""

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np

from projgan.config import ServeConfig
from projgan.errors import UserError
from projgan.generator import sample_latents, slerp
from projgan.serve import images as enc
from projgan.serve.batcher import Batcher, BatcherClosed, QueueFull
from projgan.serve.limits import BodyLimit
from projgan.serve.schemas import (
    MAX_SEED,
    ErrorOut,
    GenerateResponse,
    Limits,
    ModelCard,
    Status,
    request_models,
)
from projgan.serve.telemetry import Metrics, RequestMetrics

log = logging.getLogger("projgan.serve")

# The same seed always gives the same image from the same model; the ETag names the model.
CACHE_CONTROL = "public, max-age=31536000, immutable"
# Behind --api-key a shared cache must not hand an image to callers without the key: browsers only.
CACHE_CONTROL_KEYED = "private, max-age=31536000, immutable"
UI_BODY_LIMIT = 1 << 20  # Gradio's own JSON messages under /ui
# Up to this many bytes of pixels (e.g. five 64 px images, ~0.2 ms of PNG work each) an encoder runs inline:
# cheaper than two thread hops, which cost milliseconds on a busy machine.
INLINE_BYTES = 1 << 16


class Server:
    """What every route shares: the backend, its batcher, metrics, the encoder pool, readiness."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.backend = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.fingerprint = ""
        self.workers = max(2, min(4, os.cpu_count() or 2))
        self.pool: ThreadPoolExecutor | None = None
        self.scratch = None  # the UI's temp files (projgan.serve.ui.Scratch)

    async def start(self, backend) -> None:
        self.backend = backend
        self.batcher = Batcher(
            backend.generate,
            max_batch=min(self.cfg.max_batch, backend.max_batch),
            max_delay_ms=self.cfg.max_delay_ms,
            queue_size=self.cfg.queue_size,
            stats=self.metrics,
        )
        await self.batcher.start()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="projgan-encode")
        desc = backend.describe()
        self.fingerprint = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.metrics.model.info({k: str(desc.get(k, "")) for k in ("backend", "device", "precision", "resolution")})

    async def warm_up(self) -> None:
        sizes = sorted({1, self.batcher.max_batch})
        await self.batcher.run_in_worker(self.backend.warmup, sizes)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("warmed up for batch sizes %s; ready", sizes)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.scratch is not None:
            self.scratch.close()

    # ---------------------------------------------------------------- work

    async def generate(self, seeds: list[int]) -> np.ndarray:
        return await self.batcher.submit(sample_latents(seeds, self.backend.z_dim))

    async def interpolate(self, a: int, b: int, steps: int) -> np.ndarray:
        za, zb = sample_latents([a, b], self.backend.z_dim)
        return await self.batcher.submit(slerp(za, zb, np.linspace(0.0, 1.0, steps)))

    async def encode(self, fn, *args, cost: int | None = None):
        """Run an encoder on the pool; inline when ``cost`` (bytes of input) makes a thread hop the larger cost."""
        if cost is not None and cost <= INLINE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def pngs(self, images: np.ndarray) -> list[bytes]:
        """Encode in parallel chunks on the pool, off the event loop, while the next batch runs."""
        if images.nbytes <= INLINE_BYTES or len(images) == 1:
            return await self.encode(_png_list, images, cost=images.nbytes)
        bounds = np.array_split(np.arange(len(images)), min(len(images), self.workers))
        parts = await asyncio.gather(*(self.encode(_png_list, images[ix[0] : ix[-1] + 1]) for ix in bounds))
        return [p for part in parts for p in part]

    def card(self) -> dict[str, Any]:
        d = self.backend.describe()
        meta = d.get("meta") or {}
        return {
            **{k: d.get(k) for k in ("resolution", "z_dim", "backend", "device", "precision")},
            "providers": list(d.get("providers") or []),
            "kimg": meta.get("kimg"),
            "fid": meta.get("fid"),
            "parity": d.get("parity"),
            "source": os.path.basename(os.path.normpath(self.cfg.source)),  # no server paths in a public card
            "max_batch": self.batcher.max_batch,
            "max_delay_ms": self.cfg.max_delay_ms,
            "limits": Limits(
                max_images=self.cfg.max_images,
                max_interpolation_steps=self.cfg.max_interpolation_steps,
                max_body_bytes=self.cfg.max_body_bytes,
                queue_size=self.cfg.queue_size,
            ),
            "meta": meta,
        }


def _png_list(images: np.ndarray) -> list[bytes]:
    return [enc.png(im) for im in images]


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(cfg: ServeConfig, backend=None):
    """The FastAPI app. Pass ``backend`` to serve an already loaded one (it is then not closed here)."""
    from fastapi import Depends, FastAPI, HTTPException, Request, Security
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, RedirectResponse, Response
    from fastapi.security import APIKeyHeader
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from projgan.serve.backends import load_backend

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
            b = await asyncio.to_thread(load_backend, cfg.source, cfg.backend, cfg.device, cfg.precision, cfg.force)
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
        seeds = body.seed_list()
        images = await server.generate(seeds)
        seed_header = {"X-Seeds": ",".join(map(str, seeds))}
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
        return Response(json.dumps(out), media_type="application/json")

    @app.get(
        "/v1/images/{seed}.png",
        dependencies=guarded,
        response_class=Response,
        responses={**errors, 200: {"content": {"image/png": {}}}, 304: {"description": "not modified (ETag)"}},
        summary="One image, cacheable",
    )
    async def image(request: Request, seed: Annotated[int, PathParam(ge=0, le=MAX_SEED)]):
        if not str(request.path_params.get("seed", "")).isdigit():  # "+0.0" or "1e3": not an integer in a URL
            raise RequestValidationError([{"type": "int_parsing", "loc": ("path", "seed"),
                                           "msg": "seed must be written as a decimal integer", "input": seed}])
        etag = f'"{server.fingerprint}-{seed}"'
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        if cfg.api_key:
            headers.update({"Cache-Control": CACHE_CONTROL_KEYED, "Vary": "X-API-Key"})
        match = request.headers.get("if-none-match", "")
        if match and (match.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in match.split(",")]):
            return Response(status_code=304, headers=headers)
        images = await server.generate([seed])
        data = await server.encode(enc.png, images[0], cost=images[0].nbytes)
        return Response(data, media_type="image/png", headers=headers)

    @app.post(
        "/v1/interpolate",
        dependencies=guarded,
        response_class=Response,
        responses={**errors, 200: {"content": {"image/gif": {}, "application/zip": {}}}},
        summary="Slerp between two seeds' latents: animated GIF or zip of frames",
    )
    async def interpolate(body: InterpolateRequest):
        frames = await server.interpolate(body.from_, body.to, body.steps)
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


def run(cfg: ServeConfig) -> None:
    """``pipeline serve``: load the backend (errors are one clear line), then serve until Ctrl-C."""
    import uvicorn

    from projgan.serve.backends import load_backend

    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    # The event loop and the backend thread share the GIL, and eager PyTorch re-takes it between ops: each
    # time the loop holds it, the batch waits up to the switch interval (5 ms by default). Shorten it.
    sys.setswitchinterval(float(os.environ.get("PROJGAN_SWITCH_INTERVAL_MS", "0.5")) / 1000)
    sock = _bind(cfg.host, cfg.port)
    backend = load_backend(cfg.source, cfg.backend, cfg.device, cfg.precision, cfg.force)
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
