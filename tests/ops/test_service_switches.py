"""Switches change real answers: a `limiter serve` process, over RLS (/json) and native Decide."""

from __future__ import annotations

import json

import grpc
import pytest
from limiter.server import v1

from tests.ops.test_propagation import admin_call, until
from tests.service.conftest import ServiceProcess

TOKEN = "service-switch-token-0123456789"

# Per hour, not per minute: a fixed window that turns over between a test's checks would
# start the count again and let a check through that the test expects refused.
RULES = """\
domain: edge
descriptors:
  - key: user
    rate_limit: {name: per-user, unit: hour, requests_per_unit: 2}
  - key: batch
    rate_limit: {name: batch, unit: minute, requests_per_unit: 1000, priority: sheddable}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = tmp_path_factory.mktemp("ops-service") / "rules.yaml"
    path.write_text(RULES)
    svc = ServiceProcess(path, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    yield svc
    assert svc.stop() == 0


def rls_answer(svc, user):
    body = {"domain": "edge", "descriptors": [{"entries": [{"key": "user", "value": user}]}]}
    status, raw = svc.http("POST", "/json", json.dumps(body).encode())
    answer = json.loads(raw)
    return status, answer["statuses"][0]


def native(svc, user):
    with grpc.insecure_channel(svc.target) as channel:
        check = v1.Check(domain="edge", rule="per-user", key=user)
        reply = v1.LimiterStub(channel).Decide(v1.DecideRequest(checks=[check]), timeout=10)
    return reply.results[0]


def switch(svc, sid, **body):
    base = f"http://127.0.0.1:{svc.http_port}"
    status, _ = admin_call(
        base, "PUT", f"/v1/switches/{sid}", {"who": "t", "why": "t", **body}, token=TOKEN
    )
    assert status == 200


def clear(svc, sid):
    base = f"http://127.0.0.1:{svc.http_port}"
    admin_call(base, "DELETE", f"/v1/switches/{sid}", {"who": "t", "why": "t"}, token=TOKEN)


def test_force_deny_and_force_allow(service):
    assert rls_answer(service, "a")[0] == 200
    switch(service, "rule:edge/per-user", action="force_deny", ttl=60)
    status, st = rls_answer(service, "b")
    assert status == 429 and st["code"] == "OVER_LIMIT"
    assert not native(service, "b").allowed
    switch(service, "rule:edge/per-user", action="force_allow")
    assert all(rls_answer(service, "c")[0] == 200 for _ in range(5))  # limit is 2/hour
    assert native(service, "c").allowed
    clear(service, "rule:edge/per-user")
    # The kernel counted nothing while forced: "c" still has its 2 per hour.
    assert [rls_answer(service, "c")[0] for _ in range(3)] == [200, 200, 429]


def test_shadow_override_and_kill_switch(service):
    for _ in range(2):
        rls_answer(service, "d")
    assert rls_answer(service, "d")[0] == 429
    switch(service, "rule:edge/per-user", action="shadow")
    assert rls_answer(service, "d")[0] == 200
    assert native(service, "d").allowed
    switch(service, "rule:edge/per-user", action="override", limit=5)
    answers = [rls_answer(service, "e")[0] for _ in range(6)]
    assert answers == [200] * 5 + [429]
    clear(service, "rule:edge/per-user")
    switch(service, "global", action="force_deny")
    assert rls_answer(service, "fresh")[0] == 429 and not native(service, "fresh2").allowed
    clear(service, "global")
    assert rls_answer(service, "fresh3")[0] == 200


def test_throttled_rules_show_up_for_autoscalers(service):
    for _ in range(4):
        rls_answer(service, "g")
    base = f"http://127.0.0.1:{service.http_port}"
    assert until(
        lambda: any(
            r["rule"] == "edge/per-user" and r["throttling"]
            for r in admin_call(base, "GET", "/v1/top/rules", token=TOKEN)[1]["rules"]
        ),
        2.0,
    )
    clients = admin_call(base, "GET", "/v1/top/clients?rule=edge/per-user", token=TOKEN)[1]
    assert "g" in {c["client"] for c in clients["clients"]}
    events = admin_call(base, "GET", "/v1/events", token=TOKEN)[1]["events"]
    assert any(e["event"] == "throttle_started" for e in events)


def test_override_to_zero_refuses(service):
    switch(service, "rule:edge/per-user", action="override", limit=0)
    try:
        assert rls_answer(service, "zero")[0] == 429
        assert not native(service, "zero").allowed
    finally:
        clear(service, "rule:edge/per-user")


def test_degradation_level_sheds_sheddable_traffic(service):
    def batch():
        body = {"domain": "edge", "descriptors": [{"entries": [{"key": "batch", "value": "j"}]}]}
        return service.http("POST", "/json", json.dumps(body).encode())[0]

    def native_tier(priority):
        with grpc.insecure_channel(service.target) as channel:
            check = v1.Check(domain="edge", rule="per-user", key=f"t{priority}", priority=priority)
            reply = v1.LimiterStub(channel).Decide(v1.DecideRequest(checks=[check]), timeout=10)
        return reply.results[0].allowed

    assert batch() == 200 and native_tier(v1.Priority.Value("SHEDDABLE"))
    switch(service, "level:default", level=1)
    try:
        assert batch() == 429  # the rule's tier is sheddable: shed from level 1
        assert not native_tier(v1.Priority.Value("SHEDDABLE"))  # the check's own tier
        assert native_tier(v1.Priority.Value("CRITICAL"))
        assert rls_answer(service, "crit")[0] == 200  # per-user is CRITICAL by default
    finally:
        clear(service, "level:default")
    assert batch() == 200
