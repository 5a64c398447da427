"""gRPC client interceptors that honour server pushback (gRFC A6) and ``RetryInfo``.

When a server refuses with ``RESOURCE_EXHAUSTED`` (or ``UNAVAILABLE``) and says when
to come back, through ``grpc-retry-pushback-ms`` or a ``google.rpc.RetryInfo`` in
``grpc-status-details-bin``, the call is retried after exactly that delay, within
the call's deadline and an attempt budget. A negative pushback means "do not
retry"; no hint means the server gave no advice, and the error is returned as is.
Only unary-unary calls are retried: a stream may already have delivered messages.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from limiter.errors import InvalidParameter

PUSHBACK = "grpc-retry-pushback-ms"
DETAILS = "grpc-status-details-bin"
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


def retry_delay(trailing_metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """Seconds the server asked the client to wait, or None (no advice, or "never")."""
    pushback = details = None
    for key, value in trailing_metadata or ():
        if key == PUSHBACK:
            pushback = value
        elif key == DETAILS:
            details = value
    if pushback is not None:
        try:
            ms = int(pushback)
        except (TypeError, ValueError):
            ms = None
        if ms is not None:
            return None if ms < 0 else ms / 1000.0
    if details is not None:
        try:
            status = status_pb2.Status.FromString(details)
        except Exception:  # malformed details from the server: ignore them, as no advice
            return None
        for any_ in status.details:
            if any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                any_.Unpack(info)
                return max(0.0, info.retry_delay.ToNanoseconds() / 1e9)
    return None


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _Retrying:
    """What both interceptors share (sans-I/O): the retry policy."""

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        max_delay: float = 10.0,
        codes: Iterable[grpc.StatusCode] = RETRYABLE,
        jitter: float = 0.1,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise InvalidParameter(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if not 1 <= max_attempts <= 100:
            raise InvalidParameter(f"max_attempts must be in [1, 100], got {max_attempts!r}")
        if isinstance(max_delay, bool) or not isinstance(max_delay, int | float) or max_delay < 0:
            raise InvalidParameter(f"max_delay must be a number of seconds >= 0, got {max_delay!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise InvalidParameter(f"jitter must be a fraction in [0, 1], got {jitter!r}")
        self.max_attempts = max_attempts
        self.max_delay = float(max_delay)
        self.codes = frozenset(codes)
        self.jitter = float(jitter)

    def next_delay(
        self, attempt: int, code: grpc.StatusCode, metadata: Any, deadline: float | None
    ) -> float | None:
        """Delay before the next attempt, or None to give the caller this result."""
        if code not in self.codes or attempt >= self.max_attempts:
            return None
        delay = retry_delay(metadata)
        if delay is None or delay > self.max_delay:
            return None
        # Spread retries a little so refused clients do not all return in the same instant.
        delay *= 1.0 + self.jitter * random.random()
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


class _Attempts:
    """One call's attempts: the details of the next one (with what is left of the
    deadline) and the delay before it."""

    def __init__(self, retrying: _Retrying, details: Any) -> None:
        self.retrying = retrying
        self.first = details
        self.deadline = None if details.timeout is None else time.monotonic() + details.timeout
        self.attempt = 0

    def next_details(self) -> Any:
        """Details for the next attempt; call it just before making the attempt."""
        self.attempt += 1
        if self.attempt == 1 or self.deadline is None:
            return self.first
        remaining = max(0.0, self.deadline - time.monotonic())
        if hasattr(self.first, "_replace"):  # grpc's own details types are namedtuples
            return self.first._replace(timeout=remaining)
        return _CallDetails(
            self.first.method,
            remaining,
            self.first.metadata,
            self.first.credentials,
            getattr(self.first, "wait_for_ready", None),
            getattr(self.first, "compression", None),
        )

    def delay(self, code: grpc.StatusCode, metadata: Any) -> float | None:
        """Seconds to wait before retrying the attempt that ended so, or None: done."""
        return self.retrying.next_delay(self.attempt, code, metadata, self.deadline)


class PushbackRetryInterceptor(_Retrying, grpc.UnaryUnaryClientInterceptor):
    """For ``grpc.intercept_channel(channel, PushbackRetryInterceptor())``.

    ``max_attempts`` counts the first call; a server delay above ``max_delay`` is
    not waited for; ``jitter`` adds up to that fraction to each delay.
    """

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep, **options: Any) -> None:
        super().__init__(**options)
        self.sleep = sleep

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        attempts = _Attempts(self, details)
        while True:
            call = continuation(attempts.next_details(), request)
            delay = attempts.delay(call.code(), call.trailing_metadata())
            if delay is None:
                return call
            self.sleep(delay)


class AioPushbackRetryInterceptor(_Retrying, grpc.aio.UnaryUnaryClientInterceptor):
    """For ``grpc.aio.insecure_channel(target, interceptors=[AioPushbackRetryInterceptor()])``;
    options as for ``PushbackRetryInterceptor``, waits with ``asyncio.sleep``."""

    async def intercept_unary_unary(
        self, continuation: Callable, details: Any, request: Any
    ) -> Any:
        attempts = _Attempts(self, details)
        while True:
            call = await continuation(attempts.next_details(), request)
            code = await call.code()
            metadata = await call.trailing_metadata() if code in self.codes else None
            delay = attempts.delay(code, metadata)
            if delay is None:
                return call
            await asyncio.sleep(delay)
