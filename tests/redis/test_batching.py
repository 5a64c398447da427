"""Concurrent decisions share round trips without losing exactness or order."""

from __future__ import annotations

import threading

import pytest

import limiter
from limiter.backends.redis import RedisBackend


def _threads(n: int, target) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("window", [0.0, 0.002])
def test_threads_share_round_trips_exactly(redis_url: str, window: float) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0, batch_window=window)
    fw = limiter.FixedWindow(300, 3600.0, backend=backend)
    admitted = [0] * 16

    def work(i: int) -> None:
        admitted[i] = sum(fw.acquire("shared").allowed for _ in range(40))

    _threads(16, work)
    assert sum(admitted) == 300
    assert backend.combiner.batches < 16 * 40
    assert fw.store.failures == 0


def test_batches_from_many_threads_stay_in_order(redis_url: str) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(3, 3600.0, backend=backend)
    results: list[list[bool]] = [[] for _ in range(12)]

    def work(i: int) -> None:
        results[i] = list(fw.allow_batch([f"k{i}"] * 5))

    _threads(12, work)
    assert results == [[True, True, True, False, False]] * 12


def test_threads_asyncio_and_posted_releases_share_the_flusher(redis_url: str) -> None:
    """Sync callers, asyncio tasks and posted lease releases on one backend at once: every
    decision is exact, every lease comes back, nothing waits forever."""
    import asyncio

    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(500, 3600.0, backend=backend)
    cl = limiter.ConcurrencyLimit(3, backend=backend)
    admitted = [0] * 9

    def sync_work(i: int) -> None:
        for _ in range(60):
            admitted[i] += fw.acquire("mixed").allowed
            permit = cl.acquire("jobs")
            if permit.allowed:
                permit.release()  # posted, not awaited

    async def async_work() -> int:
        results = await asyncio.gather(*(fw.acquire_async("mixed") for _ in range(200)))
        return sum(d.allowed for d in results)

    threads = [threading.Thread(target=sync_work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    admitted[8] = asyncio.run(asyncio.wait_for(async_work(), timeout=30))
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert sum(admitted) == 500  # 8 * 60 + 200 = 680 asked
    assert fw.store.failures == 0 and cl.store.failures == 0
    assert cl.in_flight("jobs") == 0  # releases were posted before this call queued


def test_every_blocked_thread_of_a_batch_is_woken(redis_url: str) -> None:
    """64 threads blocked on shared round trips: every one is woken, none is left asleep, and
    each gets its own key's results."""
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    tb = limiter.TokenBucket(0.001, 20, backend=backend)
    admitted = [0] * 64
    start = threading.Barrier(64)

    def work(i: int) -> None:
        start.wait(timeout=30)
        admitted[i] = sum(tb.acquire(f"own{i}").allowed for _ in range(30))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert admitted == [20] * 64
    assert backend.combiner.batches < 64 * 30  # they really shared round trips


class Interrupted(Exception):
    pass


def test_interrupted_wait_leaves_the_relay_and_the_next_call_intact(redis_url: str) -> None:
    """A signal interrupts the main thread while it waits on a shared round trip: the threads
    woken after it still get their results, and its next call waits for its own result
    (not for the wake-up the interrupted wait left behind)."""
    import signal
    import time

    import redis

    backend = RedisBackend(redis_url, local_cache=False, timeout=3.0)
    fw = limiter.FixedWindow(1000, 3600.0, backend=backend)
    fw.acquire("warm")
    admin = redis.Redis.from_url(redis_url)
    results: list = []
    admin.client_pause(400)  # the round trip in flight stalls; later calls queue behind it

    def later(i: int) -> None:
        time.sleep(0.05 * i)
        results.append(fw.acquire("k"))

    threads = [threading.Thread(target=later, args=(i,)) for i in (0, 2, 3, 4)]
    for t in threads:
        t.start()
    time.sleep(0.07)  # the first thread's round trip is in flight: this call queues

    def interrupt(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            fw.acquire("k")  # sent with the queued batch all the same
    finally:
        signal.signal(signal.SIGALRM, old)
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert [d.allowed for d in results] == [True] * 4
    admin.client_pause(200)
    in_flight = threading.Thread(target=later, args=(0,))
    in_flight.start()
    time.sleep(0.07)
    d = fw.acquire("k")  # queued again: 5 threads + the interrupted call + this one
    in_flight.join(timeout=10)
    assert d.allowed and d.remaining == 1000 - 7
    assert fw.store.failures == 0
