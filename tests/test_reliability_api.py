"""The API holds under fuzzing, and its security defaults hold.

A real ``pipeline serve`` process on 127.0.0.1 (tiny 32 px generator, torch backend) is fuzzed by
schemathesis from the server's own OpenAPI schema, positive and negative data: no 5xx, every
response conforms to the schema (status code, content type, headers, body), schema-valid requests
are accepted and schema-invalid ones rejected (the schema says exactly what the server takes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_generator

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """``pipeline serve SOURCE ...`` as a subprocess; ``url``, ``pid``, ``rss_kib()``, ``stop()``."""

    def __init__(self, source: Path, *args: str, env: dict | None = None, ready_timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "projgan", "serve", str(source), "--port", str(self.port), "--no-ui", *args]
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"projgan-serve-{self.port}.log"
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**ENV, **(env or {})})
        self.pid = self.proc.pid
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server never became ready:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return make_generator(tmp_path_factory.mktemp("api") / "generator")


@pytest.fixture(scope="module")
def server(gen):
    with ServerProc(gen, "--backend", "torch", "--max-batch", "8", "--max-images", "16", "--queue-size", "64") as s:
        yield s
    assert "Traceback" not in s.output(), s.output()


def fuzz(
    url: str,
    examples_per_operation: int,
    seed: int = 0,
    headers: dict | None = None,
    modes: tuple = ("positive", "negative"),
) -> Counter:
    """Run schemathesis over every operation; returns status-code counts. Raises on any failed check."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        positive_data_acceptance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        positive_data_acceptance,  # a schema-valid request is never a 422
        negative_data_rejection,  # a schema-invalid one is never accepted
    ]
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    statuses: Counter = Counter()
    failures: list[str] = []
    with httpx.Client(timeout=30) as _:
        import requests

        session = requests.Session()
        for result in schema.get_all_operations():
            op = result.ok()
            for mode in map(GenerationMode, modes):

                @settings(
                    max_examples=examples_per_operation,
                    deadline=None,
                    derandomize=False,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @hypothesis.seed(seed)
                @hypothesis.given(case=op.as_strategy(generation_mode=mode))
                def one(case):
                    response = case.call(base_url=url, session=session, headers=headers, timeout=30)
                    statuses[response.status_code] += 1
                    try:
                        case.validate_response(response, checks=checks)
                    except Exception as e:  # collect, so one run reports every distinct failure
                        failures.append(f"{op.label} {mode.value}: {type(e).__name__}: {str(e)[:400]}")  # noqa: B023

                try:
                    one()
                except hypothesis.errors.Unsatisfiable:
                    pass  # e.g. no negative data possible for a parameterless GET
    assert not failures, "\n".join(sorted(set(failures))[:10])
    assert not [s for s in statuses if s >= 500], statuses
    return statuses


def test_schemathesis_short_run_no_5xx_and_schema_conformance(server):
    t0 = time.monotonic()
    statuses = fuzz(server.url, examples_per_operation=25)
    n = sum(statuses.values())
    print(f"schemathesis short run: {n} requests in {time.monotonic() - t0:.1f} s: {dict(statuses)}")
    assert n >= 100
    assert statuses[200] > 0 and statuses[422] > 0  # both valid and invalid requests really got through


@pytest.mark.slow
def test_schemathesis_full_run_at_least_1000_requests(server):
    t0 = time.monotonic()
    statuses = fuzz(server.url, examples_per_operation=250, seed=1)
    n = sum(statuses.values())
    print(f"schemathesis full run: {n} requests in {time.monotonic() - t0:.1f} s: {dict(statuses)}")
    assert n >= 1000


# ------------------------------------------------------------------ security defaults


def test_serve_binds_loopback_by_default():
    from projgan.config import ServeConfig

    assert ServeConfig(source="x").host == "127.0.0.1"
    import inspect

    from projgan.cli import serve

    assert inspect.signature(serve).parameters["host"].default.default == "127.0.0.1"


def test_default_server_listens_only_on_loopback(server):
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{ip}:{server.port}/healthz", timeout=2)


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: just picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_request_paths_never_reach_the_filesystem(server):
    probes = [
        "/v1/images/../../etc/passwd.png",
        "/v1/images/..%2F..%2Fetc%2Fpasswd.png",
        "/v1/images/%2e%2e/x.png",
        "/v1/images/-1.png",
        "/v1/images/1e3.png",
        "/v1/images/4294967296.png",
        "/etc/passwd",
        "/../pyproject.toml",
        "/static/../../pyproject.toml",
        "/ui/file=/etc/passwd",
        "/file=/etc/passwd",
    ]
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for p in probes:
            r = c.get(p)
            assert r.status_code in (404, 422), (p, r.status_code)
            assert b"root:" not in r.content and b"[project]" not in r.content, p


def test_body_and_images_per_request_are_bounded(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        limits = c.get("/v1/model").json()["limits"]
        r = c.post("/v1/generate", json={"seeds": list(range(limits["max_images"] + 1))})
        assert r.status_code == 422 and "seeds" in r.json()["error"]
        r = c.post("/v1/generate", json={"n": limits["max_images"] + 1})
        assert r.status_code == 422
        big = b'{"seeds": [' + b"1," * limits["max_body_bytes"] + b"1]}"
        r = c.post("/v1/generate", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413

        def chunks():
            yield b'{"seeds": ['
            for _ in range(limits["max_body_bytes"] // 1000 + 2):
                yield b"1," * 500
            yield b"1]}"

        r = c.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/interpolate", json={"from": 1, "to": 2, "steps": 10**6})
        assert r.status_code == 422
        assert c.get("/healthz").status_code == 200  # still up


def test_api_key_guards_generation_routes_and_not_healthz(gen):
    key = "s3cret-key-123"
    with ServerProc(gen, "--backend", "torch", "--max-batch", "4", env={"PROJGAN_API_KEY": key}) as s:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            routes = [
                ("POST", "/v1/generate", {"seeds": [1]}),
                ("GET", "/v1/images/3.png", None),
                ("POST", "/v1/interpolate", {"from": 1, "to": 2, "steps": 2, "format": "zip"}),
            ]
            for method, path, body in routes:
                for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": key[:-1]}, {"X-API-Key": key + "x"}):
                    r = c.request(method, path, json=body, headers=headers)
                    assert r.status_code in (401, 403), (path, headers, r.status_code)
                    assert r.content[:4] != b"\x89PNG"
                r = c.request(method, path, json=body, headers={"X-API-Key": key})
                assert r.status_code == 200, (path, r.text)
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            schema = c.get("/openapi.json").json()
            assert "X-API-Key" in str(schema["components"]["securitySchemes"])
        assert key not in s.output()  # the key is never logged
