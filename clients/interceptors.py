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
    if not isinstance(name, str) or not name:
        raise InvalidParameter(f"metadata name must be a non-empty str, got {name!r}")

    def key(call: CallInfo) -> str:
        value = call.metadata(name)
        return default if value is None else value

    return key


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


class _Options:
    """What both interceptors are configured with."""

    def __init__(
        self,
        limiter: object,
        key: KeyFunc,
        cost: int | Callable[[CallInfo], int],
        methods: Iterable[str] | None,
        classify: Callable[[grpc.StatusCode | None], bool | None],
        gate_options: dict[str, Any],
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

    def applies(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def request(self, method: str, context: Any) -> tuple[str, int]:
        call = CallInfo(method, context)
        cost = self.cost(call) if callable(self.cost) else self.cost
        return self.key(call), cost

    def outcome(self, context: Any, default: grpc.StatusCode | None = None) -> bool | None:
        """The finished RPC's status (set by the handler or its abort), classified."""
        code = context.code()
        return self.classify(code if code is not None else default)

    def wrap(self, method: str, handler: Any, unary: Callable, stream: Callable) -> Any:
        """The guarded handler, built once per method and cached."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler.unary_unary:
            make, behavior, guard = grpc.unary_unary_rpc_method_handler, handler.unary_unary, unary
        elif handler.unary_stream:
            make, behavior, guard = (
                grpc.unary_stream_rpc_method_handler,
                handler.unary_stream,
                stream,
            )
        elif handler.stream_unary:
            make, behavior, guard = (
                grpc.stream_unary_rpc_method_handler,
                handler.stream_unary,
                unary,
            )
        else:
            make, behavior, guard = (
                grpc.stream_stream_rpc_method_handler,
                handler.stream_stream,
                stream,
            )
        wrapped = make(
            guard(method, behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class RateLimitInterceptor(grpc.ServerInterceptor):
    """For ``grpc.server(..., interceptors=[RateLimitInterceptor(limiter)])``.

    ``key`` maps a ``CallInfo`` to the limiter key (default: the method name; see
    ``by_peer`` and ``by_metadata``); ``cost`` is an int or a function of it;
    ``methods`` restricts gating to those full method names; ``classify`` maps the
    final status code to the outcome fed back (True ok, False dropped, None ignore).
    Other keyword arguments go to ``Gate`` (``feedback``, ``level``, ``policy``, ...).
    """

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
        self.options = _Options(limiter, key, cost, methods, classify, gate_options)
        if self.options.gate.is_async:
            raise TypeError("grpc.server needs a synchronous limiter; use AioRateLimitInterceptor")

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.options.applies(method):
            return handler
        return self.options.wrap(method, handler, self._unary, self._stream)

    def _admit(self, method: str, context: Any) -> Ticket:
        options = self.options
        key, cost = options.request(method, context)
        decision = options.gate.acquire(key, cost)
        if not decision.allowed:
            context.abort_with_status(
                _Status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    rejection_message(decision),
                    rejection_metadata(decision, key, options.gate),
                )
            )
        if decision.wait > 0:
            time.sleep(decision.wait)
        ticket = options.gate.open(decision)
        # Fires on cancellation too, while the handler thread may still be running.
        context.add_callback(functools.partial(options.gate.close, ticket, None))
        return ticket

    def _unary(self, method: str, behavior: Callable) -> Callable:
        options = self.options

        def guarded(request: Any, context: Any) -> Any:
            ticket = self._admit(method, context)
            tokens = bind(ticket.decision, ticket.level)
            ok = None
            try:
                response = behavior(request, context)
                ok = options.outcome(context)
                return response
            except Exception:
                ok = options.outcome(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                unbind(tokens)
                options.gate.close(ticket, ok)

        return guarded

    def _stream(self, method: str, behavior: Callable) -> Callable:
        options = self.options

        def guarded(request: Any, context: Any) -> Any:
            ticket = self._admit(method, context)
            ok = None
            try:
                tokens = bind(ticket.decision, ticket.level)
                try:
                    responses = iter(behavior(request, context))
                finally:
                    unbind(tokens)
                while True:
                    tokens = bind(ticket.decision, ticket.level)
                    try:
                        item = next(responses)
                    except StopIteration:
                        break
                    finally:
                        unbind(tokens)
                    yield item
                ok = options.outcome(context)
            except Exception:
                ok = options.outcome(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                options.gate.close(ticket, ok)

        return guarded


class AioRateLimitInterceptor(grpc.aio.ServerInterceptor):
    """For ``grpc.aio.server(interceptors=[AioRateLimitInterceptor(limiter)])``.

    Same options as ``RateLimitInterceptor``; the limiter may also be an asyncio SDK
    client, and a limiter doing blocking I/O is called from a worker thread.
    Handlers must be coroutines or async generators.
    """

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
        self.options = _Options(limiter, key, cost, methods, classify, gate_options)

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.options.applies(method):
            return handler
        return self.options.wrap(method, handler, self._unary, self._stream)

    async def _admit(self, method: str, context: Any) -> Ticket:
        options = self.options
        key, cost = options.request(method, context)
        gate = options.gate
        decision = gate.acquire(key, cost) if gate.inline else await gate.acquire_async(key, cost)
        if not decision.allowed:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                rejection_message(decision),
                rejection_metadata(decision, key, options.gate),
            )
        if decision.wait > 0:
            await asyncio.sleep(decision.wait)
        return options.gate.open(decision)

    def _unary(self, method: str, behavior: Callable) -> Callable:
        if not inspect.iscoroutinefunction(behavior):
            raise TypeError(f"{method}: grpc.aio handlers must be coroutine functions")
        options = self.options

        async def guarded(request: Any, context: Any) -> Any:
            ticket = await self._admit(method, context)
            tokens = bind(ticket.decision, ticket.level)
            ok = None
            try:
                response = await behavior(request, context)
                ok = options.outcome(context)
                return response
            except Exception:  # CancelledError passes by: a cancellation says nothing
                ok = options.outcome(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                unbind(tokens)
                options.gate.close_soon(ticket, ok)

        return guarded

    def _stream(self, method: str, behavior: Callable) -> Callable:
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(method, behavior)  # writes with context.write()
        options = self.options

        async def guarded(request: Any, context: Any) -> Any:
            ticket = await self._admit(method, context)
            ok = None
            try:
                responses = behavior(request, context)
                while True:
                    tokens = bind(ticket.decision, ticket.level)
                    try:
                        item = await responses.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        unbind(tokens)
                    yield item
                ok = options.outcome(context)
            except Exception:
                ok = options.outcome(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                options.gate.close_soon(ticket, ok)

        return guarded
