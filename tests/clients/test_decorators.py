"""Decorators and context managers (limiter.decorators), sync and async."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from limiter import (
    ConcurrencyLimit,
    Decision,
    FixedWindow,
    InvalidParameter,
    LeakyShaper,
    RateLimited,
    TokenBucket,
)
from limiter.decorators import acquire_waiting, limited, rate_limited
from tests.clients.servers import frozen
from tests.core.clock import ManualClock

S = 1_000_000_000


def test_sync_decorator_refuses_with_retry_after():
    clock = ManualClock(0)
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)

    @rate_limited(bucket, key=lambda user: user)
    def work(user):
        return f"done {user}"

    assert work("a") == "done a"
    assert work("a") == "done a"
    with pytest.raises(RateLimited) as refused:
        work("a")
    assert refused.value.retry_after == pytest.approx(1.0)
    assert work("b") == "done b"  # keys are independent
    clock.now += S
    assert work("a") == "done a"
    assert work.__name__ == "work"


def test_cost_from_arguments():
    bucket = FixedWindow(10, 60.0, clock=frozen())

    @rate_limited(bucket, key="batch", cost=lambda items: len(items))
    def process(items):
        return len(items)

    assert process([1] * 7) == 7
    with pytest.raises(RateLimited):
        process([1] * 4)
    assert process([1] * 3) == 3


def test_waits_up_to_max_wait_then_raises():
    bucket = TokenBucket(rate=5.0, burst=1)  # one token every 200 ms
    calls = []

    @rate_limited(bucket, max_wait=1.0)
    def patient():
        calls.append(time.monotonic())

    @rate_limited(bucket, max_wait=0.001)
    def impatient():
        calls.append(time.monotonic())

    patient()
    patient()  # waited for the next token instead of failing
    assert len(calls) == 2
    with pytest.raises(RateLimited):
        impatient()
    assert len(calls) == 2


def test_shaper_delay_is_honoured():
    shaper = LeakyShaper(rate=4.0, burst=1, max_wait=1.0)  # one every 250 ms
    with limited(shaper) as first:
        assert first.wait == 0
    started = time.monotonic()
    with limited(shaper) as second:
        assert second.allowed and second.wait > 0.15
        assert time.monotonic() - started >= second.wait * 0.9


def test_concurrency_permit_released_on_return_and_error():
    limit = ConcurrencyLimit(1)

    @rate_limited(limit, key="db")
    def query(fail=False):
        assert limit.in_flight("db") == 1
        if fail:
            raise KeyError("boom")
        return 1

    assert query() == 1
    with pytest.raises(KeyError):
        query(fail=True)
    assert limit.in_flight("db") == 0
    with limited(limit, "db"), pytest.raises(RateLimited):  # a second holder is refused
        query()
    assert limit.in_flight("db") == 0


def test_async_decorator_and_cancellation_release():
    limit = ConcurrencyLimit(2)
    started = asyncio.Event()

    @rate_limited(limit, key="job")
    async def job(hang=False):
        started.set()
        if hang:
            await asyncio.sleep(3600)
        return "ok"

    async def main():
        assert await job() == "ok"
        started.clear()
        task = asyncio.ensure_future(job(hang=True))
        await started.wait()
        assert limit.in_flight("job") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limit.in_flight("job") == 0

    asyncio.run(main())


def test_async_wait_does_not_block_the_loop():
    bucket = TokenBucket(rate=20.0, burst=1)  # next token in 50 ms
    ticks = 0

    @rate_limited(bucket, max_wait=1.0)
    async def call():
        return True

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def main():
        background = asyncio.ensure_future(ticker())
        await call()
        await call()  # waits ~50 ms on asyncio.sleep
        background.cancel()

    asyncio.run(main())
    assert ticks >= 3


def test_blocking_limiter_runs_in_a_thread():
    unblock = threading.Event()

    class Remote:
        blocking = True  # as a sync SDK client: acquire does network I/O

        def acquire(self, key, cost=1):
            assert unblock.wait(5), "acquire ran on the event loop thread"
            return Decision(True, 1, 0, 1.0)

    @rate_limited(Remote())
    async def call():
        return "ok"

    async def main():
        pending = asyncio.ensure_future(call())
        await asyncio.sleep(0.01)
        unblock.set()  # only reachable if the loop is free while acquire() blocks
        return await pending

    assert asyncio.run(main()) == "ok"


def test_async_context_manager_and_async_limiters():
    class AsyncRemote:
        def __init__(self):
            self.keys = []

        async def acquire(self, key, cost=1):
            self.keys.append((key, cost))
            return Decision(len(self.keys) <= 1, 1, 0, 1.0, 0.0 if len(self.keys) <= 1 else 1.0)

    remote = AsyncRemote()

    async def main():
        async with limited(remote, "k", 3) as decision:
            assert decision.allowed
        with pytest.raises(RateLimited):
            async with limited(remote, "k"):
                pass

    asyncio.run(main())
    assert remote.keys == [("k", 3), ("k", 1)]


def test_bad_arguments_are_named():
    bucket = TokenBucket(1.0, 1)
    with pytest.raises(InvalidParameter, match="limiter"):
        rate_limited(object())
    with pytest.raises(InvalidParameter, match="key"):
        rate_limited(bucket, key=5)
    with pytest.raises(InvalidParameter, match="cost"):
        rate_limited(bucket, cost=0)
    with pytest.raises(InvalidParameter, match="max_wait"):
        rate_limited(bucket, max_wait=-1)
    with pytest.raises(InvalidParameter, match="max_wait"):
        limited(bucket, max_wait=float("nan"))
    with pytest.raises(InvalidParameter, match="max_wait"):
        acquire_waiting(bucket, "k", 1, max_wait="1")
    with pytest.raises(InvalidParameter, match="cost"):
        acquire_waiting(bucket, "k", 5)  # more than the burst: the limiter names it


def test_waiting_for_a_concurrency_slot_polls_until_free():
    limit = ConcurrencyLimit(1)
    holder = limit.acquire("pool")
    threading.Timer(0.05, holder.release).start()

    @rate_limited(limit, key="pool", max_wait=2.0)
    def use():
        return limit.in_flight("pool")

    started = time.monotonic()
    assert use() == 1  # got the slot once the holder let go
    assert time.monotonic() - started >= 0.04
    assert limit.in_flight("pool") == 0
