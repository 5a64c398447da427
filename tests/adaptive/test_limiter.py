"""AdaptiveLimiter: enforcement (rate pacing, in-flight count) and permits that measure."""

from __future__ import annotations

import asyncio
import gc
import heapq
import math
import random
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from limiter import AdaptiveLimiter, Decision, RateLimited
from limiter._core import AdaptiveLimit, AdaptivePermit
from limiter.errors import InvalidParameter

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 100 * S

    def __call__(self) -> int:
        return self.t


def test_rate_mode_paces_at_the_current_limit() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(mode="rate", initial_limit=10, clock=clock, burst=0.1)  # 1 call
    first = lim.acquire("k")
    assert isinstance(first, Decision) and first.allowed and first.limit == 10
    first.release()
    second = lim.acquire("k")
    assert not second.allowed
    assert second.retry_after == pytest.approx(0.1, abs=1e-6)
    clock.t += S // 10
    assert lim.acquire("other-key").allowed  # one limit guards the whole backend


def test_rate_mode_refuses_a_backlog_the_backend_is_not_draining() -> None:
    clock = Clock()
    # 1000/s with a 100 ms target: at most 1000 x 0.1 x 0.4 = 40 calls in flight,
    # whatever the pace's burst (the default's 50 calls at once do not widen it: at
    # capacity the guard's backlog is the standing queue).
    for burst in (0.02, None):
        lim = AdaptiveLimiter(mode="rate", initial_limit=1000, clock=clock, burst=burst)
        held = []
        for _ in range(40):
            clock.t += S // 1000
            held.append(lim.acquire())
            assert held[-1].allowed
        clock.t += S // 1000
        refused = lim.acquire()
        assert not refused.allowed and refused.retry_after > 0  # pacing alone would admit it
        held.pop().release()
        assert lim.acquire().allowed
    uncapped = AdaptiveLimiter(mode="rate", initial_limit=1000, clock=clock, queue_cap=0)
    for _ in range(50):
        clock.t += S // 1000
        held.append(uncapped.acquire())
        assert held[-1].allowed


def test_rate_mode_default_burst_admits_uneven_arrivals_at_the_limit() -> None:
    # Poisson arrivals at half the limit (10/s against 20/s), and at 90% of it, all
    # released at once: pacing with too little tolerance refuses a third of them
    # though the rate is never exceeded on average.
    rng = random.Random(5)
    for share, most in ((0.5, 0.01), (0.9, 0.03)):
        for limit in (20, 1000):
            clock = Clock()
            lim = AdaptiveLimiter(mode="rate", initial_limit=limit, clock=clock,
                                  target_latency=0.1)  # fmt: skip
            refused = 0
            for _ in range(4000):
                clock.t += int(rng.expovariate(share * limit) * S)
                permit = lim.acquire()
                refused += not permit.allowed
                if permit.allowed:
                    permit.ignore()
            assert refused <= most * 4000, (share, limit, refused)
    assert lim.burst is None


def test_rate_mode_default_burst_is_at_most_one_seconds_worth() -> None:
    # A low limit is not passed 20 at once by the default burst.
    for limit, most in ((5, 5), (1 / 3600, 1), (0.5, 1)):
        lim = AdaptiveLimiter(mode="rate", initial_limit=limit, min_limit=limit,
                              max_limit=max(limit, 1), clock=Clock())  # fmt: skip
        admitted = 0
        for _ in range(30):
            permit = lim.acquire()
            admitted += permit.allowed
            if permit.allowed:
                permit.ignore()
        assert admitted == most, (limit, admitted)


def test_concurrency_mode_counts_calls_in_flight() -> None:
    lim = AdaptiveLimiter(mode="concurrency", initial_limit=2, clock=Clock())
    a, b = lim.acquire(), lim.acquire()
    assert a.allowed and b.allowed and lim.in_flight == 2
    c = lim.acquire()
    assert not c.allowed and c.remaining == 0 and c.retry_after > 0
    a.release()
    a.release()  # idempotent
    assert lim.in_flight == 1
    assert lim.acquire().allowed


def test_permit_measures_and_records_its_call() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(mode="concurrency", initial_limit=5, clock=clock)
    with lim.acquire("k") as permit:
        assert isinstance(permit, AdaptivePermit)
        clock.t += 42_000_000
    assert permit.released and lim.in_flight == 0
    values, _ = lim.summary()["values"], None
    assert list(values) == [pytest.approx(0.042)]


def test_exit_outcomes() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(mode="concurrency", initial_limit=5, clock=clock)
    with pytest.raises(TimeoutError), lim.acquire():
        raise TimeoutError
    with pytest.raises(KeyError), lim.acquire():
        raise KeyError("unrelated to load")
    values = list(lim.summary()["values"])
    assert values == [math.inf]  # the timeout is a drop; the KeyError is ignored
    assert lim.in_flight == 0


def test_refused_permit_raises_in_with() -> None:
    lim = AdaptiveLimiter(mode="concurrency", initial_limit=1, clock=Clock())
    held = lim.acquire()
    with pytest.raises(RateLimited), lim.acquire():
        pass
    held.release()


def test_async_with() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(mode="concurrency", initial_limit=1, clock=clock)

    async def call() -> None:
        async with lim.acquire("k"):
            clock.t += 5_000_000
            await asyncio.sleep(0)

    asyncio.run(call())
    assert lim.in_flight == 0
    assert list(lim.summary()["values"]) == [pytest.approx(0.005)]


def test_forgotten_permit_frees_its_slot_without_a_sample() -> None:
    lim = AdaptiveLimiter(mode="concurrency", initial_limit=1, clock=Clock())
    lim.acquire()
    gc.collect()
    assert lim.in_flight == 0
    assert len(lim.summary()["values"]) == 0


def test_record_feeds_the_controller_and_limit_adapts() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(target_latency=0.1, percentile=0.9, mode="concurrency",
                          initial_limit=40, clock=clock, interval=1.0)  # fmt: skip
    for _ in range(3):
        for _ in range(45):
            assert lim.acquire().allowed
        lim.acquire()  # refused: saturated
        for _ in range(100):
            lim.record(0.3)
        clock.t += S
        lim.record(0.3)  # the interval is over: evaluate
    assert lim.current_limit < 40
    assert lim.current_percentile == pytest.approx(0.3)


def test_shared_limit_model() -> None:
    model = AdaptiveLimit(mode="concurrency", initial_limit=3)
    lim = AdaptiveLimiter(limit_model=model, clock=Clock())
    assert lim.controller is model and lim.mode == "concurrency"
    assert lim.current_limit == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backend": "memcached://127.0.0.1:1"}, "backend"),
        ({"backend": object()}, "backend"),
        ({"burst": 0}, "burst"),
        ({"queue_cap": -1}, "queue_cap"),
        ({"limit_model": object()}, "limit_model"),
        ({"mode": "tokens"}, "mode"),
        ({"clock": 3}, "clock"),
        ({"interval": -1}, "interval"),
    ],
)
def test_bad_parameters(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidParameter, match=field):
        AdaptiveLimiter(**kwargs)


def test_bad_calls() -> None:
    lim = AdaptiveLimiter(clock=Clock())
    with pytest.raises(InvalidParameter, match="key"):
        lim.acquire(123)
    with pytest.raises(InvalidParameter, match="cost"):
        lim.acquire("k", cost=0)
    with pytest.raises(InvalidParameter, match="latency"):
        lim.record(float("inf"))
    with pytest.raises(InvalidParameter, match="ok"):
        lim.record(0.1, ok=None)


def test_concurrency_mode_keeps_the_queue_short() -> None:
    # A backend of 8 workers of 80 ms (100 calls/s) offered 400 calls/s, on a virtual
    # clock. Filling the latency budget (P99 target 0.5 s) would keep about 20 calls
    # queued and the median near 3x the service time; tracking the queue keeps the
    # median near the service time with the workers still busy.
    clock = Clock()
    start = clock.t
    lim = AdaptiveLimiter(target_latency=0.5, mode="concurrency", clock=clock)
    service = 80_000_000
    done: list[tuple[int, int, AdaptivePermit]] = []  # (finish time, seq, permit)
    waiting: list[tuple[int, AdaptivePermit]] = []  # FIFO (admitted at, permit)
    busy, seq = 0, 0
    latencies: list[tuple[int, float]] = []
    for k in range(400 * 30):
        arrival = start + k * 2_500_000
        while done and done[0][0] <= arrival:
            finish, _, permit = heapq.heappop(done)
            clock.t = finish
            permit.success()
            busy -= 1
            if waiting:
                admitted, nxt = waiting.pop(0)
                heapq.heappush(done, (finish + service, seq, nxt))
                latencies.append((admitted, (finish + service - admitted) / S))
                seq += 1
                busy += 1
        clock.t = arrival
        permit = lim.acquire()
        if not permit.allowed:
            continue
        if busy < 8:
            heapq.heappush(done, (arrival + service, seq, permit))
            latencies.append((arrival, service / S))
            seq += 1
            busy += 1
        else:
            waiting.append((arrival, permit))
    steady = [lat for at, lat in latencies if at >= start + 15 * S]
    assert statistics.median(steady) <= 1.5 * service / S
    assert len(steady) >= 0.9 * 100 * 15  # the workers stayed busy


def _after_a_refusing_interval(refused: int) -> tuple[AdaptiveLimiter, Clock]:
    """A rate-mode limiter in slow start at 400/s whose backend completed 100 calls/s
    over one evaluation interval in which ``refused`` calls were refused."""
    clock = Clock()
    model = AdaptiveLimit(target_latency=0.5, mode="rate", initial_limit=400, min_samples=20,
                          clock=clock)  # fmt: skip
    lim = AdaptiveLimiter(limit_model=model, clock=clock)
    model.on_decision(True)  # the interval starts
    for i in range(25):  # 0.25 s (the slow-start interval) of 100 completions/s
        clock.t += S // 100
        if i < refused:
            model.on_decision(False)
        model.record(0.08)  # the last evaluates: healthy, not saturated
    assert lim.current_limit == 400 and model.state["phase"] == "slow_start"
    return lim, clock


def _admitted_at_once(lim: AdaptiveLimiter) -> int:
    held = []
    while (permit := lim.acquire()).allowed:
        held.append(permit)
    return len(held)


def test_rate_mode_probing_over_capacity_allows_the_backlog_of_what_was_delivered() -> None:
    # The backend delivered 100/s while calls were refused: a rate probing at 400/s
    # may hold no more in flight than 100/s would (100 x 0.5 x 0.4 = 20 calls), not
    # the 80 that 400/s would: a guard that widened with the probing rate let the
    # backlog grow past the target before the probe ended.
    lim, _ = _after_a_refusing_interval(refused=25)
    assert _admitted_at_once(lim) == 20
    # With nothing refused, fewer completions only mean fewer arrivals: the bound
    # stays the rate's (400 x 0.5 x 0.4 = 80 calls; the pace's burst of 400 x 0.5 x
    # 0.5 = 100 calls at once does not widen it).
    lim, _ = _after_a_refusing_interval(refused=0)
    assert _admitted_at_once(lim) == 80


def _probe_baselines(duration: Callable[[int], float], count: int, rate: int = 2000,
                     **knobs: Any) -> list[float]:  # fmt: skip
    """The baselines a concurrency-mode limiter's first ``count`` probes leave. Calls are
    offered ``rate`` per second and never queued; each takes ``duration(probes ended so
    far)`` s. The initial limit of 80 is saturated (``knobs`` may cap it lower, or set
    the target and the initial limit: 0.5 s and 80 by default)."""
    clock = Clock()
    model = AdaptiveLimit(**{"target_latency": 0.5, "mode": "concurrency", "initial_limit": 80,
                             "clock": clock, **knobs})  # fmt: skip
    lim = AdaptiveLimiter(limit_model=model, clock=clock)
    bases: list[float] = []
    probing = False

    def after(k: int) -> bool:
        nonlocal probing
        if probing and not model.state["probing"]:
            bases.append(model.state["baseline"])
        probing = model.state["probing"]
        return len(bases) == count

    if _open_loop(lim, clock, rate, 30, lambda k, at: at + int(duration(len(bases)) * S), after):
        return bases
    raise AssertionError(f"{count} probes did not end: {bases}")


def _open_loop(
    lim: AdaptiveLimiter,
    clock: Clock,
    rate: int,
    seconds: int,
    finish: Callable[[int, int], int],
    after: Callable[[int], bool],
    start: int = 100 * S,
) -> bool:
    """Calls arriving at ``rate`` per second for ``seconds`` from ``start`` (ns) on ``clock``,
    each after the calls due before it have ended (``success``). An admitted call ``k``
    arriving at ``at`` (ns) ends at ``finish(k, at)``; ``after(k)`` runs after each
    arrival, and True from it stops (returned)."""
    running: list[tuple[int, int, AdaptivePermit]] = []  # (finish time, seq, permit)
    for k in range(rate * seconds):
        arrival = start + k * S // rate
        while running and running[0][0] <= arrival:
            clock.t, _, permit = heapq.heappop(running)
            permit.success()
        clock.t = arrival
        permit = lim.acquire()
        if permit.allowed:
            heapq.heappush(running, (finish(k, arrival), k, permit))
        if after(k):
            return True
    return False


def _probed_baseline(seed: int) -> float:
    """The first probe's baseline with lognormal calls (median 80 ms, sigma 0.5): the
    probe stage holds 40 in flight."""
    rng = random.Random(seed)
    return _probe_baselines(lambda _: rng.lognormvariate(math.log(0.08), 0.5), 1)[0]


def test_concurrency_probe_measures_the_median_not_the_calls_that_finished_first() -> None:
    # A probe stage samples the calls it admits and waits for all of them: the first
    # calls to finish are the fast ones, and stopping at the first few dozen to finish
    # (with 40 more in flight) read the baseline about a sixth low.
    mean = statistics.fmean(_probed_baseline(seed) for seed in range(10))
    assert 0.08 * 0.92 <= mean <= 0.08 * 1.12, mean


def _two_probes(before: float, after: float) -> list[float]:
    """The first two probes' baselines (one per baseline_interval of 1 s, the limit
    capped at 100 so it stays in full use): calls take ``before`` s until the first
    probe has ended, then ``after`` s."""
    return _probe_baselines(lambda n: before if n == 0 else after, 2, max_limit=100,
                            baseline_interval=1.0)  # fmt: skip


def test_concurrency_probe_reading_lower_meets_the_last_halfway_higher_at_once() -> None:
    # A few dozen calls can read the no-load latency low by chance, and a baseline read
    # low holds the limit under the backend's concurrency until the next probe; a
    # higher reading may be a slower backend, which must not be queued into.
    first, second = _two_probes(0.08, 0.06)
    assert first == pytest.approx(0.08, rel=0.01)
    assert second == pytest.approx(0.07, rel=0.02)
    first, second = _two_probes(0.08, 0.09)
    assert second == pytest.approx(0.09, rel=0.01)


def _limits_around_a_halving(seed: int) -> list[tuple[float, float, bool]]:
    """(seconds, limit, probing) at each arrival: a concurrency-mode limiter with its
    defaults in front of a FIFO backend of 8 slots x 80 ms (lognormal, sigma 0.3),
    offered 200 calls/s (2x), whose slots halve at 10 s."""
    rng = random.Random(seed)
    clock = Clock()
    model = AdaptiveLimit(target_latency=0.5, mode="concurrency", clock=clock)
    lim = AdaptiveLimiter(limit_model=model, clock=clock)
    free = [clock.t] * 8  # when each slot is next free
    out = []

    def finish(k: int, at: int) -> int:
        end = max(at, heapq.heappop(free)) + int(0.08 * S * rng.lognormvariate(-0.045, 0.3))
        heapq.heappush(free, end)
        return end

    def after(k: int) -> bool:
        nonlocal free
        out.append((k / 200, model.limit, model.state["probing"]))
        if k == 200 * 10 - 1:  # the slots that free last go; their calls still finish
            free = sorted(free)[:4]
        return False

    _open_loop(lim, clock, 200, 20, finish, after)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_concurrency_follows_a_capacity_halving_down_without_idling_the_backend(
    seed: int,
) -> None:
    # The queue ratio is the median of the freshest calls, which for a while after a
    # step down still waited behind the higher limit: a second step on them took the
    # limit under the 4 slots left (the backend idled), then back over them. Outside
    # the baseline probes (which halve the limit on purpose) it stays at the slots or
    # above, and near them within 3 s.
    trace = _limits_around_a_halving(seed)
    after = [limit for t, limit, probing in trace if 10 <= t < 20 and not probing]
    assert min(after) >= 4, min(after)
    assert next(limit for t, limit, _ in trace if t >= 13) <= 7


@pytest.mark.parametrize("start", [0, 100 * S])
def test_concurrency_probes_its_baseline_whenever_its_clock_starts(start: int) -> None:
    # Saturated from its first calls, the limit may stand over a queue, so the first
    # baseline is probed at once. On a clock that starts at 0 (an injected one, as the
    # simulator's) the probe must not be put off for ever.
    clock = Clock()
    clock.t = start
    model = AdaptiveLimit(target_latency=0.5, mode="concurrency", clock=clock)
    lim = AdaptiveLimiter(limit_model=model, clock=clock)
    free = [start] * 8  # a FIFO backend of 8 slots x 80 ms, offered 200 calls/s

    def finish(k: int, at: int) -> int:
        end = max(at, heapq.heappop(free)) + 80_000_000
        heapq.heappush(free, end)
        return end

    assert _open_loop(lim, clock, 200, 3, finish, lambda k: model.state["probing"], start)


def test_concurrency_steps_as_soon_as_the_calls_since_the_last_step_are_in() -> None:
    # Calls of 80 ms that never queue, offered 1,000/s: the limit (10 at first) is
    # under the backend's concurrency, which idles. Once the first probe has measured
    # the baseline, each step follows the queue as soon as the calls admitted since
    # the last one have all reported (a hundred of them, a few round trips), not at
    # the next interval (0.5 s).
    clock = Clock()
    model = AdaptiveLimit(target_latency=0.5, mode="concurrency", initial_limit=10, clock=clock)
    lim = AdaptiveLimiter(limit_model=model, clock=clock)
    reached = _open_loop(lim, clock, 1000, 6, lambda k, at: at + 80_000_000,
                         lambda k: model.limit >= 72)  # fmt: skip
    assert reached and clock.t - 100 * S <= 2.4 * S, (clock.t - 100 * S) / S


def test_concurrency_growth_waits_for_the_calls_admitted_since_the_last_step() -> None:
    # A FIFO backend of 8 slots x 400 ms (20 calls/s) offered 100 calls/s. Calls take
    # longer than the slow-start interval (0.25 s): growing on the calls of an
    # earlier limit, before those of the new one report, took the limit to several
    # times the backend's slots while the queue built, blind.
    clock = Clock()
    model = AdaptiveLimit(target_latency=2.0, mode="concurrency", clock=clock)
    lim = AdaptiveLimiter(limit_model=model, clock=clock)
    free = [clock.t] * 8
    rng = random.Random(1)

    def finish(k: int, at: int) -> int:
        end = max(at, heapq.heappop(free)) + int(0.4 * S * rng.lognormvariate(-0.125, 0.5))
        heapq.heappush(free, end)
        return end

    limits: list[float] = []
    _open_loop(lim, clock, 100, 5, finish, lambda k: limits.append(model.limit) and False)
    assert max(limits) <= 40, max(limits)


def _first_baseline_of_slow_calls(seed: int) -> float:
    """The first probe's baseline: calls of about 400 ms (lognormal median), offered
    100/s at a limit of 20, held at 30 at most (so always saturated), with a 2 s
    target."""
    rng = random.Random(seed)
    return _probe_baselines(lambda _: 0.4 * rng.lognormvariate(0, 0.5), 1, rate=100,
                            target_latency=2.0, initial_limit=20, max_limit=30)[0]  # fmt: skip


def test_concurrency_probe_that_runs_out_of_time_reads_the_calls_it_admitted() -> None:
    # A probe stage admits calls for two intervals (1 s), and each then has the
    # target's time to finish; the median counts any still running as the slowest.
    # Ending at two intervals on the calls that had finished, the first and fast
    # ones, read the baseline low, and a baseline read low holds the limit under the
    # backend's concurrency.
    bases = [_first_baseline_of_slow_calls(seed) for seed in range(10)]
    assert 0.4 * 0.9 <= statistics.fmean(bases) <= 0.4 * 1.15, bases
