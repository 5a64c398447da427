"""Visible fallback with real processes: two service replicas on a Redis of their own,
which the test kills and restarts; a real HTTP server receives the webhooks.

While Redis is dead every check is answered by the rule's failure mode (``local``, the
default): counted per rule, logged at most once per rule per ``log_every``, announced by
``fallback_started`` and, once Redis is back, ``fallback_stopped``; it raises the level;
and each replica keeps a client within the token bucket's own limit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from limiter.server import v1

from tests.ops.conftest import Receiver
from tests.service.conftest import ServiceProcess, wait_until
from tests.support import PATIENT, RedisServer

RATE, BURST = 5, 5
LOG_EVERY = 1.0
CONFIG = f"""
domain: shared
descriptors:
  - key: tb
    rate_limit: {{unit: second, requests_per_unit: {RATE}, algorithm: token_bucket,
                 burst: {BURST}, name: tb}}
  - key: other
    rate_limit: {{unit: hour, requests_per_unit: 1000, name: other}}
---
fallback: {{stop_after: 2, log_every: {LOG_EVERY}}}
degradation: {{min_checks: 10}}
alerts:
  cooldown: 0
  webhooks: [{{url: URL, retries: 5, backoff: 0.05}}]
"""
MESSAGE = "checks answered by the failure mode"


def decide(stub: v1.LimiterStub, rule: str, key: str) -> v1.Result:
    check = v1.Check(domain="shared", rule=rule, key=key)
    return stub.Decide(v1.DecideRequest(checks=[check]), timeout=10).results[0]


def fallback_lines(service: ServiceProcess) -> list[dict]:  # type: ignore[type-arg]
    lines = []
    for line in service.logs().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("msg") == MESSAGE:
            lines.append(doc)
    return lines


def events(receiver: Receiver, name: str) -> list[dict]:  # type: ignore[type-arg]
    return [p for p in receiver.payloads() if p["event"] == name and p["rule"] == "shared/tb"]


@pytest.mark.timeout(120)
def test_fallback_is_counted_logged_announced_and_local_keeps_each_replica_in_its_limit(
    tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG.replace("URL", receiver.url))
    with RedisServer() as redis:
        url = f"{redis.url}?timeout={PATIENT:g}"
        replicas = [ServiceProcess(path, "--redis", url).start() for _ in range(2)]
        channels = [grpc.insecure_channel(s.target) for s in replicas]
        stubs = [v1.LimiterStub(c) for c in channels]
        try:
            for stub in stubs:
                assert decide(stub, "tb", "warm").code == v1.Result.OK
            assert all(s.metric("limiter_backend_errors_total", rule="tb") == 0 for s in replicas)
            redis.kill()
            sent, allowed = [0, 0], [0, 0]
            started = time.monotonic()
            while time.monotonic() - started < 2.5:
                for i, stub in enumerate(stubs):
                    result = decide(stub, "tb", "client")
                    assert result.code == v1.Result.BACKEND_ERROR
                    sent[i] += 1
                    allowed[i] += result.allowed
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            # Each replica's own bucket: at most the burst plus what refilled meanwhile.
            for i in range(2):
                assert BURST <= allowed[i] <= BURST + RATE * elapsed + 1, (allowed, elapsed)
                assert allowed[i] < sent[i]
            # Counted per rule: every check answered by the failure mode, none other.
            for i, service in enumerate(replicas):
                assert service.metric("limiter_backend_errors_total", rule="tb") == sent[i]
                assert service.metric("limiter_backend_errors_total", rule="other") == 0
            for service in replicas:
                assert wait_until(
                    lambda s=service: s.metric("limiter_fallback_active", rule="tb") == 1,
                    timeout=10,
                )
                assert service.metric("limiter_fallback_active", rule="other") == 0
            # The share answered by the failure mode is pressure: the level rose by itself.
            for service in replicas:
                assert service.metric("limiter_service_pressure", service="default") >= 0.8
                assert service.metric("limiter_level") >= 1
            # Announced by each replica.
            assert wait_until(lambda: len(events(receiver, "fallback_started")) >= 2, timeout=10)
            # Logged, at most one line per rule per LOG_EVERY seconds, counting the checks.
            for i, service in enumerate(replicas):
                lines = [doc for doc in fallback_lines(service) if doc["rule"] == "shared/tb"]
                assert 1 <= len(lines) <= elapsed / LOG_EVERY + 2, lines
                assert sum(doc["checks"] for doc in lines) <= sent[i]
                assert all(doc["failure_mode"] == "local" for doc in lines), lines
                assert all(doc["seconds"] >= LOG_EVERY * 0.9 for doc in lines[1:]), lines
            assert not events(receiver, "fallback_stopped")
            redis.start()
            for stub in stubs:
                assert wait_until(
                    lambda s=stub: decide(s, "tb", "after").code == v1.Result.OK, timeout=20
                )
            # Nothing answered by the failure mode for stop_after: it stops, announced.
            assert wait_until(lambda: len(events(receiver, "fallback_stopped")) >= 2, timeout=15)
            for service in replicas:
                assert service.metric("limiter_fallback_active", rule="tb") == 0
        finally:
            for channel in channels:
                channel.close()
            for service in replicas:
                assert service.stop() == 0
