"""Token bucket, leaky-bucket meter and shaper against a plain reference model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter import LeakyBucket, LeakyShaper, TokenBucket
from limiter.errors import InvalidParameter
from tests.core.clock import NS, ManualClock


class ReferenceGcra:
    """GCRA by the textbook: theoretical arrival time, emission interval T, tolerance."""

    def __init__(self, rate: float, burst: int) -> None:
        self.T = math.ceil(NS / rate)
        self.tau = burst * self.T
        self.tat = 0

    def admit(self, now: int, cost: int) -> bool:
        tat = max(self.tat, now)
        if tat + cost * self.T - self.tau > now:
            return False
        self.tat = tat + cost * self.T
        return True


def test_token_bucket_starts_full_then_refills_continuously():
    clock = ManualClock()
    tb = TokenBucket(rate=10.0, burst=5, clock=clock)
    assert [tb.acquire("a").allowed for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.05)  # half a token: continuous, so not yet
    d = tb.acquire("a")
    assert not d.allowed
    assert d.retry_after == pytest.approx(0.05, abs=1e-6)
    clock.advance(0.05)
    assert tb.acquire("a").allowed
    clock.advance(0.25)  # 2.5 tokens
    assert tb.acquire("a", cost=2).allowed
    assert not tb.acquire("a").allowed


def test_decision_fields():
    clock = ManualClock()
    tb = TokenBucket(rate=2.0, burst=4, clock=clock)
    d = tb.acquire("k", cost=3)
    assert (d.allowed, d.limit, d.remaining, d.retry_after, d.wait) == (True, 4, 1, 0.0, 0.0)
    assert d.reset_after == pytest.approx(1.5)  # 3 tokens at 2/s until full again
    d = tb.acquire("k", cost=2)
    assert not d.allowed and d.remaining == 1
    assert d.retry_after == pytest.approx(0.5)
    assert d.reset_after == pytest.approx(1.5)
    assert bool(d) is False


def test_keys_are_independent():
    clock = ManualClock()
    tb = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert tb.allow("a") and tb.allow("b") and not tb.allow("a")
    tb.reset("a")
    assert tb.allow("a")


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2 * NS), st.integers(1, 5)),
        min_size=1,
        max_size=200,
    ),
)
def test_meter_admits_exactly_the_reference_sequence(rate, burst, steps):
    clock = ManualClock()
    ours = LeakyBucket(rate=rate, burst=burst, clock=clock)
    ref = ReferenceGcra(rate, burst)
    for dt, cost in steps:
        clock.advance_ns(dt)
        cost = min(cost, burst)
        assert ours.acquire("k", cost=cost).allowed == ref.admit(clock.now, cost)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.integers(min_value=0, max_value=NS // 2), min_size=1, max_size=300),
)
def test_token_bucket_never_admits_more_than_burst_plus_rate_t(rate, burst, gaps):
    clock = ManualClock()
    tb = TokenBucket(rate=rate, burst=burst, clock=clock)
    admitted: list[int] = []
    for gap in gaps:
        clock.advance_ns(gap)
        if tb.allow("k"):
            admitted.append(clock.now)
    # Over every interval [admitted[i], admitted[j]]: count <= burst + rate * length.
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            length = (admitted[j] - admitted[i]) / NS
            assert j - i + 1 <= burst + rate * length + 1e-9


def test_retry_after_is_exact():
    clock = ManualClock()
    tb = TokenBucket(rate=3.0, burst=2, clock=clock)
    tb.acquire("k", cost=2)
    d = tb.acquire("k", cost=2)
    assert not d.allowed
    clock.advance_ns(math.ceil(d.retry_after * NS) - 2)
    assert not tb.allow("k", cost=2)
    clock.advance_ns(2)
    assert tb.allow("k", cost=2)


def test_shaper_spaces_requests_and_refuses_past_max_wait():
    clock = ManualClock()
    shaper = LeakyShaper(rate=10.0, burst=1, max_wait=0.25, clock=clock)
    waits = [shaper.acquire("k").wait for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.1, 0.2])
    d = shaper.acquire("k")  # would wait 0.3 s > 0.25 s
    assert not d.allowed and d.wait == 0.0
    assert d.retry_after == pytest.approx(0.05)
    clock.advance(0.1)
    d = shaper.acquire("k")
    assert d.allowed and d.wait == pytest.approx(0.2)


def test_shaper_burst_goes_at_once():
    clock = ManualClock()
    shaper = LeakyShaper(rate=1.0, burst=3, max_wait=10, clock=clock)
    assert [shaper.acquire("k").wait for _ in range(4)] == pytest.approx([0, 0, 0, 1.0])


def test_shaper_zero_max_wait_is_a_meter():
    clock = ManualClock()
    shaper = LeakyShaper(rate=1.0, burst=2, max_wait=0, clock=clock)
    assert [shaper.allow("k") for _ in range(3)] == [True, True, False]


def test_interval_rounds_up_so_rate_is_never_exceeded():
    tb = TokenBucket(rate=3.0, burst=1)
    assert tb.interval_ns == 333_333_334


def test_a_reserving_view_leaves_the_reserve_and_it_refills_first():
    clock = ManualClock()
    tb = TokenBucket(rate=10.0, burst=10, clock=clock)
    view = tb.reserving(3)
    assert view.burst == 7 and view.max_cost == 7 and view.rate == 10.0
    assert [view.acquire("a").allowed for _ in range(8)] == [True] * 7 + [False]
    d = view.acquire("a")
    assert (d.remaining, d.limit) == (0, 7) and d.retry_after == pytest.approx(0.1, abs=1e-6)
    assert view.acquire("b").allowed  # keys stay apart, as in the kernel itself
    assert [tb.acquire("a").allowed for _ in range(4)] == [True] * 3 + [False]
    clock.advance(0.25)  # 2.5 tokens back: the reserve is not whole yet
    assert not view.acquire("a").allowed
    clock.advance(0.15)
    assert view.acquire("a").allowed  # four back: one above the reserve
    assert not view.acquire("a").allowed and tb.acquire("a").allowed
    assert len(tb) == len(view) == 2  # one table


def test_a_reserve_is_bounded_and_shapers_keep_none():
    tb = TokenBucket(rate=10.0, burst=4)
    assert tb.reserving(0).burst == 4
    for bad in (4, -1, 1.5, "1"):
        with pytest.raises(InvalidParameter, match="reserve"):
            tb.reserving(bad)
    with pytest.raises(InvalidParameter, match="shaper"):
        LeakyShaper(10.0, 4).reserving(1)
    assert LeakyBucket(10.0, 4).reserving(1).burst == 3
