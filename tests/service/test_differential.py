"""RLS == native Decide == in-process, for every algorithm, in memory and on Redis.

The same sequence of checks (keys and costs) goes through Envoy RLS and the native API
of one decision pipeline, and through the public in-process limiter built with the same
parameters. Each path has its own keys, so the three states are independent and must
evolve identically. Limits are per hour, so nothing refills while the test runs.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import v1
from limiter.server.decider import Decider
from limiter.server.metrics import Metrics
from limiter.server.native import LimiterService
from limiter.server.rls import HeaderOptions, RateLimitService
from limiter.server.rules import Rulebook

import limiter
from limiter import config as rules
from limiter.backends.redis import RedisBackend

HOUR = 3600.0
# algorithm name -> (rate_limit YAML, the in-process limiter with the same parameters)
ALGORITHMS: dict[str, tuple[str, Any]] = {
    "fixed_window": (
        "{unit: hour, requests_per_unit: 7}",
        lambda backend: limiter.FixedWindow(7, HOUR, backend=backend),
    ),
    "sliding_window": (
        "{unit: hour, requests_per_unit: 7, algorithm: sliding_window}",
        lambda backend: limiter.SlidingWindow(7, HOUR, backend=backend),
    ),
    "token_bucket": (
        "{unit: hour, requests_per_unit: 4, algorithm: token_bucket, burst: 9}",
        lambda backend: limiter.TokenBucket(4 / HOUR, 9, backend=backend),
    ),
    "leaky_bucket": (
        "{unit: hour, requests_per_unit: 4, algorithm: leaky_bucket, burst: 5}",
        lambda backend: limiter.LeakyBucket(4 / HOUR, 5, backend=backend),
    ),
    "concurrency": (
        "{requests_per_unit: 6, algorithm: concurrency}",
        lambda backend: limiter.ConcurrencyLimit(6, backend=backend),
    ),
}


def _checks(seed: int) -> list[tuple[int, int]]:
    """(key index, cost) pairs: a few keys, costs of 1 to 3."""
    rng = random.Random(seed)
    return [(rng.randrange(3), rng.choice([1, 1, 1, 2, 3])) for _ in range(40)]


def _pipeline(algorithm: str, backend: Any) -> tuple[RateLimitService, LimiterService]:
    text = f"domain: d\ndescriptors:\n  - key: k\n    rate_limit: {ALGORITHMS[algorithm][0]}\n"
    book = Rulebook(rules.parse(text), backend=backend)
    decider = Decider(book)
    metrics = Metrics()
    return RateLimitService(decider, metrics, HeaderOptions()), LimiterService(decider, metrics)


async def _answers(
    algorithm: str, backend: Any, checks: list[tuple[int, int]]
) -> dict[str, list[tuple[bool, int]]]:
    rls, native = _pipeline(algorithm, backend)
    inproc = ALGORITHMS[algorithm][1](backend)
    holds = algorithm == "concurrency"  # native holds its permits; RLS holds nothing
    out: dict[str, list[tuple[bool, int]]] = {"rls": [], "native": [], "in-process": []}
    free: list[tuple[bool, int]] = []  # in-process, each permit released at once (as RLS)
    kept = []  # in-process permits held as native holds them (a dropped permit frees itself)
    for key, cost in checks:
        request = rls_pb2.RateLimitRequest(domain="d", hits_addend=cost)
        request.descriptors.add().entries.add(key="k", value=f"rls{key}")
        answer = await rls.decide(request)
        status = answer.statuses[0]
        out["rls"].append((status.code == rls_pb2.RateLimitResponse.OK, status.limit_remaining))
        check = v1.Check(domain="d", rule="k", key=f"native{key}", cost=cost)
        (result,) = (await native.decide(v1.DecideRequest(checks=[check]))).results
        out["native"].append((result.allowed, result.remaining))
        d = inproc.acquire(f"inproc{key}", cost)
        out["in-process"].append((d.allowed, d.remaining))
        kept.append(d)
        if holds:
            r = inproc.acquire(f"free{key}", cost)
            free.append((r.allowed, r.remaining))
            if r.allowed:
                r.release()
    if holds:
        out["in-process (released)"] = free
    return out


def _check_equal(answers: dict[str, list[tuple[bool, int]]]) -> None:
    if "in-process (released)" in answers:
        # Concurrency: RLS asks "would it fit now" and holds nothing.
        assert answers["rls"] == answers.pop("in-process (released)")
        assert answers["native"] == answers["in-process"]
        refused = [a for a in answers["native"] if not a[0]]
    else:
        assert answers["rls"] == answers["native"] == answers["in-process"]
        refused = [a for a in answers["rls"] if not a[0]]
    assert refused and len(refused) < len(answers["native"])  # the sequence tests both answers


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_rls_native_and_in_process_agree_in_memory(algorithm: str) -> None:
    _check_equal(asyncio.run(_answers(algorithm, None, _checks(1))))


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_rls_native_and_in_process_agree_on_redis(algorithm: str, redis_url: str) -> None:
    backend = RedisBackend(redis_url, timeout=1.0)
    try:
        _check_equal(asyncio.run(_answers(algorithm, backend, _checks(2))))
    finally:
        backend.close()


ADAPTIVE = {
    "rate": "{algorithm: adaptive, unit: hour, requests_per_unit: 1}",
    "concurrency": "{algorithm: adaptive, mode: concurrency, unit: second, requests_per_unit: 2}",
}


@pytest.mark.parametrize("mode", sorted(ADAPTIVE))
def test_adaptive_rules_agree_across_paths(mode: str) -> None:
    """An adaptive limit guards the whole backend (one limit for every key): each path
    gets its own rule state, and the answers must match the in-process limiter's."""

    async def run() -> dict[str, list[bool]]:
        text = f"domain: d\ndescriptors:\n  - key: k\n    rate_limit: {ADAPTIVE[mode]}\n"
        out: dict[str, list[bool]] = {}
        for path in ("rls", "native"):
            decider = Decider(Rulebook(rules.parse(text)))
            rls = RateLimitService(decider, Metrics(), HeaderOptions())
            native = LimiterService(decider, Metrics())
            answers = []
            for i in range(4):
                if path == "rls":
                    request = rls_pb2.RateLimitRequest(domain="d")
                    request.descriptors.add().entries.add(key="k", value=f"c{i}")
                    code = (await rls.decide(request)).overall_code
                    answers.append(code == rls_pb2.RateLimitResponse.OK)
                else:
                    check = v1.Check(domain="d", rule="k", key=f"c{i}")
                    (r,) = (await native.decide(v1.DecideRequest(checks=[check]))).results
                    answers.append(r.allowed)
            out[path] = answers
        if mode == "rate":
            rate = 1 / HOUR
            kernel = limiter.AdaptiveLimiter(
                mode="rate", max_limit=rate, initial_limit=rate, min_limit=rate
            )
            out["in-process"] = [kernel.acquire(f"c{i}").allowed for i in range(4)]
        else:
            kernel = limiter.AdaptiveLimiter(mode="concurrency", max_limit=2, initial_limit=2,
                                             min_limit=1)  # fmt: skip
            held = [kernel.acquire(f"c{i}") for i in range(4)]
            out["in-process"] = [p.allowed for p in held]
            out["in-process (released)"] = []
            other = limiter.AdaptiveLimiter(mode="concurrency", max_limit=2, initial_limit=2,
                                            min_limit=1)  # fmt: skip
            for i in range(4):
                p = other.acquire(f"r{i}")
                out["in-process (released)"].append(p.allowed)
                p.ignore()
        return out

    answers = asyncio.run(run())
    if mode == "rate":
        assert answers["rls"] == answers["native"] == answers["in-process"] == [True] + [False] * 3
    else:
        assert answers["rls"] == answers["in-process (released)"] == [True] * 4
        assert answers["native"] == answers["in-process"] == [True, True, False, False]
