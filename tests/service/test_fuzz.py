"""≥10k random and malformed requests: the service answers each and stays healthy."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import v1

from tests.service.conftest import ServiceProcess, request, rls_stub

CONFIG = """
domain: fuzz
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 5}
    descriptors:
      - key: n
        value: "x*"
        rate_limit: {unit: minute, requests_per_unit: 2, algorithm: sliding_window, name: nested}
  - key: t
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 3, name: t}
  - key: c
    rate_limit: {requests_per_unit: 2, algorithm: concurrency, name: c}
"""
RLS_METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def random_text(rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.1:
        return ""
    if choice < 0.15:
        points = (rng.randrange(0x20, 0x10FFFF) for _ in range(rng.randrange(1, 20)))
        return "".join(chr(p) if not 0xD800 <= p < 0xE000 else "\ufffd" for p in points)
    if choice < 0.17:
        return "x" * rng.choice([4096, 4097, 70_000])
    return rng.choice(["k", "n", "t", "c", "x1", "xyz", "user", "*", "k_v", "\x1f"])


def random_request(rng: random.Random) -> rls_pb2.RateLimitRequest:
    msg = rls_pb2.RateLimitRequest(
        domain=rng.choice(["fuzz", "fuzz", "", "other", random_text(rng)]),
        hits_addend=rng.choice([0, 1, 2, 7, 2**32 - 1, rng.randrange(2**32)]),
    )
    for _ in range(rng.choice([0, 1, 1, 2, 3, 40])):
        desc = msg.descriptors.add()
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            desc.entries.add(key=random_text(rng), value=random_text(rng))
        if rng.random() < 0.1:
            desc.hits_addend.value = rng.choice([0, 1, 2**32 - 1, 2**64 - 1])
        if rng.random() < 0.1:
            desc.limit.requests_per_unit = rng.choice([0, 1, 2**32 - 1])
            desc.limit.unit = rng.choice([0, 1, 2, 7, 8, 999])
    return msg


def random_check(rng: random.Random) -> v1.Check:  # type: ignore[name-defined]
    return v1.Check(
        domain=rng.choice(["fuzz", "", "nope"]),
        rule=rng.choice(["t", "c", "nested", "k", "", "missing"]),
        key=random_text(rng),
        cost=rng.choice([0, 1, 3, 2**64 - 1]),
        priority=rng.choice([0, 1, 4, 5, -1]),
        max_wait=rng.choice([0.0, 0.5, -1.0, float("nan"), float("inf")]),
    )


def test_ten_thousand_random_and_malformed_requests(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    service = ServiceProcess(path).start()
    rng = random.Random(20261126)
    outcomes: Counter[tuple[str, str]] = Counter()
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = rls_stub(channel)
            raw = channel.unary_unary(RLS_METHOD)  # bytes in, bytes out
            native = v1.LimiterStub(channel)
            futures: list[tuple[str, grpc.Future]] = []
            for i in range(10_000):
                kind = i % 10
                if kind < 6:
                    call = ("rls", stub.ShouldRateLimit.future(random_request(rng), timeout=20))
                elif kind < 8:
                    blob = rng.randbytes(rng.randrange(0, 300))
                    call = ("bytes", raw.future(blob, timeout=20))
                else:
                    checks = [random_check(rng) for _ in range(rng.randrange(0, 6))]
                    request_ = v1.DecideRequest(checks=checks)
                    call = ("native", native.Decide.future(request_, timeout=20))
                futures.append(call)
                if len(futures) >= 64:
                    outcomes.update((kind, _outcome(f)) for kind, f in futures)
                    futures.clear()
            outcomes.update((kind, _outcome(f)) for kind, f in futures)
            # Still healthy and still right.
            answer = stub.ShouldRateLimit(request("fuzz", {"t": "after"}), timeout=10)
            assert answer.overall_code == rls_pb2.RateLimitResponse.OK
            assert answer.statuses[0].current_limit.name == "t"
        assert service.http("GET", "/healthcheck")[0] == 200
        for _ in range(300):
            body = rng.choice([rng.randbytes(rng.randrange(0, 200)), json.dumps(
                {"domain": random_text(rng), "descriptors": [{"entries": [{"key": random_text(rng),
                 "value": random_text(rng)}]}]}).encode()])  # fmt: skip
            assert service.http("POST", "/json", body)[0] in (200, 400, 429)
        assert service.proc is not None and service.proc.poll() is None
    finally:
        assert service.stop() == 0
    assert sum(outcomes.values()) == 10_000
    # Every request gets an answer or INVALID_ARGUMENT, undecodable bytes included (the
    # service reads RLS requests from the wire itself: limiter._wire).
    for (kind, code), count in outcomes.items():
        assert code in {"OK", "INVALID_ARGUMENT"}, (kind, code, count)
    assert outcomes[("bytes", "INVALID_ARGUMENT")] > 300
    assert outcomes[("rls", "OK")] > 1000 and outcomes[("rls", "INVALID_ARGUMENT")] > 1000
    assert outcomes[("native", "OK")] > 300 and outcomes[("native", "INVALID_ARGUMENT")] > 300


def _outcome(future: grpc.Future) -> str:
    try:
        future.result()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name
