"""Envoy RLS v3 semantics against a real server process, with Envoy's generated stubs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import http_sf
import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from tests.service.conftest import ServiceProcess, request, rls_stub

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT

CONFIG = """
domain: web
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 3, name: per-user}
  - key: user
    value: vip
    rate_limit: {unit: hour, requests_per_unit: 5, name: vip}
  - key: client
    value: "bot*"
    rate_limit: {unit: hour, requests_per_unit: 1, name: bots}
  - key: remote
    descriptors:
      - key: path
        rate_limit: {unit: hour, requests_per_unit: 2, name: per-path}
        detailed_metric: true
  - key: shadowed
    rate_limit: {unit: hour, requests_per_unit: 1, name: shadowed}
    shadow_mode: true
  - key: free
    rate_limit: {unlimited: true, name: free}
  - key: plan
    value: premium
    rate_limit:
      unit: hour
      requests_per_unit: 100
      name: premium
      replaces: [{name: per-ip}]
  - key: ip
    rate_limit: {unit: hour, requests_per_unit: 1, name: per-ip}
  - key: zero
    rate_limit: {unit: hour, requests_per_unit: 0, name: closed}
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 1, algorithm: token_bucket, burst: 2,
                 name: bucket}
  - key: conc
    rate_limit: {requests_per_unit: 1, algorithm: concurrency, name: conc}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path = tmp_path_factory.mktemp("rls") / "rules.yaml"
    path.write_text(CONFIG)
    proc = ServiceProcess(path, "--headers", "both").start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def stub(service: ServiceProcess) -> Iterator[object]:
    channel = grpc.insecure_channel(service.target)
    yield rls_stub(channel)
    channel.close()


def check(stub, domain: str, *descriptors: dict[str, str], hits: int = 0):  # type: ignore[no-untyped-def]
    return stub.ShouldRateLimit(request(domain, *descriptors, hits=hits), timeout=10)


def unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_fixed_window_counts_to_the_limit_aligned_to_the_unit(stub) -> None:  # type: ignore[no-untyped-def]
    user = unique("alice")
    answers = [check(stub, "web", {"user": user}) for _ in range(4)]
    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    status = answers[0].statuses[0]
    assert status.current_limit.requests_per_unit == 3
    assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.HOUR
    assert status.current_limit.name == "per-user"
    left = 3600 - time.time() % 3600
    reset = status.duration_until_reset.seconds + status.duration_until_reset.nanos / 1e9
    assert abs(reset - left) < 2.0
    # Another user has their own counter.
    assert check(stub, "web", {"user": unique("bob")}).overall_code == OK


def test_value_beats_key_only_and_wildcards_match_prefixes(stub) -> None:  # type: ignore[no-untyped-def]
    vip = check(stub, "web", {"user": "vip"})
    assert vip.statuses[0].current_limit.name == "vip"
    bot = unique("bot")
    assert check(stub, "web", {"client": bot}).overall_code == OK
    assert check(stub, "web", {"client": bot}).overall_code == OVER
    # Not matching the prefix and no key-only rule: not limited at all.
    human = check(stub, "web", {"client": "human"})
    assert human.overall_code == OK and not human.statuses[0].HasField("current_limit")


def test_matching_happens_at_the_same_nesting_depth(stub) -> None:  # type: ignore[no-untyped-def]
    remote = unique("10.0.0.1")
    only_top = check(stub, "web", {"remote": remote})
    assert not only_top.statuses[0].HasField("current_limit")  # the parent has no limit
    nested = [check(stub, "web", {"remote": remote, "path": "/a"}) for _ in range(3)]
    assert [n.overall_code for n in nested] == [OK, OK, OVER]
    assert nested[0].statuses[0].current_limit.name == "per-path"


def test_hits_addend_request_and_descriptor_level(stub) -> None:  # type: ignore[no-untyped-def]
    user = unique("hits")
    first = check(stub, "web", {"user": user}, hits=2)
    assert first.overall_code == OK and first.statuses[0].limit_remaining == 1
    msg = request("web", {"user": user}, hits=5)
    msg.descriptors[0].hits_addend.value = 1  # descriptor level overrides the request's
    second = stub.ShouldRateLimit(msg)
    assert second.overall_code == OK and second.statuses[0].limit_remaining == 0
    # hits_addend 0 means 1; uint32 max is over any limit, never an error.
    assert check(stub, "web", {"user": unique("zero")}, hits=0).statuses[0].limit_remaining == 2
    huge = check(stub, "web", {"user": unique("huge")}, hits=2**32 - 1)
    assert huge.overall_code == OVER


def test_limit_override_in_the_request(stub) -> None:  # type: ignore[no-untyped-def]
    msg = request("web", {"user": unique("ov")})
    msg.descriptors[0].limit.requests_per_unit = 1
    msg.descriptors[0].limit.unit = rls_pb2.RateLimitResponse.RateLimit.DAY
    first, second = stub.ShouldRateLimit(msg), stub.ShouldRateLimit(msg)
    assert first.statuses[0].current_limit.requests_per_unit == 1
    assert first.statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.DAY
    assert (first.overall_code, second.overall_code) == (OK, OVER)


def test_unlimited_shadow_mode_and_zero_limit(service, stub) -> None:  # type: ignore[no-untyped-def]
    free = check(stub, "web", {"free": "x"})
    assert free.overall_code == OK and free.statuses[0].limit_remaining == 2**32 - 1
    key = unique("sh")
    answers = [check(stub, "web", {"shadowed": key}) for _ in range(3)]
    assert all(a.overall_code == OK for a in answers)
    assert answers[-1].statuses[0].limit_remaining == 0
    assert service.metric("limiter_rule_shadow_mode_total", rule="shadowed") >= 2
    assert service.metric("limiter_rule_over_limit_total", rule="shadowed") >= 2
    closed = check(stub, "web", {"zero": "z"})
    assert closed.overall_code == OVER and closed.statuses[0].limit_remaining == 0


def test_replaces_drops_the_superseded_limit(stub) -> None:  # type: ignore[no-untyped-def]
    ip = unique("ip")
    for _ in range(3):
        answer = check(stub, "web", {"plan": "premium"}, {"ip": ip})
        assert answer.overall_code == OK
        assert answer.statuses[0].current_limit.name == "premium"
        assert not answer.statuses[1].HasField("current_limit")
    # Without the premium descriptor the per-ip limit applies again.
    assert check(stub, "web", {"ip": ip}).overall_code == OK
    assert check(stub, "web", {"ip": ip}).overall_code == OVER


def test_any_over_limit_descriptor_makes_the_request_over_limit(stub) -> None:  # type: ignore[no-untyped-def]
    answer = check(stub, "web", {"free": "a"}, {"zero": "b"}, {"nothing": "c"})
    assert answer.overall_code == OVER
    assert [s.code for s in answer.statuses] == [OK, OVER, OK]


def test_unknown_domain_is_ok_and_counted(service, stub) -> None:  # type: ignore[no-untyped-def]
    before = service.metric("limiter_unknown_domain_total")
    answer = check(stub, "nobody-configured-this", {"a": "b"}, {"c": "d"})
    assert answer.overall_code == OK and [s.code for s in answer.statuses] == [OK, OK]
    assert service.metric("limiter_unknown_domain_total") == before + 1


def test_token_bucket_and_concurrency_rules_via_rls(stub) -> None:  # type: ignore[no-untyped-def]
    key = unique("tb")
    codes = [check(stub, "web", {"bucket": key}).overall_code for _ in range(3)]
    assert codes == [OK, OK, OVER]
    # A stateless RLS check on a concurrency rule holds nothing: it always fits.
    assert all(check(stub, "web", {"conc": "c"}).overall_code == OK for _ in range(3))


def test_headers_parse_back_as_structured_fields(stub) -> None:  # type: ignore[no-untyped-def]
    user = unique("hdr")
    for _ in range(3):
        check(stub, "web", {"user": user})
    answer = check(stub, "web", {"user": user}, {"free": "x"})
    got = {h.key: h.value for h in answer.response_headers_to_add}
    policy = http_sf.parse(got["RateLimit-Policy"].encode(), tltype="list")
    state = http_sf.parse(got["RateLimit"].encode(), tltype="list")
    assert [(m[0], dict(m[1])) for m in policy] == [("per-user", {"q": 3, "w": 3600})]
    name, params = state[0][0], dict(state[0][1])
    assert name == "per-user" and params["r"] == 0 and 0 < params["t"] <= 3600
    assert int(got["Retry-After"]) >= params["t"]
    assert got["X-RateLimit-Limit"] == "3" and got["X-RateLimit-Remaining"] == "0"
    level = {h.key: h.value for h in answer.request_headers_to_add}
    assert level == {"x-limiter-level": "0"}


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: request("", {"a": "b"}), "domain"),
        (lambda: rls_pb2.RateLimitRequest(domain="web"), "descriptors"),
        (
            lambda: rls_pb2.RateLimitRequest(domain="web", descriptors=[{}]),
            "descriptors[0].entries",
        ),
        (lambda: request("web", {"": "v"}), "descriptors[0].entries[0].key"),
        (lambda: request("web", {"user": "x" * 1_000_000}), "descriptors[0].entries[0]"),
        (lambda: request("web", *[{"user": str(i)} for i in range(10_000)]), "descriptors"),
    ],
)
def test_malformed_requests_are_invalid_argument(stub, make, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        stub.ShouldRateLimit(make(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":") or field in info.value.details()


def test_bad_override_unit_is_invalid_argument(stub) -> None:  # type: ignore[no-untyped-def]
    msg = request("web", {"user": "u"})
    msg.descriptors[0].limit.requests_per_unit = 1
    msg.descriptors[0].limit.unit = 0
    with pytest.raises(grpc.RpcError) as info:
        stub.ShouldRateLimit(msg, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "descriptors[0].limit.unit" in info.value.details()


def test_json_endpoint(service: ServiceProcess) -> None:
    body = {"domain": "web", "descriptors": [{"entries": [{"key": "zero", "value": "1"}]}]}
    status, answer = service.http("POST", "/json", json.dumps(body).encode())
    assert status == 429 and json.loads(answer)["overallCode"] == "OVER_LIMIT"
    body["descriptors"][0]["entries"][0]["key"] = "free"  # type: ignore[index]
    status, answer = service.http("POST", "/json", json.dumps(body).encode())
    assert status == 200 and json.loads(answer)["overallCode"] == "OK"
    for bad in (b"{not json", b'{"domain": 3}', b'{"domain": ""}', b"\xff\xfe"):
        status, answer = service.http("POST", "/json", bad)
        assert status == 400 and "error" in json.loads(answer)
    assert service.http("GET", "/json")[0] == 405
    assert service.http("GET", "/nope")[0] == 404


def test_metrics_count_per_rule_and_detailed_series(service, stub) -> None:  # type: ignore[no-untyped-def]
    remote = unique("9.9.9.9")
    for _ in range(3):
        check(stub, "web", {"remote": remote, "path": "/detail"})
    detail = f"remote_{remote}.path_/detail"
    assert service.metric("limiter_rule_total_hits_total", rule=detail, detailed="true") == 3
    assert service.metric("limiter_rule_over_limit_total", rule=detail, detailed="true") == 1
    assert service.metric("limiter_rule_total_hits_total", rule="per-path", detailed="false") >= 3
    assert service.metric("limiter_decision_latency_seconds_count", api="rls") > 0
    assert service.metric("limiter_config_last_reload_successful") == 1
    assert service.http("GET", "/healthcheck") == (200, b"OK\n")


def test_service_logs_are_json_lines(service: ServiceProcess) -> None:
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    serving = [line for line in lines if line["msg"] == "serving"]
    assert serving and serving[0]["grpc"] == service.grpc_port and serving[0]["level"] == "info"
