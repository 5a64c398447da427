"""Redis dies (SIGKILL) and comes back during load: every rule follows its failure mode."""

from __future__ import annotations

import threading
import time

import pytest
import redis

import limiter
from limiter.backends.redis import RedisBackend
from tests.support import PATIENT, RedisServer


def _hammer(fw: limiter.FixedWindow, stop: threading.Event, log: list) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            d = fw.acquire("load")
            log.append((t0, time.monotonic() - t0, d.allowed, None))
        except Exception as exc:  # the test asserts that none escaped
            log.append((t0, time.monotonic() - t0, None, exc))


@pytest.mark.parametrize("mode", ["deny", "allow", "local"])
def test_sigkill_and_restart_during_load(own_redis: RedisServer, mode: str) -> None:
    # 50 ms rather than the 20 ms default: CI machines this loaded miss 20 ms now and then.
    backend = RedisBackend(own_redis.url, local_cache=False, timeout=0.05)
    # never full: refusals mean "deny"
    fw = limiter.FixedWindow(10**9, 3600.0, backend=backend, failure_mode=mode)
    # shows local limiting in "local"
    small = limiter.TokenBucket(0.001, 5, backend=backend, failure_mode=mode)
    stop = threading.Event()
    logs: list[list] = [[] for _ in range(4)]
    threads = [threading.Thread(target=_hammer, args=(fw, stop, log)) for log in logs]
    for t in threads:
        t.start()
    time.sleep(0.3)
    own_redis.kill()
    killed = time.monotonic()
    time.sleep(0.4)
    outage = [small.acquire("k").allowed for _ in range(8)]
    restarting = time.monotonic()
    own_redis.start()
    restarted = time.monotonic()
    client = redis.Redis(port=own_redis.port)
    while client.dbsize() == 0 and time.monotonic() - restarted < 3:
        time.sleep(0.005)
    resumed = time.monotonic() - restarted
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    entries = [e for log in logs for e in log]
    assert [e[3] for e in entries if e[3] is not None] == []
    # No call hangs: a blocking socket would stall for seconds to minutes. The bound is loose
    # because a loaded 2-core CI box can starve a thread for a few hundred ms by itself.
    assert max(e[1] for e in entries) < 2.0
    # Decided entirely while Redis was down (a call queued before the restart may be sent after).
    during = [e[2] for e in entries if killed + 0.05 < e[0] and e[0] + e[1] < restarting]
    assert during, "no decisions were made while Redis was down"
    if mode == "deny":
        assert not any(during)
        assert not any(outage)
    else:
        assert all(during)
        assert outage == ([True] * 8 if mode == "allow" else [True] * 5 + [False] * 3)
    assert resumed <= 1.0, f"shared limiting resumed {resumed:.3f}s after Redis returned"
    assert backend.breaker.trips >= 1
    # State is coherent afterwards: a fresh count on the restarted server is exact.
    after = limiter.FixedWindow(3, 3600.0, backend=RedisBackend(own_redis.url, timeout=1.0))
    assert [after.acquire("fresh").allowed for _ in range(4)] == [True, True, True, False]


def test_dead_redis_costs_microseconds_not_timeouts(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, timeout=PATIENT)
    tb = limiter.TokenBucket(10.0, 5, backend=backend, failure_mode="allow")
    assert tb.acquire("k").allowed
    own_redis.kill()
    tb.acquire("k")  # notices the failure and opens the breaker
    t0 = time.perf_counter()
    for _ in range(1000):
        assert tb.acquire("k").allowed
    assert time.perf_counter() - t0 < 1.0  # 1000 timeouts would take 1000 s
    assert backend.breaker.is_open


def test_unreachable_at_start(own_redis: RedisServer) -> None:
    url = own_redis.url
    own_redis.kill()
    with pytest.raises(limiter.ConfigError, match=url.replace("/0", "")):
        RedisBackend(url)
    with pytest.raises(limiter.ConfigError, match="unreachable"):
        limiter.TokenBucket(1.0, 1, backend=url.replace("/0", "/0?timeout=0.05"))
    backend = RedisBackend(url, require_at_start=False)
    tb = limiter.TokenBucket(0.001, 2, backend=backend)
    assert [tb.acquire("k").allowed for _ in range(3)] == [True, True, False]
    own_redis.start()
    time.sleep(backend.breaker.cooldown + 0.05)
    assert tb.acquire("k").allowed  # Redis is back: a fresh shared bucket
    assert redis.Redis(port=own_redis.port).dbsize() == 1


def test_redis_error_replies_follow_failure_mode(own_redis: RedisServer) -> None:
    client = redis.Redis(port=own_redis.port)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    patient = RedisBackend(own_redis.url, timeout=PATIENT)
    closed = limiter.FixedWindow(5, 1.0, backend=patient, failure_mode="deny")
    opened = limiter.FixedWindow(5, 1.0, backend=patient, failure_mode="allow")
    assert not closed.acquire("k").allowed
    assert opened.acquire("k").allowed
    assert isinstance(closed.store.last_error, redis.exceptions.OutOfMemoryError)
    assert not closed.store.backend.breaker.is_open  # the server is up; only writes fail
    client.config_set("maxmemory", 0)
    assert closed.acquire("k").allowed


def test_readonly_replica_follows_failure_mode(own_redis: RedisServer) -> None:
    with RedisServer("--replicaof", "127.0.0.1", str(own_redis.port)) as replica:
        backend = RedisBackend(replica.url, timeout=PATIENT)
        fw = limiter.FixedWindow(5, 1.0, backend=backend, failure_mode="local")
        assert [fw.acquire("k").allowed for _ in range(6)] == [True] * 5 + [False]
        assert fw.store.failures == 6 and fw.store.backend.breaker.trips == 1


def test_script_flush_is_recovered(own_redis: RedisServer) -> None:
    """Scripts are loaded on connect; a SCRIPT FLUSH later is met by NOSCRIPT recovery."""
    backend = RedisBackend(own_redis.url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(3, 3600.0, backend=backend)
    assert fw.acquire("k").allowed
    client = redis.Redis(port=own_redis.port)
    client.script_flush()
    assert [fw.acquire("k").allowed for _ in range(3)] == [True, True, False]
    assert fw.store.failures == 0
    assert client.script_exists(fw.store.codec.script.sha) == [True]
