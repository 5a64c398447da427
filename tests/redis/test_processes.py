"""Exactness when several processes hammer one key through Redis at once."""

from __future__ import annotations

import multiprocessing
import time

import redis

import limiter
from limiter.backends.redis import RedisBackend

PROCESSES = 4


def _window_worker(url: str) -> list[tuple[int, bool]]:
    fw = limiter.FixedWindow(40, 0.1, backend=RedisBackend(url, local_cache=False, timeout=1.0))
    out = []
    for _ in range(250):
        d = fw.acquire("hot")
        out.append((fw.store.last_server_time_ns, d.allowed))
    return out


def _bucket_worker(url: str) -> list[tuple[int, bool]]:
    tb = limiter.TokenBucket(500.0, 20, backend=RedisBackend(url, local_cache=False, timeout=1.0))
    out = []
    for _ in range(250):
        d = tb.acquire("hot")
        out.append((tb.store.last_server_time_ns, d.allowed))
    return out


def _lease_worker(url: str) -> int:
    cl = limiter.ConcurrencyLimit(3, backend=RedisBackend(url, timeout=1.0))
    client = redis.Redis.from_url(url)
    highest = 0
    for _ in range(150):
        permit = cl.acquire("hot")
        if permit.allowed:
            highest = max(highest, client.incr("active"))
            time.sleep(0.0005)
            client.decr("active")
            permit.release()
    return highest


def _run(worker, url: str) -> list:
    with multiprocessing.get_context("fork").Pool(PROCESSES) as pool:
        return pool.map(worker, [url] * PROCESSES)


def test_fixed_window_admits_exactly_its_limit(redis_url: str) -> None:
    per_window: dict[int, list[bool]] = {}
    for result in _run(_window_worker, redis_url):
        for t, allowed in result:
            per_window.setdefault(t // 100_000_000, []).append(allowed)
    assert any(not all(v) for v in per_window.values())
    for outcomes in per_window.values():
        admitted = sum(outcomes)
        assert admitted <= 40
        if not all(outcomes):
            assert admitted == 40  # refused only once the window was exactly full


def test_token_bucket_never_exceeds_burst_plus_rate(redis_url: str) -> None:
    events = sorted(e for result in _run(_bucket_worker, redis_url) for e in result)
    start = events[0][0]
    admitted = 0
    for t, allowed in events:
        admitted += allowed
        assert admitted <= 20 + 500 * (t - start) / 1e9
    assert admitted >= 20 and any(not a for _, a in events)


def test_leases_never_exceed_the_limit(redis_url: str) -> None:
    assert 1 <= max(_run(_lease_worker, redis_url)) <= 3
