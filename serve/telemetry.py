"""Prometheus metrics for the server: HTTP requests, latency, queue wait, batch sizes, queue depth.

One ``CollectorRegistry`` per app, so several servers in one process (tests) never share
counters. ``Metrics`` is also the batcher's ``Stats`` observer; ``RequestMetrics`` is a plain
ASGI middleware so every response is counted, including 413s and the mounted Gradio app.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from projgan.serve.batcher import Stats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics(Stats):
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "projgan_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "projgan_http_request_duration_seconds",
            "Time from request to the end of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.wait = Histogram(
            "projgan_queue_wait_seconds",
            "Time a request waited before its batch ran",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram("projgan_batch_size", "Images per backend call", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "projgan_batch_duration_seconds", "Backend time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.depth = Gauge("projgan_queue_depth_images", "Images waiting for a batch", registry=r)
        self.images = Counter("projgan_images_generated", "Images generated", registry=r)
        self.rejections = Counter(
            "projgan_queue_rejections", "Requests rejected because the queue was full", registry=r
        )
        self.padding = Counter(
            "projgan_batch_padding_rows", "Rows repeated to fill a batch-size bucket (computed, then dropped)", registry=r
        )
        self.ready = Gauge("projgan_ready", "1 once the model is loaded and warmed up", registry=r)
        self.model = Info("projgan_model", "The model being served", registry=r)

    # Stats (called by the batcher on the event loop)
    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def queue_wait(self, seconds: float) -> None:
        self.wait.observe(seconds)

    def queue_depth(self, images: int) -> None:
        self.depth.set(images)

    def rejected(self) -> None:
        self.rejections.inc()

    def padded(self, rows: int) -> None:
        self.padding.inc(rows)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(path: str, scope, routes=()) -> str:
    """The route template (``/v1/images/{seed}.png``), never the raw path: bounded label values."""
    if path == "/ui" or path.startswith("/ui/"):
        return "/ui"
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    from starlette.routing import Match

    for r in routes:  # not routed yet (a 413 from the body limit) or a plain Starlette route
        if getattr(r, "path", None) and r.matches(scope)[0] != Match.NONE:
            return r.path
    return "unmatched"


class RequestMetrics:
    """ASGI middleware: count and time every HTTP response by route and status."""

    def __init__(self, app, metrics: Metrics, routes=()):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, path = time.perf_counter(), [500], scope.get("path", "")

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_label(path, scope, self.routes)
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
