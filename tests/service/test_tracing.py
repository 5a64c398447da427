"""OpenTelemetry tracing (``serve --otel``): a span per ShouldRateLimit / Decide call.

In-process, the codecs are served over real gRPC (loopback) with the tracing interceptor
and decider wrapper, and spans are read from the SDK's in-memory exporter. The W3C
``traceparent`` header is written by hand here, so a span's parent is checked against
ids the test chose, not against the propagator's own round trip. One test runs
``limiter serve --otel 1`` and receives its spans over OTLP with a collector of its own.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from limiter.server import v1
from limiter.server.decider import Decider
from limiter.server.metrics import Metrics
from limiter.server.native import LimiterService
from limiter.server.rls import HeaderOptions, RateLimitService
from limiter.server.rules import Rulebook
from limiter.server.tracing import ATTRIBUTES, MAX_LISTED, Tracing
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from limiter import config as rules
from tests.service.conftest import ServiceProcess, request, write_config

ROOT = Path(__file__).resolve().parents[2]
RULES = """\
domain: shop
descriptors:
  - key: user
    rate_limit: {name: per-user, unit: hour, requests_per_unit: 1}
  - key: ip
    rate_limit: {name: per-ip, unit: hour, requests_per_unit: 100}
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
RLS = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
DECIDE = "limiter.v1.Limiter/Decide"


def invalid() -> rls_pb2.RateLimitRequest:
    """A request the service refuses (INVALID_ARGUMENT): more hits than any limit holds."""
    message = request("shop", {"user": "a"})
    message.descriptors[0].hits_addend.value = 2**41
    return message


def traceparent(sampled: bool = True) -> tuple[tuple[str, str], ...]:
    """W3C trace context: version 00, trace id, parent span id, flags (01 sampled)."""
    return (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{'01' if sampled else '00'}"),)


class Traced:
    """The RLS and native codecs on a real gRPC server with tracing on (in-process)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(provider)

    async def __aenter__(self) -> Traced:
        decider = self.tracing.decider(Decider(Rulebook(rules.parse(RULES))))
        metrics = Metrics()
        self.server = grpc.aio.server(interceptors=[self.tracing.interceptor()])
        self.server.add_generic_rpc_handlers(
            (RateLimitService(decider, metrics, HeaderOptions()).handler(),)
        )
        v1.add_limiter_servicer(self.server, LimiterService(decider, metrics))
        health_pb2_grpc.add_HealthServicer_to_server(_Health(), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.rls = rls_pb2_grpc.RateLimitServiceStub(self.channel)
        self.native = v1.LimiterStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(None)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


class _Health(health_pb2_grpc.HealthServicer):
    async def Check(self, request: Any, context: Any) -> Any:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def run(test: Any) -> list[ReadableSpan]:
    async def main() -> list[ReadableSpan]:
        async with Traced() as traced:
            await test(traced)
        return traced.spans()

    return asyncio.run(main())


def test_rls_span_is_a_child_of_the_callers_traceparent() -> None:
    async def calls(t: Traced) -> None:
        for _ in range(2):  # the second is over per-user's limit
            await t.rls.ShouldRateLimit(
                request("shop", {"user": "alice"}, {"ip": "10.0.0.1"}),
                metadata=traceparent(),
                timeout=10,
            )

    spans = run(calls)
    assert [s.name for s in spans] == [RLS, RLS]
    span = spans[1]
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.span_id == int(PARENT_ID, 16)
    assert span.context.trace_id == int(TRACE_ID, 16)
    a = span.attributes
    assert a["rpc.system"] == "grpc" and a["rpc.method"] == "ShouldRateLimit"
    assert a["rpc.service"] == "envoy.service.ratelimit.v3.RateLimitService"
    assert a["rpc.grpc.status_code"] == 0
    assert a["limiter.domain"] == "shop" and a["limiter.backend"] == "memory"
    assert a["limiter.checks"] == 2
    assert list(a["limiter.rules"]) == ["shop/per-user", "shop/per-ip"]
    assert list(a["limiter.outcomes"]) == ["OVER_LIMIT", "OK"]
    assert a["limiter.over_limit"] == 1 and a["limiter.level"] == 0
    assert a["limiter.held"] is False
    assert 0 < a["limiter.backend.latency_s"] < (span.end_time - span.start_time) / 1e9
    assert list(spans[0].attributes["limiter.outcomes"]) == ["OK", "OK"]
    assert span.status.status_code is StatusCode.UNSET


def test_decide_span_without_a_parent_is_a_root_span() -> None:
    async def calls(t: Traced) -> None:
        checks = [
            v1.Check(domain="shop", rule="per-user", key="bob", cost=2),  # over: 2 > 1
            v1.Check(domain="shop", rule="per-ip", key="10.0.0.2"),
            v1.Check(domain="shop", rule="nope", key="x"),
        ]
        await t.native.Decide(v1.DecideRequest(checks=checks), timeout=10)

    [span] = run(calls)
    assert span.name == DECIDE and span.parent is None
    a = span.attributes
    assert a["rpc.method"] == "Decide" and a["rpc.service"] == "limiter.v1.Limiter"
    assert list(a["limiter.rules"]) == ["shop/per-user", "shop/per-ip", ""]
    assert list(a["limiter.outcomes"]) == ["OVER_LIMIT", "OK", "UNKNOWN_RULE"]
    assert a["limiter.checks"] == 3 and a["limiter.over_limit"] == 1
    assert "limiter.domain" not in a  # checks name their own domains


def test_an_invalid_request_records_its_status_and_why() -> None:
    async def calls(t: Traced) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await t.rls.ShouldRateLimit(invalid(), metadata=traceparent(), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    [span] = run(calls)
    a = span.attributes
    assert a["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "hits_addend" in a["limiter.error"]
    # The caller's mistake, not the server's: OpenTelemetry's RPC conventions leave it unset.
    assert span.status.status_code is StatusCode.UNSET
    assert "limiter.checks" not in a


def test_an_unknown_domain_is_marked() -> None:
    async def calls(t: Traced) -> None:
        await t.rls.ShouldRateLimit(request("elsewhere", {"user": "a"}), timeout=10)

    [span] = run(calls)
    a = span.attributes
    assert a["limiter.domain"] == "elsewhere" and a["limiter.unknown_domain"] is True
    assert a["limiter.checks"] == 1 and "limiter.outcomes" not in a


def test_listed_checks_are_bounded_and_the_counts_cover_all() -> None:
    n = MAX_LISTED + 36

    async def calls(t: Traced) -> None:
        users = [{"user": f"u{i}"} for i in range(n)] + [{"user": "u0"}]
        await t.rls.ShouldRateLimit(request("shop", *users), timeout=10)

    [span] = run(calls)
    a = span.attributes
    assert len(a["limiter.rules"]) == len(a["limiter.outcomes"]) == MAX_LISTED
    assert a["limiter.checks"] == n + 1 and a["limiter.over_limit"] == 1


def test_only_decisions_get_spans_and_an_unsampled_parent_records_nothing() -> None:
    async def calls(t: Traced) -> None:
        health = health_pb2_grpc.HealthStub(t.channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        await t.native.Release(v1.ReleaseRequest(permits=["nope"]), timeout=10)
        answer = await t.rls.ShouldRateLimit(
            request("shop", {"user": "carol"}), metadata=traceparent(sampled=False), timeout=10
        )
        assert answer.overall_code == rls_pb2.RateLimitResponse.OK

    assert run(calls) == []


def test_every_attribute_a_span_carries_is_documented() -> None:
    async def calls(t: Traced) -> None:
        await t.rls.ShouldRateLimit(request("shop", {"user": "dan"}), timeout=10)
        await t.rls.ShouldRateLimit(request("elsewhere", {"user": "dan"}), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await t.rls.ShouldRateLimit(invalid(), timeout=10)

    seen = {name for span in run(calls) for name in span.attributes}
    assert seen == set(ATTRIBUTES)
    manual = (ROOT / "docs" / "tracing.md").read_text()
    missing = [name for name in ATTRIBUTES if f"`{name}`" not in manual]
    assert not missing, f"docs/tracing.md does not describe {missing}"


def test_otel_without_the_extra_is_a_clear_start_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "rules.yaml", RULES)
    # An interpreter where the opentelemetry packages cannot be imported.
    code = "import sys; sys.modules['opentelemetry'] = None; "
    code += "from limiter.server.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "serve", "--config", str(config), "--otel", "1",
         "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "--otel needs the [otel] extra" in done.stderr
    assert "limiter-engine[otel]" in done.stderr


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: every exported span, as the wire carried it."""

    def __init__(self) -> None:
        self.received: queue.Queue[Any] = queue.Queue()

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get(
                "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.received.put((service, span))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(None)


def test_serve_otel_exports_the_span_of_a_real_call_over_otlp(
    tmp_path: Path, collector: tuple[Collector, int]
) -> None:
    receiver, port = collector
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms between exports (default 5 s)
    }
    config = write_config(tmp_path / "rules.yaml", RULES)
    service = ServiceProcess(config, "--otel", "1", env=env).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            answer = stub.ShouldRateLimit(
                request("shop", {"user": "erin"}), metadata=traceparent(), timeout=10
            )
            assert answer.overall_code == rls_pb2.RateLimitResponse.OK
        try:
            service_name, span = receiver.received.get(timeout=20)
        except queue.Empty:
            raise AssertionError(f"no span exported:\n{service.logs()}") from None
    finally:
        assert service.stop() == 0
    assert service_name == "limiter" and span.name == RLS
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
    attributes = {a.key: a.value for a in span.attributes}
    assert [v.string_value for v in attributes["limiter.rules"].array_value.values] == [
        "shop/per-user"
    ]
    assert attributes["limiter.over_limit"].int_value == 0
