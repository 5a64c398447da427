"""The quota service's bound on buckets, over a real gRPC stream: past ``MAX_BUCKETS`` a
new bucket is answered DENY_ALL and counted, and the buckets already tracked keep theirs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.rate_limit_quota.v3 import rlqs_pb2, rlqs_pb2_grpc
from envoy.type.v3 import ratelimit_strategy_pb2
from limiter.server import quota
from limiter.server.decider import Decider
from limiter.server.metrics import Metrics
from limiter.server.rules import Rulebook

from limiter import config as rules

RULES = """
domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 10, name: per-user}
"""
DENY_ALL = ratelimit_strategy_pb2.RateLimitStrategy.DENY_ALL


async def assignments(service: quota.QuotaService, users: list[str]) -> dict[str, object]:
    """Report one request for each user's bucket; the assignment each bucket gets."""
    server = grpc.aio.server()
    rlqs_pb2_grpc.add_RateLimitQuotaServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = rlqs_pb2_grpc.RateLimitQuotaServiceStub(channel).StreamRateLimitQuotas()
            reports = rlqs_pb2.RateLimitQuotaUsageReports(domain="d")
            for user in users:
                usage = reports.bucket_quota_usages.add(num_requests_allowed=1)
                usage.bucket_id.bucket["user"] = user
                usage.time_elapsed.seconds = 1
            await call.write(reports)
            answers: dict[str, object] = {}
            while len(answers) < len(users):
                response = await asyncio.wait_for(call.read(), 10)
                for action in response.bucket_action:
                    strategy = action.quota_assignment_action.rate_limit_strategy
                    answers[action.bucket_id.bucket["user"]] = strategy
            await call.done_writing()
            return answers
    finally:
        await server.stop(None)


def test_buckets_beyond_the_bound_are_denied_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota, "MAX_BUCKETS", 3)
    metrics = Metrics()
    service = quota.QuotaService(Decider(Rulebook(rules.parse(RULES))), metrics=metrics)
    answers = asyncio.run(assignments(service, [f"u{i}" for i in range(5)]))
    denied = {
        user
        for user, strategy in answers.items()
        if strategy.HasField("blanket_rule") and strategy.blanket_rule == DENY_ALL
    }
    assert denied == {"u3", "u4"}
    assert all(answers[f"u{i}"].HasField("token_bucket") for i in range(3))
    assert metrics.registry.get_sample_value("limiter_rlqs_refused_total") == 2
    assert len(service.buckets) == 3
