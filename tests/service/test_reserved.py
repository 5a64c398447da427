"""Reserved shares in a real service: sheddable traffic cannot take what a rule keeps
for critical traffic, except a listed VIP tenant's, in memory and on Redis."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import v1

from tests.service.conftest import ServiceProcess, rls_stub
from tests.service.conftest import request as rls_request
from tests.service.test_redis import patient

OK = rls_pb2.RateLimitResponse.OK
TOKEN = "reserved-shares-admin-token"
CRITICAL, SHEDDABLE_PLUS, SHEDDABLE = 2, 3, 4  # limiter.v1 Priority
CONFIG = """
domain: web
descriptors:
  - key: api
    rate_limit:
      unit: hour
      requests_per_unit: 10
      name: api
      priority: sheddable
      reserved: {fraction: 0.3, priority: critical}
  - key: bucket
    rate_limit:
      unit: hour
      requests_per_unit: 10
      algorithm: token_bucket
      name: bucket
      reserved: {fraction: 0.2}
  - key: fast
    rate_limit:
      unit: second
      requests_per_unit: 4
      burst: 20
      algorithm: token_bucket
      name: fast
      reserved: {fraction: 0.5}
  - key: plan
    rate_limit:
      unit: hour
      requests_per_unit: 10
      name: plan
      priority: sheddable
      reserved: {fraction: 0.3, priority: critical, tenants: [acme, initech]}
"""


@pytest.fixture(params=["memory", "redis"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceProcess]:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    args = ()
    if request.param == "redis":
        args = ("--redis", patient(request.getfixturevalue("redis_url")))
    proc = ServiceProcess(path, *args, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    yield proc
    assert proc.stop() == 0


def decide(channel: grpc.Channel, rule: str, key: str, priorities: list[int]) -> list[bool]:
    checks = [v1.Check(domain="web", rule=rule, key=key, priority=p) for p in priorities]
    answer = v1.LimiterStub(channel).Decide(v1.DecideRequest(checks=checks), timeout=10)
    return [r.allowed for r in answer.results]


def test_a_sheddable_flood_cannot_take_the_reserve(service: ServiceProcess) -> None:
    with grpc.insecure_channel(service.target) as channel:
        # Envoy's checks carry the rule's own tier (sheddable): 7 of 10 per hour.
        rls = rls_stub(channel)
        codes = [
            rls.ShouldRateLimit(rls_request("web", {"api": "k"}), timeout=10).overall_code
            for _ in range(12)
        ]
        assert codes == [OK] * 7 + [rls_pb2.RateLimitResponse.OVER_LIMIT] * 5
        # A native check of a lower tier than critical is refused too; critical ones
        # take the reserve, and only then are they refused.
        assert decide(channel, "api", "k", [SHEDDABLE_PLUS, SHEDDABLE]) == [False, False]
        assert decide(channel, "api", "k", [CRITICAL] * 4) == [True, True, True, False]


def test_critical_is_allowed_while_sheddable_is_refused(service: ServiceProcess) -> None:
    with grpc.insecure_channel(service.target) as channel:
        # The bucket's own tier is critical (the default): unmarked checks may use it all.
        flood = decide(channel, "bucket", "t", [SHEDDABLE] * 12)
        assert flood == [True] * 8 + [False] * 4  # a burst of 10, 2 kept back
        mixed = decide(channel, "bucket", "t", [SHEDDABLE, CRITICAL, SHEDDABLE, 0, 0])
        assert mixed == [False, True, False, True, False]


def test_an_rls_descriptor_carries_its_priority(service: ServiceProcess) -> None:
    """A ``limiter.priority`` entry (Envoy: a request_headers action) sets the check's
    tier and is no part of the match or the key."""
    with grpc.insecure_channel(service.target) as channel:
        rls = rls_stub(channel)

        def code(priority: str) -> int:
            descriptor = [("bucket", "r"), ("limiter.priority", priority)]
            msg = rls_pb2.RateLimitRequest(domain="web")
            entries = msg.descriptors.add().entries
            for key, value in descriptor:
                entries.add(key=key, value=value)
            return rls.ShouldRateLimit(msg, timeout=10).overall_code

        over = rls_pb2.RateLimitResponse.OVER_LIMIT
        assert [code("sheddable") for _ in range(9)] == [OK] * 8 + [over]
        assert [code("Critical") for _ in range(3)] == [OK, OK, over]
        # The same key as a native check of the rule: one state.
        assert decide(channel, "bucket", "r", [CRITICAL]) == [False]
        with pytest.raises(grpc.RpcError) as info:
            code("vip")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "descriptors[0].entries[1].value must be one of" in info.value.details()


def put_switch(service: ServiceProcess, target: str, **fields: object) -> None:
    body = {**fields, "who": "t", "why": "test", "ttl": 60}
    request = urllib.request.Request(
        f"http://127.0.0.1:{service.http_port}/v1/switches/{target}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_an_override_keeps_the_reserve_in_proportion(service: ServiceProcess) -> None:
    put_switch(service, "rule:web/api", action="override", limit=5)
    with grpc.insecure_channel(service.target) as channel:
        assert decide(channel, "api", "o", [SHEDDABLE] * 4) == [True] * 3 + [False]
        assert decide(channel, "api", "o", [CRITICAL] * 3) == [True] * 2 + [False]


def test_a_held_sheddable_check_waits_until_the_bucket_is_above_the_reserve(
    service: ServiceProcess,
) -> None:
    """A burst of 20, half of it reserved, 4 tokens a second: of 12 sheddable checks 10
    pass; one that may wait is held until a token above the reserve is back (250 ms),
    never admitted at once out of the reserve."""
    check = v1.Check(domain="web", rule="fast", key="h", priority=SHEDDABLE)
    held = v1.Check(domain="web", rule="fast", key="h", priority=SHEDDABLE, max_wait=2.0)
    with grpc.insecure_channel(service.target) as channel:
        stub = v1.LimiterStub(channel)
        results = stub.Decide(v1.DecideRequest(checks=[check] * 12 + [held]), timeout=10).results
    assert [r.allowed for r in results[:12]] == [True] * 10 + [False] * 2
    assert results[12].allowed and results[12].waited > 0.1, results[12]


def test_a_vip_tenant_uses_the_reserve_over_rls(service: ServiceProcess) -> None:
    """A ``limiter.tenant`` entry names the check's tenant: once sheddable traffic has
    taken the unreserved 7 of 10, a listed tenant's sheddable check is admitted from the
    reserve while an unlisted tenant's (or one naming none) is refused. The entry is no
    part of the match or the key."""
    with grpc.insecure_channel(service.target) as channel:
        rls = rls_stub(channel)

        def code(tenant: str | None) -> int:
            msg = rls_pb2.RateLimitRequest(domain="web")
            entries = msg.descriptors.add().entries
            entries.add(key="plan", value="free")
            if tenant is not None:
                entries.add(key="limiter.tenant", value=tenant)
            return rls.ShouldRateLimit(msg, timeout=10).overall_code

        over = rls_pb2.RateLimitResponse.OVER_LIMIT
        assert [code("globex") for _ in range(7)] == [OK] * 7
        assert [code("globex"), code(None), code("acme"), code("globex")] == [over, over, OK, over]
        assert [code("initech"), code("acme"), code("acme")] == [OK, OK, over]
        # One partition for every tenant: a critical native check finds it spent.
        assert decide(channel, "plan", "free", [CRITICAL]) == [False]
        with pytest.raises(grpc.RpcError) as info:
            code("x" * 257)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "descriptors[0].entries[1].value: a limiter.tenant must be 1 to 256" in (
            info.value.details()
        )


def test_a_vip_tenant_uses_the_reserve_over_the_native_api(service: ServiceProcess) -> None:
    """A native check's key names its tenant: in each tenant's partition sheddable
    checks take the unreserved 7 of 10, then a listed tenant's go on into the reserve
    and an unlisted tenant's are refused, in one request with both interleaved."""
    with grpc.insecure_channel(service.target) as channel:
        stub = v1.LimiterStub(channel)
        checks = [v1.Check(domain="web", rule="plan", key=t, priority=SHEDDABLE)
                  for t in ["acme", "globex"] * 7]  # fmt: skip
        answer = stub.Decide(v1.DecideRequest(checks=checks), timeout=10)
        assert [r.allowed for r in answer.results] == [True] * 14
        assert decide(channel, "plan", "globex", [SHEDDABLE, SHEDDABLE_PLUS]) == [False, False]
        mixed = [v1.Check(domain="web", rule="plan", key=t, priority=SHEDDABLE)
                 for t in ["acme", "globex", "acme", "globex", "acme", "acme"]]  # fmt: skip
        answer = stub.Decide(v1.DecideRequest(checks=mixed), timeout=10)
        assert [r.allowed for r in answer.results] == [True, False, True, False, True, False]
        # An unlisted tenant's critical checks still have the whole reserve.
        assert decide(channel, "plan", "globex", [CRITICAL] * 4) == [True] * 3 + [False]


def test_a_degradation_level_still_sheds_a_vip_tenants_tier(service: ServiceProcess) -> None:
    """Only the reserve treats a VIP's check as of the reserve's tier: a level that sheds
    sheddable traffic sheds a listed tenant's sheddable checks too."""
    put_switch(service, "level:default", level=1)
    with grpc.insecure_channel(service.target) as channel:
        assert decide(channel, "plan", "acme", [SHEDDABLE, CRITICAL]) == [False, True]
