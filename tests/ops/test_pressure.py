"""The service's pressure signals and the fallback watch, in-process on an injected clock."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from limiter.server.decider import Checks, Decider
from limiter.server.pressure import ServicePressure
from limiter.server.rules import Rulebook

from limiter import config as rules
from limiter import ops
from limiter.ops.fallback import FallbackConfig, FallbackWatch
from limiter.ops.switches import Switch
from tests.ops.conftest import Clock

RULES = """
domain: d
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 10, name: per-user, priority: sheddable}
  - key: api
    rate_limit: {algorithm: adaptive, unit: second, requests_per_unit: 100, target_latency: 0.05,
                 name: api}
---
degradation: {window: 5, min_checks: 10}
"""


def build(clock: Clock) -> tuple[Rulebook, Decider, ops.Operations, ServicePressure]:
    config = rules.parse(RULES)
    book = Rulebook(config)
    policy = ops.build(config.sections, start=False, clock=clock, wall_clock=clock)
    pressure = ServicePressure(book, policy.levels.config, policy.fallback, clock=clock)
    policy.steps.append(pressure.sample)
    policy.signals.append(pressure.signals)
    return book, Decider(book, policy), policy, pressure


def decide(decider: Decider, book: Rulebook, rule: str, key: str, n: int) -> list[Any]:
    state = book.snapshot.by_name[("d", rule)]
    checks = Checks([state] * n, [key] * n, [1] * n, keep_permits=False)
    return asyncio.run(decider.decide(checks)).outcomes


def test_throttled_share_counts_the_limits_refusals_over_the_window(clock: Clock) -> None:
    book, decider, policy, pressure = build(clock)
    try:
        assert sum(o.allowed for o in decide(decider, book, "per-user", "u", 100)) == 10
        pressure.sample()
        assert pressure.signals()["throttled"] == pytest.approx(0.9)
        clock.advance(2)
        decide(decider, book, "per-user", "u2", 10)  # all allowed
        pressure.sample()
        assert pressure.signals()["throttled"] == pytest.approx(90 / 110)
        clock.advance(6)  # the window has moved past both: nothing seen since
        pressure.sample()
        assert pressure.signals()["throttled"] == 0.0
        clock.advance(1)
        decide(decider, book, "per-user", "u", 5)  # refused, but fewer than min_checks
        pressure.sample()
        assert pressure.signals()["throttled"] == 0.0
        # A level that sheds the rule's tier refuses everything: the policy's refusals,
        # not the limit's; counting them would keep the level up by itself.
        policy.switches.put(
            Switch.from_request("level:default", {"level": 1, "who": "t", "why": "x"}, 0)
        )
        clock.advance(6)
        pressure.sample()
        outcomes = decide(decider, book, "per-user", "fresh", 50)
        assert not any(o.allowed for o in outcomes)
        pressure.sample()
        assert pressure.signals()["throttled"] == 0.0
    finally:
        policy.close()


def test_adaptive_cut_and_latency_drive_the_level_through_housekeeping(clock: Clock) -> None:
    book, _decider, policy, _pressure = build(clock)
    try:
        policy.tick()
        assert policy.level() == 0
        api = book.snapshot.by_name[("d", "api")]
        for _ in range(20):  # the rule's own controller, on its own clock
            for _ in range(50):
                api.kernel.record(1.0)
            api.kernel.acquire("k").ignore()
        policy.tick()
        signals = policy.levels["default"].snapshot()["signals"]
        seen, limit = api.kernel.current_percentile, api.kernel.current_limit
        assert signals["latency"] == pytest.approx(1 - 0.05 / seen)
        assert signals["adaptive_cut"] == pytest.approx(1 - limit / 100)
        assert signals["latency"] > 0.9 and policy.level() >= 2
    finally:
        policy.close()


def test_fallback_watch_starts_stops_and_logs_at_most_once_per_period(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    watch = FallbackWatch(
        FallbackConfig(stop_after=2, log_every=10),
        clock=clock,
        on_change=lambda e, f: events.append((e, f)),
    )
    caplog.set_level(logging.WARNING, logger="limiter.ops.fallback")
    watch.sample({"d/a": (100, 0), "d/b": (5, 0)})
    assert events == [] and not watch.active()
    for second in range(1, 13):
        clock.advance(1)
        watch.sample({"d/a": (100 + 10 * second, 4 * second), "d/b": (5, 0)}, {"d/a": "local"})
    assert [e for e, _ in events] == ["fallback_started"] and events[0][1]["rule"] == "d/a"
    assert watch.active() == ["d/a"] and not watch.is_active("d/b")
    lines = [r for r in caplog.records if r.getMessage() == "checks answered by the failure mode"]
    # The first at once, the next after log_every, counting everything since the first.
    assert [r.fields["checks"] for r in lines] == [4, 40]
    assert lines[0].fields == {"rule": "d/a", "checks": 4, "failure_mode": "local"}
    assert lines[1].fields["seconds"] == 10.0
    clock.advance(1)
    watch.sample({"d/a": (300, 48), "d/b": (5, 0)})  # answered by Redis again
    assert [e for e, _ in events] == ["fallback_started"]
    clock.advance(2)
    watch.sample({"d/a": (300, 48), "d/b": (5, 0)})  # quiet: stops after stop_after
    assert [e for e, _ in events] == ["fallback_started", "fallback_stopped"]
    assert not watch.active()
