"""A real service's level rises by itself when an adaptive rule is driven down, announces
each change to a real webhook receiver, falls back after recovery, and a ``level:``
switch still wins over it."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import grpc
import pytest
from limiter.server import v1

from tests.ops.conftest import Receiver
from tests.ops.test_propagation import admin_call
from tests.service.conftest import ServiceProcess, request, rls_stub, wait_until

TOKEN = "levels-admin-token-0123456789"
# Throttling weighs 0 here: recovery below drives the rule past its cut limit on purpose
# (a limit grows back only under demand), which would otherwise hold a level by itself.
CONFIG = """
domain: app
descriptors:
  - key: backend
    rate_limit: {algorithm: adaptive, unit: second, requests_per_unit: 100, target_latency: 0.05,
                 name: backend}
---
degradation: {restore_after: 1, weights: {throttled: 0}}
alerts:
  cooldown: 0
  webhooks: [{url: URL, retries: 5, backoff: 0.05}]
"""


def levels(service: ServiceProcess) -> dict:  # type: ignore[type-arg]
    status, body = admin_call(
        f"http://127.0.0.1:{service.http_port}", "GET", "/v1/levels", token=TOKEN
    )
    assert status == 200, body
    (default,) = [level for level in body["levels"] if level["service"] == "default"]
    return default


@pytest.mark.timeout(120)
def test_an_adaptive_cut_raises_the_level_and_recovery_lowers_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG.replace("URL", receiver.url))
    service = ServiceProcess(path, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    base = f"http://127.0.0.1:{service.http_port}"
    slow = [v1.Observation(domain="app", rule="backend", latency=1.0)] * 100
    fast = [v1.Observation(domain="app", rule="backend", latency=0.001)] * 100
    try:
        with grpc.insecure_channel(service.target) as channel:
            native, rls = v1.LimiterStub(channel), rls_stub(channel)
            demand = request("app", *[{"backend": "any"}] * 20)

            def drive(observations: list[v1.Observation]) -> None:
                native.Observe(v1.ObserveRequest(observations=observations), timeout=10)
                rls.ShouldRateLimit(demand, timeout=10)

            time.sleep(1.5)  # a few housekeeping rounds at rest
            assert levels(service)["level"] == 0
            # Latency 20 times the target: the rule cuts its limit, the level follows.
            assert wait_until(lambda: drive(slow) or levels(service)["level"] >= 2, timeout=30)
            risen = levels(service)
            assert risen["signals"]["latency"] > 0.9 and not risen["forced"], risen
            assert service.metric("limiter_adaptive_limit", rule="backend") < 100
            assert service.metric("limiter_level") >= 2
            # An operator's level: switch still wins, and lifting it gives the computed back.
            put = {"level": 0, "who": "test", "why": "override", "ttl": 60}
            assert admin_call(base, "PUT", "/v1/switches/level:default", put, token=TOKEN)[0] == 200
            assert wait_until(lambda: levels(service)["level"] == 0, timeout=10)
            assert levels(service)["forced"]
            gone = {"who": "test", "why": "done"}
            assert (
                admin_call(base, "DELETE", "/v1/switches/level:default", gone, token=TOKEN)[0]
                == 200
            )
            assert wait_until(lambda: levels(service)["level"] >= 1, timeout=10)
            # Fast answers and demand: the limit grows back, the level falls a step at a time.
            assert wait_until(lambda: drive(fast) or levels(service)["level"] == 0, timeout=60)
            calm = levels(service)
            assert calm["signals"]["latency"] == 0.0 and calm["signals"]["adaptive_cut"] < 0.5
        # Every change reached the receiver, in order, ending back at 0.
        assert wait_until(
            lambda: any(
                p["event"] == "level_changed" and p["level"] == 0 and not p["forced"]
                for p in receiver.payloads()
            ),
            timeout=10,
        )
        changes = [p for p in receiver.payloads() if p["event"] == "level_changed"]
        steps = [(p["previous"], p["level"]) for p in changes]
        assert all(a == b for (_, a), (b, _) in itertools.pairwise(steps)), steps
        assert steps[0][0] == 0 and steps[-1][1] == 0
        computed = [p for p in changes if not p["forced"]]
        rises = [p for p in computed if p["level"] > p["previous"]]
        falls = [p for p in computed if p["level"] < p["previous"]]
        assert rises and rises[0]["pressure"] >= 0.8
        # Falling is one level at a time (hysteresis); rising may jump.
        assert falls and all(p["previous"] - p["level"] == 1 for p in falls), steps
        assert any(p["forced"] for p in changes)  # the switch's change was announced too
    finally:
        assert service.stop() == 0
