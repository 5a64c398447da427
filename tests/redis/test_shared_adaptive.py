"""Replicas of an adaptive limiter converge on one limit through Redis."""

from __future__ import annotations

import time

import pytest

import limiter
from limiter.backends.redis import RedisBackend
from limiter.backends.shared_adaptive import SharedAdaptiveLimiter
from tests.support import PATIENT

KNOBS = dict(target_latency=0.1, percentile=0.9, initial_limit=400, interval=0.05, burst=0.05,
             sync_interval=0.01)  # fmt: skip


def agreed_limit(replicas: list[SharedAdaptiveLimiter]) -> float:
    """Sync until every replica shows one limit: the leader publishes what it computed
    at its next exchange, so on a busy machine a replica may still show the one before."""
    for _ in range(20):
        for r in replicas:
            r.sync()
        limits = {r.current_limit for r in replicas}
        if len(limits) == 1:
            return limits.pop()
    raise AssertionError(f"replicas never agreed: {limits}")


def _replicas(url: str, n: int = 3) -> list[SharedAdaptiveLimiter]:
    return [SharedAdaptiveLimiter(RedisBackend(url, timeout=1.0), "api", **KNOBS) for _ in range(n)]


def test_replicas_converge_on_one_limit_fed_by_all(redis_url: str) -> None:
    replicas = _replicas(redis_url)
    for _ in range(12):  # every replica is slow: the one cluster-wide limit comes down
        for r in replicas:
            for _ in range(10):
                r.record(0.5)
            r.sync()
        time.sleep(0.06)
    # Overload throughout: cut by 1/2, and as that did not cure it, by 1/2 again (or more).
    assert agreed_limit(replicas) <= 100
    assert sum(r.leader for r in replicas) == 1


def test_samples_of_non_leaders_count(redis_url: str) -> None:
    leader, *others = _replicas(redis_url)
    leader.sync()  # first to sync takes the lease
    assert leader.leader
    for _ in range(8):  # only non-leaders see slow calls; the leader must still cut
        for r in others:
            for _ in range(10):
                r.record(0.5, ok=False)
            r.sync()
        time.sleep(0.06)
        leader.sync()
    assert leader.current_limit <= 200  # the first cut halves


def test_admissions_are_paced_cluster_wide(redis_url: str) -> None:
    a, b = _replicas(redis_url, 2)
    start = time.monotonic()
    admitted = sum(r.acquire().allowed for _ in range(200) for r in (a, b))
    elapsed = time.monotonic() - start
    # One GCRA at 400/s with 0.05 s of burst (20) for both replicas together.
    assert 20 <= admitted <= 20 + 400 * elapsed + 1


def test_bad_input(redis_url: str) -> None:
    backend = RedisBackend(redis_url, timeout=PATIENT)
    with pytest.raises(limiter.InvalidParameter, match="name"):
        SharedAdaptiveLimiter(backend, "")
    with pytest.raises(limiter.InvalidParameter, match="sync_interval"):
        SharedAdaptiveLimiter(backend, "x", sync_interval=0)
    s = SharedAdaptiveLimiter(backend, "x")
    with pytest.raises(limiter.InvalidParameter, match="latency"):
        s.record(-1)
    with pytest.raises(limiter.InvalidParameter, match="cost"):
        s.acquire("", 0)
