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


@pytest.mark.parametrize(("depth", "window"), [(1, 0.0), (2, 0.0), (1, 0.002)])
def test_threads_share_round_trips_exactly(redis_url: str, depth: int, window: float) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0, batch_window=window)
    backend.combiner.depth = depth
    fw = limiter.FixedWindow(300, 3600.0, backend=backend)
    admitted = [0] * 16

    def work(i: int) -> None:
        admitted[i] = sum(fw.acquire("shared").allowed for _ in range(40))

    _threads(16, work)
    assert sum(admitted) == 300
    assert backend.combiner.batches < 16 * 40
    assert fw.remote.failures == 0


def test_batches_from_many_threads_stay_in_order(redis_url: str) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(3, 3600.0, backend=backend)
    results: list[list[bool]] = [[] for _ in range(12)]

    def work(i: int) -> None:
        results[i] = list(fw.allow_batch([f"k{i}"] * 5))

    _threads(12, work)
    assert results == [[True, True, True, False, False]] * 12
