"""limiter.AdaptiveLimiter(backend=...) shares one limit through a real redis-server."""

from __future__ import annotations

import time

import pytest

from limiter import AdaptiveLimiter, ConfigError, InvalidParameter, _core
from limiter._core import AdaptiveLimit
from limiter.backends.redis import RedisBackend
from limiter.backends.shared_adaptive import SharedAdaptiveLimiter, SharedAdaptivePermit
from tests.redis.test_shared_adaptive import agreed_limit

S = 1_000_000_000
KNOBS = dict(target_latency=0.1, percentile=0.9, initial_limit=400, interval=0.05, burst=0.05,
             sync_interval=0.01)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.t = 100 * S

    def __call__(self) -> int:
        return self.t


def test_two_limiters_on_one_redis_converge_on_one_limit(redis_url: str) -> None:
    clock = Clock()
    a, b = (AdaptiveLimiter(backend=redis_url, name="api", clock=clock, **KNOBS) for _ in range(2))
    assert isinstance(a, SharedAdaptiveLimiter) and a.mode == "rate"
    for _ in range(12):  # both see slow calls, measured by their permits
        for lim in (a, b):
            for _ in range(10):
                permit = lim.acquire("k")
                assert isinstance(permit, SharedAdaptivePermit)
                if permit.allowed:  # paced by the shared GCRA on the real clock
                    with permit:
                        clock.t += S // 2
            lim.sync()
        time.sleep(0.06)
    # Overload throughout: cut by 1/2, and as that did not cure it, by 1/2 again (or more).
    assert agreed_limit([a, b]) <= 100
    assert sum(lim.leader for lim in (a, b)) == 1
    assert a.current_limit == b.current_limit
    assert a.in_flight == b.in_flight == 0


def test_record_and_refusals_go_through_the_shared_limit(redis_url: str) -> None:
    a, b = (AdaptiveLimiter(backend=RedisBackend(redis_url, timeout=1.0), name="pace", **KNOBS)
            for _ in range(2))  # fmt: skip
    start = time.monotonic()
    admitted = 0
    for _ in range(200):
        for lim in (a, b):
            d = lim.acquire()
            admitted += d.allowed
            if d.allowed:
                d.ignore()  # not a latency sample
            else:
                assert d.retry_after > 0
    elapsed = time.monotonic() - start
    # One GCRA at 400/s with 0.05 s of burst (20) for both limiters together.
    assert 20 <= admitted <= 20 + 400 * elapsed + 1
    # Calls twice the target: overload. A call that started before a cut says nothing
    # about the new limit, so after each cut the leader waits for calls younger than it;
    # a loaded machine may take more rounds than a quiet one.
    deadline = time.monotonic() + 10
    while a.current_limit > 100 and time.monotonic() < deadline:
        for _ in range(10):
            a.record(0.2)
        a.sync()
        b.sync()
        time.sleep(0.06)
    assert agreed_limit([a, b]) <= 100  # two halving cuts, at least
    assert a.current_limit == b.current_limit


def test_default_stays_in_memory() -> None:
    assert isinstance(AdaptiveLimiter(clock=Clock()), _core.AdaptiveLimiter)
    assert isinstance(AdaptiveLimiter(backend="memory://", clock=Clock()), _core.AdaptiveLimiter)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "concurrency"}, "mode"),
        ({"limit_model": AdaptiveLimit()}, "limit_model"),
        ({"name": ""}, "name"),
        ({"burst": 0}, "burst"),
        ({"queue_cap": 0.4}, "queue_cap"),
    ],
)
def test_bad_shared_parameters(redis_url: str, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidParameter, match=field):
        AdaptiveLimiter(backend=redis_url, **kwargs)


def test_unreachable_redis_names_the_url() -> None:
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:1"):
        AdaptiveLimiter(backend="redis://127.0.0.1:1/0")
