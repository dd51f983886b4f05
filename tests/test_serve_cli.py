"""`pipeline serve` as users run it: a real process, its start-up log, a request, a clean Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import make_generator


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return make_generator(tmp_path_factory.mktemp("cli") / "generator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pipeline_serve_logs_its_choice_serves_and_stops_cleanly(gen):
    port = free_port()
    cmd = [sys.executable, "-m", "projgan", "serve", str(gen), "--port", str(port), "--no-ui", "--max-batch", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)
        r = httpx.post(url + "/v1/generate", json={"seeds": [1, 2], "format": "npy"}, timeout=30)
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "backend torch on cpu, precision" in out and f"serving at http://127.0.0.1:{port}" in out, out
    assert "Traceback" not in out


def test_port_in_use_is_one_clear_line(gen):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "projgan", "serve", str(gen), "--port", str(port), "--no-ui"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr and "Traceback" not in res.stderr + res.stdout
