"""Concurrency permits and held checks: one caller cannot take what every caller shares.

Attack (permits): a caller asks for permits on ever new keys and never releases them,
until the rule's key table is full and every other caller is refused (with no hint of
when to retry) until the permits expire. Attack (holds): a caller sends thousands of
checks that may wait, each held for admission until its wait runs out.
"""

from __future__ import annotations

import concurrent.futures

from limiter.server import v1

from tests.service.conftest import native_stub

CONFIG = """domain: d
descriptors:
  - key: job
    rate_limit: {algorithm: concurrency, requests_per_unit: 1, name: jobs}
  - key: user
    rate_limit: {algorithm: token_bucket, unit: hour, requests_per_unit: 1, name: users}
"""
PERMIT_TTL = 60.0


def decide(stub, rule: str, keys: list[str], max_wait: float = 0.0):  # type: ignore[no-untyped-def]
    checks = [v1.Check(domain="d", rule=rule, key=k, max_wait=max_wait) for k in keys]
    return stub.Decide(v1.DecideRequest(checks=checks), timeout=30).results


def test_one_caller_cannot_hold_every_permit(serve, relay) -> None:  # type: ignore[no-untyped-def]
    service = serve(
        CONFIG, "--max-keys", "100", "--permit-ttl", str(PERMIT_TTL),
        "--max-permits-per-caller", "50", "--max-permits-per-rule", "80",
    )  # fmt: skip
    attacker = relay(service.grpc_port, "127.0.0.2").channel()
    results = decide(native_stub(attacker), "jobs", [f"tenant-{i}" for i in range(200)])
    granted = [r for r in results if r.allowed]
    refused = [r for r in results if not r.allowed]
    assert len(granted) == 50
    # Refused with when one of the caller's own permits expires, not "retry now".
    assert all(PERMIT_TTL - 10 < r.retry_after <= PERMIT_TTL for r in refused), refused[0]

    # Another caller (127.0.0.1) is still served: the table was not filled by one caller.
    with v1_channel(service) as channel:
        victim = native_stub(channel)
        (mine,) = decide(victim, "jobs", ["victim"])
        assert mine.allowed and mine.permit
        assert victim.Release(v1.ReleaseRequest(permits=[mine.permit])).released == 1

        # A second heavy caller fills what is left of the rule's bound; past it the
        # newcomer is refused with a real retry_after, and the holders keep theirs.
        second = relay(service.grpc_port, "127.0.0.3").channel()
        results = decide(native_stub(second), "jobs", [f"other-{i}" for i in range(50)])
        assert sum(r.allowed for r in results) == 30
        (late,) = decide(victim, "jobs", ["late"])
        assert not late.allowed and PERMIT_TTL - 10 < late.retry_after <= PERMIT_TTL
    assert service.metric("limiter_permits_held") == 80
    # Granted by the rule, then refused by a bound: 50 of the first caller's (the kernel's
    # table, 100 keys, refused its other 100 while the request was decided), 20, 1.
    assert service.metric("limiter_permits_refused_total") == 50 + 20 + 1


def test_held_checks_are_bounded_per_caller_and_per_rule(serve, relay) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, "--max-held-per-caller", "100", "--max-held-per-rule", "150")
    wait = 3.0
    # Each key's second check is refused (one per hour) and may wait: it asks to be held.
    keys = [f"u{i // 2}" for i in range(2000)]
    pool = concurrent.futures.ThreadPoolExecutor(2)
    first = relay(service.grpc_port, "127.0.0.2").channel()
    second = relay(service.grpc_port, "127.0.0.3").channel()
    a = pool.submit(decide, native_stub(first), "users", keys, wait)
    assert _until(lambda: _held(service) >= 100)
    b = pool.submit(decide, native_stub(second), "users", [f"b{k}" for k in keys], wait)
    assert _until(lambda: _held(service) >= 150)
    assert _held(service) == 150
    with v1_channel(service) as channel:
        # Over the rule's bound: answered at once, not held.
        (now,) = decide(native_stub(channel), "users", ["u0"], wait)
        assert not now.allowed and now.code == v1.Result.OVER_LIMIT and now.waited == 0
    for future, held in ((a, 100), (b, 50)):
        results = future.result(timeout=30)
        codes = [r.code for r in results]
        assert codes.count(v1.Result.OK) == 1000
        assert codes.count(v1.Result.QUEUE_TIMEOUT) == held
        assert codes.count(v1.Result.OVER_LIMIT) == 1000 - held
    pool.shutdown()


def _held(service) -> float:  # type: ignore[no-untyped-def]
    return service.metric("limiter_queue_depth", domain="d", rule="users", priority="critical")


def _until(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    from tests.service.conftest import wait_until

    return wait_until(predicate, timeout=timeout)


def v1_channel(service):  # type: ignore[no-untyped-def]
    import grpc

    return grpc.insecure_channel(service.target)
