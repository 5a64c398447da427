"""The examples in examples/ run as documented (so the README's commands keep working)."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clients.servers import asgi_server, http_get

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=EXAMPLES.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def private_imports(source: str) -> list[str]:
    """Modules and names ``source`` imports whose dotted path has a part starting with ``_``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [n for n in names if any(part.startswith("_") for part in n.split("."))]
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_examples_import_only_public_names(name):
    assert private_imports((EXAMPLES / name).read_text()) == []


def test_private_imports_are_found():
    """The check above sees the import the FastAPI example once had."""
    source = "from limiter import TokenBucket\nfrom limiter._core import AdaptiveLimiter\n"
    assert private_imports(source) == ["limiter._core.AdaptiveLimiter"]
    assert private_imports("import limiter._wire\n") == ["limiter._wire"]


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
    out = run("examples/grpc_service.py", "--port", "0")
    plain, retrying = out.splitlines()
    assert "refused=0" not in plain  # the burst overran the bucket
    assert retrying.endswith("ok=15 refused=0")  # pushback honoured: every call got through


def test_envoy_check_example():
    out = run("examples/envoy_check.py", "--spawn", "--timeout", "1")
    lines = out.splitlines()
    assert any("per-ip" in line and "[service]" in line for line in lines)
    native = [line for line in lines if line.startswith("native Decide")]
    assert len(native) == 3 and all(line.endswith("[service]") for line in native)


def test_envoy_check_example_answers_by_the_failure_mode_when_unreachable():
    """Nothing listens on port 1: every answer comes from the failure mode (allow) until the
    client's throttle has seen enough failures, and the calls it then keeps from the service
    are refused, never let through by the fail-open path; all at once."""
    started = time.monotonic()
    out = run("examples/envoy_check.py", "--target", "127.0.0.1:1")
    elapsed = time.monotonic() - started
    lines = out.splitlines()
    assert lines[0] == "service at 127.0.0.1:1 unreachable after 1 s: the failure mode answers"
    answers = [line.rstrip() for line in lines[1:]]
    assert len(answers) == 6 + 3  # two lines per RLS request, one per native check
    for line in answers:
        if line.endswith("[fallback]"):
            assert " OK " in line or "allowed=True" in line, out
        else:
            assert line.endswith("[throttled]"), out
            assert "OVER_LIMIT" in line or "allowed=False" in line, out
    assert any(line.endswith("[fallback]") for line in answers), out
    # One second of connecting plus 39 calls at 20 ms each, and the interpreter's start-up
    # on a loaded machine; waiting out a 10 s connect would take longer.
    assert elapsed < 9, elapsed
