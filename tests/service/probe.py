"""Measure RLS latency from a process of its own: ``python -m tests.service.probe TARGET SECONDS``.

Sends one ShouldRateLimit at a time for SECONDS and prints the latencies (seconds) as a
JSON list. Run apart from the test so the test's own threads never delay a measurement.
"""

from __future__ import annotations

import json
import sys
import time

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc


def main(target: str, seconds: float) -> list[float]:
    request = rls_pb2.RateLimitRequest(domain="web")
    request.descriptors.add().entries.add(key="user", value="probe")
    with grpc.insecure_channel(target) as channel:
        call = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit
        call(request, timeout=10)  # connected
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            call(request, timeout=10)
            out.append(time.perf_counter() - start)
            time.sleep(0.002)  # a steady probe, not a load
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]))))
