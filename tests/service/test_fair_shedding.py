"""Top-client shedding in a real service: a flooding client keeps its fair share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from tests.service.conftest import ServiceProcess, request, rls_stub

OK = rls_pb2.RateLimitResponse.OK
CAPACITY = 100  # the rule's limit per second: what its clients share while it throttles
CONFIG = f"""
domain: web
descriptors:
  - key: client
    rate_limit: {{unit: second, requests_per_unit: {CAPACITY}, name: per-client}}
shedding:
  clients: {{max_share: 0.5, window: 2, buckets: 4, min_requests: 20}}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path: Path = tmp_path_factory.mktemp("fair") / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path).start()
    yield proc
    assert proc.stop() == 0


def test_flooding_client_keeps_what_the_light_ones_leave(service: ServiceProcess) -> None:
    """One client floods (50 checks per 50 ms, far over its own 100/s), ten light ones
    send 5/s each: the flood throttles the rule, and the heavy client is cut to the
    capacity the light ones leave (about 50/s), not to nothing."""
    heavy = [{"client": "heavy"}] * 50
    light = [{"client": f"light{i}"} for i in range(10)]
    counted = {"heavy": 0, "light": 0, "light_asked": 0}
    with grpc.insecure_channel(service.target) as channel:
        rls = rls_stub(channel)
        start = time.monotonic()
        measure_from = start + 3.0  # the rule is throttling and the window is full by then
        end = measure_from + 4.0
        tick = 0
        while time.monotonic() < end:
            with_light = tick % 4 == 0
            descriptors = heavy + light if with_light else heavy
            answer = rls.ShouldRateLimit(request("web", *descriptors), timeout=10)
            if time.monotonic() >= measure_from:
                codes = [s.code for s in answer.statuses]
                counted["heavy"] += codes[:50].count(OK)
                if with_light:
                    counted["light"] += codes[50:].count(OK)
                    counted["light_asked"] += 10
            tick += 1
            time.sleep(max(0.0, start + tick * 0.05 - time.monotonic()))
        seconds = time.monotonic() - measure_from
    assert counted["light"] == counted["light_asked"]  # the light clients are never cut
    light_rate = counted["light"] / seconds
    heavy_rate = counted["heavy"] / seconds
    fair = CAPACITY - light_rate
    assert 0.5 * fair <= heavy_rate <= 1.3 * fair, (heavy_rate, light_rate, service.log)
