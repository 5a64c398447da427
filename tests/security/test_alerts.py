"""Request-supplied limits cannot flood operators with alerts or bury their events.

Attack: RLS requests each carrying a different ``limit`` make as many ad-hoc rules, each
of which starts (and stops) throttling with its own webhook, shows up as its own
throttling rule, and pushes operators' switch changes out of the recent events.
"""

from __future__ import annotations

import grpc
from envoy.service.ratelimit.v3 import rls_pb2

from tests.ops.conftest import Receiver
from tests.security.conftest import TOKEN, admin
from tests.service.conftest import rls_stub, wait_until

RULES = 10
OVERRIDES = 300


def config(url: str) -> str:
    rules = "".join(
        f"  - key: k\n    value: '{i}'\n    rate_limit: {{unit: hour, requests_per_unit: 1}}\n"
        for i in range(RULES)
    )
    return f"""domain: d
descriptors:
{rules}shedding:
  throttle: {{min_over: 1}}
alerts:
  recent: 5
  webhooks: [{{url: "{url}"}}]
"""


def test_made_up_limits_raise_one_alert_and_keep_operator_events(serve) -> None:  # type: ignore[no-untyped-def]
    receiver = Receiver()
    try:
        service = serve(config(receiver.url), env={"LIMITER_ADMIN_TOKEN": TOKEN})
        body = {"action": "shadow", "who": "alice", "why": "incident 7"}
        assert admin(service, "PUT", "/v1/switches/rule:d/k_0", body)[0] == 200
        with grpc.insecure_channel(service.target) as channel:
            stub = rls_stub(channel)
            for i in range(OVERRIDES):
                req = rls_pb2.RateLimitRequest(domain="d", hits_addend=i + 2)
                d = req.descriptors.add()
                d.entries.add(key="anything", value="x")
                d.limit.requests_per_unit, d.limit.unit = (
                    i + 1,
                    rls_pb2.RateLimitResponse.RateLimit.HOUR,
                )
                assert stub.ShouldRateLimit(req, timeout=5).overall_code == 2  # OVER_LIMIT
            for i in range(1, RULES):  # the configured rules (but the shadowed one) throttle
                for _ in range(2):
                    req = rls_pb2.RateLimitRequest(domain="d")
                    req.descriptors.add().entries.add(key="k", value=str(i))
                    stub.ShouldRateLimit(req, timeout=5)
        started = RULES - 1 + 1  # the configured rules, and one for all made-up limits
        assert wait_until(lambda: _count(receiver, "throttle_started") >= started, 10)
        status = admin(service, "GET", "/v1/status")[1]
        assert "d/_override" in status["throttling"] and len(status["throttling"]) == started
        assert _count(receiver, "throttle_started") == started
        events = admin(service, "GET", "/v1/events?limit=100")[1]["events"]
        assert [e["who"] for e in events if e["event"] == "switch_changed"] == ["alice"]
    finally:
        receiver.close()


def _count(receiver: Receiver, event: str) -> int:
    return sum(p["event"] == event for p in receiver.payloads())
