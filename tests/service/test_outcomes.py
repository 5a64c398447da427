"""Reports of finished calls against a real service: native ``Observe`` and Envoy's
access-log service feed the rules' breakers, abnormal-access blocking and adaptive rules;
a rule's checks fail fast while its breaker is open for their partition."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from limiter.server import v1

from tests.ops.test_propagation import admin_call
from tests.service.conftest import ServiceProcess, request, rls_stub, wait_until

TOKEN = "outcomes-admin-token-0123456789"
CONFIG = """
domain: app
descriptors:
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 1000, name: per-tenant,
                 breaker: {dependency: db, partition: tenant}}
  - key: region
    descriptors:
      - key: tenant
        rate_limit: {unit: second, requests_per_unit: 1000, name: regional,
                     breaker: {dependency: db, partition: tenant}}
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000, name: per-user}
  - key: api
    rate_limit: {algorithm: adaptive, unit: second, requests_per_unit: 100,
                 target_latency: 0.05, name: adaptive, outcomes: {cluster: api}}
---
access_log: {max_entries: 5, max_streams: 2, partition_header: x-tenant}
breakers:
  db: {minimum_calls: 5, failure_ratio: 0.5, open_for: 60}
  api: {minimum_calls: 5, failure_ratio: 0.5, open_for: 60}
shedding:
  abnormal: {min_responses: 5, error_ratio: 0.5, burst: 1000000, cooldown: 60}
"""
OBSERVATION = v1.Observation.Outcome
CODE = v1.Result.Code


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path = tmp_path_factory.mktemp("outcomes") / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def channel(service: ServiceProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.target) as channel:
        yield channel


def admin(service: ServiceProcess, method: str, path: str, body: Any = None) -> Any:
    status, answer = admin_call(
        f"http://127.0.0.1:{service.http_port}", method, path, body, token=TOKEN
    )
    assert status == 200, answer
    return answer


def breaker(service: ServiceProcess, name: str) -> dict[str, Any] | None:
    found = admin(service, "GET", "/v1/breakers")["breakers"]
    return next((b for b in found if b["name"] == name), None)


def decide(channel: grpc.Channel, rule: str, *keys: str) -> list[Any]:
    checks = [v1.Check(domain="app", rule=rule, key=key) for key in keys]
    return list(v1.LimiterStub(channel).Decide(v1.DecideRequest(checks=checks), timeout=10).results)


def observe(channel: grpc.Channel, *observations: v1.Observation) -> int:
    answer = v1.LimiterStub(channel).Observe(v1.ObserveRequest(observations=observations))
    return answer.accepted


def entry(
    cluster: str,
    status: int,
    *,
    reached: bool = True,
    latency: float = 0.01,
    headers: dict[str, str] | None = None,
    flags: tuple[str, ...] = (),
) -> Any:
    """One HTTP access-log entry as Envoy's http_grpc logger writes it."""
    e = accesslog_pb2.HTTPAccessLogEntry()
    common = e.common_properties
    common.upstream_cluster = cluster
    common.time_to_last_downstream_tx_byte.FromMilliseconds(12)
    if reached:
        common.time_to_first_upstream_tx_byte.FromMilliseconds(1)
        common.time_to_last_upstream_rx_byte.FromNanoseconds(int(latency * 1e9))
    for flag in flags:
        setattr(common.response_flags, flag, True)
    e.response.response_code.value = status
    e.request.request_headers.update(headers or {})
    return e


def message(*entries: Any) -> Any:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.log_name = "test"
    msg.http_logs.log_entry.extend(entries)
    return msg


def stream(channel: grpc.Channel, *messages: Any) -> None:
    als_pb2_grpc.AccessLogServiceStub(channel).StreamAccessLogs(iter(messages), timeout=10)


def test_observed_failures_open_the_rules_breaker_for_that_partition_only(
    service: ServiceProcess, channel: grpc.Channel
) -> None:
    failed = v1.Observation(domain="app", rule="per-tenant", key="t-obs", latency=0.01,
                            outcome=OBSERVATION.Value("ERROR"))  # fmt: skip
    fine = v1.Observation(domain="app", rule="per-tenant", key="t-fine", latency=0.01)
    assert observe(channel, *[failed] * 5, *[fine] * 5) == 10
    assert breaker(service, "db/t-obs")["state"] == "open"
    assert breaker(service, "db/t-fine")["state"] == "closed"
    refused, passed = decide(channel, "per-tenant", "t-obs", "t-fine")
    assert not refused.allowed and refused.code == CODE.Value("BREAKER_OPEN")
    assert 55 < refused.retry_after <= 60
    assert passed.allowed and passed.code == CODE.Value("OK")
    # Envoy's check of a rule keyed deeper finds the partition at the tenant's place.
    answer = rls_stub(channel).ShouldRateLimit(
        request("app", {"region": "eu", "tenant": "t-obs"}, {"region": "eu", "tenant": "t-fine"}),
        timeout=10,
    )
    assert [s.code for s in answer.statuses] == [answer.OVER_LIMIT, answer.OK]
    assert service.metric("limiter_breaker_rejected_total", breaker="db/t-obs") == 2


def test_observed_4xx_of_a_key_block_it_as_a_client(
    service: ServiceProcess, channel: grpc.Channel
) -> None:
    def seen(key: str, status: int) -> v1.Observation:
        return v1.Observation(domain="app", rule="per-user", key=key, latency=0.01, status=status)

    # A fixed-window rule without a breaker: nothing learns from them but the blocks.
    assert observe(channel, *[seen("mallory", 403)] * 5, *[seen("alice", 200)] * 5) == 0
    blocked = admin(service, "GET", "/v1/blocked")["blocked"]
    assert [b["client"] for b in blocked] == ["mallory"]
    mallory, alice = decide(channel, "per-user", "mallory", "alice")
    assert not mallory.allowed and alice.allowed


def test_a_breaker_switch_refuses_the_rules_checks(
    service: ServiceProcess, channel: grpc.Channel
) -> None:
    body = {"action": "force_open", "who": "test", "why": "maintenance", "ttl": 60}
    admin(service, "PUT", "/v1/switches/breaker:db/t-switched", body)
    assert wait_until(
        lambda: not decide(channel, "per-tenant", "t-switched")[0].allowed, timeout=10
    )
    forced, other = decide(channel, "per-tenant", "t-switched", "t-other")
    assert forced.code == CODE.Value("BREAKER_OPEN") and other.allowed
    assert breaker(service, "db/t-switched")["mode"] == "forced_open"
    admin(service, "DELETE", "/v1/switches/breaker:db/t-switched", {"who": "test", "why": "done"})
    assert wait_until(lambda: decide(channel, "per-tenant", "t-switched")[0].allowed, timeout=10)


def test_access_log_entries_feed_the_clusters_breaker_by_partition(
    service: ServiceProcess, channel: grpc.Channel
) -> None:
    fed = service.metric("limiter_access_log_entries_total", result="fed")
    unmatched = service.metric("limiter_access_log_entries_total", result="unmatched")
    timeout = entry("api", 504, flags=("upstream_request_timeout",), headers={"x-tenant": "t-slow"})
    local = entry("api", 429, reached=False, flags=("rate_limited",), headers={"x-tenant": "t-loc"})
    stream(
        channel,
        message(*[entry("api", 503, headers={"x-tenant": "t-als"})] * 5),
        # A timeout says the upstream failed, whatever the status.
        message(*[timeout] * 5),
        # Local replies (a rate-limited 429) never reached the upstream: nothing to learn.
        message(*[local] * 5),
        # Neither a rule's cluster nor a known dependency.
        message(*[entry("elsewhere", 503, headers={"x-tenant": "t-als"})] * 3),
    )
    assert breaker(service, "api/t-als")["state"] == "open"
    assert breaker(service, "api/t-slow")["state"] == "open"
    assert breaker(service, "api/t-loc") is None
    assert breaker(service, "elsewhere/t-als") is None
    assert service.metric("limiter_access_log_entries_total", result="fed") == fed + 10
    assert service.metric("limiter_access_log_entries_total", result="unmatched") == unmatched + 8


def test_access_log_entries_of_a_rules_cluster_cut_its_adaptive_limit(
    service: ServiceProcess, channel: grpc.Channel
) -> None:
    slow = entry("api", 200, latency=1.0)
    assert service.metric("limiter_adaptive_limit", rule="adaptive") == 100
    # Slow calls, then more once the controller's next evaluation is due.
    stream(channel, *[message(*[slow] * 5)] * 60)
    assert wait_until(
        lambda: (
            stream(channel, message(slow))
            or service.metric("limiter_adaptive_limit", rule="adaptive") <= 50
        ),
        timeout=30,
        interval=0.2,
    )


def test_access_log_bounds_refuse_with_resource_exhausted(
    service: ServiceProcess, channel: grpc.Channel
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stream(channel, message(*[entry("api", 200)] * 6))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 5 (access_log.max_entries)" in info.value.details()
    assert service.metric("limiter_access_log_refused_total", bound="max_entries") == 1
    # Two streams held open: a third is refused, and taken again once they end.
    release = threading.Event()
    before = service.metric("limiter_access_log_entries_total", result="unmatched")

    def held() -> Iterator[Any]:
        yield message(entry("elsewhere", 200))
        release.wait(30)

    stub = als_pb2_grpc.AccessLogServiceStub(channel)
    calls = [stub.StreamAccessLogs.future(held(), timeout=60) for _ in range(2)]
    try:
        assert wait_until(
            lambda: (
                service.metric("limiter_access_log_entries_total", result="unmatched") == before + 2
            ),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as info:
            stream(channel, message(entry("elsewhere", 200)))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(access_log.max_streams)" in info.value.details()
        assert service.metric("limiter_access_log_refused_total", bound="max_streams") == 1
    finally:
        release.set()
    for call in calls:
        call.result(timeout=30)
    stream(channel, message(entry("elsewhere", 200)))


@pytest.mark.parametrize(
    ("observation", "needle"),
    [
        (v1.Observation(key="k" * 4097), "observations[5].key: must be at most 4096 characters"),
        (v1.Observation(status=1000), "observations[5].status: must be an HTTP status"),
        (v1.Observation(latency=-1.0), "observations[5].latency: must be a finite number"),
    ],
)
def test_observe_refuses_a_bad_observation_before_delivering_any(
    service: ServiceProcess, channel: grpc.Channel, observation: Any, needle: str
) -> None:
    first = v1.Observation(domain="app", rule="per-tenant", key="t-bad", latency=0.01,
                           outcome=OBSERVATION.Value("ERROR"))  # fmt: skip
    with pytest.raises(grpc.RpcError) as info:
        observe(channel, *[first] * 5, observation)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()
    assert breaker(service, "db/t-bad") is None
