"""The loop closed through Envoy's access logs: a real Envoy (examples/envoy/als.yaml) in
front of a real upstream, checking each request with a real ``limiter serve``
(examples/envoy/als-rules.yaml) and logging it back to the same service."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from limiter.server import v1

from tests.envoy.harness import EXAMPLES, Envoy, LimiterProcess, Upstream, envoy_config
from tests.ops.conftest import Receiver
from tests.ops.test_propagation import admin_call
from tests.service.conftest import wait_until

TOKEN = "access-log-admin-token-0123456789"
# What the tests add to the example's rules: the alerts go to a local receiver, and a
# level falls back only after a while, so a risen level is still there when looked at.
EXTRA = """
---
alerts:
  cooldown: 0
  webhooks: [{url: URL, retries: 5, backoff: 0.05}]
degradation: {restore_after: 30}
"""


@dataclass
class Loop:
    envoy: Envoy
    service: LimiterProcess
    upstream: Upstream
    receiver: Receiver

    def admin(self, path: str) -> Any:
        status, body = admin_call(
            f"http://127.0.0.1:{self.service.http_port}", "GET", path, token=TOKEN
        )
        assert status == 200, body
        return body

    def level(self) -> dict[str, Any]:
        (default,) = [x for x in self.admin("/v1/levels")["levels"] if x["service"] == "default"]
        return default

    def breaker(self, name: str) -> dict[str, Any] | None:
        return next((b for b in self.admin("/v1/breakers")["breakers"] if b["name"] == name), None)

    def get(self, **headers: str) -> int:
        names = {"tenant": "x-tenant", "api_key": "x-api-key"}
        return self.envoy.request("/", {names[k]: v for k, v in headers.items()}).status


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    receiver = Receiver()
    upstream = Upstream()
    rules = tmp_path / "rules.yaml"
    rules.write_text((EXAMPLES / "als-rules.yaml").read_text() + EXTRA.replace("URL", receiver.url))
    service = LimiterProcess(
        rules, env={"LIMITER_ADMIN_TOKEN": TOKEN}, workdir=tmp_path / "limiter"
    ).start()
    try:
        config = envoy_config(
            EXAMPLES / "als.yaml",
            clusters={"limiter": service.grpc_port, "backend": upstream.port},
        )
        with Envoy(config, workdir=tmp_path / "envoy") as envoy:
            yield Loop(envoy, service, upstream, receiver)
    finally:
        service.stop()
        upstream.close()
        receiver.close()


@pytest.mark.timeout(180)
def test_a_slow_upstream_cuts_the_adaptive_limit_and_the_level_reaches_the_upstream(
    loop: Loop,
) -> None:
    for _ in range(20):
        assert loop.get(tenant="a") == 200
    assert loop.level()["level"] == 0
    assert set(loop.upstream.levels) == {"0"}
    ceiling = loop.service.metric("limiter_adaptive_limit", rule="backend")
    loop.upstream.delay = 0.5  # ten times the rule's target latency
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            loop.get(tenant="a")

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(traffic)
        try:
            assert wait_until(lambda: loop.level()["level"] >= 1, timeout=60, interval=0.5)
            risen = loop.level()
            assert risen["signals"]["latency"] > 0.5 and not risen["forced"], risen
            assert loop.service.metric("limiter_adaptive_limit", rule="backend") <= ceiling / 2
            # The next requests carry the risen level to the upstream.
            seen = len(loop.upstream.levels)
            assert wait_until(
                lambda: any(x not in (None, "0") for x in loop.upstream.levels[seen:]),
                timeout=30,
                interval=0.2,
            )
        finally:
            stop.set()
    assert loop.service.metric("limiter_access_log_entries_total", result="fed") >= 20


@pytest.mark.timeout(180)
def test_5xx_of_one_partition_opens_its_breaker_and_only_its_checks_fail_fast(
    loop: Loop,
) -> None:
    loop.upstream.statuses["a"] = 503
    answers = []
    deadline = time.monotonic() + 60
    # The upstream's 503s reach the service in access-log batches (every 0.1 s), until
    # the breaker opens and Envoy's checks for tenant a are refused.
    while not answers or answers[-1] != 429:
        assert time.monotonic() < deadline, answers
        answers.append(loop.get(tenant="a"))
        assert loop.get(tenant="b") == 200
    # breakers.backend: 10 calls at least, half of them failures.
    assert len(answers) > 10 and set(answers[:-1]) == {503}, answers
    assert loop.breaker("backend/a")["state"] == "open", loop.admin("/v1/breakers")
    assert loop.breaker("backend/b")["state"] == "closed"
    reached = loop.upstream.seen["a"]
    # Envoy's check for tenant a is refused at once: the upstream sees none of them.
    for _ in range(5):
        assert loop.get(tenant="a") == 429
        assert loop.get(tenant="b") == 200
    assert loop.upstream.seen["a"] == reached
    assert loop.breaker("backend/a")["rejected"] >= 5
    assert loop.service.metric("limiter_breaker_rejected_total", breaker="backend/a") >= 5
    # A native check of the same rule says why.
    with grpc.insecure_channel(f"127.0.0.1:{loop.service.grpc_port}") as channel:
        checks = [
            v1.Check(domain="envoy-als", rule="per-tenant", key=tenant) for tenant in ("a", "b")
        ]
        a, b = v1.LimiterStub(channel).Decide(v1.DecideRequest(checks=checks), timeout=10).results
    assert not a.allowed and a.code == v1.Result.Code.Value("BREAKER_OPEN") and a.retry_after > 0
    assert b.allowed and b.code == v1.Result.Code.Value("OK")
    opened = [p for p in loop.receiver.payloads() if p["event"] == "breaker_opened"]
    assert [p["breaker"] for p in opened] == ["backend/a"]


@pytest.mark.timeout(180)
def test_a_client_producing_mostly_4xx_is_blocked_and_alerted(loop: Loop) -> None:
    loop.upstream.statuses["mallory"] = 404
    answers = []
    deadline = time.monotonic() + 60
    # The 404s reach the service in access-log batches, until mallory is blocked and
    # Envoy's checks for that key are refused.
    while not answers or answers[-1] != 429:
        assert time.monotonic() < deadline, answers
        answers.append(loop.get(api_key="mallory"))
        assert loop.get(api_key="alice") == 200
    # shedding.abnormal: 20 responses at least, half of them 4xx.
    assert len(answers) > 20 and set(answers[:-1]) == {404}, answers
    assert [b["client"] for b in loop.admin("/v1/blocked")["blocked"]] == ["mallory"]
    reached = loop.upstream.seen["mallory"]
    for _ in range(5):
        assert loop.get(api_key="mallory") == 429
        assert loop.get(api_key="alice") == 200
    assert loop.upstream.seen["mallory"] == reached
    loop.receiver.wait_for(1, timeout=30)
    assert wait_until(
        lambda: any(p["event"] == "client_blocked" for p in loop.receiver.payloads()), timeout=30
    )
    (blocked,) = [p for p in loop.receiver.payloads() if p["event"] == "client_blocked"]
    assert blocked["client"] == "mallory" and blocked["reason"] == "4xx"
