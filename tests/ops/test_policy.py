"""The operations policy: what the decider asks per rule and per check, from switches to
shedding to alerts."""

from __future__ import annotations

import json
import time

import pytest

from limiter import InvalidParameter
from limiter import ops as operations
from limiter.ops import Verdict
from limiter.ops.switches import Switch


def before(ops, rule, client, hits, limit, priority=None):
    """What the decider asks about one check: the rule's verdict, then the client's."""
    level = ops.level() if priority is not None else 0
    verdict = ops.rule_verdict(rule, limit, priority, level)
    if verdict is not None:
        return verdict
    return ops.client_verdict(rule, client, hits, limit)


def put(ops, sid, **body):
    ops.switches.put(
        Switch.from_request(sid, {"who": "a", "why": "b", **body}, ops.switches.clock())
    )


@pytest.fixture
def ops(clock):
    sections = {
        "shedding": {
            "clients": {"max_share": 0.5, "min_requests": 10},
            "abnormal": {"burst": 100, "cooldown": 30},
            "throttle": {"min_over": 2, "stop_after": 5},
        }
    }
    o = operations.build(sections, clock=clock, start=False)
    yield o
    o.close()


def test_fast_path_and_every_switch(ops):
    assert before(ops, "edge/per-user", "u1", 1, 10) is None
    put(ops, "rule:edge/per-user", action="force_allow")
    v = before(ops, "edge/per-user", "u1", 1, 10)
    assert v.decision.allowed and v.decision.remaining == 10
    put(ops, "rule:edge/per-user", action="force_deny", ttl=30)
    v = before(ops, "edge/per-user", "u1", 1, 10)
    assert not v.decision.allowed and 29 < v.decision.retry_after <= 30
    put(ops, "rule:edge/per-user", action="shadow")
    assert before(ops, "edge/per-user", "u1", 1, 10) == Verdict(shadow=True)
    put(ops, "rule:edge/per-user", action="override", limit=3)
    assert before(ops, "edge/per-user", "u1", 1, 10) == Verdict(limit=3)
    assert before(ops, "edge/other", "u1", 1, 10) is None
    put(ops, "global", action="force_deny")
    assert not before(ops, "edge/other", "u1", 1, 10).decision.allowed


def test_abnormal_client_is_blocked(ops, clock):
    answers = [before(ops, "edge/r", "bot", 1, 1000) for _ in range(101)]
    assert answers[99] is None and not answers[100].decision.allowed
    assert answers[100].decision.retry_after == pytest.approx(30)
    assert before(ops, "edge/r", "human", 1, 1000) is None
    assert ops.alerts.recent()[-1]["event"] == "client_blocked"


def test_heaviest_client_is_cut_only_while_the_rule_throttles(ops, clock):
    for _ in range(30):
        assert before(ops, "edge/r", "heavy", 1, 100) is None  # no pressure yet
        ops.record("edge/r", True, 1)
    ops.record("edge/r", False, 1)
    ops.record("edge/r", False, 1)
    assert ops.throttle.is_throttling("edge/r")
    assert not before(ops, "edge/r", "heavy", 1, 100).decision.allowed  # 30 of 31: cut
    assert before(ops, "edge/r", "light", 1, 100) is None
    clock.advance(6)
    ops.tick()
    assert not ops.throttle.is_throttling("edge/r")
    assert before(ops, "edge/r", "heavy", 1, 100) is None
    assert [e["event"] for e in ops.alerts.recent()] == ["throttle_started", "throttle_stopped"]


def test_throttle_alert_reaches_a_real_receiver(receiver, clock):
    sections = {
        "alerts": {"webhooks": [{"url": receiver.url, "secret": "k" * 20}]},
        "shedding": {"throttle": {"min_over": 1}},
    }
    ops = operations.build(sections, clock=clock, start=False)
    try:
        for _ in range(3):
            assert before(ops, "edge/per-user", "u9", 1, 10) is None
        for allowed in (True, True, False):
            ops.record("edge/per-user", allowed, 1)
        (req,) = receiver.wait_for(1)
        payload = json.loads(req["body"])
        assert payload["event"] == "throttle_started" and payload["rule"] == "edge/per-user"
        assert payload["counts"]["over"] == 1 and payload["level"] == 0
        assert payload["top_clients"] == [["u9", 3]]
        time.sleep(0.05)
        assert len(receiver.requests) == 1
    finally:
        ops.close()


def test_housekeeping_feeds_the_level_from_breakers(ops, clock):
    ops.breakers.get("db", "1")
    ops.breakers.get("db", "2")
    ops.tick()
    assert ops.levels.level() == 0
    for _ in range(20):
        ops.breakers.get("db", "1").record(failed=True)
    ops.tick()
    assert ops.levels["default"].signals["breakers"] == 0.5 and ops.levels.level() == 0
    for _ in range(20):
        ops.breakers.get("db", "2").record(failed=True)
    ops.tick()
    assert ops.levels.level() == 2  # every breaker open: "simplify" (weight 0.9)
    events = [e["event"] for e in ops.alerts.recent()]
    assert events.count("breaker_opened") == 2 and events[-1] == "level_changed"


def test_out_of_range_hits_are_refused_with_a_clear_error(ops):
    for hits in (0, -5, (1 << 40) + 1, 1 << 64):
        with pytest.raises(InvalidParameter, match=f"hits must be in .*got {hits}"):
            ops.client_verdict("edge/r", "c", hits, 10)
    assert ops.abnormal.requests.total() == 0  # nothing was counted
    verdict = ops.client_verdict("edge/r", "c\x00\U0001f600", 1 << 40, 10)
    assert not verdict.decision.allowed  # the largest burst there is gets blocked


def test_expiry_is_announced_once(ops, clock):
    wall = ops.switches.clock
    put(ops, "rule:edge/x", action="force_deny", ttl=5)
    ops.switches.clock = lambda: wall() + 5_000_000_000
    ops.tick()
    ops.tick()
    events = [e for e in ops.alerts.recent() if e["event"] == "switch_changed"]
    assert [(e["op"], e["id"]) for e in events] == [("expire", "rule:edge/x")]


def test_degradation_sheds_low_tiers_first_and_completely(ops):
    from limiter.priority import Priority as C

    def admitted(tier):
        v = before(ops, "edge/r", f"c-{tier}", 1, 10, tier)
        return v is None

    assert all(admitted(t) for t in C)  # level 0: nobody is shed by tier
    put(ops, "level:default", level=1)
    assert [admitted(t) for t in C] == [False, True, True, True]  # SHEDDABLE goes first
    put(ops, "level:default", level=2)
    assert [admitted(t) for t in C] == [False, False, True, True]
    put(ops, "level:default", level=4)
    assert admitted(C.CRITICAL) and admitted("critical_plus")  # never shed by default
    assert before(ops, "edge/r", "x", 1, 10, None) is None  # no tier given: not judged
    put(ops, "rule:edge/r", action="force_allow")
    assert before(ops, "edge/r", "x", 1, 10, C.SHEDDABLE).decision.allowed  # the switch wins


def test_shed_config():
    from limiter.errors import ConfigError
    from limiter.ops.degradation import DegradationConfig
    from limiter.priority import Priority as C
    from limiter.schema import load

    cfg = load(DegradationConfig, {"shed": {"sheddable": 2, "CRITICAL": 4}}, "degradation")
    assert cfg.sheds(C.SHEDDABLE, 2) and not cfg.sheds(C.SHEDDABLE, 1)
    assert cfg.sheds(C.CRITICAL, 4) and not cfg.sheds(C.SHEDDABLE_PLUS, 4)
    assert load(DegradationConfig, {"shed": {}}, "degradation").shed == {}
    for bad, match in (
        ({"vip": 1}, "degradation: shed: invalid key: 'vip' is not one of"),
        ({"SHEDDABLE": 0}, r"shed\.SHEDDABLE: must be an integer in \[1, 100\], got 0"),
        ([1], "shed: must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(DegradationConfig, {"shed": bad}, "degradation")
