"""gRPC server interceptors: gate incoming RPCs (``grpc.server`` and ``grpc.aio``).

A refused RPC ends with ``RESOURCE_EXHAUSTED``, a ``google.rpc.Status`` in
``grpc-status-details-bin`` carrying ``RetryInfo`` (and ``QuotaFailure``), the gRFC A6
``grpc-retry-pushback-ms`` trailer and the RateLimit fields as trailers, so any
client can tell it from other errors and knows when to retry. An admitted RPC runs
with ``current_level()`` / ``current_decision()`` set for the handler; when it ends
(return, error or cancellation) its permit is released and its latency and outcome
are fed to the adaptive limiter.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from limiter.clients.gate import Gate, Ticket, bind, unbind
from limiter.clients.keys import value_of

from limiter.errors import InvalidParameter

PUSHBACK = "grpc-retry-pushback-ms"
DETAILS = "grpc-status-details-bin"
DROPPED = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }
)


class CallInfo:
    """What a key function sees of an incoming RPC: method, peer and metadata."""

    __slots__ = ("_context", "_metadata", "method")

    def __init__(self, method: str, context: Any) -> None:
        self.method = method
        self._context = context
        self._metadata: dict[str, str] | None = None

    @property
    def peer(self) -> str:
        return self._context.peer()

    def metadata(self, name: str) -> str | None:
        if self._metadata is None:
            self._metadata = {k: v for k, v in self._context.invocation_metadata() or ()}
        return self._metadata.get(name.lower())


KeyFunc = Callable[[CallInfo], str]


def by_method(call: CallInfo) -> str:
    """Key by full method name, e.g. ``/pkg.Service/Method`` (the default)."""
    return call.method


def by_peer(call: CallInfo) -> str:
    """Key by the caller's address without its port (``ipv4:1.2.3.4:5678`` -> ``1.2.3.4``)."""
    peer = call.peer
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0]
        return host.strip("[]") if kind == "ipv6" else host
    return peer


def by_metadata(name: str, default: str = "") -> KeyFunc:
    """Key by an invocation metadata value, e.g. ``by_metadata("x-tenant")``."""
    return value_of(CallInfo.metadata, name, default, "metadata")


def grpc_outcome(code: grpc.StatusCode | None) -> bool | None:
    """Success, a congestion signal (deadline, overload, unavailable), or neither."""
    if code is None or code == grpc.StatusCode.OK:
        return True
    if code in DROPPED:
        return False
    return None


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status
):
    pass


def rejection_metadata(decision: Any, key: str, gate: Gate) -> tuple[tuple[str, Any], ...]:
    """Trailers for a refused RPC: rich status, pushback, RateLimit fields."""
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=rejection_message(decision)
    )
    retry = decision.retry_after
    if retry > 0:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(math.ceil(retry * 1e9))
        status.details.add().Pack(info)
    failure = error_details_pb2.QuotaFailure()
    failure.violations.add(subject=key, description=f"limit {decision.limit} exceeded")
    status.details.add().Pack(failure)
    metadata: list[tuple[str, Any]] = [(DETAILS, status.SerializeToString())]
    if retry > 0:
        metadata.append((PUSHBACK, str(math.ceil(retry * 1000))))
    metadata.extend((name.lower(), value) for name, value in gate.headers(decision))
    return tuple(metadata)


def rejection_message(decision: Any) -> str:
    return f"rate limited; retry after {decision.retry_after:.3f}s"


_END = object()  # the end of a handler's responses


class _Finishing:
    """Ends ``ticket`` with the RPC's classified outcome however the handler exits: its
    status (set by the handler or its abort), UNKNOWN if it raised, nothing if it was
    cancelled (not an Exception: a cancellation says nothing about the backend). With
    ``bind``, the handler runs with the ticket's level and decision bound throughout."""

    __slots__ = ("bind", "classify", "close", "context", "ticket", "tokens")

    def __init__(
        self,
        interceptor: _Interceptor,
        ticket: Ticket,
        context: Any,
        close: Callable[[Ticket, bool | None], None],
        bind: bool,
    ) -> None:
        self.classify = interceptor.classify
        self.ticket = ticket
        self.context = context
        self.close = close
        self.bind = bind

    def __enter__(self) -> None:
        if self.bind:
            self.tokens = bind(self.ticket.decision, self.ticket.level)

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        if self.bind:
            unbind(self.tokens)
        ok = None
        if kind is None:
            ok = self.classify(self.context.code())
        elif issubclass(kind, Exception):
            code = self.context.code()
            ok = self.classify(code if code is not None else grpc.StatusCode.UNKNOWN)
        self.close(self.ticket, ok)
        return False


class _Interceptor:
    """What both interceptors share (sans-I/O): options, which RPCs to gate, the key
    and cost of one, its refusal and its outcome. The subclasses only wait."""

    def __init__(
        self,
        limiter: object,
        *,
        key: KeyFunc = by_method,
        cost: int | Callable[[CallInfo], int] = 1,
        methods: Iterable[str] | None = None,
        classify: Callable[[grpc.StatusCode | None], bool | None] = grpc_outcome,
        **gate_options: Any,
    ) -> None:
        if not callable(key):
            raise InvalidParameter(f"key must be a key function (CallInfo -> str), got {key!r:.80}")
        if not callable(cost) and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 1):
            raise InvalidParameter(f"cost must be an integer >= 1 or a callable, got {cost!r:.80}")
        if methods is not None:
            if isinstance(methods, str):
                raise InvalidParameter(f"methods must be a collection of names, got {methods!r}")
            methods = frozenset(methods)
        if not callable(classify):
            raise InvalidParameter(f"classify must be a callable, got {classify!r:.80}")
        self.gate = Gate(limiter, **gate_options)
        self.key = key
        self.cost = cost
        self.methods = methods
        self.classify = classify
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def _request(self, method: str, context: Any) -> tuple[str, int]:
        call = CallInfo(method, context)
        cost = self.cost(call) if callable(self.cost) else self.cost
        return self.key(call), cost

    def _refusal(self, decision: Any, key: str) -> tuple[grpc.StatusCode, str, tuple]:
        """How a refused RPC ends: code, message and trailers."""
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            rejection_message(decision),
            rejection_metadata(decision, key, self.gate),
        )

    def _guard(self, method: str, handler: Any) -> Any:
        """The guarded handler, built once per method and cached."""
        if handler is None or (self.methods is not None and method not in self.methods):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler.unary_unary:
            make, behavior, guard = (
                grpc.unary_unary_rpc_method_handler,
                handler.unary_unary,
                self._unary,
            )
        elif handler.unary_stream:
            make, behavior, guard = (
                grpc.unary_stream_rpc_method_handler,
                handler.unary_stream,
                self._stream,
            )
        elif handler.stream_unary:
            make, behavior, guard = (
                grpc.stream_unary_rpc_method_handler,
                handler.stream_unary,
                self._unary,
            )
        else:
            make, behavior, guard = (
                grpc.stream_stream_rpc_method_handler,
                handler.stream_stream,
                self._stream,
            )
        wrapped = make(
            guard(method, behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    # The subclasses' shells: (method, behavior) -> guarded behavior.
    _unary: Callable[[str, Callable], Callable]
    _stream: Callable[[str, Callable], Callable]


class RateLimitInterceptor(_Interceptor, grpc.ServerInterceptor):
    """For ``grpc.server(..., interceptors=[RateLimitInterceptor(limiter)])``.

    ``key`` maps a ``CallInfo`` to the limiter key (default: the method name; see
    ``by_peer`` and ``by_metadata``); ``cost`` is an int or a function of it;
    ``methods`` restricts gating to those full method names; ``classify`` maps the
    final status code to the outcome fed back (True ok, False dropped, None ignore).
    Other keyword arguments go to ``Gate`` (``feedback``, ``level``, ``policy``, ...).
    """

    def __init__(self, limiter: object, **options: Any) -> None:
        super().__init__(limiter, **options)
        if self.gate.is_async:
            raise TypeError("grpc.server needs a synchronous limiter; use AioRateLimitInterceptor")

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        return self._guard(handler_call_details.method, continuation(handler_call_details))

    def _admit(self, method: str, context: Any) -> Ticket:
        key, cost = self._request(method, context)
        decision = self.gate.acquire(key, cost)
        if not decision.allowed:
            context.abort_with_status(_Status(*self._refusal(decision, key)))
        if decision.wait > 0:
            time.sleep(decision.wait)
        ticket = self.gate.open(decision, key=key)
        # Fires on cancellation too, while the handler thread may still be running.
        context.add_callback(functools.partial(self.gate.close, ticket, None))
        return ticket

    def _unary(self, method: str, behavior: Callable) -> Callable:
        def guarded(request: Any, context: Any) -> Any:
            ticket = self._admit(method, context)
            with _Finishing(self, ticket, context, self.gate.close, bind=True):
                return behavior(request, context)

        return guarded

    def _stream(self, method: str, behavior: Callable) -> Callable:
        def guarded(request: Any, context: Any) -> Any:
            ticket = self._admit(method, context)
            with _Finishing(self, ticket, context, self.gate.close, bind=False):
                with ticket:
                    responses = iter(behavior(request, context))
                while True:
                    with ticket:
                        item = next(responses, _END)
                    if item is _END:
                        break
                    yield item

        return guarded


class AioRateLimitInterceptor(_Interceptor, grpc.aio.ServerInterceptor):
    """For ``grpc.aio.server(interceptors=[AioRateLimitInterceptor(limiter)])``.

    Same options as ``RateLimitInterceptor``; the limiter may also be an asyncio SDK
    client, and a limiter doing blocking I/O is called from a worker thread.
    Handlers must be coroutines or async generators.
    """

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        return self._guard(handler_call_details.method, await continuation(handler_call_details))

    async def _admit(self, method: str, context: Any) -> Ticket:
        key, cost = self._request(method, context)
        gate = self.gate
        decision = gate.acquire(key, cost) if gate.inline else await gate.acquire_async(key, cost)
        if not decision.allowed:
            await context.abort(*self._refusal(decision, key))
        if decision.wait > 0:
            await asyncio.sleep(decision.wait)
        return gate.open(decision, key=key)

    def _unary(self, method: str, behavior: Callable) -> Callable:
        if not inspect.iscoroutinefunction(behavior):
            raise TypeError(f"{method}: grpc.aio handlers must be coroutine functions")

        async def guarded(request: Any, context: Any) -> Any:
            ticket = await self._admit(method, context)
            with _Finishing(self, ticket, context, self.gate.close_soon, bind=True):
                return await behavior(request, context)

        return guarded

    def _stream(self, method: str, behavior: Callable) -> Callable:
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(method, behavior)  # writes with context.write()

        async def guarded(request: Any, context: Any) -> Any:
            ticket = await self._admit(method, context)
            with _Finishing(self, ticket, context, self.gate.close_soon, bind=False):
                responses = behavior(request, context)
                while True:
                    with ticket:
                        item = await anext(responses, _END)
                    if item is _END:
                        break
                    yield item

        return guarded
