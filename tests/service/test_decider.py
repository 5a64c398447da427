"""The pipeline's pieces in-process: reload carry-over, the level and admission hooks,
bounds, permit expiry, HTTP parsing and limits."""

from __future__ import annotations

import asyncio

from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server import rules as rules_module
from limiter.server import v1
from limiter.server.decider import Decider
from limiter.server.http import HttpServer, Request, Response
from limiter.server.metrics import Metrics
from limiter.server.native import LimiterService
from limiter.server.rls import HeaderOptions, RateLimitService
from limiter.server.rules import Rulebook

from limiter import config as rules
from limiter import ops
from limiter.ops.switches import Switch
from limiter.priority import Priority
from tests.service.conftest import request
from tests.support import untyped_samples

RULES = """
domain: d
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 5, name: per-user}
  - key: ip
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: LIMIT, name: per-ip}
  - key: job
    rate_limit: {requests_per_unit: 1, algorithm: concurrency, name: jobs}
"""


def config(limit: int = 9) -> rules.Config:
    return rules.parse(RULES.replace("LIMIT", str(limit)))


def test_reload_keeps_state_of_unchanged_rules_only() -> None:
    book = Rulebook(config(9))
    user = book.snapshot.by_name[("d", "per-user")]
    ip = book.snapshot.by_name[("d", "per-ip")]
    user.acquire("u", 2)
    user.stats.total_hits = 2
    book.reload(config(10))  # per-ip changed, per-user did not
    user_after = book.snapshot.by_name[("d", "per-user")]
    ip_after = book.snapshot.by_name[("d", "per-ip")]
    assert user_after.kernel is user.kernel and user_after.stats.total_hits == 2
    assert user_after.acquire("u", 1).remaining == 2
    assert ip_after.kernel is not ip.kernel and ip_after.limit == 10
    assert ip_after.stats is ip.stats  # counters stay monotonic for Prometheus


def test_the_policys_level_reaches_both_apis() -> None:
    policy = ops.build({}, start=False)
    policy.switches.put(
        Switch.from_request("level:default", {"level": 3, "who": "t", "why": "x"}, 0)
    )
    decider = Decider(Rulebook(config()), policy)
    metrics = Metrics()
    rls = RateLimitService(decider, metrics, HeaderOptions())
    native = LimiterService(decider, metrics)

    async def scenario() -> tuple[rls_pb2.RateLimitResponse, object]:
        answer = await rls.decide(request("d", {"user": "x"}))
        decided = await native.decide(
            v1.DecideRequest(checks=[v1.Check(domain="d", rule="per-user", key="x")])
        )
        return answer, decided

    answer, decided = asyncio.run(scenario())
    assert {h.key: h.value for h in answer.request_headers_to_add} == {"x-limiter-level": "3"}
    assert decided.level == 3 and decided.results[0].level == 3  # type: ignore[attr-defined]


def test_admission_hook_gets_refused_checks_with_max_wait() -> None:
    book = Rulebook(config())
    calls = []

    class Admission:
        """The decider's admission interface, recording what it is asked."""

        def waiting(self, state, key):  # type: ignore[no-untyped-def]
            return False

        async def admit(self, state, key, cost, priority, max_wait, caller=""):  # type: ignore
            calls.append((state.label, key, cost, priority, max_wait))
            return state.acquire(key, cost), 0.25, False

    native = LimiterService(Decider(book, admission=Admission()), Metrics())
    check = v1.Check(domain="d", rule="per-user", key="q", cost=5, priority=4, max_wait=1)

    async def scenario() -> list:  # type: ignore[type-arg]
        first = await native.decide(v1.DecideRequest(checks=[check]))
        second = await native.decide(v1.DecideRequest(checks=[check]))
        return [first.results[0], second.results[0]]  # type: ignore[attr-defined]

    first, second = asyncio.run(scenario())
    assert first.allowed and len(calls) == 1  # allowed at once: only the refusal queued
    assert not second.allowed and second.code == v1.Result.QUEUE_TIMEOUT
    assert second.waited == 0.25
    assert calls == [("per-user", "d\x1fuser\x1fq", 5, Priority.SHEDDABLE, 1.0)]


def test_overrides_and_detailed_series_are_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rules_module, "MAX_OVERRIDES", 4)
    monkeypatch.setattr(rules_module, "MAX_DETAILED_SERIES", 3)
    book = Rulebook(config())
    for n in range(10):
        book.override("d", n + 1, 1)
    assert len(book.overrides) == 4
    ip = book.snapshot.by_name[("d", "per-ip")]
    for n in range(10):
        d = ip.acquire(f"k{n}", 1)
        ip.count(d.allowed, d.remaining, 1, False)
        ip.count_detail(f"ip_{n}", d.allowed, d.remaining, 1, False)
    assert sorted(ip.detailed or {}) == ["_other", "ip_0", "ip_1", "ip_2"]
    assert ip.detailed["_other"].total_hits == 7  # type: ignore[index]
    assert ip.stats.total_hits == 10


def test_forgotten_permits_expire_on_an_injected_clock() -> None:
    now = [100.0]
    book = Rulebook(config(), permit_ttl=5, clock=lambda: now[0])
    jobs = book.snapshot.by_name[("d", "jobs")]
    token = book.hold(jobs.acquire("j", 1))
    assert not jobs.acquire("j", 1).allowed
    now[0] += 4.9
    assert book.expire_permits() == 0
    now[0] += 0.2
    assert book.expire_permits() == 1 and book.take(token) is None
    assert jobs.acquire("j", 1).allowed


def test_http_server_parsing_routing_and_limits() -> None:
    http = HttpServer()

    async def scenario() -> list[bytes]:

        async def hello(request: Request) -> Response:
            return Response.text(f"hello {request.method} {len(request.body)}")

        async def admin(request: Request) -> Response:
            return Response.json({"path": request.path, "client": request.client})

        async def boom(request: Request) -> Response:
            raise RuntimeError("bug")

        http.route("GET", "/hello", hello)
        http.route("POST", "/hello", hello, max_body=100)
        http.route("GET", "/boom", boom)
        http.mount("/v1/", admin)
        port = http.start("127.0.0.1", 0)  # served on its own thread

        async def exchange(raw: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data

        out = [
            # two requests on one keep-alive connection, then close
            await exchange(
                b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /hello HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            ),
            await exchange(b"GET /v1/switches/a%20b HTTP/1.1\r\nConnection: close\r\n\r\n"),
            await exchange(b"DELETE /hello HTTP/1.1\r\nConnection: close\r\n\r\n"),
            await exchange(b"GET /nope HTTP/1.0\r\n\r\n"),
            await exchange(b"garbage\r\n\r\n"),
            await exchange(b"POST /hello HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            await exchange(b"POST /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            await exchange(b"GET /hello HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"),
            await exchange(b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n"),
            await exchange(b"HEAD /hello HTTP/1.1\r\nConnection: close\r\n\r\n"),
            # a digit to str.isdigit, not to int(): latin-1 b"\xb2" is "²"
            await exchange(b"POST /hello HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n"),
        ]
        return out

    try:
        out = asyncio.run(scenario())
    finally:
        http.stop()
    assert out[0].count(b"HTTP/1.1 200 OK") == 2
    assert b"hello GET 0" in out[0] and b"hello POST 3" in out[0]
    assert b'"path": "/v1/switches/a b"' in out[1] and b'"client": "127.0.0.1"' in out[1]
    statuses = [o.split(b"\r\n", 1)[0] for o in out[2:]]
    assert statuses == [
        b"HTTP/1.1 405 Method Not Allowed",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 413 Content Too Large",
        b"HTTP/1.1 411 Length Required",
        b"HTTP/1.1 431 Request Header Fields Too Large",
        b"HTTP/1.1 500 Internal Server Error",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 400 Bad Request",
    ]
    assert out[-2].endswith(b"\r\n\r\n")  # HEAD: headers only


def test_worker_metrics_merge_sums_counters_and_histograms() -> None:
    from limiter.server.metrics import GAUGES, merge

    one = Metrics()
    two = Metrics()
    for metrics, n in ((one, 2), (two, 3)):
        for _ in range(n):
            metrics.latency.labels("rls").observe(0.0002)
        metrics.invalid_requests.labels("native").inc(n)
        metrics.config_ok.set(1 if n == 2 else 0)
    text = merge([one.render().decode(), two.render().decode()], GAUGES)
    lines = set(text.splitlines())
    assert 'limiter_invalid_requests_total{api="native"} 5.0' in lines
    assert 'limiter_decision_latency_seconds_count{api="rls"} 5.0' in lines
    assert 'limiter_decision_latency_seconds_bucket{api="rls",le="0.00025"} 5.0' in lines
    assert "limiter_config_last_reload_successful 0.0" in lines  # min: one worker is stale
    assert untyped_samples(text) == []  # a counter's TYPE names its _total samples


def test_latency_histogram_buckets_are_cumulative_and_inclusive() -> None:
    metrics = Metrics()
    series = metrics.latency.labels("native")
    for value in (0.00001, 0.00001, 0.0003, 7.0):  # on a bound, between bounds, past the last
        series.observe(value)
    lines = set(metrics.render().decode().splitlines())
    bucket = "limiter_decision_latency_seconds_bucket"
    assert f'{bucket}{{api="native",le="1e-05"}} 2.0' in lines  # le: a value on a bound counts
    assert f'{bucket}{{api="native",le="0.00025"}} 2.0' in lines
    assert f'{bucket}{{api="native",le="0.0005"}} 3.0' in lines
    assert f'{bucket}{{api="native",le="0.5"}} 3.0' in lines
    assert f'{bucket}{{api="native",le="+Inf"}} 4.0' in lines
    assert 'limiter_decision_latency_seconds_count{api="native"} 4.0' in lines
    assert 'limiter_decision_latency_seconds_sum{api="native"} 7.00032' in lines
