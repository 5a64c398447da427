"""Envoy's per-request rate-limit filter against ``limiter serve``: the real Envoy binary
with ``examples/envoy/rls.yaml`` in front of the service with ``examples/envoy/rules.yaml``."""

from __future__ import annotations

import itertools
import math
import re
import signal
import time
from pathlib import Path

import http_sf
import pytest
import yaml

from tests.envoy.harness import EXAMPLES, Envoy, LimiterProcess, envoy_config

RULE = yaml.safe_load((EXAMPLES / "rules.yaml").read_text())["descriptors"][0]["rate_limit"]
LIMIT = RULE["requests_per_unit"]
WINDOW = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[RULE["unit"]]
STATS = "cluster.backend.ratelimit."  # the filter counts per upstream cluster
_keys = itertools.count()


def api_key() -> dict[str, str]:
    """A key no other test used: its window starts empty."""
    return {"x-api-key": f"key-{time.time_ns()}-{next(_keys)}"}


def fresh_window(needed: float = 30.0) -> None:
    """Wait for the next fixed window if less than ``needed`` seconds are left in this one,
    so a test's requests all count in one window."""
    left = WINDOW - time.time() % WINDOW
    if left < needed:
        time.sleep(left + 0.2)


def sf_list(value: str) -> list[tuple[str, dict[str, object]]]:
    """A Structured Field List (RFC 9651) parsed by http-sf, not by limiter's own code."""
    return [(item, dict(params)) for item, params in http_sf.parse(value.encode(), tltype="list")]


def test_the_request_past_the_limit_gets_429(rls_envoy: Envoy) -> None:
    fresh_window()
    key = api_key()
    before = rls_envoy.stats(re.escape(STATS))
    statuses = [rls_envoy.request("/", key).status for _ in range(LIMIT + 2)]
    assert statuses == [200] * LIMIT + [429, 429]
    # Another key has its own limit.
    assert rls_envoy.request("/", api_key()).status == 200
    after = rls_envoy.stats(re.escape(STATS))
    assert after[STATS + "ok"] - before.get(STATS + "ok", 0) == LIMIT + 1
    assert after[STATS + "over_limit"] - before.get(STATS + "over_limit", 0) == 2


def test_a_denied_request_is_marked_and_never_reaches_the_upstream(rls_envoy: Envoy) -> None:
    fresh_window()
    key = api_key()
    for _ in range(LIMIT):
        rls_envoy.request("/", key)
    served = rls_envoy.stat("http.backend.downstream_rq_2xx")
    denied = rls_envoy.request("/", key)
    assert denied.status == 429
    assert denied.headers["x-envoy-ratelimited"] == "true"
    assert rls_envoy.stat("http.backend.downstream_rq_2xx") == served


def test_requests_without_the_descriptor_are_not_checked(rls_envoy: Envoy) -> None:
    before = rls_envoy.stats(re.escape(STATS))
    answers = [rls_envoy.request("/") for _ in range(LIMIT + 2)]
    assert [a.status for a in answers] == [200] * (LIMIT + 2)
    assert all("RateLimit" not in a.headers for a in answers)
    assert rls_envoy.stats(re.escape(STATS)) == before


def test_ratelimit_headers_and_retry_after_reach_the_client(rls_envoy: Envoy) -> None:
    fresh_window()
    key = api_key()
    for sent in range(1, LIMIT + 2):
        start = time.time()
        answer = rls_envoy.request("/", key)
        end = time.time()
        assert answer.status == (200 if sent <= LIMIT else 429)
        assert sf_list(answer.headers["RateLimit-Policy"]) == [
            (RULE["name"], {"q": LIMIT, "w": WINDOW})
        ]
        [(name, state)] = sf_list(answer.headers["RateLimit"])
        assert name == RULE["name"]
        assert state["r"] == max(LIMIT - sent, 0)
        # The fixed window ends on the next multiple of WINDOW seconds.
        assert math.floor(WINDOW - end % WINDOW) <= state["t"] <= math.ceil(WINDOW - start % WINDOW)
        retry_after = answer.headers.get("Retry-After")
        if sent <= LIMIT:
            assert retry_after is None
        else:
            # RFC 9110 delay-seconds, never earlier than the quota returns.
            assert re.fullmatch(r"[0-9]+", retry_after or ""), retry_after
            assert int(retry_after) >= state["t"]  # type: ignore[operator]


@pytest.mark.parametrize("outage", ["killed", "hung"])
def test_failure_mode_deny_decides_when_the_service_is_down(tmp_path: Path, outage: str) -> None:
    """`ingress` fails open (failure_mode_deny: false), `ingress_fail_closed` answers 500."""
    service = LimiterProcess(EXAMPLES / "rules.yaml", workdir=tmp_path).start()
    config = envoy_config(EXAMPLES / "rls.yaml", clusters={"limiter": service.grpc_port})
    try:
        with Envoy(config, workdir=tmp_path) as envoy:
            for listener in ("ingress", "ingress_fail_closed"):
                answer = envoy.request("/", api_key(), listener=listener)
                assert answer.status == 200 and "RateLimit" in answer.headers, listener
            if outage == "killed":
                service.kill()
            else:
                service.signal(signal.SIGSTOP)  # alive but silent: the filter's timeout fires
            before = envoy.stats(re.escape(STATS))
            opened = envoy.request("/", api_key(), listener="ingress")
            closed = envoy.request("/", api_key(), listener="ingress_fail_closed")
            after = envoy.stats(re.escape(STATS))
    finally:
        if outage == "hung":
            service.signal(signal.SIGCONT)
        service.stop()
    assert (opened.status, opened.body) == (200, b"ok\n")
    assert "RateLimit" not in opened.headers
    assert closed.status == 500
    assert "x-envoy-ratelimited" not in closed.headers
    assert after[STATS + "error"] - before.get(STATS + "error", 0) == 2
    assert (
        after[STATS + "failure_mode_allowed"] - before.get(STATS + "failure_mode_allowed", 0) == 1
    )
