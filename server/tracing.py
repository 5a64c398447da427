"""OpenTelemetry spans for decisions: ``serve --otel`` with the optional ``[otel]`` extra.

One server span per ``ShouldRateLimit`` (Envoy RLS) and ``Decide`` (limiter.v1) call. Its
parent is the caller's span when the call's gRPC metadata carries one (W3C
``traceparent``, read by the configured propagators: ``OTEL_PROPAGATORS``, by default
tracecontext and baggage). Its attributes say what was decided: the domain, each check's
rule and outcome, the level, and how long the decision took in the kernels or the shared
store (``ATTRIBUTES`` lists them).

Only a service started with tracing on imports this module and builds its two parts: a
gRPC interceptor that opens the span around the codec's entry point, and a wrapper of the
decider that writes the decision onto the current span. Without them the decision path
is the same code as before, with no check per call at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from limiter.server import v1
from limiter.server.decider import Checks, Code, Decided, Decider
from limiter.server.rls import SERVICE as RLS_SERVICE
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

# The calls that get a span: full method name -> span name (``service/method``).
SPANNED = {
    f"/{RLS_SERVICE}/ShouldRateLimit": f"{RLS_SERVICE}/ShouldRateLimit",
    f"/{v1.SERVICE_NAME}/Decide": f"{v1.SERVICE_NAME}/Decide",
}
# Checks listed one by one in ``limiter.rules`` / ``limiter.outcomes``; a request may carry
# thousands, so past this many only the counts cover them.
MAX_LISTED = 64
# Server span statuses that are errors (OpenTelemetry's RPC conventions); any other code,
# INVALID_ARGUMENT included, is the caller's business and leaves the status unset.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
MAX_ERROR_CHARS = 1000
CODE_NAMES = {code.value: code.name for code in Code}
ATTRIBUTES = {
    "rpc.system": "always grpc",
    "rpc.service": "envoy.service.ratelimit.v3.RateLimitService or limiter.v1.Limiter",
    "rpc.method": "ShouldRateLimit or Decide",
    "rpc.grpc.status_code": "the call's gRPC status (0: OK; an over-limit answer is OK)",
    "limiter.error": "the status details of a call that did not end OK",
    "limiter.backend": "where limits live: memory, or the --redis URL's scheme",
    "limiter.domain": "the RLS request's domain",
    "limiter.unknown_domain": "true when no config defines the RLS domain (answered OK)",
    "limiter.checks": "descriptors (RLS) or checks (Decide) in the request",
    "limiter.rules": f"each check's rule, `domain/rule` (empty: no rule), the first {MAX_LISTED}",
    "limiter.outcomes": "each check's outcome (OK, OVER_LIMIT, UNKNOWN_RULE, BACKEND_ERROR, "
    f"QUEUE_TIMEOUT, BREAKER_OPEN), the first {MAX_LISTED}",
    "limiter.over_limit": "checks refused",
    "limiter.level": "the degradation level the answer reports",
    "limiter.held": "true when a check waited for admission",
    "limiter.backend.latency_s": "seconds the decision took in the kernels, or with --redis "
    "in the round trips to Redis; time held for admission included",
}


class Tracing:
    """The tracer, and the two parts a service wires in when tracing is on."""

    def __init__(self, provider: TracerProvider, backend: str = "memory") -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("limiter.server")
        self.backend = backend

    @classmethod
    def exporting(cls, redis_url: str | None) -> Tracing:
        """Spans exported over OTLP/gRPC in batches from a thread of their own, configured
        by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER``,
        ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*`` ...); the service name defaults to limiter."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "limiter"}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        backend = "memory" if not redis_url else redis_url.partition("://")[0]
        return cls(provider, backend)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """Opens the span of each ``SPANNED`` call (for ``grpc.aio.server(interceptors=)``)."""
        return _SpanInterceptor(self)

    def decider(self, decider: Decider) -> Any:
        """``decider`` for the codecs, writing each decision onto the current span."""
        return TracedDecider(decider)

    def shutdown(self) -> None:
        """Export the spans still buffered, then stop exporting."""
        self.provider.shutdown()

    def traced(
        self, method: str, behavior: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        """``behavior`` (a unary handler) run inside the span of ``method``."""
        service, _, name = method[1:].rpartition("/")
        fixed = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "limiter.backend": self.backend,
        }
        span_name = SPANNED[method]
        tracer = self.tracer

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parent = propagate.extract(dict(context.invocation_metadata() or ()))
            with tracer.start_as_current_span(
                span_name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=fixed,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    response = await behavior(request, context)
                except asyncio.CancelledError:
                    _end(span, grpc.StatusCode.CANCELLED, "cancelled")
                    raise
                except BaseException as exc:
                    code = context.code()
                    if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
                        code = grpc.StatusCode.UNKNOWN
                    _end(span, code, context.details() or type(exc).__name__)
                    raise
                span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
                return response

        return run


def _end(span: Any, code: grpc.StatusCode, details: str | bytes) -> None:
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    details = details[:MAX_ERROR_CHARS]
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    span.set_attribute("limiter.error", details)
    if code in SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, details))


class _SpanInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of the ``SPANNED`` methods (each built once, then cached)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method not in SPANNED or handler.unary_unary is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self.tracing.traced(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class TracedDecider:
    """The decider as the codecs see it, plus the decision written onto the current span
    (when it records: a call outside a span, or one not sampled, costs one check)."""

    def __init__(self, decider: Decider) -> None:
        self._decider = decider

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decider, name)

    def match(self, domain: str, descriptors: list[Any]) -> Any:
        rules = self._decider.match(domain, descriptors)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("limiter.domain", domain)
            if rules is None:
                span.set_attribute("limiter.unknown_domain", True)
                span.set_attribute("limiter.checks", len(descriptors))
        return rules

    async def decide(self, checks: Checks, budget: float | None = None) -> Decided:
        span = trace.get_current_span()
        if not span.is_recording():
            return await self._decider.decide(checks, budget)
        start = time.perf_counter()
        decided = await self._decider.decide(checks, budget)
        elapsed = time.perf_counter() - start
        outcomes = decided.outcomes
        listed = outcomes[:MAX_LISTED]
        span.set_attributes(
            {
                "limiter.checks": len(outcomes),
                "limiter.rules": ["" if o.rule is None else o.rule.ops_name for o in listed],
                "limiter.outcomes": [CODE_NAMES.get(int(o.code), str(o.code)) for o in listed],
                "limiter.over_limit": sum(1 for o in outcomes if not o.allowed),
                "limiter.level": int(decided.level),
                "limiter.held": bool(decided.held),
                "limiter.backend.latency_s": elapsed,
            }
        )
        return decided
