"""Top-client shedding, abnormal-access blocking and the throttled-rules watch."""

from __future__ import annotations

import math

import pytest

from limiter.errors import ConfigError, InvalidParameter
from limiter.ops.shedding import (
    AbnormalAccess,
    AbnormalConfig,
    ClientsConfig,
    ClientShedder,
    SheddingConfig,
    ThrottleConfig,
    ThrottleWatch,
    fair_level,
)
from limiter.schema import load


def test_fair_level_is_max_min():
    assert fair_level(4000, [10_000] + [100] * 10) == pytest.approx(3000)
    assert fair_level(4000, [10_000, 10_000] + [100] * 10) == pytest.approx(1500)
    assert fair_level(4000, [100] * 10) == math.inf  # everyone fits: no cut
    assert fair_level(4000, [10_000], rest=1000) == pytest.approx(3000)
    assert fair_level(4000, [10_000], rest=5000) == 0.0  # the lighter ones need it all


def flood(shedder, clock, heavy: int, light: int, seconds: float, capacity=None):
    """One heavy client at ``heavy``/s and ten light ones at ``light``/s each, under
    pressure, in 1 ms steps; what each passed per second over the last half."""
    passed = {"heavy": 0, "light": 0}
    steps = int(seconds * 1000)
    debt = {"heavy": 0.0, "light": 0.0}
    for step in range(steps):
        clock.advance(0.001)
        debt["heavy"] += heavy / 1000
        debt["light"] += light * 10 / 1000
        for name in ("heavy", "light"):
            while debt[name] >= 1:
                debt[name] -= 1
                client = "heavy" if name == "heavy" else f"light{step % 10}"
                ok = shedder.check(client, pressure=True, capacity=capacity)
                if step >= steps // 2:
                    passed[name] += ok
    return {name: n / (seconds / 2) for name, n in passed.items()}


def test_heavy_client_is_cut_to_its_fair_share_not_to_nothing(clock):
    config = ClientsConfig(max_share=0.5, window=2.0, buckets=4, min_requests=20)
    shedder = ClientShedder(config, clock=clock)
    rates = flood(shedder, clock, heavy=10_000, light=100, seconds=6, capacity=4000)
    assert rates["light"] == pytest.approx(1000, rel=0.02)  # the light ones are never cut
    assert rates["heavy"] == pytest.approx(3000, rel=0.1)  # what they leave of 4000/s
    # More light demand: the heavy client gives way, and only by what they need.
    rates = flood(shedder, clock, heavy=10_000, light=300, seconds=6, capacity=4000)
    assert rates["light"] == pytest.approx(3000, rel=0.02)
    assert rates["heavy"] == pytest.approx(1000, rel=0.15)
    # Spare room for everyone: nobody is cut.
    rates = flood(shedder, clock, heavy=2000, light=100, seconds=6, capacity=4000)
    assert rates["heavy"] == pytest.approx(2000, rel=0.02)


def test_without_a_capacity_a_flood_is_held_to_the_cap(clock):
    shedder = ClientShedder(ClientsConfig(max_share=0.2, window=10.0, min_requests=20), clock=clock)
    passed = {"flood": 0, "good": 0}
    asked = {"flood": 0, "good": 0}
    for i in range(2000):
        client = "flood" if i % 10 else f"good{i % 7}"
        name = "flood" if client == "flood" else "good"
        asked[name] += 1
        passed[name] += shedder.check(client, pressure=True)
        if i % 200 == 0:
            clock.advance(0.5)
    assert passed["good"] == asked["good"]  # nobody well-behaved is cut
    # The flood (90% of the requests) keeps a fifth of all requests, not more, not none.
    assert passed["flood"] == pytest.approx(0.2 * 2000, rel=0.05)
    assert shedder.top(1)[0]["client"] == "flood"
    assert shedder.top(1)[0]["share"] == pytest.approx(0.9, abs=0.02)


def test_no_cut_without_pressure(clock):
    shedder = ClientShedder(ClientsConfig(max_share=0.1, min_requests=20), clock=clock)
    assert all(shedder.check("only", pressure=False) for _ in range(100))
    assert not shedder.check("only", pressure=True, capacity=0.01)  # under one per window
    assert shedder.shed == 1


def test_burst_blocks_for_cooldown_and_alerts(clock):
    events = []
    guard = AbnormalAccess(
        AbnormalConfig(burst=50, burst_window=1.0, cooldown=30),
        clock=clock,
        on_block=lambda e, f: events.append((e, f)),
    )
    results = [guard.request("bot") for _ in range(60)]
    assert results.count(True) == 50 and results[50] is False
    assert guard.request("human")
    assert events[0][0] == "client_blocked" and events[0][1]["client"] == "bot"
    assert events[0][1]["reason"] == "burst"
    assert len(events) == 1  # one alert per block
    clock.advance(29)
    assert not guard.request("bot") and guard.blocked_for("bot") == pytest.approx(1.0)
    assert guard.blocked()[0]["client"] == "bot"
    clock.advance(1.5)
    assert guard.request("bot")  # cool-down over, burst window long gone
    assert guard.blocks == 1


def test_4xx_ratio_blocks(clock):
    events = []
    guard = AbnormalAccess(
        AbnormalConfig(error_ratio=0.5, min_responses=10),
        clock=clock,
        on_block=lambda e, f: events.append(f),
    )
    for _ in range(20):
        guard.response("fine", 200)
        guard.response("fine", 404 if _ % 5 == 0 else 200)
    for status in [200, 404, 403, 401, 404, 404, 404, 200, 404, 429]:
        guard.response("scanner", status)
    assert guard.blocked_for("fine") == 0
    assert guard.blocked_for("scanner") > 0 and not guard.request("scanner")
    assert events[0]["reason"] == "4xx" and events[0]["client"] == "scanner"
    assert [b["client"] for b in guard.blocked()] == ["scanner"]


def test_throttle_watch_hysteresis(clock):
    events = []
    watch = ThrottleWatch(
        ThrottleConfig(window=10, start_ratio=0.05, min_over=3, stop_after=30),
        clock=clock,
        on_change=lambda e, f: events.append((e, f["rule"])),
    )
    for _ in range(100):
        watch.record("api", True)
    watch.record("api", False)
    watch.record("api", False)
    assert events == []  # 2 over-limit: below min_over
    for _ in range(5):
        watch.record("api", False)
    assert events == [("throttle_started", "api")]
    assert watch.throttling() == ["api"]
    for _ in range(20):  # flapping allow/deny does not restart or stop it
        clock.advance(1)
        watch.record("api", True)
        watch.record("api", False)
    assert events == [("throttle_started", "api")]
    clock.advance(29)
    watch.record("api", True)
    assert len(events) == 1
    clock.advance(2)
    watch.tick()  # quiet: no traffic, the housekeeper notices
    assert events[-1] == ("throttle_stopped", "api") and watch.throttling() == []
    top = watch.top()
    assert top == [] or top[0]["rule"] == "api"


def test_top_throttled_rules(clock):
    watch = ThrottleWatch(clock=clock)
    for rule, over in (("a", 5), ("b", 50), ("c", 0)):
        for _ in range(100):
            watch.record(rule, True)
        for _ in range(over):
            watch.record(rule, False)
    top = watch.top(5)
    assert [r["rule"] for r in top] == ["b", "a"]
    assert top[0]["over_limit"] == 50 and top[0]["throttling"]


def test_config():
    cfg = load(SheddingConfig, {"clients": {"max_share": 0.3}, "abnormal": {"burst": 10}}, "s")
    assert ClientShedder(cfg.clients).max_share == 0.3
    assert cfg.abnormal is not None and AbnormalAccess(cfg.abnormal).burst == 10
    assert load(SheddingConfig, {}, "shedding").abnormal is None  # off unless given
    for section, match in (
        ({"clients": {"max_share": 2}}, r"shedding: clients\.max_share: must be a number in \(0"),
        ({"abnormal": {"bogus": 1}}, r"abnormal: unknown field 'bogus' \(known: burst, "),
        ({"throttle": {"window": 0}}, r"throttle\.window: must be a number of seconds in"),
        ({"nope": {}}, "unknown field 'nope'"),
        ([1], "must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(SheddingConfig, section, "shedding")
    with pytest.raises(InvalidParameter, match="max_share"):
        ClientsConfig(max_share="big")


def test_per_rule_state_is_bounded(clock):
    from limiter.ops.shedding import OTHER, TopClients

    watch = ThrottleWatch(clock=clock, max_rules=3)
    tops = TopClients(max_rules=3)
    for i in range(10):
        watch.record(f"adhoc{i}", False)
        tops.check(f"adhoc{i}", "c")
    assert len(watch._rules) == 4 and OTHER in watch._rules
    assert sorted(tops._rules) == ["_other", "adhoc0", "adhoc1", "adhoc2"]
    assert tops.top(OTHER)[0]["count"] == 7
