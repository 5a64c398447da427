"""Client-side adaptive throttling: the SRE formula, with an injected clock and dice."""

from __future__ import annotations

import random

import pytest
from limiter.clients import AdaptiveThrottle

from limiter import InvalidParameter
from tests.core.clock import ManualClock

S = 1_000_000_000


def test_healthy_service_is_never_throttled():
    clock = ManualClock(0)
    throttle = AdaptiveThrottle(clock=clock, random=lambda: 0.0)  # the most eager dice
    for _ in range(1000):
        assert throttle.allow_request()
        throttle.accepted()
        clock.now += S // 100
    assert throttle.reject_probability() == 0.0


def test_probability_follows_the_formula():
    clock = ManualClock(0)
    throttle = AdaptiveThrottle(k=2.0, clock=clock, random=lambda: 0.99)
    for i in range(100):
        assert throttle.allow_request()
        throttle.accepted() if i < 30 else throttle.rejected()
    assert throttle.counts == (100, 30)
    assert throttle.reject_probability() == pytest.approx((100 - 2 * 30) / 101)
    # K = 1 is stricter: the service only ever sees what it accepts.
    strict = AdaptiveThrottle(k=1.0, clock=clock)
    for i in range(100):
        strict.accepted() if i < 30 else strict.rejected()
    assert strict.reject_probability() == pytest.approx(70 / 101)


def test_rejects_by_the_dice_and_counts_local_rejections():
    clock = ManualClock(0)
    dice = iter([0.5, 0.95])
    throttle = AdaptiveThrottle(min_requests=0, clock=clock, random=lambda: next(dice))
    for _ in range(9):  # a dead service: nothing accepted; p = 9/10 before the next call
        throttle.rejected()
    assert throttle.reject_probability() == pytest.approx(0.9)
    assert throttle.allow_request() is False  # 0.5 < 0.9: refused locally
    assert throttle.counts == (10, 0)  # a local refusal counts as a request at once
    assert throttle.allow_request() is True  # 0.95 >= p: probes the service
    assert throttle.counts == (10, 0)  # the probe counts when its outcome arrives


def test_calls_in_flight_are_neither_accepts_nor_rejects():
    """A burst of concurrent first calls: none has an outcome yet, so none is refused,
    whatever the dice; their answers then keep the probability at zero."""
    clock = ManualClock(0)
    throttle = AdaptiveThrottle(min_requests=0, clock=clock, random=lambda: 0.0)
    assert all(throttle.allow_request() for _ in range(1000))
    assert throttle.counts == (0, 0)
    for _ in range(1000):
        throttle.accepted()
    assert throttle.counts == (1000, 1000)
    assert throttle.reject_probability() == 0.0


def test_too_little_evidence_never_refuses():
    """Below ``min_requests`` outcomes (a new client, or a window emptied by an idle
    spell) a few failures do not throttle the calls after them."""
    clock = ManualClock(0)
    throttle = AdaptiveThrottle(window=10.0, min_requests=20, clock=clock, random=lambda: 0.0)
    for _ in range(19):
        throttle.rejected()
    assert throttle.reject_probability() == 0.0 and throttle.allow_request()
    throttle.rejected()  # the twentieth outcome: now the formula speaks
    assert throttle.reject_probability() == pytest.approx(20 / 21)
    assert not throttle.allow_request()
    clock.now += 11 * S  # idle for longer than the window: the evidence is gone
    assert throttle.counts == (0, 0)
    for _ in range(5):  # a couple of timeouts right after the idle spell
        throttle.rejected()
    assert throttle.reject_probability() == 0.0
    assert all(throttle.allow_request() for _ in range(100))


def test_window_slides_and_forgets():
    clock = ManualClock(0)
    throttle = AdaptiveThrottle(window=10.0, buckets=10, clock=clock, random=lambda: 0.0)
    for _ in range(50):
        throttle.rejected()
    assert throttle.reject_probability() > 0.9
    clock.now += 5 * S
    for _ in range(50):
        throttle.accepted()
    assert throttle.counts == (100, 50)
    assert throttle.reject_probability() == 0.0  # 100 - 2*50 <= 0
    clock.now += 6 * S  # the first 50 failures left the window
    assert throttle.counts == (50, 50)
    clock.now += 10 * S
    assert throttle.counts == (0, 0)


def test_recovers_when_the_service_answers_again():
    clock = ManualClock(0)
    dice = random.Random(7)
    throttle = AdaptiveThrottle(window=2.0, buckets=4, clock=clock, random=dice.random)
    for _ in range(100):
        if throttle.allow_request():
            throttle.rejected()
        clock.now += S // 100
    assert throttle.reject_probability() > 0.98
    sent = 0
    # Service back: rare probes get answered and each answer raises the odds of the next,
    # so accepts grow exponentially (time constant window / K) until nothing is refused.
    for _ in range(1500):
        if throttle.allow_request():
            throttle.accepted()
            sent += 1
        clock.now += S // 100
    assert throttle.reject_probability() == 0.0
    assert sent > 500


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": 0.5}, "k"),
        ({"k": "2"}, "k"),
        ({"window": 0}, "window"),
        ({"window": float("nan")}, "window"),
        ({"buckets": 0}, "buckets"),
        ({"buckets": 2.5}, "buckets"),
        ({"min_requests": -1}, "min_requests"),
        ({"min_requests": 10**7}, "min_requests"),
        ({"min_requests": True}, "min_requests"),
        ({"clock": 5}, "clock"),
    ],
)
def test_bad_parameters_are_named(kwargs, field):
    with pytest.raises(InvalidParameter, match=field):
        AdaptiveThrottle(**kwargs)
