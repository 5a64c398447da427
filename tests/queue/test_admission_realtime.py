"""Real clock, real threads and event loops: the timer thread drives retries and deadlines.

Assertions are about counts and bounds, never about how fast anything ran.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from limiter import ConcurrencyLimit, TokenBucket
from limiter.admission import AdmissionQueue, DeadlineExceeded, QueueFull


def test_threads_share_a_concurrency_limit_without_exceeding_or_leaking_it():
    limit = ConcurrencyLimit(3)
    q = AdmissionQueue(limit, weights=(2, 1), max_queue=100, max_wait=20.0)
    lock, active, peak, done = threading.Lock(), [0], [0], []

    def worker(i: int) -> None:
        with q.acquire("db", priority=i % 2):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.002)
            with lock:
                active[0] -= 1
        done.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(done) == list(range(40))
    assert peak[0] <= 3
    assert limit.in_flight("db") == 0 and q.depth() == 0
    assert sum(q.admitted) == 40
    q.close()


def test_blocking_waiters_are_admitted_at_the_rate_or_answered_busy():
    bucket = TokenBucket(rate=200, burst=1)
    q = AdmissionQueue(bucket, classes=2, max_queue=100, max_wait=0.25)
    results: list[tuple[str, float]] = []
    start = time.monotonic()

    def worker(i: int) -> None:
        t0 = time.monotonic()
        try:
            q.acquire("k", priority=i % 2)
            results.append(("ok", time.monotonic() - t0))
        except DeadlineExceeded as exc:
            results.append(("busy", exc.waited))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(80)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - start
    ok = [r for r in results if r[0] == "ok"]
    assert len(results) == 80
    assert len(ok) <= 1 + 200 * elapsed  # the bucket's bound holds through the queue
    assert len(ok) >= 10  # the queue does admit while tokens flow
    assert all(waited >= 0.25 - 1e-3 for kind, waited in results if kind == "busy")
    assert q.expired[0] + q.expired[1] == 80 - len(ok)
    q.close()


def test_asyncio_strict_priority_on_a_real_clock():
    """A cost-20 request at the head holds the line for 0.1 s while the rest queue up;
    then the timer thread admits them at the bucket's rate, strictly by class."""
    bucket = TokenBucket(rate=200, burst=20)
    q = AdmissionQueue(bucket, classes=3, max_queue=100, max_wait=10.0)
    order = []

    async def one(p, cost=1):
        await q.acquire_async("k", priority=p, cost=cost)
        order.append(p)

    async def main():
        assert q.acquire("k", cost=20)
        head = asyncio.create_task(one(0, cost=20))
        await asyncio.sleep(0)
        await asyncio.gather(head, *(one(i % 3) for i in range(45)))

    asyncio.run(main())
    assert order == sorted(order) and len(order) == 46
    assert q._timer_thread is None  # asyncio waiters are timed by their own loop
    assert q.stats()["depth"] == [0, 0, 0] and q.expired == (0, 0, 0)
    q.close()


def test_asyncio_wait_for_cancellation_leaks_no_permit():
    limit = ConcurrencyLimit(1)
    q = AdmissionQueue(limit, max_queue=100, max_wait=10.0)

    async def main():
        holder = q.acquire("k")
        for fut in asyncio.as_completed(
            [asyncio.wait_for(q.acquire_async("k"), 0.02) for _ in range(10)]
        ):
            with pytest.raises(TimeoutError):
                await fut
        assert q.depth() == 0 and q.cancelled == (10,)
        holder.release()
        assert limit.in_flight("k") == 0
        async with asyncio.timeout(5):
            with await q.acquire_async("k"):
                assert limit.in_flight("k") == 1

    asyncio.run(main())
    assert limit.in_flight("k") == 0
    q.close()


def test_threads_and_event_loops_mixed_on_one_queue():
    limit = ConcurrencyLimit(2)
    q = AdmissionQueue(limit, classes=2, max_queue=200, max_wait=20.0)
    served = []

    def thread_worker(i: int) -> None:
        with q.acquire("k", priority=1):
            time.sleep(0.001)
            served.append(("thread", i))

    async def task_worker(i: int) -> None:
        with await q.acquire_async("k", priority=0):
            await asyncio.sleep(0.001)
            served.append(("task", i))

    def loop_thread() -> None:
        async def main():
            await asyncio.gather(*(task_worker(i) for i in range(30)))

        asyncio.run(main())

    threads = [threading.Thread(target=thread_worker, args=(i,)) for i in range(30)]
    threads += [threading.Thread(target=loop_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(served) == 90
    assert limit.in_flight("k") == 0 and q.depth() == 0
    q.close()


def test_threads_with_short_deadlines_leave_nothing_behind():
    """Threads time out, get admitted and release at random: counters add up, no slot leaks."""
    limit = ConcurrencyLimit(2)
    q = AdmissionQueue(limit, weights=(3, 2, 1), max_queue=8, max_wait=1.0)
    outcomes = {"ok": 0, "busy": 0, "full": 0}
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            try:
                permit = q.acquire("k", priority=rng.randrange(3), timeout=rng.random() * 0.01)
            except DeadlineExceeded:
                kind = "busy"
            except QueueFull:
                kind = "full"
            else:
                time.sleep(rng.random() * 0.001)
                permit.release()
                kind = "ok"
            with lock:
                outcomes[kind] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(outcomes.values()) == 320
    assert outcomes["ok"] == sum(q.admitted) and outcomes["busy"] == sum(q.expired)
    assert outcomes["full"] == sum(q.rejected)
    assert limit.in_flight("k") == 0 and q.depth() == 0 and q.stats()["keys_waiting"] == 0
    q.close()
