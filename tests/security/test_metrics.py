"""/metrics stays small whatever the requests carry: detailed series are capped in
number and each label value in length.

Attack: descriptors with distinct 4 KB values against a ``detailed_metric`` rule: each
value became a label of its own series, and ``/metrics`` grew to 20 MB.
"""

from __future__ import annotations

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server.rules import MAX_DETAILED_SERIES, MAX_LABEL_CHARS

from tests.service.conftest import rls_stub

CONFIG = """domain: d
descriptors:
  - key: ip
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: 1000000}
"""


def test_detailed_series_have_bounded_labels(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG)
    with grpc.insecure_channel(service.target) as channel:
        stub = rls_stub(channel)
        for start in range(0, MAX_DETAILED_SERIES + 200, 100):
            req = rls_pb2.RateLimitRequest(domain="d")
            for i in range(start, start + 100):
                req.descriptors.add().entries.add(key="ip", value=f"{i:06d}".ljust(4000, "v"))
            stub.ShouldRateLimit(req, timeout=10)
    status, body = service.http("GET", "/metrics")
    assert status == 200
    lines = [line for line in body.decode().splitlines() if 'detailed="true"' in line]
    rules = {line.split('rule="', 1)[1].split('"', 1)[0] for line in lines}
    assert len(rules) == MAX_DETAILED_SERIES + 1  # and "_other"
    assert max(map(len, rules)) <= MAX_LABEL_CHARS
    assert len(body) < 2_000_000, len(body)
    hits = service.metric("limiter_rule_total_hits_total", domain="d", rule="_other")
    assert hits == 200
