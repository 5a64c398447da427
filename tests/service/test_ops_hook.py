"""The operations side's per-check hook (switches) reaches both APIs of a real service."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import v1

from tests.service.conftest import ServiceProcess, request, rls_stub

pytest.importorskip("limiter.server.admin")

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
TOKEN = "test-token-for-switches"
CONFIG = """
domain: web
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 100, name: per-user}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path: Path = tmp_path_factory.mktemp("ops") / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    yield proc
    assert proc.stop() == 0


def switch(service: ServiceProcess, method: str, body: dict | None = None) -> int:  # type: ignore[type-arg]
    req = urllib.request.Request(
        f"http://127.0.0.1:{service.http_port}/v1/switches/rule:web/per-user",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status


def test_switches_force_deny_and_override_reach_both_apis(service: ServiceProcess) -> None:
    with grpc.insecure_channel(service.target) as channel:
        rls = rls_stub(channel)
        native = v1.LimiterStub(channel)

        def rls_code(user: str) -> int:
            return rls.ShouldRateLimit(request("web", {"user": user}), timeout=10).overall_code

        def native_allowed(user: str) -> bool:
            check = v1.Check(domain="web", rule="per-user", key=user)
            return native.Decide(v1.DecideRequest(checks=[check]), timeout=10).results[0].allowed

        assert rls_code("a") == OK and native_allowed("a")
        assert switch(service, "PUT", {"action": "force_deny", "who": "t", "why": "x", "ttl": 60})
        assert rls_code("a") == OVER and not native_allowed("a")
        switch(service, "PUT", {"action": "override", "limit": 1, "who": "t", "why": "x"})
        assert rls_code("b") == OK and rls_code("b") == OVER
        answer = rls.ShouldRateLimit(request("web", {"user": "c"}), timeout=10)
        assert answer.statuses[0].current_limit.requests_per_unit == 1
        switch(service, "DELETE", {"who": "t", "why": "done"})
        assert rls_code("b") == OK  # back to the configured 100/hour
