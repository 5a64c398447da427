"""Bad parameters: a ValueError subclass whose message names the parameter and value."""

from __future__ import annotations

import math

import pytest

from limiter import (
    ConcurrencyLimit,
    FixedWindow,
    InvalidParameter,
    LeakyBucket,
    LeakyShaper,
    SlidingWindow,
    TokenBucket,
)

BAD_RATES = [0, -1, math.nan, math.inf, -math.inf, 1e12, "10", None, True]
BAD_COUNTS = [0, -5, 1.5, math.nan, math.inf, 2**70, "3", None, False]


@pytest.mark.parametrize("cls", [TokenBucket, LeakyBucket, LeakyShaper])
@pytest.mark.parametrize("rate", BAD_RATES)
def test_bad_rate(cls, rate):
    with pytest.raises(InvalidParameter, match="rate") as info:
        cls(rate=rate, burst=5)
    assert repr(rate) in str(info.value)


@pytest.mark.parametrize("cls", [TokenBucket, LeakyBucket, LeakyShaper])
@pytest.mark.parametrize("burst", BAD_COUNTS)
def test_bad_burst(cls, burst):
    with pytest.raises(InvalidParameter, match="burst"):
        cls(rate=1.0, burst=burst)


@pytest.mark.parametrize("cls", [FixedWindow, SlidingWindow])
@pytest.mark.parametrize("limit", BAD_COUNTS)
def test_bad_window_limit(cls, limit):
    with pytest.raises(InvalidParameter, match="limit"):
        cls(limit=limit, period=1.0)


@pytest.mark.parametrize("cls", [FixedWindow, SlidingWindow])
@pytest.mark.parametrize("period", [0, -1, math.nan, math.inf, 1e12, "1s"])
def test_bad_period(cls, period):
    with pytest.raises(InvalidParameter, match="period"):
        cls(limit=1, period=period)


@pytest.mark.parametrize("limit", BAD_COUNTS)
def test_bad_concurrency_limit(limit):
    with pytest.raises(InvalidParameter, match="limit"):
        ConcurrencyLimit(limit=limit)


def test_float_integral_values_are_accepted():
    assert TokenBucket(rate=5, burst=5.0).burst == 5


def test_absurd_combination_is_refused():
    with pytest.raises(InvalidParameter, match="burst / rate"):
        TokenBucket(rate=1e-3, burst=2**39)


@pytest.mark.parametrize("max_wait", [-1, math.nan, math.inf, "1"])
def test_bad_max_wait(max_wait):
    with pytest.raises(InvalidParameter, match="max_wait"):
        LeakyShaper(rate=1.0, max_wait=max_wait)


@pytest.mark.parametrize("max_keys", [0, -1, 2**40, 1.5, "many"])
def test_bad_max_keys(max_keys):
    with pytest.raises(InvalidParameter, match="max_keys"):
        TokenBucket(rate=1.0, burst=1, max_keys=max_keys)


@pytest.mark.parametrize("cost", [0, -1, 6, 1.5, math.nan, "1", None, 2**80])
def test_bad_cost(cost):
    tb = TokenBucket(rate=1.0, burst=5)
    with pytest.raises(InvalidParameter, match="cost"):
        tb.acquire("k", cost=cost)
    with pytest.raises(InvalidParameter, match="cost"):
        tb.allow("k", cost=cost)


def test_cost_above_limit_names_the_bound():
    with pytest.raises(InvalidParameter, match=r"cost must be in \[1, 3\], got 4"):
        FixedWindow(limit=3, period=1.0).acquire("k", cost=4)


@pytest.mark.parametrize("key", [5, None, b"bytes", ("t",), 1.0])
def test_non_string_keys(key):
    with pytest.raises(InvalidParameter, match="key must be a str"):
        TokenBucket(rate=1.0, burst=1).acquire(key)
    with pytest.raises(InvalidParameter, match="key must be a str"):
        ConcurrencyLimit(limit=1).acquire(key)


def test_bad_clock():
    with pytest.raises(InvalidParameter, match="clock"):
        TokenBucket(rate=1.0, burst=1, clock=42)
    with pytest.raises(TypeError, match="clock"):
        TokenBucket(rate=1.0, burst=1, clock=lambda: 1.5).acquire("k")
    with pytest.raises(InvalidParameter, match="negative"):
        TokenBucket(rate=1.0, burst=1, clock=lambda: -1).acquire("k")


def test_bad_backend():
    with pytest.raises(InvalidParameter, match="backend"):
        TokenBucket(rate=1.0, burst=1, backend="carrier-pigeon://x")
    with pytest.raises(InvalidParameter, match="backend"):
        TokenBucket(rate=1.0, burst=1, backend=42)


def test_errors_leave_state_untouched():
    tb = TokenBucket(rate=1.0, burst=2)
    with pytest.raises(InvalidParameter):
        tb.acquire("k", cost=3)
    assert tb.acquire("k", cost=2).allowed


def test_unicode_and_huge_keys_are_fine():
    tb = TokenBucket(rate=1.0, burst=1)
    for key in ["", "ünïcødé 🚦", "a b:c{d}", "x" * 10_000]:
        assert tb.allow(key)
        assert not tb.allow(key)
