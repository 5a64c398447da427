"""Degradation levels: fast up, slow down, no flapping, manual override."""

from __future__ import annotations

import pytest

from limiter.errors import ConfigError, InvalidParameter
from limiter.ops.degradation import DEFAULT_WEIGHTS, Degradation, DegradationConfig, ServiceLevels
from limiter.schema import load


def make(clock, **kw):
    events = []
    cfg = DegradationConfig(thresholds=(0.8, 0.9, 0.95), margin=0.1, restore_after=10, **kw)
    d = Degradation("checkout", cfg, clock=clock, on_change=lambda e, f: events.append(f))
    return d, events


def test_sheds_fast_restores_slowly(clock):
    d, events = make(clock)
    assert d.update(0.5) == 0
    assert d.update(0.97) == 3  # straight to the level the pressure asks for
    assert events[-1]["level"] == 3 and events[-1]["previous"] == 0
    assert d.update(0.5) == 3  # calm starts now
    clock.advance(9)
    assert d.update(0.5) == 3
    clock.advance(1)
    assert d.update(0.5) == 2  # one level per restore_after
    clock.advance(10)
    assert d.update(0.5) == 1
    clock.advance(10)
    assert d.update(0.5) == 0
    assert [e["level"] for e in events] == [3, 2, 1, 0]


def test_no_flapping_around_a_threshold(clock):
    d, events = make(clock)
    d.update(0.85)
    for i in range(100):
        clock.advance(1)
        d.update(0.81 if i % 2 else 0.79)  # oscillates around 0.8 but inside the margin
    assert d.level == 1 and len(events) == 1
    # Dipping below the margin only briefly resets the calm timer.
    for _ in range(3):
        clock.advance(5)
        d.update(0.6)
        clock.advance(1)
        d.update(0.75)
    assert d.level == 1


def test_raise_after_requires_sustained_pressure(clock):
    d, _ = make(clock, raise_after=2)
    d.update(0.99)
    clock.advance(1)
    assert d.update(0.99) == 0
    clock.advance(1)
    assert d.update(0.99) == 3


def test_override_wins_and_is_reported(clock):
    forced = {}
    events = []
    levels = ServiceLevels(
        DegradationConfig(),
        clock=clock,
        override=forced.get,
        on_change=lambda e, f: events.append(f),
    )
    levels["api"].observe(utilisation=0.5)
    forced["api"] = 4
    levels.refresh()
    assert levels.level("api") == 4 and events[-1]["forced"] is True
    assert levels["api"].name == "stop-secondary"
    forced["api"] = 99
    assert levels.level("api") == 4  # clamped to max level
    del forced["api"]
    levels.refresh()
    assert levels.level("api") == 0 and events[-1]["level"] == 0
    assert levels.snapshot()[0]["service"] == "api"


def test_signals_and_weights(clock):
    cfg = DegradationConfig(weights={"breakers": 2.0})
    d = Degradation(config=cfg, clock=clock)
    assert d.observe(utilisation=0.5, breakers=0.45) == 2  # 0.9 from breakers
    assert d.pressure == pytest.approx(0.9)
    with pytest.raises(InvalidParameter):
        d.observe(utilisation="high")
    with pytest.raises(InvalidParameter):
        d.update(float("nan"))


def test_config_errors():
    assert load(DegradationConfig, {"thresholds": [0.5, 0.7]}, "degradation").names == (
        "normal",
        "throttle-secondary",
        "simplify",
    )
    for section, match in (
        ({"thresholds": [0.9, 0.8]}, "increase"),
        ({"thresholds": []}, "thresholds: must list at least one threshold"),
        ({"thresholds": [0.5, 0]}, r"thresholds\[1\]: must be a number > 0, got 0"),
        ({"thresholds": "0.5"}, "thresholds: must be a list"),
        ({"restore_after": -1}, "restore_after"),
        ({"names": ["a"]}, "names: must be 5 names"),
        ({"bogus": 1}, "unknown field 'bogus'"),
        ({"weights": {"x": 50}}, r"weights\.x: must be a number in \[0, 10\]"),
        ([1], "must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(DegradationConfig, section, "degradation")
    # A config's weights add to the default ones; in code they replace them.
    weights = load(DegradationConfig, {"weights": {"cpu": 2}}, "degradation").weights
    assert weights == {**DEFAULT_WEIGHTS, "cpu": 2.0} and DEFAULT_WEIGHTS["breakers"] == 0.9
    assert DegradationConfig(weights={"cpu": 2}).weights == {"cpu": 2.0}
    with pytest.raises(InvalidParameter, match="thresholds: must increase"):
        DegradationConfig(thresholds=(0.9, 0.8))
