"""The native limiter.v1 API against a real server process."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from limiter.server import v1

from tests.service.conftest import ServiceProcess, native_stub

CONFIG = """
domain: app
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 2, name: per-user}
  - key: tokens
    rate_limit: {unit: second, requests_per_unit: 1, algorithm: token_bucket, burst: 3,
                 name: tokens}
  - key: inflight
    rate_limit: {requests_per_unit: 2, algorithm: concurrency, name: inflight}
  - key: free
    rate_limit: {unlimited: true, name: free}
  - key: shadow
    rate_limit: {unit: hour, requests_per_unit: 1, name: shadow}
    shadow_mode: true
  - key: api
    rate_limit: {algorithm: adaptive, unit: second, requests_per_unit: 100, target_latency: 0.05,
                 mode: rate, name: adaptive}
"""
Result = v1.Result


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path = tmp_path_factory.mktemp("native") / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path, "--permit-ttl", "1").start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def stub(service: ServiceProcess) -> Iterator[v1.LimiterStub]:
    channel = grpc.insecure_channel(service.target)
    yield native_stub(channel)
    channel.close()


def decide(stub: v1.LimiterStub, *checks: v1.Check) -> list[v1.Result]:  # type: ignore[name-defined]
    return list(stub.Decide(v1.DecideRequest(checks=checks), timeout=10).results)


def key(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_batched_decide_answers_in_order_as_data(stub: v1.LimiterStub) -> None:
    k = key("u")
    results = decide(stub, *[v1.Check(domain="app", rule="per-user", key=k)] * 3)
    assert [r.allowed for r in results] == [True, True, False]
    assert [r.code for r in results] == [Result.OK, Result.OK, Result.OVER_LIMIT]
    assert [r.remaining for r in results] == [1, 0, 0]
    assert results[2].retry_after > 0 and results[2].reset_after > 0
    assert all(r.level == 0 and r.waited == 0 and r.limit == 2 for r in results)


def test_rules_by_path_id_cost_and_unknown_rules(stub: v1.LimiterStub) -> None:
    k = key("t")
    a, b, c, d, e = decide(
        stub,
        v1.Check(domain="app", rule="tokens", key=k, cost=2),
        v1.Check(domain="app", rule="tokens", key=k, cost=2),
        v1.Check(domain="app", rule="user", key=k),  # the descriptor path id
        v1.Check(domain="app", rule="missing", key=k),
        v1.Check(domain="app", rule="tokens", key=k, cost=2**40),
    )
    assert (a.allowed, a.remaining) == (True, 1)
    assert not b.allowed and 0 < b.retry_after <= 1.01
    assert c.allowed and c.limit == 2
    assert d.allowed and d.code == Result.UNKNOWN_RULE
    assert not e.allowed and e.code == Result.OVER_LIMIT  # more than the bucket can ever hold
    with pytest.raises(grpc.RpcError) as info:  # beyond any quota: a malformed request
        decide(stub, v1.Check(domain="app", rule="tokens", key=k, cost=2**40 + 1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "checks[0].cost" in info.value.details()


def test_unlimited_and_shadow(stub: v1.LimiterStub) -> None:
    free, s1, s2 = decide(
        stub,
        v1.Check(domain="app", rule="free"),
        v1.Check(domain="app", rule="shadow", key="s"),
        v1.Check(domain="app", rule="shadow", key="s"),
    )
    assert free.allowed and free.remaining == 2**32 - 1
    assert s1.allowed and s2.allowed  # shadow mode only counts


def test_concurrency_permits_and_release(stub: v1.LimiterStub) -> None:
    k = key("c")
    check = v1.Check(domain="app", rule="inflight", key=k)
    a, b, c = decide(stub, check, check, check)
    assert a.allowed and b.allowed and not c.allowed
    assert a.permit and b.permit and a.permit != b.permit and not c.permit
    released = stub.Release(v1.ReleaseRequest(permits=[a.permit, a.permit, "bogus"]))
    assert released.released == 1
    (again,) = decide(stub, check)
    assert again.allowed
    stub.Release(v1.ReleaseRequest(permits=[b.permit, again.permit]))


def test_forgotten_permits_expire(service: ServiceProcess, stub: v1.LimiterStub) -> None:
    k = key("lost")
    check = v1.Check(domain="app", rule="inflight", key=k)
    assert all(r.allowed for r in decide(stub, check, check))
    assert not decide(stub, check)[0].allowed
    time.sleep(2.2)  # --permit-ttl 1, swept every second
    assert decide(stub, check)[0].allowed
    assert service.metric("limiter_permits_expired_total") >= 2


@pytest.mark.parametrize(
    ("check", "field"),
    [
        (v1.Check(domain="app", rule="per-user", priority=99), "checks[0].priority"),
        (v1.Check(domain="app", rule="per-user", key="k" * 5000), "checks[0].key"),
        (v1.Check(domain="app", rule="per-user", max_wait=-1), "checks[0].max_wait"),
        (v1.Check(domain="app", rule="per-user", max_wait=float("nan")), "checks[0].max_wait"),
    ],
)
def test_malformed_checks_are_invalid_argument(stub: v1.LimiterStub, check, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        decide(stub, check)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field)


def test_observe_feeds_adaptive_rules_which_cut_their_limit(stub: v1.LimiterStub) -> None:
    check = v1.Check(domain="app", rule="adaptive", key="any")
    (first,) = decide(stub, check)
    assert first.allowed and first.limit == 100 and first.permit
    stub.Release(v1.ReleaseRequest(permits=[first.permit]))
    slow = [v1.Observation(domain="app", rule="adaptive", latency=1.0)] * 300
    assert stub.Observe(v1.ObserveRequest(observations=slow)).accepted == 300
    time.sleep(0.6)  # the controller evaluates at most every 0.5 s
    stub.Observe(v1.ObserveRequest(observations=slow[:10]))
    (after,) = decide(stub, check)
    assert after.limit <= 50  # p99 far above target: cut by half


def test_observe_validates_and_counts_deliveries(stub: v1.LimiterStub) -> None:
    ok = stub.Observe(
        v1.ObserveRequest(
            observations=[v1.Observation(domain="app", rule="per-user", latency=0.01)]
        )
    )
    assert ok.accepted == 0  # a fixed window does not learn from latency
    with pytest.raises(grpc.RpcError) as info:
        stub.Observe(v1.ObserveRequest(observations=[v1.Observation(latency=float("inf"))]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_committed_descriptor_matches_the_proto() -> None:
    from limiter.server.v1 import regenerate

    assert regenerate.main(["--check"]) == 0


def test_rich_error_protos_coexist_with_envoy_stubs() -> None:
    """xds-protos and googleapis-common-protos both ship google.rpc: the pair must load."""
    from envoy.service.ratelimit.v3 import rls_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(1500)
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="over limit")
    status.details.add().Pack(info)
    converted = rpc_status.to_status(status)
    assert converted.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    back = status_pb2.Status.FromString(
        dict(converted.trailing_metadata)["grpc-status-details-bin"]
    )
    unpacked = error_details_pb2.RetryInfo()
    assert back.details[0].Unpack(unpacked) and unpacked.retry_delay.ToMilliseconds() == 1500
    assert rls_pb2.RateLimitResponse.OVER_LIMIT == 2
