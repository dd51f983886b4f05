"""Request body limit as plain ASGI middleware: 413 by Content-Length, and by the bytes really sent.

Chunked uploads carry no length, so the body is read (up to the limit) before the app sees it and
replayed to it; bodiless requests (GETs, Gradio's event stream) pass straight through.
"""

from __future__ import annotations

import json


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length and by the bytes really sent."""

    def __init__(self, app, limit: int, ui_limit: int):
        self.app, self.limit, self.ui_limit = app, limit, ui_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length, chunked = headers.get(b"content-length"), b"transfer-encoding" in headers
        if length is None and not chunked:  # no body (GETs, Gradio's event stream): pass straight on
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = self.ui_limit if path == "/ui" or path.startswith("/ui/") else self.limit
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _reject(send, limit)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                return await _reject(send, limit)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


async def _reject(send, limit: int) -> None:
    body = json.dumps({"error": f"request body larger than {limit} bytes"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
