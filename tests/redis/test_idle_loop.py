"""The idle-flushing event loop (``idle_loop``): requests that arrive while the loop is busy
share one Redis round trip, an idle loop sends at once, and a loop that never idles still
sends within ``BUSY_DELAY``."""

from __future__ import annotations

import asyncio
import threading

import limiter
from limiter.backends.idle_loop import BUSY_DELAY, IdleFlusher, flusher_of, new_event_loop
from limiter.backends.redis import RedisBackend


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_deferred_flush_runs_before_the_loop_waits_or_once_busy_too_long() -> None:
    clock, ran = Clock(), []
    flusher = IdleFlusher(clock)
    try:
        flusher.defer(lambda: ran.append("a"))
        flusher.defer(lambda: ran.append("b"))
        assert flusher.select(0) == [] and ran == []  # busy: work is ready, no waiting
        clock.now += BUSY_DELAY / 2
        flusher.select(0)
        assert ran == []
        clock.now += BUSY_DELAY
        flusher.select(0)  # busy for longer than BUSY_DELAY: flushed anyway
        assert ran == ["a", "b"]
        flusher.defer(lambda: ran.append("c"))
        flusher.select(0.01)  # about to wait: flushed first
        assert ran == ["a", "b", "c"]
    finally:
        flusher.close()


def test_a_flush_never_leaves_the_loop_blocked() -> None:
    """After a flush (which may have completed futures) the selector does not wait, even
    when the loop asked to wait forever; the next wait, with nothing deferred, does."""
    flusher, ran = IdleFlusher(), []
    flusher.defer(lambda: ran.append(1))
    waiter = threading.Thread(target=flusher.select, args=(None,), daemon=True)
    waiter.start()
    waiter.join(5)
    assert not waiter.is_alive() and ran == [1]
    flusher.close()


def _staggered(backend: RedisBackend, fw: limiter.FixedWindow, n: int) -> tuple[list[bool], int]:
    """One warm-up call, then ``n`` calls issued one per loop pass while the loop is busy;
    the decisions and the round trips they took."""

    async def scenario() -> tuple[list[bool], int]:
        await fw.acquire_async("warm")
        transport = backend.loop_transports[asyncio.get_running_loop()]
        before = transport.trips
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.ensure_future(fw.acquire_async("k")))
            await asyncio.sleep(0)  # the next pass of the loop, which has work ready
        answers = await asyncio.gather(*tasks)
        return [d.allowed for d in answers], transport.trips - before

    return scenario()


def test_requests_issued_while_the_loop_is_busy_share_one_round_trip(redis_url: str) -> None:
    frozen = Clock()  # the busy stretch never reaches BUSY_DELAY
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(15, 3600.0, backend=backend)
    with asyncio.Runner(loop_factory=lambda: new_event_loop(frozen)) as runner:
        assert flusher_of(runner.get_loop()) is not None
        answers, trips = runner.run(_staggered(backend, fw, 20))
    assert answers == [True] * 15 + [False] * 5
    assert trips == 1  # sent when the loop had nothing left to do

    plain = RedisBackend(redis_url, local_cache=False, timeout=1.0, prefix="plain")
    other = limiter.FixedWindow(15, 3600.0, backend=plain)
    with asyncio.Runner() as runner:
        assert flusher_of(runner.get_loop()) is None
        answers, trips = runner.run(_staggered(plain, other, 20))
    assert answers == [True] * 15 + [False] * 5
    assert trips >= 2  # the first request went alone, at once


def test_a_loop_that_never_idles_still_gets_its_answers(redis_url: str) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0, prefix="busy")
    fw = limiter.FixedWindow(100, 3600.0, backend=backend)

    async def scenario() -> list[bool]:
        done = False

        async def spin() -> None:  # always ready: the selector is never asked to wait
            while not done:
                await asyncio.sleep(0)

        spinner = asyncio.ensure_future(spin())
        try:
            return [(await fw.acquire_async("b")).allowed for _ in range(10)]
        finally:
            done = True
            await spinner

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(asyncio.wait_for(scenario(), 10)) == [True] * 10
    assert fw.store.failures == 0


def test_a_batch_that_cannot_be_encoded_fails_its_calls_not_the_loop(redis_url: str) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(100, 3600.0, backend=backend, failure_mode="deny")
    real = backend._commands_for

    def broken(calls):  # what a bug in encoding would do
        raise ValueError("cannot encode")

    async def scenario() -> tuple[list[bool], bool]:
        await fw.acquire_async("warm")
        backend.loop_transports[asyncio.get_running_loop()].commands_for = broken
        refused = await asyncio.gather(*(fw.acquire_async("e") for _ in range(3)))
        backend.loop_transports[asyncio.get_running_loop()].commands_for = real
        return [d.allowed for d in refused], (await fw.acquire_async("e")).allowed

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        refused, after = runner.run(asyncio.wait_for(scenario(), 10))
    assert refused == [False] * 3 and after  # failure mode "deny", then served again
    assert "cannot encode" in str(fw.store.last_error)
