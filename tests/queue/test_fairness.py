"""Sustained overload on a manual clock: weights hold, no class starves, waits obey deadlines."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from limiter import RateLimited, TokenBucket
from limiter.admission import AdmissionQueue
from tests.core.clock import ManualClock
from tests.queue.conftest import settle

RATE = 10  # admissions per second


async def overload(
    q: AdmissionQueue, clock: ManualClock, classes: int, seconds: int, factor: int, prefill: int = 0
):
    """Requests of every class arrive round-robin at ``factor`` x the rate (after ``prefill``
    per class at time 0); time jumps event to event (next arrival or the queue's next wake).
    Returns admissions and refusals."""
    admitted: list[tuple[int, int]] = []  # (priority, waited ns) in admission order
    refused: list[tuple[int, int]] = []
    gap = 1_000_000_000 // (RATE * factor)
    arrivals = [(clock.now, c) for c in range(classes) for _ in range(prefill)]
    arrivals += [(clock.now + i * gap, i % classes) for i in range(seconds * RATE * factor)]

    async def one(priority: int) -> None:
        start = clock.now
        try:
            await q.acquire_async("rule", priority=priority)
            admitted.append((priority, clock.now - start))
        except RateLimited:
            refused.append((priority, clock.now - start))

    tasks, i = [], 0
    while i < len(arrivals) or q.depth():
        wake = q.next_wake()
        nxt = arrivals[i][0] if i < len(arrivals) else None
        clock.now = max(clock.now, min(t for t in (wake, nxt) if t is not None))
        while i < len(arrivals) and arrivals[i][0] <= clock.now:
            tasks.append(asyncio.create_task(one(arrivals[i][1])))
            i += 1
        await settle()
        q.poll()
        await settle()
    await asyncio.gather(*tasks)
    return admitted, refused


@settings(max_examples=15, deadline=None)
@given(weights=st.lists(st.integers(1, 4), min_size=2, max_size=4))
def test_weighted_ratio_under_sustained_overload(weights):
    """Every class backlogged at 2x overload: admissions follow the weights cycle by cycle."""
    clock = ManualClock()
    n = len(weights)
    q = AdmissionQueue(
        TokenBucket(rate=RATE, burst=1, clock=clock),
        weights=weights,
        max_queue=10_000,
        max_wait=None,
        clock=clock,
        auto_poll=False,
    )
    # Every class starts backlogged, and its arrivals (2*max(weights)*RATE/n per second)
    # exceed its weighted share of RATE, so it stays backlogged.
    assert q.acquire("rule")  # the bucket starts empty: everything below waits
    admitted, refused = asyncio.run(
        overload(q, clock, n, seconds=6, factor=2 * max(weights), prefill=max(weights))
    )
    assert not refused
    order = [p for p, _ in admitted]
    cycle = [c for c in range(n) for _ in range(weights[c])]
    full = RATE * 6 // len(cycle)
    assert order[: full * len(cycle)] == cycle * full
    for c in range(n):
        assert order[: full * len(cycle)].count(c) == full * weights[c]


def test_weighted_never_starves_and_waits_stay_within_the_deadline():
    clock = ManualClock()
    q = AdmissionQueue(
        TokenBucket(rate=RATE, burst=1, clock=clock),
        weights=(3, 2, 1),
        max_queue=50,
        max_wait=1.0,
        clock=clock,
        auto_poll=False,
    )
    admitted, refused = asyncio.run(overload(q, clock, 3, seconds=8, factor=2))
    for c in range(3):
        assert any(p == c for p, _ in admitted[10:])  # every class keeps being served
    assert all(0 <= waited < 1_000_000_000 for _, waited in admitted)
    assert all(waited <= 1_000_000_000 for _, waited in refused)
    assert len(admitted) <= 1 + RATE * 8 + RATE  # never more than the limiter allows
    assert sum(q.expired) + sum(q.rejected) == len(refused)


def test_strict_under_overload_serves_the_top_class_promptly():
    clock = ManualClock()
    q = AdmissionQueue(
        TokenBucket(rate=RATE, burst=1, clock=clock),
        classes=3,
        max_queue=50,
        max_wait=1.0,
        clock=clock,
        auto_poll=False,
    )
    admitted, _ = asyncio.run(overload(q, clock, 3, seconds=8, factor=2))
    top = [w for p, w in admitted if p == 0]
    assert len(top) == 8 * RATE * 2 // 3 + 1  # every class-0 request got in
    assert max(top) <= 1_000_000_000 // RATE  # ... within one emission interval
    assert q.expired[2] > 0 and q.expired[0] == 0
