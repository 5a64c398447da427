"""Redis decisions equal the in-memory kernels' decisions at the server's clock.

Each request goes to Redis first; the kernel then decides the same request with its
clock set to the server time that Redis used, and both Decisions must be identical.
"""

from __future__ import annotations

import random
import time

import pytest

import limiter
from limiter.backends.redis import RedisBackend

MAKERS = {
    "token_bucket": lambda **kw: limiter.TokenBucket(300.0, 5, **kw),
    "token_bucket_odd_rate": lambda **kw: limiter.TokenBucket(333.0, 7, **kw),
    "leaky_bucket": lambda **kw: limiter.LeakyBucket(250.0, 3, **kw),
    "leaky_shaper": lambda **kw: limiter.LeakyShaper(200.0, 2, max_wait=0.02, **kw),
    "fixed_window": lambda **kw: limiter.FixedWindow(6, 0.02, **kw),
    "fixed_window_odd_period": lambda **kw: limiter.FixedWindow(5, 1 / 30, **kw),
    "sliding_window": lambda **kw: limiter.SlidingWindow(6, 0.02, **kw),
    "sliding_window_odd_period": lambda **kw: limiter.SlidingWindow(4, 0.0133333, **kw),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_same_decisions_as_memory(name: str, redis_url: str) -> None:
    make = MAKERS[name]
    remote = make(backend=RedisBackend(redis_url, local_cache=False, timeout=1.0))
    server_now = [0]
    local = make(clock=lambda: server_now[0])
    rng = random.Random(name)
    refused = 0
    for _ in range(300):
        key = rng.choice(["a", "b", "ключ {x}"])
        cost = rng.choice([1, 1, 1, 2, 3])
        if rng.random() < 0.1:
            time.sleep(rng.random() * 0.01)
        got = remote.acquire(key, cost)
        server_now[0] = remote.store.last_server_time_ns
        assert local.acquire(key, cost) == got, (name, key, cost, server_now[0])
        refused += not got.allowed
    assert 0 < refused < 300  # the sequence exercised both outcomes


RESERVING = {
    "token_bucket": lambda **kw: limiter.TokenBucket(300.0, 8, **kw),
    "leaky_bucket": lambda **kw: limiter.LeakyBucket(250.0, 5, **kw),
    "fixed_window": lambda **kw: limiter.FixedWindow(8, 0.02, **kw),
    "sliding_window": lambda **kw: limiter.SlidingWindow(8, 0.02, **kw),
}


@pytest.mark.parametrize("name", sorted(RESERVING))
def test_a_reserve_decides_like_memory(name: str, redis_url: str) -> None:
    """Checks that must leave a reserve and checks that may take it, on one state: the
    store's decisions equal the kernels' (``reserving`` views on both sides)."""
    make = RESERVING[name]
    remote = make(backend=RedisBackend(redis_url, local_cache=False, timeout=1.0))
    server_now = [0]
    local = make(clock=lambda: server_now[0])
    remotes, locals_ = (remote, remote.reserving(3)), (local, local.reserving(3))
    rng = random.Random(name)
    seen = set()
    for _ in range(300):
        which = rng.random() < 0.7  # mostly the reserving side, as a flood would be
        key = rng.choice(["a", "b"])
        cost = rng.choice([1, 1, 2])
        if rng.random() < 0.1:
            time.sleep(rng.random() * 0.01)
        got = remotes[which].acquire(key, cost)
        server_now[0] = remotes[which].store.last_server_time_ns
        assert locals_[which].acquire(key, cost) == got, (name, which, key, cost)
        seen.add((which, got.allowed))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_batch_decides_in_order_like_memory(redis_url: str) -> None:
    keys = ["a", "b", "a", "a", "c", "a", "b", "b", "b", "b"]
    costs = [1, 2, 1, 1, 3, 1, 1, 1, 1, 1]
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    remote = limiter.FixedWindow(4, 3600.0, backend=backend)
    local = limiter.FixedWindow(4, 3600.0)
    got = remote.allow_batch(keys, costs)
    assert list(got) == list(local.allow_batch(keys, costs))
    assert list(got) == [True] * 8 + [False, False]
    # acquire_batch: the same order, as Decisions (one round trip on a shared rule)
    fresh = [f"{k}-2" for k in keys]
    decided = remote.acquire_batch(fresh, costs)
    assert [d.allowed for d in decided] == [True] * 8 + [False, False]
    expected = local.acquire_batch(fresh, costs)
    assert [d.remaining for d in decided] == [d.remaining for d in expected]


def test_concurrency_leases_like_memory(redis_url: str) -> None:
    remote = limiter.ConcurrencyLimit(3, backend=RedisBackend(redis_url, timeout=1.0))
    local = limiter.ConcurrencyLimit(3)
    held: list[tuple[object, object]] = []
    rng = random.Random(7)
    for _ in range(200):
        if held and rng.random() < 0.45:
            a, b = held.pop(rng.randrange(len(held)))
            a.release()
            b.release()
            continue
        cost = rng.choice([1, 1, 2])
        a, b = remote.acquire("k", cost), local.acquire("k", cost)
        assert (a.allowed, a.remaining) == (b.allowed, b.remaining)
        if a.allowed:
            held.append((a, b))
        assert remote.in_flight("k") == local.in_flight("k")


def test_lease_expires_when_holder_never_releases(redis_url: str) -> None:
    backend = RedisBackend(redis_url, lease_ttl=0.05, timeout=1.0)
    remote = limiter.ConcurrencyLimit(2, backend=backend)
    leaked = [remote.acquire("k"), remote.acquire("k")]
    assert not remote.acquire("k").allowed
    time.sleep(0.08)
    assert remote.in_flight("k") == 0
    fresh = remote.acquire("k")
    assert fresh.allowed
    for permit in leaked:
        permit.release()  # releasing an expired lease changes nothing
    assert remote.in_flight("k") == 1


def test_reset_and_ttl(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    tb = limiter.TokenBucket(10.0, 2, backend=RedisBackend(redis_url, timeout=1.0))
    assert tb.acquire("k", 2).allowed
    assert not tb.acquire("k").allowed
    (key,) = client.keys("*")
    assert 0 < client.pttl(key) <= 202  # idle keys vanish once the bucket is full again
    tb.reset("k")
    assert client.keys("*") == []
    assert tb.acquire("k", 2).allowed


def test_overlimit_cache_answers_refusals_locally(redis_url: str) -> None:
    backend = RedisBackend(redis_url, timeout=1.0)
    fw = limiter.FixedWindow(3, 3600.0, backend=backend)
    assert all(fw.acquire("k").allowed for _ in range(3))
    batches = backend.combiner.batches
    for _ in range(50):
        assert not fw.acquire("k").allowed
    assert backend.combiner.batches == batches + 1  # one refusal from Redis, the rest local
    assert fw.store.cache.hits == 49


async def _gather(fw: limiter.FixedWindow, n: int) -> list[limiter.Decision]:
    import asyncio

    return await asyncio.gather(*(fw.acquire_async("k") for _ in range(n)))


def test_asyncio_path_is_exact(redis_url: str) -> None:
    import asyncio

    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(40, 3600.0, backend=backend)
    decisions = asyncio.run(_gather(fw, 100))
    assert sum(d.allowed for d in decisions) == 40
    assert backend.combiner.batches < 100  # concurrent decisions shared round trips
