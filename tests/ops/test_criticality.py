"""Criticality tiers: reserves, bursting into spare capacity, lowest tier shed first."""

from __future__ import annotations

import pytest

from limiter.criticality import Criticality, PriorityGate, ReservedShares, shed_plan
from limiter.errors import ConfigError, InvalidParameter

C = Criticality


def test_parse():
    assert C.parse(None) is C.CRITICAL
    assert C.parse("sheddable-plus") is C.SHEDDABLE_PLUS
    assert C.parse("CRITICAL_PLUS") is C.CRITICAL_PLUS
    assert C.parse(0) is C.SHEDDABLE
    for bad in ("vip", 4, -1, True, 1.0, b"CRITICAL"):
        with pytest.raises(InvalidParameter, match="criticality"):
            C.parse(bad)


def test_wire_and_queue_orders():
    assert [C.from_proto(n) for n in range(5)] == [
        C.CRITICAL,
        C.CRITICAL_PLUS,
        C.CRITICAL,
        C.SHEDDABLE_PLUS,
        C.SHEDDABLE,
    ]
    assert [t.rank for t in sorted(C, reverse=True)] == [0, 1, 2, 3]
    for bad in (5, -1, "1", True):
        with pytest.raises(InvalidParameter, match="priority"):
            C.from_proto(bad)


def test_reserve_is_kept_for_critical_and_sheddable_bursts_into_the_rest(clock):
    gate = PriorityGate(100, window=1.0, reserved={"CRITICAL": 0.2}, clock=clock)
    admitted = sum(gate.acquire(C.SHEDDABLE) for _ in range(200))
    assert admitted == 80  # bursts into everything not reserved above it
    assert sum(gate.acquire(C.CRITICAL) for _ in range(50)) == 20  # its reserve is intact
    assert not gate.acquire(C.CRITICAL_PLUS)  # nothing left at all


def test_critical_bursts_into_unused_capacity(clock):
    gate = PriorityGate(100, reserved={"CRITICAL_PLUS": 0.1, "CRITICAL": 0.2}, clock=clock)
    assert sum(gate.acquire(C.CRITICAL) for _ in range(200)) == 90
    assert sum(gate.acquire(C.CRITICAL_PLUS) for _ in range(200)) == 10


def test_overload_sheds_lowest_tier_completely_first(clock):
    """Every tier asks 60 per window against a capacity of 100."""
    reserved = {"CRITICAL_PLUS": 0.25, "CRITICAL": 0.25, "SHEDDABLE_PLUS": 0.25}
    gate = PriorityGate(100, window=1.0, reserved=reserved, clock=clock)
    rounds = []
    for _ in range(3):
        got = dict.fromkeys(C, 0)
        for _ in range(60):
            for tier in C:  # lowest tier arrives first in every round
                got[tier] += gate.acquire(tier)
        rounds.append(got)
        clock.advance(1.0)
    # Cold start: no demand known yet, so the reserves decide and the rest is first-come.
    assert rounds[0] == dict.fromkeys(C, 25)
    # Once demand is known, the top tiers get what they ask, the bottom ones nothing.
    assert rounds[2][C.CRITICAL_PLUS] == 60 and rounds[2][C.CRITICAL] == 40
    assert rounds[2][C.SHEDDABLE_PLUS] == 0 and rounds[2][C.SHEDDABLE] == 0


def test_light_load_admits_everyone(clock):
    gate = PriorityGate(100, reserved={"CRITICAL": 0.2}, clock=clock)
    for _ in range(3):
        assert all(gate.acquire(t) for _ in range(20) for t in C)
        clock.advance(1.0)


def test_shed_plan_strict_order():
    plan = shed_plan(
        {C.CRITICAL_PLUS: 10, C.CRITICAL: 50, C.SHEDDABLE_PLUS: 40, C.SHEDDABLE: 100}, 80
    )
    assert plan == {C.CRITICAL_PLUS: 1.0, C.CRITICAL: 1.0, C.SHEDDABLE_PLUS: 0.5, C.SHEDDABLE: 0.0}
    assert shed_plan({C.SHEDDABLE: 10}, 100)[C.SHEDDABLE] == 1.0
    assert shed_plan({C.CRITICAL: 10}, 0)[C.CRITICAL] == 0.0


def test_bad_shares():
    with pytest.raises(InvalidParameter, match="more than 1"):
        ReservedShares({"CRITICAL": 0.6, "CRITICAL_PLUS": 0.6})
    with pytest.raises(InvalidParameter, match="CRITICAL"):
        ReservedShares({"CRITICAL": 1.5})
    with pytest.raises(ConfigError, match=r"rules\.x\.reserved"):
        ReservedShares.from_config({"VIP": 0.1}, "rules.x.reserved")
    with pytest.raises(ConfigError, match="mapping"):
        ReservedShares.from_config([0.1], "reserved")
    assert ReservedShares.from_config({"critical": 0.2}).as_dict() == {"CRITICAL": 0.2}
    with pytest.raises(InvalidParameter, match="window"):
        PriorityGate(10, window=0)
