"""One quota (RLQS) allocation across ``limiter serve --redis`` replicas: Envoys reporting a
bucket to different replicas share the rule's one limit (demands and grants kept in Redis),
and a replica that loses Redis keeps its share rather than taking the whole limit."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.rate_limit_quota.v3 import rlqs_pb2, rlqs_pb2_grpc

from tests.envoy.harness import EXAMPLES, Envoy, LimiterProcess, envoy_config, uneven_load
from tests.support import PATIENT, RedisServer

DOMAIN = "envoy-example"
LIMIT = 40  # per second, for one bucket


def rules(limit: int) -> str:
    return (
        f"domain: {DOMAIN}\ndescriptors:\n  - key: api_key\n    rate_limit: "
        f"{{name: per-api-key, unit: second, requests_per_unit: {limit}}}\n"
    )


class QuotaClient:
    """One Envoy as the quota service sees it: a stream reporting one bucket's usage, and the
    token bucket last assigned to it (requests/s; None until the first assignment)."""

    def __init__(self, port: int, key: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = rlqs_pb2_grpc.RateLimitQuotaServiceStub(self.channel)
        self.bucket = rlqs_pb2.BucketId(bucket={"api_key": key})
        self.outbox: queue.Queue[rlqs_pb2.RateLimitQuotaUsageReports | None] = queue.Queue()
        self.rate: float | None = None
        self.assignments = 0
        self.responses = stub.StreamRateLimitQuotas(iter(self.outbox.get, None))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for response in self.responses:
                for action in response.bucket_action:
                    strategy = action.quota_assignment_action.rate_limit_strategy
                    if strategy.HasField("token_bucket"):
                        tb = strategy.token_bucket
                        self.rate = tb.tokens_per_fill.value / tb.fill_interval.ToSeconds()
                    elif strategy.HasField("blanket_rule"):
                        self.rate = 0.0 if strategy.blanket_rule else float("inf")
                    self.assignments += 1
        except grpc.RpcError:
            pass

    def report(self, allowed: int) -> None:
        reports = rlqs_pb2.RateLimitQuotaUsageReports(domain=DOMAIN)
        usage = reports.bucket_quota_usages.add()
        usage.bucket_id.CopyFrom(self.bucket)
        usage.num_requests_allowed = allowed
        self.outbox.put(reports)

    def close(self) -> None:
        self.outbox.put(None)
        self.responses.cancel()
        self.channel.close()


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RedisServer, list[LimiterProcess]]]:
    """Two ``limiter serve --redis`` on one redis-server, with one rule: LIMIT per second
    per API key (or the limit the test gives as the fixture's parameter)."""
    config = tmp_path / "rules.yaml"
    config.write_text(rules(getattr(request, "param", LIMIT)))
    with RedisServer() as redis:
        url = f"{redis.url}?timeout={PATIENT}"
        services = []
        try:
            for i in range(2):
                services.append(
                    LimiterProcess(config, "--redis", url, workdir=tmp_path / f"svc{i}").start()
                )
            yield redis, services
        finally:
            for service in services:
                service.stop()


def drive(clients: list[QuotaClient], rates: list[float], seconds: float) -> None:
    """Report ``rates`` (requests/s) for each client every second for ``seconds``."""
    last = time.monotonic()
    end = last + seconds
    while time.monotonic() < end:
        time.sleep(1)
        now = time.monotonic()
        for client, rate in zip(clients, rates, strict=True):
            client.report(round(rate * (now - last)))
        last = now


def shares(clients: list[QuotaClient]) -> list[float]:
    rates = [c.rate for c in clients]
    assert all(r is not None for r in rates), rates
    return rates  # type: ignore[return-value]


def within_limit(granted: list[float]) -> bool:
    """The grants of both replicas add up to the limit: each replica splits it from the
    demands it last read, so a demand that changed since (the reports' jitter here) moves
    the sum by that much until the next exchange."""
    return 0.9 * LIMIT <= sum(granted) <= 1.1 * LIMIT


def test_envoys_on_two_replicas_share_one_limit_3_to_1(replicas) -> None:  # type: ignore[no-untyped-def]
    """45/s and 15/s asked of one 40/s limit through two replicas: together they are
    granted the 40/s (alone, each replica would grant its Envoy all 40), and the light one,
    under its fair share, its 15; so while Redis is away and after it restarts empty."""
    redis, services = replicas
    key = f"shared-{time.time_ns()}"
    clients = [QuotaClient(services[0].grpc_port, key), QuotaClient(services[1].grpc_port, key)]
    try:
        for client in clients:
            client.report(1)  # what Envoy sends with a bucket's first request
        # Demand is measured between reports; each replica exchanges every second.
        drive(clients, [45, 15], 6)
        granted = shares(clients)
        assert within_limit(granted), granted
        assert granted[1] >= 0.85 * 15, granted

        # Redis goes away: each replica keeps its share (its Envoy's grant does not grow
        # to the whole limit), so the limit still holds.
        redis.kill()
        drive(clients, [45, 15], 4)
        during = shares(clients)
        assert within_limit(during), (granted, during)
        assert during[1] >= 0.85 * 15, (granted, during)

        # Back (empty): the replicas write their Envoys again and share the limit again.
        redis.restart()
        drive(clients, [45, 15], 4)
        after = shares(clients)
        assert within_limit(after), (granted, during, after)
        assert after[1] >= 0.85 * 15, (granted, during, after)
    finally:
        for client in clients:
            client.close()


def test_a_bucket_on_one_replica_alone_gets_the_whole_limit(replicas) -> None:  # type: ignore[no-untyped-def]
    _, services = replicas
    client = QuotaClient(services[0].grpc_port, f"alone-{time.time_ns()}")
    try:
        client.report(1)
        drive([client], [60], 3)
        assert shares([client]) == [LIMIT]
    finally:
        client.close()


@pytest.mark.parametrize("replicas", [30], indirect=True)
def test_two_envoys_on_two_replicas_share_one_limit(replicas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real thing: two Envoys, each talking to its own replica, asking 3:1 (30/s and
    10/s) of one 30/s limit: together they admit about 30/s, and the light one, under its
    fair share (15), what it asks."""
    _, services = replicas
    envoys = [
        Envoy(
            envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": service.grpc_port}),
            workdir=tmp_path / f"envoy{i}",
        )
        for i, service in enumerate(services)
    ]
    try:
        for proxy in envoys:
            proxy.start()
        bucket = {"x-api-key": f"envoys-{time.time_ns()}"}
        admitted, demand, seconds = uneven_load(envoys, bucket, (30, 10))
    finally:
        for proxy in envoys:
            proxy.stop()
    total = sum(admitted) / seconds
    assert 27 <= total <= 33, (admitted, demand, seconds)
    assert admitted[1] >= 0.9 * demand[1], (admitted, demand)
