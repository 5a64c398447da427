"""The service on the Redis backend: shared limits across processes and workers, failure modes."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import v1
from limiter.server.rules import Kind, Rulebook

from limiter import config as rules
from limiter._core import AdaptiveLimiter
from limiter.backends.redis import RedisBackend
from limiter.backends.shared_adaptive import SharedAdaptiveLimiter
from tests.ops.test_propagation import admin_call
from tests.service.conftest import ServiceProcess, request, rls_stub, wait_until
from tests.support import PATIENT, RedisServer

TOKEN = "workers-admin-token-0123456789"
OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
CONFIG = """
domain: shared
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 6, name: per-user}
  - key: open
    rate_limit: {unit: hour, requests_per_unit: 1, name: fail-open, failure_mode: allow}
  - key: closed
    rate_limit: {unit: hour, requests_per_unit: 1000, name: fail-closed, failure_mode: deny}
  - key: inflight
    rate_limit: {requests_per_unit: 2, algorithm: concurrency, name: inflight}
  - key: tb
    rate_limit: {unit: second, requests_per_unit: 1, algorithm: token_bucket, burst: 2, name: tb}
"""


def patient(url: str) -> str:
    """``url`` with a Redis timeout a loaded 2-CPU machine always meets (see PATIENT)."""
    return f"{url}?timeout={PATIENT:g}"


def code(target: str, **entries: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            rls_stub(channel).ShouldRateLimit(request("shared", entries), timeout=10).overall_code
        )


def test_two_service_processes_share_limits(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    a = ServiceProcess(path, "--redis", patient(redis_url)).start()
    b = ServiceProcess(path, "--redis", patient(redis_url)).start()
    try:
        codes = [code(s.target, user="u1") for s in (a, b) * 4]
        assert codes == [OK] * 6 + [OVER] * 2
        assert [code(s.target, tb="k") for s in (a, b, a)] == [OK, OK, OVER]
        # Concurrency permits are leases in Redis: held across processes until released.
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            sa, sb = v1.LimiterStub(ca), v1.LimiterStub(cb)
            check = v1.Check(domain="shared", rule="inflight", key="job")
            first = sa.Decide(v1.DecideRequest(checks=[check, check])).results
            assert [r.allowed for r in first] == [True, True] and all(r.permit for r in first)
            assert not sb.Decide(v1.DecideRequest(checks=[check])).results[0].allowed
            assert sa.Release(v1.ReleaseRequest(permits=[first[0].permit])).released == 1
            again = sb.Decide(v1.DecideRequest(checks=[check])).results[0]
            assert again.allowed
            sa.Release(v1.ReleaseRequest(permits=[first[1].permit]))
            sb.Release(v1.ReleaseRequest(permits=[again.permit]))
            # A big batch of one rule goes to Redis as one pipelined batch, in order.
            batch = [v1.Check(domain="shared", rule="per-user", key="many")] * 10
            answers = sa.Decide(v1.DecideRequest(checks=batch)).results
            assert [r.allowed for r in answers] == [True] * 6 + [False] * 4
            assert [r.remaining for r in answers[:6]] == [5, 4, 3, 2, 1, 0]
            assert not sb.Decide(v1.DecideRequest(checks=batch[:1])).results[0].allowed
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


def test_a_released_lease_is_free_for_other_replicas_when_release_returns(
    redis_url: str,
) -> None:
    config = rules.parse(CONFIG)
    rule = ("shared", "inflight")
    mine = Rulebook(config, backend=RedisBackend(redis_url, timeout=PATIENT)).snapshot.by_name[rule]
    # Another backend object (own connection and queue), as another replica has.
    backend = RedisBackend(redis_url, timeout=PATIENT)
    other = Rulebook(config, backend=backend).snapshot.by_name[rule]
    assert mine.kind is Kind.SHARED_PERMITS and mine.kernel.store is not other.kernel.store

    async def hold(key: str) -> object:
        return await mine.kernel.acquire_async(key, 1)

    for i in range(20):
        key = f"{mine.prefix}job{i}"
        leases = [asyncio.run(hold(key)) for _ in range(2)]
        assert all(lease.allowed for lease in leases)
        assert not other.acquire(key, 1).allowed
        leases[0].release(wait=True)  # what the Release RPC runs before answering
        again = other.acquire(key, 1)
        assert again.allowed, i
        again.release()
        leases[1].release()


ADAPTIVE = """
domain: shared
descriptors:
  - key: backend
    rate_limit: {algorithm: adaptive, unit: second, requests_per_unit: 1000, target_latency: 0.05,
                 name: adaptive}
"""


def test_engine_shares_rate_mode_adaptive_rules_through_redis(redis_url: str) -> None:
    config = rules.parse(
        ADAPTIVE
        + """
  - key: pool
    rate_limit: {algorithm: adaptive, mode: concurrency, requests_per_unit: 8, unit: second,
                 name: pool}
"""
    )
    book = Rulebook(config, backend=RedisBackend(redis_url, timeout=PATIENT))
    rate = book.snapshot.by_name[("shared", "adaptive")]
    pool = book.snapshot.by_name[("shared", "pool")]
    assert isinstance(rate.kernel, SharedAdaptiveLimiter) and rate.kind is Kind.SHARED
    # No shared in-flight count exists: a concurrency-mode rule stays per process.
    assert isinstance(pool.kernel, AdaptiveLimiter) and pool.kind is Kind.PERMITS
    first = rate.acquire("k", 1)
    assert first.allowed and first.limit == 1000  # the adaptive limit, not the GCRA burst
    shared = rate.kernel
    count = len(shared.reports)
    shared.record(0.5, outcome="ignored")
    assert len(shared.reports) == count  # an ignored call is no sample
    shared.record(0.5, outcome="dropped")
    assert shared.reports[-1] == b"500000000:0"
    assert asyncio.run(shared.acquire_async("k", 1)).limit == 1000
    batch = asyncio.run(shared.decide(["a", "b"], [1, 1]))
    assert [(d.allowed, d.limit) for d in batch.decisions] == [(True, 1000), (True, 1000)]
    assert batch.failed == ()


@pytest.mark.timeout(60)
def test_adaptive_rules_converge_on_one_limit_across_processes(
    tmp_path: Path, redis_url: str
) -> None:
    path = tmp_path / "adaptive.yaml"
    path.write_text(ADAPTIVE)
    a = ServiceProcess(path, "--redis", patient(redis_url)).start()
    b = ServiceProcess(path, "--redis", patient(redis_url)).start()
    check = v1.Check(domain="shared", rule="adaptive", key="any")
    slow = [v1.Observation(domain="shared", rule="adaptive", latency=1.0)] * 50
    try:
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            stubs = (v1.LimiterStub(ca), v1.LimiterStub(cb))

            def limits() -> list[int]:
                request = v1.DecideRequest(checks=[check])
                return [s.Decide(request, timeout=10).results[0].limit for s in stubs]

            assert limits() == [1000, 1000]
            # Only A's callers report slow calls; whichever process holds the lease cuts
            # the one shared limit, so B (which saw no slow call) follows it.
            deadline = time.monotonic() + 20
            while max(limits()) >= 1000 and time.monotonic() < deadline:
                assert stubs[0].Observe(v1.ObserveRequest(observations=slow)).accepted == 50
                time.sleep(0.1)
            seen: list[int] = []
            assert wait_until(
                lambda: len(set(seen := limits())) == 1 and seen[0] < 1000, timeout=10
            ), seen
        # /metrics of both processes shows the same adaptive limit.
        gauge = "limiter_adaptive_limit"
        shown = [s.metric(gauge, domain="shared", rule="adaptive") for s in (a, b)]
        assert shown[0] == shown[1] < 1000, shown
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


def test_workers_share_one_port_and_one_limit(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    service = ServiceProcess(
        path, "--redis", patient(redis_url), "--workers", "2", env={"LIMITER_ADMIN_TOKEN": TOKEN}
    ).start()
    try:
        # Both workers listen (until then every connection goes to the first one).
        assert wait_until(lambda: service.logs().count('"msg": "serving"') == 2, timeout=20)
        # Separate connections land on either worker; the limit is still 6 in total.
        codes = [code(service.target, user="w") for _ in range(8)]
        assert codes == [OK] * 6 + [OVER] * 2
        # More connections, so that both workers surely get checks (all 32 on one: 2^-31).
        assert all(code(service.target, user=f"spread-{i}") == OK for i in range(24))
        # Each worker counts the checks it answered itself: both answered, none twice.
        hits = worker_hits(service, "per-user", workers=2)
        assert len(hits) == 2 and all(n > 0 for n in hits.values()), hits
        assert sum(hits.values()) == 32, hits
        # Any worker answers /metrics for both (published every second).
        total = "limiter_rule_total_hits_total"
        assert wait_until(lambda: service.metric(total, rule="per-user", detailed="false") == 32)
        time.sleep(1.2)  # every worker has published since (other workers' view is <= 1 s old)
        assert all(service.metric(total, rule="per-user", detailed="false") == 32 for _ in range(6))
        service.signal(signal.SIGHUP)  # forwarded to every worker
        assert wait_until(lambda: service.logs().count('"reason": "signal"') == 2, timeout=10)
    finally:
        assert service.stop() == 0


def worker_hits(service: ServiceProcess, rule: str, workers: int) -> dict[int, int]:
    """``rule``'s checks counted by each worker process itself (``/v1/rules`` is per
    process and says whose counts it shows), asked on new connections until every
    worker has answered."""
    base = f"http://127.0.0.1:{service.http_port}"
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 20
    while len(seen) < workers and time.monotonic() < deadline:
        status, view = admin_call(base, "GET", "/v1/rules", token=TOKEN)
        assert status == 200, view
        seen[view["pid"]] = sum(r["total_hits"] for r in view["rules"] if r["name"] == rule)
    return seen


@pytest.mark.timeout(60)
def test_redis_down_follows_each_rules_failure_mode(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    with RedisServer() as redis:
        service = ServiceProcess(path, "--redis", patient(redis.url)).start()
        try:
            assert code(service.target, open="a") == OK
            assert code(service.target, open="a") == OVER
            redis.kill()
            started = time.monotonic()
            assert code(service.target, open="b") == OK  # allow: fail open
            assert code(service.target, closed="b") == OVER  # deny: fail closed
            assert time.monotonic() - started < 5
            assert service.metric("limiter_backend_errors_total", rule="fail-open") >= 1
            assert service.http("GET", "/healthcheck")[0] == 200
            redis.start()
            assert wait_until(lambda: code(service.target, closed="c") == OK, timeout=10)
        finally:
            assert service.stop() == 0


def test_unreachable_redis_at_start_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support import refused_port

    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    with refused_port() as port:
        run = subprocess.run(
            [sys.executable, "-m", "limiter.server.cli", "serve", "--config", str(path), "--redis",
             f"redis://127.0.0.1:{port}/0", "--grpc-port", "0", "--http-port", "0"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert run.returncode == 1 and "unreachable" in run.stderr, run.stderr
