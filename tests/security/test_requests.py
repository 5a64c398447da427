"""One request cannot poison a rule's counters: absurd hits are refused before anything
is counted, and a cost beyond what the rule can ever grant counts as just beyond it.

Attack: ``hits_addend`` 2^64-1 (or a native ``cost`` of 2^64-1) was refused yet added in
full to the rule's totals: after three, ``limiter_rule_total_hits_total`` read 5.5e19
and stopped moving (float64 steps of 8,192).
"""

from __future__ import annotations

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import v1

from tests.service.conftest import native_stub, request, rls_stub

CONFIG = """domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 10, name: users}
"""


def hits(service) -> float:  # type: ignore[no-untyped-def]
    return service.metric("limiter_rule_total_hits_total", domain="d", rule="users")


def test_absurd_hits_are_refused_and_counted_as_decided(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG)
    with grpc.insecure_channel(service.target) as channel:
        rls, native = rls_stub(channel), native_stub(channel)
        for _ in range(3):
            req = request("d", {"user": "u"})
            req.descriptors[0].hits_addend.value = 2**64 - 1
            with pytest.raises(grpc.RpcError) as err:
                rls.ShouldRateLimit(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "hits_addend" in (err.value.details() or "")
            check = v1.Check(domain="d", rule="users", key="u", cost=2**64 - 1)
            with pytest.raises(grpc.RpcError) as err:
                native.Decide(v1.DecideRequest(checks=[check]), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "cost" in (err.value.details() or "")
        assert hits(service) == 0
        # In range but more than the rule can ever grant: refused, counted as 11 (10 + 1).
        for _ in range(3):
            answer = rls.ShouldRateLimit(request("d", {"user": "u"}, hits=2**32 - 1), timeout=5)
            assert answer.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
        assert hits(service) == 3 * 11
        # The counters keep counting single hits.
        rls.ShouldRateLimit(request("d", {"user": "v"}), timeout=5)
        assert hits(service) == 3 * 11 + 1
