"""Fixed window (aligned like envoyproxy/ratelimit) and sliding-window counter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter import FixedWindow, SlidingWindow
from limiter.errors import InvalidParameter
from tests.core.clock import NS, ManualClock


def test_fixed_window_is_aligned_to_the_period():
    clock = ManualClock(start_ns=120 * NS + 45 * NS)  # 45 s into a minute window
    fw = FixedWindow(limit=2, period=60.0, clock=clock)
    d = fw.acquire("u")
    assert d.allowed and d.remaining == 1 and d.reset_after == pytest.approx(15.0)
    assert fw.allow("u")
    d = fw.acquire("u")
    assert not d.allowed and d.remaining == 0
    assert d.retry_after == pytest.approx(15.0) == d.reset_after
    clock.advance(15.0)
    assert fw.acquire("u").remaining == 1


def test_fixed_window_does_not_count_refusals():
    clock = ManualClock(start_ns=0)
    fw = FixedWindow(limit=5, period=1.0, clock=clock)
    assert fw.allow("u", cost=4)
    assert not fw.allow("u", cost=2)
    assert fw.allow("u", cost=1)


def test_fixed_window_wall_clock_default_aligns_to_unix_time():
    import time

    fw = FixedWindow(limit=1, period=1.0)
    d = fw.acquire("k")
    expected = 1.0 - (time.time() % 1.0)
    assert abs(d.reset_after - expected) < 0.05


class ReferenceSliding:
    def __init__(self, limit: int, period_ns: int) -> None:
        self.limit, self.P = limit, period_ns
        self.start, self.cur, self.prev = 0, 0, 0

    def admit(self, now: int, cost: int) -> bool:
        start = now - now % self.P
        if start != self.start:
            self.prev = self.cur if self.start + self.P == start else 0
            self.cur, self.start = 0, start
        est = self.prev * (self.P - (now - start)) / self.P + self.cur
        if est + cost > self.limit:
            return False
        self.cur += cost
        return True


def test_sliding_window_weights_the_previous_window():
    clock = ManualClock(start_ns=0)
    sw = SlidingWindow(limit=10, period=1.0, clock=clock)
    assert sw.allow("k", cost=10)
    clock.advance(1.5)  # half of the previous window still counts: 5
    assert sw.allow("k", cost=5)
    assert not sw.allow("k")
    clock.advance(0.1)  # previous weight 0.4 -> 4 + 5 = 9
    assert sw.allow("k")
    assert not sw.allow("k")


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 30),
    steps=st.lists(st.tuples(st.integers(0, NS), st.integers(1, 4)), min_size=1, max_size=150),
)
def test_sliding_window_matches_reference(limit, steps):
    clock = ManualClock(start_ns=0)
    sw = SlidingWindow(limit=limit, period=1.0, clock=clock)
    ref = ReferenceSliding(limit, NS)
    for dt, cost in steps:
        clock.advance_ns(dt)
        cost = min(cost, limit)
        assert sw.allow("k", cost=cost) == ref.admit(clock.now, cost)


def _filled(limit: int, fill: int, clock: ManualClock) -> SlidingWindow:
    clock.now = 0
    sw = SlidingWindow(limit=limit, period=1.0, clock=clock)
    sw.allow("k", cost=min(fill, limit))
    return sw


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 20),
    fill=st.integers(1, 20),
    offset=st.integers(0, NS - 1),
    cost=st.integers(1, 20),
)
def test_sliding_retry_after_is_tight(limit, fill, offset, cost):
    """Waiting retry_after admits the same request; waiting 10 us less does not."""
    cost = min(cost, limit)
    clock = ManualClock()
    sw = _filled(limit, fill, clock)
    clock.now = offset
    d = sw.acquire("k", cost=cost)
    if d.allowed:
        return
    retry = math.ceil(d.retry_after * NS)
    late = _filled(limit, fill, clock)
    clock.now = offset + retry + 2
    assert late.allow("k", cost=cost)
    if retry > 10_000:
        early = _filled(limit, fill, clock)
        clock.now = offset + retry - 10_000
        assert not early.allow("k", cost=cost)


@pytest.mark.parametrize("kind", [FixedWindow, SlidingWindow])
def test_a_reserving_view_leaves_the_reserve(kind):
    clock = ManualClock()
    fw = kind(limit=10, period=60.0, clock=clock)
    view = fw.reserving(4)
    assert (view.limit, view.max_cost, view.period) == (6, 6, 60.0)
    assert [view.acquire("k").allowed for _ in range(7)] == [True] * 6 + [False]
    assert view.acquire("k").limit == 6
    assert [fw.acquire("k").allowed for _ in range(5)] == [True] * 4 + [False]
    assert not view.acquire("k", 1).allowed
    with pytest.raises(InvalidParameter, match="reserve"):
        fw.reserving(10)
