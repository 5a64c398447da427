"""Queued admission in a real ``limiter serve``: many concurrent gRPC callers, metrics scraped."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import v1

from tests.service.conftest import ServiceProcess, native_stub, request, rls_stub, wait_until

Result = v1.Result
CONFIG = """
domain: q
descriptors:
  - key: slow
    rate_limit:
      unit: second
      requests_per_unit: 40
      algorithm: token_bucket
      burst: 4  # 100 ms of tokens: a late timer on a loaded machine loses none
      name: slow
      queue: {mode: weighted, weights: [3, 2, 1, 1], max_queue: 100}
  - key: tiny
    rate_limit:
      unit: hour
      requests_per_unit: 1
      name: tiny
      queue: {max_queue: 1}
  - key: inflight
    rate_limit: {requests_per_unit: 1, algorithm: concurrency, name: inflight}
  - key: held
    rate_limit: {unit: second, requests_per_unit: 100, algorithm: token_bucket, burst: 1,
                 name: held, hold: 0.015}
  - key: prompt
    rate_limit: {unit: second, requests_per_unit: 100, algorithm: token_bucket, burst: 1,
                 name: prompt}
"""
MAX_WAIT = 3.0
WORKERS = 12  # closed-loop callers per class: every class stays backlogged
RUN_S = 6.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path = tmp_path_factory.mktemp("admission") / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path).start()
    yield proc
    assert proc.stop() == 0


def check(rule: str, key: str, priority: int = 0, max_wait: float = MAX_WAIT) -> v1.Check:  # type: ignore[name-defined]
    return v1.Check(domain="q", rule=rule, key=key, priority=priority, max_wait=max_wait)


def queued(
    proc: ServiceProcess, stub: v1.LimiterStub, rule: str, key: str, priority: int
) -> grpc.Future:
    """Send a check that may wait 30 s; return its future once the service holds it."""
    request = v1.DecideRequest(checks=[check(rule, key, priority, 30.0)])
    future = stub.Decide.future(request, timeout=60)
    labels = {"domain": "q", "rule": rule, "priority": "critical"}
    assert wait_until(lambda: proc.metric("limiter_queue_depth", **labels) == 1, 10)
    return future


def test_mixed_priorities_under_sustained_overload(service: ServiceProcess) -> None:
    """Weights 3:2:1 at a 40/s rule: served ratio follows them, the top class waits least,
    and no admitted check waited past its max_wait."""
    priorities = (1, 2, 3)  # CRITICAL_PLUS, CRITICAL, SHEDDABLE_PLUS -> classes 0, 1, 2
    admitted: dict[int, list[float]] = {p: [] for p in priorities}
    busy: dict[int, int] = dict.fromkeys(priorities, 0)
    late: list[tuple[float, float]] = []

    async def worker(stub: v1.LimiterStub, priority: int, stop: float) -> None:
        request = v1.DecideRequest(checks=[check("slow", "k", priority)])
        while time.monotonic() < stop:
            start = time.monotonic()
            result = (await stub.Decide(request, timeout=MAX_WAIT + 10)).results[0]
            elapsed = time.monotonic() - start
            if start + elapsed > stop:
                return  # the backlog drains after the callers stop: not overload any more
            if result.allowed:
                admitted[priority].append(result.waited)
                if result.waited > MAX_WAIT or elapsed > MAX_WAIT + 1.0:
                    late.append((result.waited, elapsed))
            else:
                assert result.code == Result.QUEUE_TIMEOUT, result
                busy[priority] += 1

    async def main() -> None:
        async with grpc.aio.insecure_channel(service.target) as channel:
            stub = native_stub(channel)
            stop = time.monotonic() + RUN_S
            await asyncio.wait_for(
                asyncio.gather(
                    *(worker(stub, p, stop) for p in priorities for _ in range(WORKERS))
                ),
                RUN_S + MAX_WAIT + 20,
            )

    asyncio.run(main())
    counts = {p: len(admitted[p]) for p in priorities}
    total = sum(counts.values())
    # 40/s for RUN_S seconds (plus the burst); a loaded machine may run it a little slower.
    assert 0.6 * 40 * RUN_S <= total <= 40 * RUN_S + 5, counts
    for p, weight in zip(priorities, (3, 2, 1), strict=True):
        assert abs(counts[p] / total - weight / 6) < 0.06, (counts, busy)
    assert not late, late
    p50 = {p: statistics.median(admitted[p]) for p in priorities}
    assert p50[1] < 0.6 * p50[3], p50  # the top class waits far less than the bottom one
    assert p50[1] < p50[2] < p50[3], p50
    # /metrics agrees with what the callers saw (the first checks, within the burst,
    # pass at once without entering the queue).
    for p, name in zip(priorities, ("critical_plus", "critical", "sheddable_plus"), strict=True):
        labels = {"domain": "q", "rule": "slow", "priority": name}
        queued = service.metric("limiter_queue_admitted_total", **labels)
        # + what drained after the stop, which the callers did not count
        assert counts[p] - 4 <= queued <= counts[p] + WORKERS
        assert busy[p] <= service.metric("limiter_queue_expired_total", **labels)
        assert service.metric("limiter_queue_depth", **labels) == 0
        assert service.metric("limiter_queue_wait_seconds_count", **labels) == service.metric(
            "limiter_queue_admitted_total", **labels
        )
        assert service.metric("limiter_queue_wait_seconds_bucket", **labels, le="+Inf") > 0


def test_expired_wait_is_busy_and_counted(service: ServiceProcess) -> None:
    """A check whose max_wait runs out is answered QUEUE_TIMEOUT once it ran out, not later."""
    labels = {"domain": "q", "rule": "tiny", "priority": "sheddable"}
    before = service.metric("limiter_queue_expired_total", **labels)
    with grpc.insecure_channel(service.target) as channel:
        stub = native_stub(channel)
        first = stub.Decide(v1.DecideRequest(checks=[check("tiny", "e", 4)]), timeout=10)
        assert first.results[0].allowed
        start = time.monotonic()
        late = stub.Decide(v1.DecideRequest(checks=[check("tiny", "e", 4, 0.2)]), timeout=10)
        elapsed = time.monotonic() - start
    result = late.results[0]
    assert not result.allowed and result.code == Result.QUEUE_TIMEOUT
    # Not held on past max_wait (slack for a timer firing late on a loaded machine).
    assert 0.2 <= result.waited < 1.0 and 0.2 <= elapsed < 2.0, (result.waited, elapsed)
    assert service.metric("limiter_queue_expired_total", **labels) == before + 1


def test_full_class_answers_at_once(service: ServiceProcess) -> None:
    labels = {"domain": "q", "rule": "tiny", "priority": "critical"}
    before = service.metric("limiter_queue_rejected_total", **labels)

    async def main() -> list[tuple[object, float]]:
        async with grpc.aio.insecure_channel(service.target) as channel:
            stub = native_stub(channel)
            await stub.Decide(v1.DecideRequest(checks=[check("tiny", "f", 2, 0)]), timeout=10)

            async def one() -> tuple[object, float]:
                start = time.monotonic()
                answer = await stub.Decide(
                    v1.DecideRequest(checks=[check("tiny", "f", 2, 1.0)]), timeout=10
                )
                return answer.results[0], time.monotonic() - start

            return await asyncio.gather(*(one() for _ in range(3)))

    outcomes = asyncio.run(main())
    codes = sorted(r.code for r, _ in outcomes)  # type: ignore[attr-defined]
    # One waits its second out (the class holds one); the others are refused at once.
    assert codes == [Result.OVER_LIMIT, Result.OVER_LIMIT, Result.QUEUE_TIMEOUT], outcomes
    for result, elapsed in outcomes:
        if result.code == Result.OVER_LIMIT:  # type: ignore[attr-defined]
            assert result.waited == 0 and elapsed < 0.9  # type: ignore[attr-defined]
    assert service.metric("limiter_queue_rejected_total", **labels) == before + 2


def test_cancelled_caller_leaves_the_queue_without_leaking_the_permit(
    service: ServiceProcess,
) -> None:
    labels = {"domain": "q", "rule": "inflight", "priority": "critical"}
    before = service.metric("limiter_queue_cancelled_total", **labels)
    with grpc.insecure_channel(service.target) as channel:
        stub = native_stub(channel)
        holder = stub.Decide(v1.DecideRequest(checks=[check("inflight", "c", 0, 0)]), timeout=10)
        permit = holder.results[0].permit
        assert holder.results[0].allowed and permit
        queued(service, stub, "inflight", "c", 0).cancel()
        assert wait_until(
            lambda: service.metric("limiter_queue_cancelled_total", **labels) == before + 1, 10
        )
        assert service.metric("limiter_queue_depth", **labels) == 0
        assert stub.Release(v1.ReleaseRequest(permits=[permit]), timeout=10).released == 1
        again = stub.Decide(v1.DecideRequest(checks=[check("inflight", "c", 0, 0)]), timeout=10)
        assert again.results[0].allowed  # the cancelled waiter took no slot
        stub.Release(v1.ReleaseRequest(permits=[again.results[0].permit]), timeout=10)


def test_grpc_deadline_caps_the_hold(service: ServiceProcess) -> None:
    """The answer comes before the caller's deadline even if max_wait is longer."""
    with grpc.insecure_channel(service.target) as channel:
        stub = native_stub(channel)
        stub.Decide(v1.DecideRequest(checks=[check("tiny", "d", 2, 0)]), timeout=10)
        answer = stub.Decide(v1.DecideRequest(checks=[check("tiny", "d", 2, 60.0)]), timeout=3)
    # An answer (not DEADLINE_EXCEEDED): held until a margin (0.17 s here) before the
    # deadline, give or take the event loop's lateness on a loaded machine.
    result = answer.results[0]
    assert result.code == Result.QUEUE_TIMEOUT and 1.0 < result.waited < 3.0, result


def test_rls_answers_at_once_unless_the_rule_holds(service: ServiceProcess) -> None:
    """Pairs of concurrent RLS calls at a 100/s bucket of one token: with ``hold: 0.015``
    the second of a pair waits for the next token (~10 ms) and passes; the same rule
    without a hold refuses it at once."""
    ok = rls_pb2.RateLimitResponse.OK

    def run(rule: str) -> int:
        with grpc.insecure_channel(service.target) as channel:
            stub = rls_stub(channel)
            passed = 0
            for _ in range(10):
                time.sleep(0.03)  # the bucket refills
                calls = [
                    stub.ShouldRateLimit.future(request("q", {rule: "x"}), timeout=10)
                    for _ in range(2)
                ]
                passed += sum(c.result().overall_code == ok for c in calls)
            return passed

    held = run("held")
    prompt = run("prompt")
    # (On a quiet machine: 20 and 10. Under load the two calls of a pair may arrive more
    # than a token apart, and then both pass either way.)
    assert held >= 15 and prompt <= 15 and held > prompt, (held, prompt)
    labels = {"domain": "q", "rule": "held", "priority": "critical"}
    admitted = service.metric("limiter_queue_admitted_total", **labels)
    assert admitted >= 1
    # Every held check waited at most the hold (15 ms; the histogram's next bound: 25 ms).
    assert service.metric("limiter_queue_wait_seconds_bucket", **labels, le="0.025") == admitted
    assert service.metric("limiter_queue_admitted_total", rule="prompt") == 0


def test_shutdown_answers_held_checks_busy_at_once(tmp_path: Path) -> None:
    """SIGTERM: held checks are answered QUEUE_TIMEOUT now, not after their max_wait."""
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path, "--drain-seconds", "20").start()
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stub = native_stub(channel)
            stub.Decide(v1.DecideRequest(checks=[check("tiny", "t", 2, 0)]), timeout=10)
            future = queued(proc, stub, "tiny", "t", 2)
            start = time.monotonic()
            proc.signal(signal.SIGTERM)
            result = future.result(timeout=15).results[0]
            assert result.code == Result.QUEUE_TIMEOUT and not result.allowed
            assert time.monotonic() - start < 5
        assert proc.proc is not None and proc.proc.wait(timeout=20) == 0  # drained, exited
    finally:
        proc.stop()


def test_reload_with_new_queue_settings_answers_held_checks(tmp_path: Path) -> None:
    """The reloader tells the queues: a rule whose queue settings change answers its held
    checks busy now, and its next checks wait under the new settings."""
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path).start()
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stub = native_stub(channel)
            stub.Decide(v1.DecideRequest(checks=[check("tiny", "r", 2, 0)]), timeout=10)
            future = queued(proc, stub, "tiny", "r", 2)
            start = time.monotonic()
            path.write_text(CONFIG.replace("queue: {max_queue: 1}", "queue: {max_queue: 2}"))
            result = future.result(timeout=15).results[0]
            assert result.code == Result.QUEUE_TIMEOUT and time.monotonic() - start < 10
            # Two may wait now: a third is refused at once.
            calls = [
                stub.Decide.future(
                    v1.DecideRequest(checks=[check("tiny", "r", 2, 0.5)]), timeout=10
                )
                for _ in range(3)
            ]
            codes = sorted(c.result().results[0].code for c in calls)
            assert codes == [Result.OVER_LIMIT] + [Result.QUEUE_TIMEOUT] * 2, codes
    finally:
        assert proc.stop() == 0
