"""Run an app on a real uvicorn server in a background thread: for tests, benchmarks and notebooks.

The socket is bound before the thread starts (port 0 picks a free one), so there is no race
between choosing a port and listening on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, ready_timeout: float = 120.0, **uvicorn_kwargs):
    """Serve ``app`` until the block exits; yields the base URL once ``/readyz`` answers 200."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY: see app._bind
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level=uvicorn_kwargs.pop("log_level", "warning"), **uvicorn_kwargs)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if not thread.is_alive():
                raise RuntimeError("server thread exited during start-up (see the log above)")
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/readyz not ready after {ready_timeout:.0f} s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
