"""The relay that wakes blocked threads: no wake-up is lost, no thread is left asleep."""

from __future__ import annotations

import threading
import time

import limiter
from limiter._relay import Waiter
from limiter.backends.redis import RedisBackend


def test_a_post_before_the_wait_is_kept() -> None:
    w = Waiter()
    w.post()
    assert w.wait(timeout=0.0) is True
    assert w.wait(timeout=0.01) is False


def test_wait_wakes_the_thread_it_passes_to() -> None:
    me, other = Waiter(), Waiter()
    woken = threading.Event()

    def sleeper() -> None:
        other.wait()
        woken.set()
        me.post()

    t = threading.Thread(target=sleeper)
    t.start()
    assert me.wait(other, timeout=10.0) is True
    t.join(timeout=10)
    assert woken.is_set()


def test_threads_that_leave_while_holding_their_turn_strand_nobody(redis_url: str) -> None:
    """Threads leave after different numbers of calls, often right after a wake-up that
    made them owe the next thread its turn: the others still finish, with exact results."""
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(10**6, 3600.0, backend=backend)
    done = [0] * 48
    start = threading.Barrier(48)

    def work(i: int) -> None:
        start.wait(timeout=30)
        for _ in range(1 + i % 9):
            done[i] += fw.acquire("leaving").allowed

    threads = [threading.Thread(target=work, args=(i,)) for i in range(48)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert done == [1 + i % 9 for i in range(48)]
    assert time.monotonic() - t0 < 10
    assert fw.acquire("leaving").remaining == 10**6 - sum(done) - 1
    assert fw.store.failures == 0
