"""AdmissionQueue with a manual clock: order, weights, deadlines, bounds, cancellation, metrics."""

from __future__ import annotations

import asyncio
import gc
import itertools

import pytest

from limiter import (
    ConcurrencyLimit,
    Decision,
    FixedWindow,
    LeakyBucket,
    RateLimited,
    SlidingWindow,
    TokenBucket,
)
from limiter._core import AdaptiveLimiter
from limiter.admission import AdmissionQueue, DeadlineExceeded, QueuedPermit, QueueFull
from limiter.errors import InvalidParameter, LimiterError
from tests.queue.conftest import TICK, held_and_queued, settle


def run(coro):
    return asyncio.run(coro)


async def admit_order(q, clock, requests, ticks, **kw):
    """Queue ``requests`` (priority, label) behind an empty bucket; a token per tick."""
    order, outcomes = [], {}

    async def one(priority, label):
        try:
            await q.acquire_async("k", priority=priority, **kw)
            order.append(label)
        except RateLimited as exc:
            outcomes[label] = exc

    assert q.acquire("k")  # take the only token
    tasks = [asyncio.create_task(one(p, label)) for p, label in requests]
    await settle()
    for _ in range(ticks):
        clock.advance_ns(TICK)
        q.poll()
        await settle()
    await asyncio.gather(*tasks)
    return order, outcomes


def test_immediate_admission_returns_the_limiters_decision(make_queue):
    q = make_queue()
    d = q.acquire("k")
    assert isinstance(d, Decision) and d.allowed and d.limit == 1
    assert q.admitted == (1,) and q.wait_counts(0)[0] == 1 and len(q) == 0


def test_weighted_order_through_a_token_bucket(make_queue, clock):
    q = make_queue(weights=(3, 2, 1))
    requests = [(p, (p, i)) for p in range(3) for i in range(9)]
    order, _ = run(admit_order(q, clock, requests, 27))
    assert [p for p, _ in order[:18]] == [0, 0, 0, 1, 1, 2] * 3
    assert [i for p, i in order if p == 0] == list(range(9))  # FIFO within a class
    assert q.admitted == (10, 9, 9) and q.depth() == 0


def test_strict_order_through_a_token_bucket(make_queue, clock):
    q = make_queue(classes=3)
    requests = [(2, "c"), (1, "b1"), (0, "a"), (1, "b2")]
    order, _ = run(admit_order(q, clock, requests, 4))
    assert order == ["a", "b1", "b2", "c"]


def test_lifo_serves_the_freshest_first(make_queue, clock):
    q = make_queue(lifo=True)
    order, _ = run(admit_order(q, clock, [(0, i) for i in range(4)], 4))
    assert order == [3, 2, 1, 0]


def test_full_class_rejects_at_once(make_queue, clock):
    q = make_queue(classes=2, max_queue=[2, 1])

    async def main():
        assert q.acquire("k")
        waiting = [asyncio.create_task(q.acquire_async("k", priority=p)) for p in (0, 0, 1)]
        await settle()
        with pytest.raises(QueueFull) as full:
            await q.acquire_async("k", priority=0)
        assert full.value.priority == 0 and full.value.retry_after > 0
        with pytest.raises(QueueFull):
            q.acquire("k", priority=1)  # the blocking form refuses at once too
        assert q.rejected == (1, 1) and q.depth(0) == 2 and q.depth(1) == 1
        clock.advance_ns(3 * TICK)
        for _ in range(3):
            q.poll()
            clock.advance_ns(TICK)
        await asyncio.gather(*waiting)

    run(main())


def test_deadline_gives_busy_never_late_service(make_queue, clock):
    bucket = TokenBucket(rate=10, burst=1, clock=clock)
    q = make_queue(bucket, classes=2)

    async def main():
        assert q.acquire("k")
        slow = asyncio.create_task(q.acquire_async("k", priority=1, timeout=0.15))
        fast = asyncio.create_task(q.acquire_async("k", priority=0, timeout=0.05))
        await settle()
        clock.advance(0.06)  # fast's deadline passes before the next token
        q.poll()
        await settle()
        with pytest.raises(DeadlineExceeded) as busy:
            await fast
        assert busy.value.waited == pytest.approx(0.06) and busy.value.priority == 0
        clock.advance(0.04)  # token at 0.1 s: slow (deadline 0.15) gets it
        q.poll()
        assert (await slow).allowed

    run(main())
    assert q.expired == (1, 0) and q.admitted == (1, 1)


def test_deadline_behind_the_head_is_kept(make_queue, clock):
    """A later, shorter-lived waiter expires on time even though it is not first in line."""
    q = make_queue()

    async def main():
        assert q.acquire("k")
        first = asyncio.create_task(q.acquire_async("k", timeout=10))
        await settle()
        second = asyncio.create_task(q.acquire_async("k", timeout=0.05))
        await settle()
        assert q.next_wake() == clock.now + 50_000_000
        clock.advance(0.05)
        q.poll()
        await settle()
        assert second.done() and not first.done()
        with pytest.raises(DeadlineExceeded):
            await second
        clock.advance(0.05)
        q.poll()
        assert (await first).allowed

    run(main())


def test_expired_request_consumes_nothing(make_queue, clock):
    bucket = TokenBucket(rate=10, burst=1, clock=clock)
    q = make_queue(bucket)

    async def main():
        assert q.acquire("k")
        task = asyncio.create_task(q.acquire_async("k", timeout=0.05))
        await settle()
        clock.advance(0.2)
        q.poll()
        with pytest.raises(DeadlineExceeded):
            await task

    run(main())
    assert bucket.acquire("k").allowed  # the token the expired request never took


def test_zero_timeout_and_past_deadline_are_busy_at_once(make_queue, clock):
    q = make_queue()
    assert q.acquire("k")
    with pytest.raises(DeadlineExceeded):
        q.acquire("k", timeout=0)
    with pytest.raises(DeadlineExceeded):
        q.acquire("k", deadline=clock.now - 1)
    assert q.depth() == 0 and q.expired == (2,)
    assert q.next_wake() is None


def test_max_wait_caps_every_wait(make_queue, clock):
    q = make_queue(max_wait=0.05)

    async def main():
        assert q.acquire("k")
        task = asyncio.create_task(q.acquire_async("k", timeout=10))
        await settle()
        assert q.next_wake() == clock.now + 50_000_000
        clock.advance(0.05)
        q.poll()
        with pytest.raises(DeadlineExceeded):
            await task

    run(main())


def test_cancelled_waiter_leaves_and_the_next_is_served(make_queue, clock):
    q = make_queue()

    async def main():
        assert q.acquire("k")
        first = asyncio.create_task(q.acquire_async("k"))
        second = asyncio.create_task(q.acquire_async("k"))
        await settle()
        first.cancel()
        await settle()
        assert first.cancelled() and q.depth() == 1 and q.cancelled == (1,)
        clock.advance_ns(TICK)
        q.poll()
        assert (await second).allowed

    run(main())
    assert q.depth() == 0 and q.stats()["keys_waiting"] == 0


def test_keys_wait_independently(make_queue, clock):
    q = make_queue()

    async def main():
        assert q.acquire("a") and q.acquire("b")
        a = asyncio.create_task(q.acquire_async("a", timeout=0.05))
        await settle()
        clock.advance_ns(TICK)
        b = asyncio.create_task(q.acquire_async("b"))  # b's token is back: no queue
        await settle()
        assert b.done() and (await b).allowed
        q.poll()
        with pytest.raises(DeadlineExceeded):
            await a

    run(main())


def test_max_keys_bounds_waiting_keys(make_queue):
    q = make_queue(max_keys=1)

    async def main():
        assert q.acquire("a") and q.acquire("b")
        a = asyncio.create_task(q.acquire_async("a"))
        await settle()
        with pytest.raises(QueueFull, match="keys"):
            await q.acquire_async("b")
        a.cancel()
        await settle()

    run(main())


def test_newcomer_of_higher_priority_overtakes_blocked_head(make_queue, clock):
    """A big request blocks the line; cancelling it lets the small ones through at once."""
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    q = make_queue(bucket, classes=2)

    async def main():
        assert q.acquire("k", cost=3)
        big = asyncio.create_task(q.acquire_async("k", cost=3, priority=1))
        await settle()
        clock.advance_ns(TICK)  # 1 token: not enough for big
        small = asyncio.create_task(q.acquire_async("k", priority=0))
        await settle()
        assert small.done()  # strict: the more important newcomer goes first
        clock.advance_ns(TICK)
        q.poll()
        assert not big.done()
        clock.advance_ns(2 * TICK)
        q.poll()
        assert (await big).allowed

    run(main())


def test_wait_histogram_and_stats(make_queue, clock):
    q = make_queue(classes=2, wait_buckets=(0.05, 0.15, 1.0))
    run(admit_order(q, clock, [(0, "a"), (1, "b"), (1, "c")], 3))
    assert q.wait_counts(0) == (1, 1, 0, 0)  # immediate, then waited 0.1 s
    assert q.wait_counts(1) == (0, 0, 2, 0)  # 0.2 s and 0.3 s
    assert q.wait_sum(1) == pytest.approx(0.5)
    stats = q.stats()
    assert stats["admitted"] == [2, 2] and stats["depth"] == [0, 0]
    assert stats["wait_buckets"] == [0.05, 0.15, 1.0]
    assert sum(map(sum, stats["wait_counts"])) == sum(stats["admitted"])


def test_limiter_error_reaches_the_waiter(make_queue, clock):
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    q = make_queue(bucket)

    async def main():
        assert q.acquire("k", cost=2)
        ok = asyncio.create_task(q.acquire_async("k"))
        bad = asyncio.create_task(q.acquire_async("k", cost=5))  # more than the burst
        await settle()
        clock.advance_ns(TICK)
        q.poll()
        assert (await ok).allowed
        clock.advance_ns(TICK)
        q.poll()
        with pytest.raises(InvalidParameter, match="cost"):
            await bad

    run(main())
    with pytest.raises(InvalidParameter, match="cost"):
        q.acquire("fresh", cost=5)


def test_close_answers_waiters_busy_and_refuses_new_requests(make_queue):
    q = make_queue()

    async def main():
        assert q.acquire("k")
        task = asyncio.create_task(q.acquire_async("k"))
        await settle()
        q.close()
        with pytest.raises(DeadlineExceeded) as busy:
            await task
        assert busy.value.retry_after >= 0

    run(main())
    with pytest.raises(LimiterError, match="closed"):
        q.acquire("k")


# --- ConcurrencyLimit: releases wake waiters, nothing leaks -------------------------


def test_release_wakes_the_next_waiter_without_polling(make_queue):
    limit = ConcurrencyLimit(1)
    q = make_queue(limit, classes=2)

    async def main():
        holder = q.acquire("k")
        assert isinstance(holder, QueuedPermit) and holder.allowed and bool(holder)
        low = asyncio.create_task(q.acquire_async("k", priority=1))
        high = asyncio.create_task(q.acquire_async("k", priority=0))
        await settle()
        holder.release()
        holder.release()  # idempotent
        await settle()
        assert high.done() and not low.done()
        with await high:
            assert limit.in_flight("k") == 1
        await settle()
        p = await low
        assert p.remaining == 0 and p.permit.allowed
        p.release()

    run(main())
    assert limit.in_flight("k") == 0


def test_cancel_after_admission_releases_the_permit(make_queue):
    """The task is cancelled after the queue granted it a permit: the permit goes back."""
    limit = ConcurrencyLimit(1)
    q = make_queue(limit)

    async def main():
        holder, waiter = await held_and_queued(q)
        holder.release()  # grants waiter the slot (its future is done)...
        waiter.cancel()  # ...but it is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limit.in_flight("k") == 0
        assert q.acquire("k").allowed

    run(main())


def test_cancelled_waiter_leaks_no_permit(make_queue):
    limit = ConcurrencyLimit(2)
    q = make_queue(limit)

    async def main():
        held = [q.acquire("k"), q.acquire("k")]
        waiters = [asyncio.create_task(q.acquire_async("k")) for _ in range(5)]
        await settle()
        for w in waiters[:3]:
            w.cancel()
        await settle()
        for p in held:
            p.release()
        got = [await w for w in waiters[3:]]
        assert limit.in_flight("k") == 2
        for p in got:
            p.release()

    run(main())
    assert limit.in_flight("k") == 0 and q.cancelled == (3,) and q.depth() == 0


def test_dropped_permit_is_released_and_wakes_the_queue(make_queue):
    limit = ConcurrencyLimit(1)
    q = make_queue(limit)

    async def main():
        holder, waiter = await held_and_queued(q)
        del holder
        gc.collect()
        await settle()
        assert waiter.done()
        (await waiter).release()

    run(main())
    assert limit.in_flight("k") == 0


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"weights": (3, 0, 1)}, "weights"),
        ({"classes": 0}, "classes"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_queue": [1, 2], "classes": 3}, "max_queue"),
        ({"max_queue": [1, 2], "weights": (1, 1, 1)}, "max_queue has 2 entries"),
        ({"max_wait": -1}, "max_wait"),
        ({"max_wait": float("nan")}, "max_wait"),
        ({"max_wait": "1"}, "max_wait"),
        ({"clock": 5}, "clock"),
        ({"max_keys": 0}, "max_keys"),
        ({"max_keys": True}, "max_keys"),
        ({"wait_buckets": (1.0, 0.5)}, "wait_buckets"),
        ({"wait_buckets": ("x",)}, "wait_buckets"),
        ({"wait_buckets": ()}, "wait_buckets"),
    ],
)
def test_bad_construction(kwargs, name):
    with pytest.raises(InvalidParameter, match=name):
        AdmissionQueue(TokenBucket(1, 1), auto_poll=False, **kwargs)


def test_limiter_must_have_acquire():
    with pytest.raises(InvalidParameter, match="limiter"):
        AdmissionQueue(object())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"priority": 3}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "0"}, "priority"),
        ({"priority": True}, "priority"),
        ({"key": 5}, "key"),
        ({"cost": 0}, "cost"),
        ({"cost": 1.0}, "cost"),
        ({"timeout": -0.5}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": "1"}, "timeout"),
        ({"deadline": -1}, "deadline"),
        ({"deadline": 1.5}, "deadline"),
    ],
)
def test_bad_requests(make_queue, kwargs, name):
    q = make_queue(classes=3)
    with pytest.raises(InvalidParameter, match=name):
        q.acquire(**kwargs)
    with pytest.raises(InvalidParameter, match=name):
        run(q.acquire_async(**kwargs))
    assert q.depth() == 0


@pytest.mark.parametrize(
    "make_limiter",
    [
        lambda clock: TokenBucket(rate=10, burst=1, clock=clock),
        lambda clock: LeakyBucket(rate=10, burst=1, clock=clock),
        lambda clock: FixedWindow(limit=1, period=0.1, clock=clock),
        lambda clock: SlidingWindow(limit=1, period=0.1, clock=clock),
    ],
    ids=["token_bucket", "leaky_bucket", "fixed_window", "sliding_window"],
)
def test_every_rate_limiter_is_retried_at_its_retry_after(make_queue, clock, make_limiter):
    limiter = make_limiter(clock)
    q = make_queue(limiter, classes=2)

    async def main():
        assert q.acquire("k")
        start = clock.now
        order = []

        async def one(p):
            await q.acquire_async("k", priority=p)
            order.append((p, clock.now - start))

        tasks = [asyncio.create_task(one(p)) for p in (1, 1, 0)]
        await settle()
        while q.depth():
            clock.now = q.next_wake()
            q.poll()
            await settle()
        await asyncio.gather(*tasks)
        return order

    order = run(main())
    assert [p for p, _ in order] == [0, 1, 1]
    # One admission per 0.1 s at most, as the limiter allows.
    assert all(b - a >= 100_000_000 - 1 for (_, a), (_, b) in itertools.pairwise(order))


class _ReportingLimiter:
    """A limiter whose permits are freed by reporting an outcome (like an adaptive one)."""

    def __init__(self) -> None:
        self.in_flight = 0

    def acquire(self, key: str = "", cost: int = 1):
        if self.in_flight >= 1:
            return Decision(False, 1, 0, 0.0)
        self.in_flight += 1
        return _OutcomePermit(self)


class _OutcomePermit:
    def __init__(self, owner: _ReportingLimiter) -> None:
        self.owner, self.allowed, self.done = owner, True, False

    def success(self) -> None:
        self.release()

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.owner.in_flight -= 1


def test_outcome_report_on_a_permit_wakes_the_queue(make_queue):
    limiter = _ReportingLimiter()
    q = make_queue(limiter)

    async def main():
        first, waiter = await held_and_queued(q)
        assert not waiter.done()
        first.success()  # not release(): the queue still hears of it
        await settle()
        assert waiter.done()
        (await waiter).release()

    run(main())
    assert limiter.in_flight == 0


def test_adaptive_permit_reports_its_outcome_through_the_queue(make_queue, clock):
    limiter = AdaptiveLimiter(
        mode="concurrency", min_limit=1, max_limit=1, initial_limit=1, clock=clock
    )
    q = make_queue(limiter)

    async def main():
        first = await q.acquire_async("k")
        waiter = asyncio.create_task(q.acquire_async("k"))
        await settle()
        assert not waiter.done() and limiter.in_flight == 1
        with pytest.raises(TimeoutError):
            async with first:
                clock.advance(0.01)
                raise TimeoutError  # reported as dropped by the permit's own __aexit__
        await settle()
        assert waiter.done() and first.released
        async with await waiter:
            assert limiter.in_flight == 1

    run(main())
    assert limiter.in_flight == 0


def test_admit_async_reports_the_wait_on_the_queue_clock(make_queue, clock):
    q = make_queue()

    # An immediate admission waits 0; a queued one waits exactly until its token came.
    async def queued():
        first, waited = await q.admit_async("k")
        assert first.allowed and waited == 0.0
        task = asyncio.create_task(q.admit_async("k", priority=0))
        await settle()
        assert q.waiting("k") and not q.waiting("other")
        clock.advance_ns(TICK // 2)
        q.poll()
        await settle()
        assert not task.done()
        clock.advance_ns(TICK // 2)
        q.poll()
        decision, waited = await task
        assert decision.allowed and waited == TICK / 1e9
        assert not q.waiting("k")

    run(queued())


def test_admit_async_deadline_and_cancellation(make_queue, clock):
    q = make_queue()

    async def main():
        assert q.acquire("k")
        late = asyncio.create_task(q.admit_async("k", timeout=0.05))
        gone = asyncio.create_task(q.admit_async("k", timeout=1.0))
        await settle()
        clock.advance_ns(50_000_000)
        q.poll()
        with pytest.raises(DeadlineExceeded) as info:
            await late
        assert info.value.waited == 0.05
        gone.cancel()
        await settle()
        assert gone.cancelled() and q.depth() == 0 and not q.waiting("k")
        clock.advance_ns(TICK)
        assert q.acquire("k").allowed  # the cancelled waiter took nothing

    run(main())
    assert q.expired == (1,) and q.cancelled == (1,)
