"""AdaptiveLimit, the control law, driven tick by tick on an explicit clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter._core import AdaptiveLimit
from limiter.errors import InvalidParameter

S = 1_000_000_000
TARGET = 0.1
FAST, SLOW = 0.01, 0.5  # latencies well under / over the target
QUEUED = 5 * FAST  # calls behind a standing queue, still far under the target


class Driver:
    """One evaluation interval per tick: decisions, completed calls, evaluation."""

    def __init__(self, **kwargs: object) -> None:
        opts = {"target_latency": TARGET, "percentile": 0.9, "mode": "concurrency",
                "initial_limit": 100, "max_limit": 10_000, "interval": 1.0,
                "min_samples": 10, "window_samples": 10, "additive": 0.01,
                "rearm_after": 0, "probe_interval": 1.0, "baseline_interval": 0}  # fmt: skip
        opts.update(kwargs)
        self.lim = AdaptiveLimit(**opts)
        self.t = 10 * S
        self.lim.evaluate(now=self.t)  # starts the first interval

    def tick(self, latency: float, *, saturated: bool = True, n: int = 50,
             dropped: int = 0) -> float:  # fmt: skip
        lim = self.lim
        if saturated:
            lim.on_decision(True, in_flight=math.ceil(lim.limit), now=self.t + 1)
            lim.on_decision(False, now=self.t + 2)
        else:
            lim.on_decision(True, in_flight=1, now=self.t + 1)
        # Every call is admitted after the interval began (after any cut) and ends just
        # before the evaluation, so an early cut (on the slow ones) lands there too.
        done = self.t + S - 10_000
        for i in range(n):
            lim.record(latency, now=done + i)
        for i in range(dropped):
            lim.record(latency, ok=False, now=done + 100 + i)
        self.t += S
        lim.evaluate(now=self.t)
        return lim.limit


def test_cut_sequence_halves_then_quarters_then_eighths() -> None:
    d = Driver()
    cuts = []
    for _ in range(3):
        before = d.lim.limit
        after = d.tick(SLOW)
        cuts.append(1 - after / before)
        while d.lim.state["phase"] == "slow_start":  # climb back to where it was cut
            d.tick(FAST)
        assert d.lim.limit == pytest.approx(before)
    assert cuts == pytest.approx([1 / 2, 1 / 4, 1 / 8])
    assert d.lim.cuts == 3


def test_cut_fraction_bottoms_out_at_min_cut() -> None:
    d = Driver(min_cut=1 / 16)
    fractions = []
    for _ in range(6):
        before = d.lim.limit
        fractions.append(1 - d.tick(SLOW) / before)
        while d.lim.state["phase"] == "slow_start":
            d.tick(FAST)
    assert fractions == pytest.approx([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 16, 1 / 16])


def test_slow_start_up_to_the_cut_level_then_additive() -> None:
    d = Driver(growth=1.5, additive=0.01)
    assert d.tick(SLOW) == 50
    assert d.tick(FAST) == 75  # exponential
    assert d.tick(FAST) == 100  # capped at the level it was cut from
    assert d.lim.state["phase"] == "additive"
    assert d.tick(FAST) == pytest.approx(101)  # + 1% of that level per interval
    assert d.tick(FAST) == pytest.approx(102)
    assert d.tick(FAST) == pytest.approx(103)


def test_open_ended_slow_start_grows_exponentially() -> None:
    d = Driver(initial_limit=10, growth=2.0)
    assert [d.tick(FAST) for _ in range(4)] == [20, 40, 80, 160]


def test_no_growth_while_not_the_bottleneck() -> None:
    d = Driver(initial_limit=10)
    for _ in range(20):
        assert d.tick(FAST, saturated=False) == 10
    # Refusals alone are not enough: less than half the limit was in use.
    for _ in range(5):
        d.lim.on_decision(False, now=d.t + 1)
        d.lim.on_decision(True, in_flight=3, now=d.t + 2)
        for i in range(50):
            d.lim.record(FAST, now=d.t + S // 2 + i)
        d.t += S
        d.lim.evaluate(now=d.t)
        assert d.lim.limit == 10


def test_rate_mode_saturation_counts_admissions_per_second() -> None:
    d = Driver(mode="rate", initial_limit=100, growth=2.0)
    # 50 admissions in a 1 s interval = half the rate limit: just saturated.
    for i in range(50):
        d.lim.on_decision(True, now=d.t + i)
    d.lim.on_decision(False, now=d.t + 60)
    for i in range(50):
        d.lim.record(FAST, now=d.t + S // 2 + i)
    d.t += S
    d.lim.evaluate(now=d.t)
    assert d.lim.limit == 200
    assert d.tick(FAST, saturated=False) == 200  # 1 admission in 1 s: not saturated


def test_bounded_by_min_and_max() -> None:
    d = Driver(initial_limit=8, min_limit=5, max_limit=40, growth=2.0)
    for _ in range(10):
        assert 5 <= d.tick(SLOW) <= 40
    assert d.lim.limit == 5
    for _ in range(30):
        assert 5 <= d.tick(FAST) <= 40
    assert d.lim.limit == 40


def test_consecutive_overload_cuts_harder() -> None:
    """A cut that did not help means conditions changed: 1/8 escalates to 1/4, 1/2."""
    d = Driver()
    for _ in range(2):
        d.tick(SLOW)
        while d.lim.state["phase"] == "slow_start":
            d.tick(FAST)
    assert d.lim.next_cut == 1 / 8
    fractions = []
    for _ in range(3):
        before = d.lim.limit
        fractions.append(1 - d.tick(SLOW) / before)
    assert fractions == pytest.approx([1 / 8, 1 / 4, 1 / 2])


def test_rearms_after_climbing_past_the_previous_peak() -> None:
    d = Driver(additive=0.05, rearm_after=0)
    for _ in range(3):
        d.tick(SLOW)
        while d.lim.state["phase"] == "slow_start":
            d.tick(FAST)
    assert d.lim.next_cut == 1 / 16
    peak = d.lim.state["ceiling"]
    while d.lim.state["phase"] == "additive":
        d.tick(FAST)
    assert d.lim.limit > peak * 1.2
    assert d.lim.next_cut == 1 / 2
    before = d.lim.limit
    assert d.tick(SLOW) == pytest.approx(before / 2)  # a real drop meets a big cut


def test_rearms_after_a_sustained_healthy_period() -> None:
    d = Driver(horizon=5.0)
    d.tick(SLOW)
    d.tick(FAST, saturated=False)
    d.tick(SLOW)
    assert d.lim.next_cut == 1 / 8
    for _ in range(4):
        d.tick(FAST, saturated=False)
    assert d.lim.next_cut == 1 / 8
    for _ in range(2):
        d.tick(FAST, saturated=False)
    assert d.lim.next_cut == 1 / 2


def test_overload_right_after_a_half_cut_halves_again() -> None:
    d = Driver()
    assert d.tick(SLOW) == 50
    assert d.tick(SLOW) == 25
    assert d.lim.next_cut == 1 / 4


def test_rearms_after_healthy_growth_at_full_use() -> None:
    d = Driver(additive=0.001, rearm_after=3)
    d.tick(SLOW)
    d.tick(FAST)
    d.tick(FAST)
    assert d.lim.state["phase"] == "additive"
    d.tick(FAST)
    d.tick(FAST)
    assert d.lim.state["phase"] == "additive"
    d.tick(FAST)
    assert d.lim.state["phase"] == "slow_start"
    assert d.lim.next_cut == 1 / 2


def test_drops_count_as_overload() -> None:
    d = Driver()
    assert d.tick(FAST, n=40, dropped=10) == 50  # 20% dropped > 10% allowed at P90
    d2 = Driver()
    assert d2.tick(FAST, n=100, dropped=5) > 50  # 5% dropped: P90 still fast


def test_ignored_calls_are_not_samples() -> None:
    d = Driver()
    for i in range(50):
        d.lim.record(SLOW, outcome="ignored", now=d.t + i)
    d.t += S
    d.lim.evaluate(now=d.t)
    assert d.lim.limit == 100
    assert d.lim.evaluations == 0  # no evidence yet


def test_calls_admitted_before_a_cut_are_not_evidence() -> None:
    d = Driver()
    d.tick(SLOW)
    cut_at = d.t
    d.lim.on_decision(True, in_flight=50, now=cut_at + 1)
    d.lim.on_decision(False, now=cut_at + 2)
    # The backlog admitted before the cut completes slowly afterwards: ignored.
    for i in range(50):
        d.lim.record(0.9, now=cut_at + S // 2 + i)
    for i in range(50):
        d.lim.record(FAST, now=cut_at + S // 2 + 100 + i)
    d.t += S
    d.lim.evaluate(now=d.t)
    assert d.lim.cuts == 1
    assert d.lim.limit == 75


def test_holds_then_eases_near_the_target() -> None:
    # Latency rising over the baseline (10 ms) but, with this tolerance, short of a
    # standing queue: the band near the target decides.
    d = Driver(headroom=0.3, tolerance=10)
    d.tick(SLOW)
    d.tick(FAST)
    d.tick(FAST)
    level = d.lim.limit
    assert d.tick(0.075) == level  # hold band (0.7, 0.85] x target
    assert d.tick(0.09) == pytest.approx(level * 0.99)  # ease band: one additive step
    assert d.lim.cuts == 1


def test_stale_post_cut_slow_start_ends_near_the_target() -> None:
    # Right after a cut, slow start heads back to the level it was cut from even with
    # latency near the target (the backlog of the overload); two intervals on, that
    # latency means the knee is lower: slow start ends there and growth is additive.
    d = Driver(headroom=0.3)
    assert d.tick(SLOW) == 50
    assert d.tick(0.075) == 50
    assert d.lim.state["phase"] == "slow_start"
    assert d.tick(0.075) == 50
    assert d.lim.state["phase"] == "additive" and d.lim.state["ceiling"] == 50
    assert d.tick(0.06) == pytest.approx(50.5)  # additive, not x growth up to 100


def _hold_then(lim: AdaptiveLimit, t: int, fresh: list[float]) -> float:
    """An interval at a saturated limit with latency in the hold band, then the
    ``fresh`` calls of the next one; returns the limit after them (rate mode: after
    that interval's evaluation)."""
    for at in (t, t + S):
        _saturate(lim, at + 1)
        for i in range(100 if lim.mode == "rate" else 0):
            lim.on_decision(True, now=at + 10 + i)  # paced admissions at the limit
        for i, latency in enumerate([0.075] * 50 if at == t else fresh):
            lim.record(latency, now=at + S // 2 + i)
        if at == t or lim.mode == "rate":
            lim.evaluate(now=at + S)
        if at == t:
            assert lim.limit == 100  # hold
    return lim.limit


def test_concurrency_drained_queue_grows_before_the_interval_ends() -> None:
    # The median of the freshest calls fell under 3/5 of the last one at a saturated
    # limit: the queue drained, the backend got faster. Re-armed, it grows at once,
    # though the tail (P90 here) still sits in the hold band, by the speed-up the
    # median shows (75 ms -> 40 ms: x 1.875), at most growth squared (75 -> 30 ms).
    lim, t = _limit(growth=1.5)
    assert _hold_then(lim, t, [0.04] * 8 + [0.08] * 2) == pytest.approx(187.5)
    assert lim.state["phase"] == "slow_start" and lim.next_cut == 1 / 2
    lim, t = _limit(growth=1.5)
    assert _hold_then(lim, t, [0.03] * 8 + [0.08] * 2) == pytest.approx(225)
    # The same tail with a median that did not fall: hold.
    lim, t = _limit(growth=1.5)
    assert _hold_then(lim, t, [0.05] * 8 + [0.08] * 2) == 100


def test_rate_mode_drained_queue_counts_as_healthy_without_rearming() -> None:
    # A paced stream drains its queue whenever the rate dips under capacity, so the
    # same evidence only grows the rate as a healthy evaluation does: one additive
    # step (3% of 100), at the interval, and the cut sequence is not re-armed.
    lim, t = _limit(growth=1.5, mode="rate", headroom=0.35, additive=0.03)
    assert _hold_then(lim, t, [0.03] * 8 + [0.08] * 2) == pytest.approx(103)
    assert lim.state["phase"] == "additive"
    # The same tail with the fresh median over the first interval's (a queue
    # forming): no growth.
    lim, t = _limit(growth=1.5, mode="rate", headroom=0.35, additive=0.03)
    assert _hold_then(lim, t, [0.09] * 8 + [0.08] * 2) <= 100


def test_waits_for_enough_samples() -> None:
    d = Driver(min_samples=30)
    assert d.tick(SLOW, n=20) == 100
    assert d.lim.evaluations == 0
    assert d.tick(SLOW, n=20) == 50  # 40 samples now


def test_percentile_and_summary_are_observable() -> None:
    d = Driver()
    assert math.isnan(d.lim.current_percentile)
    d.tick(0.02)
    assert d.lim.current_percentile == pytest.approx(0.02)
    s = d.lim.summary(now=d.t - 1)
    assert s["values"].shape == s["weights"].shape
    assert s["target_latency"] == TARGET


def _limit(**kwargs: object) -> tuple[AdaptiveLimit, int]:
    opts = {"target_latency": TARGET, "percentile": 0.9, "mode": "concurrency",
            "initial_limit": 100, "interval": 1.0, "min_samples": 10,
            "window_samples": 10, "rearm_after": 0, "probe_interval": 1.0,
            "baseline_interval": 0}  # fmt: skip
    opts.update(kwargs)
    lim = AdaptiveLimit(**opts)
    t = 10 * S
    lim.evaluate(now=t)
    return lim, t


def _saturate(lim: AdaptiveLimit, t: int) -> None:
    lim.on_decision(True, in_flight=math.ceil(lim.limit), now=t)
    lim.on_decision(False, now=t)


def test_slow_calls_cut_before_the_interval_ends_but_once_per_interval() -> None:
    lim, t = _limit()
    _saturate(lim, t + 1)
    for i in range(10):
        lim.record(FAST, now=t + S // 10 + i)
    assert lim.limit == 100  # healthy so far, and the interval is not over
    for i in range(5):
        lim.record(SLOW, now=t + 3 * S // 5 + i)  # admitted 0.1 s in
    assert lim.limit == 50 and lim.cuts == 1  # at 0.6 s, without waiting for 1 s
    for i in range(20):
        lim.record(0.05, ok=False, now=t + 9 * S // 10 + i)  # admitted after the cut
    assert lim.cuts == 1  # a second cut waits for a whole interval after the first
    for i in range(20):
        lim.record(0.05, ok=False, now=t + 8 * S // 5 + i)
    assert lim.cuts == 2


def test_slow_start_evaluates_every_probe_interval_additive_every_interval() -> None:
    # (A wide tolerance keeps the queue rules out: only the cadence is tested.)
    lim, t = _limit(initial_limit=10, growth=2.0, probe_interval=0.5, tolerance=10.0)
    for k in (1, 2):  # open-ended slow start: doubles every 0.5 s
        _saturate(lim, t + (k - 1) * S // 2 + 1)
        for i in range(10):
            lim.record(FAST, now=t + k * S // 2 + i)
    assert lim.limit == 40
    for i in range(10):  # nearing the target ends slow start (hold band)
        lim.record(0.08, now=t + 3 * S // 2 + i)
    assert lim.state["phase"] == "additive" and lim.limit == 40
    t += 3 * S // 2 + 100
    _saturate(lim, t)
    # Healthy, but not so fast that the queue looks drained (the median under 3/5 of
    # the last one), which would grow at once.
    for i in range(10):
        lim.record(0.05, now=t + S // 2 + i)
    assert lim.limit == 40  # additive phase: half an interval is not enough
    for i in range(10):
        lim.record(0.05, now=t + S + i)
    assert lim.limit > 40


def test_few_samples_grow_slow_start_only_if_all_are_fast() -> None:
    # P99 needs 100 samples; 25 are enough to keep probing if even the slowest is fast.
    lim, t = _limit(percentile=0.99, min_samples=None, window_samples=None, initial_limit=10,
                    growth=2.0)  # fmt: skip
    _saturate(lim, t + 1)
    for i in range(25):
        lim.record(FAST, now=t + S // 2 + i)
    lim.evaluate(now=t + S)
    assert lim.limit == 20 and lim.evaluations == 0
    _saturate(lim, t + S + 1)
    for i in range(24):
        lim.record(FAST, now=t + 3 * S // 2 + i)
    lim.record(0.09, now=t + 3 * S // 2 + 50)  # one call near the target: wait for more
    lim.evaluate(now=t + 2 * S)
    assert lim.limit == 20


def _with_baseline(**kwargs: object) -> tuple[AdaptiveLimit, int]:
    """A controller whose first interval (not saturated) saw calls of FAST: the
    no-load baseline."""
    lim, t = _limit(**kwargs)
    lim.on_decision(True, now=t + 1)
    for i in range(100):
        lim.record(FAST, now=t + S // 2 + i)
    lim.evaluate(now=t + S)
    assert lim.baseline == FAST
    return lim, t + S


def _rate_interval(guarded: int, paced: int, latency: float) -> AdaptiveLimit:
    """One evaluation interval at a rate of 1000/s: 600 calls admitted, ``guarded``
    refused by the in-flight guard and ``paced`` by the pace, and the backend
    completed 300 calls of ``latency`` in the second."""
    lim, t = _with_baseline(mode="rate", initial_limit=1000, percentile=0.9)
    for i in range(600):
        lim.on_decision(True, now=t + 1 + i)
    for i in range(guarded):
        lim.on_decision(False, now=t + 1000 + i, guarded=True)
    for i in range(paced):
        lim.on_decision(False, now=t + 2000 + i)
    for i in range(300):
        lim.record(latency, now=t + S // 2 + i)
    lim.evaluate(now=t + S)
    return lim


def test_rate_mode_backend_bound_comes_down_to_the_delivered_rate() -> None:
    paced = _rate_interval(guarded=0, paced=100, latency=FAST)
    assert paced.limit > 1000  # pace-bound and healthy: grows
    # A standing queue (the percentile still far under the target) and calls refused,
    # by the in-flight guard or by the pace: demand exceeded what passed, so 300/s is
    # what the backend delivers, and the rate comes down to one additive step over it.
    for guarded, paced_out in ((50, 100), (50, 0), (0, 50)):
        bound = _rate_interval(guarded=guarded, paced=paced_out, latency=QUEUED)
        assert bound.limit == pytest.approx(300 * 1.03)
        assert bound.state["phase"] == "additive" and bound.cuts == 0
    # Nothing refused: every call that came was admitted, so 300 completions only
    # mean 300 arrivals, whatever the median reads. The rate must not come down to
    # them.
    unrefused = _rate_interval(guarded=0, paced=0, latency=QUEUED)
    assert unrefused.state["queue_ratio"] > 1.25  # the median reads as a queue
    assert unrefused.limit >= 1000 and unrefused.cuts == 0


def test_rate_mode_without_a_queue_is_not_trimmed_to_the_arrivals() -> None:
    # The in-flight guard refused a few calls of a burst and fewer calls arrived
    # than the rate allows, but the calls are as fast as with no load: the backend
    # idles, the arrivals were few. Trimming the rate to what was delivered here
    # would ratchet it down while the backend waits for work.
    lim, t = _with_baseline(mode="rate", initial_limit=1000, percentile=0.9)
    for i in range(600):
        lim.on_decision(True, now=t + 1 + i)
    for i in range(50):
        lim.on_decision(False, now=t + 1000 + i, guarded=True)
    lim.on_decision(False, now=t + 2000)
    for i in range(300):
        lim.record(FAST, now=t + S // 2 + i)
    lim.evaluate(now=t + S)
    assert lim.limit >= 1000 and lim.cuts == 0


def _rate_tick(d: Driver, latency: float, *, admitted: int, guarded: int = 0,
               completed: int = 50) -> float:  # fmt: skip
    """One rate-mode interval: ``admitted`` paced admissions, ``guarded`` refusals by
    the in-flight guard, ``completed`` calls finishing with ``latency``."""
    for i in range(admitted):
        d.lim.on_decision(True, now=d.t + 1 + i)
    for i in range(guarded):
        d.lim.on_decision(False, now=d.t + 5_000 + i, guarded=True)
    d.lim.on_decision(False, now=d.t + 9_000)
    for i in range(completed):
        d.lim.record(latency, now=d.t + S // 2 + i)
    d.t += S
    d.lim.evaluate(now=d.t)
    return d.lim.limit


def _rearmed_rate_driver() -> Driver:
    """Rate mode cut from 100, climbed back, then re-armed by one healthy step."""
    d = Driver(mode="rate", rearm_after=1, additive=0.01, growth=1.5)
    assert d.tick(SLOW) == 50
    assert _rate_tick(d, FAST, admitted=50) == 75
    assert _rate_tick(d, FAST, admitted=75) == 100
    assert _rate_tick(d, FAST, admitted=100) == pytest.approx(101)  # additive, re-arms
    assert d.lim.state["phase"] == "slow_start" and d.lim.next_cut == 1 / 2
    return d


def test_rate_mode_reprobe_starts_gently_then_grows_exponentially() -> None:
    # A paced stream over capacity queues within one probe interval: the first step of
    # a re-probe only goes just past the old peak (x (1 + 4 * additive)).
    d = _rearmed_rate_driver()
    assert _rate_tick(d, FAST, admitted=101) == pytest.approx(101 * 1.04)
    assert _rate_tick(d, FAST, admitted=106) == pytest.approx(101 * 1.04 * 1.5)


def test_rate_mode_failed_reprobe_is_trimmed_no_lower_than_its_start() -> None:
    # The probe's own interval measured only 30 deliveries (too short to trust): the
    # trim stops at the level the re-probe started from, which was delivered before.
    d = _rearmed_rate_driver()
    assert _rate_tick(d, QUEUED, admitted=101, guarded=20, completed=30) == pytest.approx(100)
    assert d.lim.state["phase"] == "additive" and d.lim.cuts == 1
    # Outside a re-probe the same evidence comes down to the delivered rate.
    plain = Driver(mode="rate", additive=0.01)
    plain.tick(FAST, saturated=False)  # the baseline
    assert _rate_tick(plain, QUEUED, admitted=100, guarded=20, completed=30) == pytest.approx(
        30 * 1.01
    )


def test_rate_mode_trim_past_slow_start_is_one_additive_step() -> None:
    # Past slow start the rate is near the knee: one interval that delivered less (a
    # run of slow service times) lowers it by one additive step, not to that level.
    d = Driver(mode="rate", additive=0.01)
    d.tick(FAST, saturated=False)  # the baseline
    assert _rate_tick(d, QUEUED, admitted=100, guarded=20, completed=90) == pytest.approx(90.9)
    assert d.lim.state["phase"] == "additive"
    assert _rate_tick(d, QUEUED, admitted=91, guarded=20, completed=30) == pytest.approx(
        90.9 * 0.99
    )


def _spread(lim: AdaptiveLimit, start: int, end: int, latencies: list[float]) -> None:
    """Calls finishing evenly over [start, end), in the order given."""
    for i, latency in enumerate(latencies):
        lim.record(latency, now=start + i * (end - start) // len(latencies))


def _breach_at_900_per_second(latency: float) -> tuple[AdaptiveLimit, int]:
    """Rate 1000/s, the pace refusing some, the backend completing 900 calls in the
    second, the last 30 slow: over a tenth of the latest sub-window's calls, so P90
    breaches (early, near the end of the second). ``latency`` is the other calls'."""
    lim, t = _with_baseline(mode="rate", initial_limit=1000, percentile=0.9)
    for i in range(1000):
        lim.on_decision(True, now=t + 1 + i)
    lim.on_decision(False, now=t + 2000)
    _spread(lim, t, t + S, [latency] * 870 + [SLOW] * 30)
    return lim, t


def test_rate_mode_first_cut_with_a_queue_stops_under_the_delivered_rate() -> None:
    # A standing queue (the calls wait five times the baseline) means the rate is
    # over capacity and what the queued backend delivered is its capacity: the first
    # cut of the run stops min_cut under that, not at half the rate, which would idle
    # the backend.
    lim, t = _breach_at_900_per_second(QUEUED)
    assert lim.cuts == 1
    first = lim.limit
    assert first == pytest.approx(900 * (1 - 1 / 32), rel=0.01)
    # The breach persists at the next evaluation, still with a queue and the backend
    # still delivering far more than half the rate: conditions changed, so this cut
    # follows the sequence alone (a cut in a row after a 1/2 cut is 1/2 again).
    t += S
    for i in range(800):
        lim.on_decision(True, now=t + 1 + i)
    lim.on_decision(False, now=t + 2000)
    # (All finish less than an interval after the first cut, so none evaluates
    # early: the evaluation comes at the end of the second.)
    _spread(lim, t + S // 10, t + 19 * S // 20, [QUEUED] * 770 + [SLOW] * 30)
    lim.evaluate(now=t + S)
    assert lim.cuts == 2
    assert lim.limit == pytest.approx(first / 2)
    # The same breach and deliveries without a queue (the median at the baseline,
    # the calls slow rather than waiting): the delivered rate says nothing of the
    # capacity, and the first cut halves the rate.
    lim, _ = _breach_at_900_per_second(FAST)
    assert lim.cuts == 1
    assert lim.limit == pytest.approx(500)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([FAST, 0.075, 0.09, SLOW]), st.booleans()),
                min_size=1, max_size=40))  # fmt: skip
def test_limit_stays_bounded_and_grows_only_when_saturated(
    steps: list[tuple[float, bool]],
) -> None:
    d = Driver(initial_limit=20, min_limit=3, max_limit=500)
    recent: list[float] = []
    lowest, previous = math.inf, 0.0
    for latency, saturated in steps:
        before = d.lim.limit
        after = d.tick(latency, saturated=saturated)
        assert 3 <= after <= 500
        if after > before:
            # Healthy, or (concurrency) the median just fell: a drained queue.
            assert saturated and (latency == FAST or any(x != latency for x in recent))
        recent = [*recent[-1:], latency]
        if latency == SLOW:
            assert after < before or before == 3
        if before > 3 and after < before and latency != SLOW:
            # Never a cut: an ease (down to the floor), or at a saturated limit whose
            # calls are slower than the baseline (the lowest median) by more than the
            # tolerance, a drain by the queue's share, at most half.
            ease = pytest.approx(max(before * 0.99, 3))
            # (The freshest calls may include the previous step's: an evaluation
            # can fall mid-step after one was triggered early.)
            slowest = max(latency, previous)
            drain = pytest.approx(max(before * 1.25 * lowest / slowest, before / 2, 3))
            assert after == ease or (saturated and slowest > 1.25 * lowest and after == drain)
        lowest = min(lowest, latency)
        previous = latency


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_latency": 0}, "target_latency"),
        ({"target_latency": float("inf")}, "target_latency"),
        ({"target_latency": "100ms"}, "target_latency"),
        ({"percentile": 1.0}, "percentile"),
        ({"percentile": 0}, "percentile"),
        ({"mode": "qps"}, "mode"),
        ({"min_limit": -1}, "min_limit"),
        ({"max_limit": float("nan")}, "max_limit"),
        ({"min_limit": 10, "max_limit": 5}, "min_limit"),
        ({"initial_limit": 0}, "initial_limit"),
        ({"initial_limit": 1e6, "max_limit": 100}, "initial_limit"),
        ({"interval": 0}, "interval"),
        ({"probe_interval": 0}, "probe_interval"),
        ({"probe_interval": 2.0, "interval": 1.0}, "probe_interval"),
        ({"horizon": 0.1, "interval": 1.0}, "horizon"),
        ({"growth": 1.0}, "growth"),
        ({"additive": 1.5}, "additive"),
        ({"headroom": -0.1}, "headroom"),
        ({"min_cut": 0.75}, "min_cut"),
        ({"rearm_after": -1}, "rearm_after"),
        ({"min_samples": 0}, "min_samples"),
        ({"window_samples": True}, "window_samples"),
        ({"samples": 0}, "size"),
        ({"clock": "now"}, "clock"),
    ],
)
def test_bad_parameters(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidParameter, match=field):
        AdaptiveLimit(**kwargs)


def test_bad_records() -> None:
    lim = AdaptiveLimit()
    with pytest.raises(InvalidParameter, match="latency"):
        lim.record(float("nan"), now=0)
    with pytest.raises(InvalidParameter, match="latency"):
        lim.record(-0.1, now=0)
    with pytest.raises(InvalidParameter, match="ok"):
        lim.record(0.1, ok="yes", now=0)
    with pytest.raises(InvalidParameter, match="outcome"):
        lim.record(0.1, outcome="timeout", now=0)
    with pytest.raises(InvalidParameter, match="in_flight"):
        lim.on_decision(True, in_flight=-1, now=0)


def test_rate_mode_does_not_ease_on_a_backlog_long_drained() -> None:
    # A backlog near the target, then the backend keeps up again while only 20
    # calls/s are admitted: a P99 window of 400 calls still holds the backlog's calls
    # 5 s later. Easing on them ratcheted the rate down while the backend idled; the
    # fresh calls are as fast as with no load, so the rate holds or grows.
    lim, t = _limit(mode="rate", percentile=0.99, min_samples=None, window_samples=None,
                    initial_limit=20, interval=1.0)  # fmt: skip
    lim.on_decision(True, now=t + 1)
    for i in range(100):
        lim.record(FAST, now=t + S // 2 + i)  # the baseline
    lim.evaluate(now=t + S)
    t += S
    for i in range(20):
        lim.on_decision(True, now=t + 1 + i)
    lim.on_decision(False, now=t + 100)
    for i in range(100):
        lim.record(0.09, now=t + S // 2 + i)  # the backlog
    lim.evaluate(now=t + S)
    after_backlog = lim.limit
    for _ in range(5):
        t += S
        for i in range(20):  # saturated at 20/s, every call fast
            lim.on_decision(True, now=t + 1 + i)
            lim.record(FAST, now=t + S // 2 + i * S // 40)
        lim.on_decision(False, now=t + 100)
        lim.evaluate(now=t + S)
        assert lim.limit >= after_backlog
    assert lim.cuts == 0
