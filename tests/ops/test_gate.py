"""Ops.before/after: what the service asks per check, from switches to shedding to alerts."""

from __future__ import annotations

import json
import time

import pytest
from limiter.server import admin

from limiter.alerts import AlertsConfig
from limiter.shedding import SheddingConfig
from limiter.switches import Switch


def put(ops, sid, **body):
    ops.switches.put(
        Switch.from_request(sid, {"who": "a", "why": "b", **body}, ops.switches.clock())
    )


@pytest.fixture
def ops(clock):
    sections = {
        "shedding": SheddingConfig.parse(
            {
                "clients": {"max_share": 0.5, "min_requests": 10},
                "abnormal": {"burst": 100, "cooldown": 30},
                "throttle": {"min_over": 2, "stop_after": 5},
            }
        )
    }
    o = admin.build(sections, clock=clock, start=False)
    yield o
    o.close()


def test_fast_path_and_every_switch(ops):
    assert ops.before("edge/per-user", "u1", 1, 10) is None
    put(ops, "rule:edge/per-user", action="force_allow")
    v = ops.before("edge/per-user", "u1", 1, 10)
    assert v.decision.allowed and v.decision.remaining == 10
    put(ops, "rule:edge/per-user", action="force_deny", ttl=30)
    v = ops.before("edge/per-user", "u1", 1, 10)
    assert not v.decision.allowed and 29 < v.decision.retry_after <= 30
    put(ops, "rule:edge/per-user", action="shadow")
    assert ops.before("edge/per-user", "u1", 1, 10) == admin.Verdict(shadow=True)
    put(ops, "rule:edge/per-user", action="override", limit=3)
    assert ops.before("edge/per-user", "u1", 1, 10) == admin.Verdict(limit=3)
    assert ops.before("edge/other", "u1", 1, 10) is None
    put(ops, "global", action="force_deny")
    assert not ops.before("edge/other", "u1", 1, 10).decision.allowed


def test_abnormal_client_is_blocked(ops, clock):
    answers = [ops.before("edge/r", "bot", 1, 1000) for _ in range(101)]
    assert answers[99] is None and not answers[100].decision.allowed
    assert answers[100].decision.retry_after == pytest.approx(30)
    assert ops.before("edge/r", "human", 1, 1000) is None
    assert ops.alerts.recent()[-1]["event"] == "client_blocked"


def test_heaviest_client_is_cut_only_while_the_rule_throttles(ops, clock):
    for _ in range(30):
        assert ops.before("edge/r", "heavy", 1, 100) is None  # no pressure yet
        ops.after("edge/r", True, 1)
    ops.after("edge/r", False, 1)
    ops.after("edge/r", False, 1)
    assert ops.throttle.is_throttling("edge/r")
    assert not ops.before("edge/r", "heavy", 1, 100).decision.allowed  # 30 of 31: cut
    assert ops.before("edge/r", "light", 1, 100) is None
    clock.advance(6)
    ops.tick()
    assert not ops.throttle.is_throttling("edge/r")
    assert ops.before("edge/r", "heavy", 1, 100) is None
    assert [e["event"] for e in ops.alerts.recent()] == ["throttle_started", "throttle_stopped"]


def test_throttle_alert_reaches_a_real_receiver(receiver, clock):
    sections = {
        "alerts": AlertsConfig.parse({"url": receiver.url, "secret": "k" * 20}),
        "shedding": SheddingConfig.parse({"throttle": {"min_over": 1}}),
    }
    ops = admin.build(sections, clock=clock, start=False)
    try:
        for _ in range(3):
            assert ops.before("edge/per-user", "u9", 1, 10) is None
        for allowed in (True, True, False):
            ops.after("edge/per-user", allowed, 1)
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


def test_odd_hits_never_raise(ops):
    for hits in (0, -5, 1 << 40, 1 << 63, 1 << 64):
        verdict = ops.before("edge/r", "c\x00\U0001f600", hits, 10)
        assert verdict is None or not verdict.decision.allowed  # a huge burst gets blocked
        ops.after("edge/r", True, hits)


def test_expiry_is_announced_once(ops, clock):
    wall = ops.switches.clock
    put(ops, "rule:edge/x", action="force_deny", ttl=5)
    ops.switches.clock = lambda: wall() + 5_000_000_000
    ops.tick()
    ops.tick()
    events = [e for e in ops.alerts.recent() if e["event"] == "switch_changed"]
    assert [(e["op"], e["id"]) for e in events] == [("expire", "rule:edge/x")]


def test_degradation_sheds_low_tiers_first_and_completely(ops):
    from limiter.criticality import Criticality as C

    def admitted(tier):
        v = ops.before("edge/r", f"c-{tier}", 1, 10, tier)
        return v is None

    assert all(admitted(t) for t in C)  # level 0: nobody is shed by tier
    put(ops, "level:default", level=1)
    assert [admitted(t) for t in C] == [False, True, True, True]  # SHEDDABLE goes first
    put(ops, "level:default", level=2)
    assert [admitted(t) for t in C] == [False, False, True, True]
    put(ops, "level:default", level=4)
    assert admitted(C.CRITICAL) and admitted("critical_plus")  # never shed by default
    assert ops.before("edge/r", "x", 1, 10, None) is None  # no tier given: not judged
    put(ops, "rule:edge/r", action="force_allow")
    assert ops.before("edge/r", "x", 1, 10, C.SHEDDABLE).decision.allowed  # the switch wins


def test_shed_config():
    from limiter.degradation import DegradationConfig
    from limiter.errors import ConfigError

    cfg = DegradationConfig.parse({"shed": {"sheddable": 2, "CRITICAL": 4}})
    from limiter.criticality import Criticality as C

    assert cfg.sheds(C.SHEDDABLE, 2) and not cfg.sheds(C.SHEDDABLE, 1)
    assert cfg.sheds(C.CRITICAL, 4) and not cfg.sheds(C.SHEDDABLE_PLUS, 4)
    assert DegradationConfig.parse({"shed": {}}).shed == {}
    for bad, match in (
        ({"vip": 1}, "shed tier"),
        ({"SHEDDABLE": 0}, "shed.SHEDDABLE"),
        ([1], "shed must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            DegradationConfig.parse({"shed": bad})
