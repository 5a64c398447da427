"""The examples in examples/ run as documented (so the README's commands keep working)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tests.clients.servers import asgi_server, http_get
from tests.support import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=EXAMPLES.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_fastapi_example():
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLES / "fastapi_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with asgi_server(module.app) as port:
        answers = [http_get(port, "/articles/7") for _ in range(20)]
        health = [http_get(port, "/healthz")[0] for _ in range(12)]
    first = json.loads(answers[0][2])
    assert first["id"] == 7 and "comments" in first  # level 0: full response
    statuses = [status for status, _, _ in answers]
    assert statuses[:10] == [200] * 10 and 429 in statuses  # burst of 10, then 5/s
    assert health == [200] * 12  # exempt


def test_grpc_service_example():
    out = run("examples/grpc_service.py", "--port", str(free_port()))
    plain, retrying = out.splitlines()
    assert "refused=0" not in plain  # the burst overran the bucket
    assert retrying.endswith("ok=15 refused=0")  # pushback honoured: every call got through


def test_envoy_check_example():
    ports = ("--port", str(free_port()), "--http-port", str(free_port()))
    out = run("examples/envoy_check.py", "--spawn", "--timeout", "1", *ports)
    lines = out.splitlines()
    assert any("per-ip" in line and "[service]" in line for line in lines)
    assert sum(line.startswith("native Decide") for line in lines) == 3
