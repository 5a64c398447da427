"""How an SDK client calls the decision service: deadline, throttling, failure mode.

Sans-I/O: the sync and asyncio clients share this and differ only in how they
await the RPC. A decision that cannot arrive within the deadline is worth less
than a local guess, so every call has a short deadline (20 ms by default, as
Envoy's rate-limit filter) and a failure mode decides when the service does not.
"""

from __future__ import annotations

import logging

import grpc
from limiter.clients.fallback import ClientDecision, Fallback
from limiter.clients.throttle import AdaptiveThrottle

from limiter.errors import InvalidParameter

log = logging.getLogger("limiter.clients")

# Quick reconnects: after the service restarts, decisions should come from it again
# within about a second, not after gRPC's default backoff of up to two minutes.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
)

# Codes that mean "the service did not answer": they fall back and count against it.
# Anything else (INVALID_ARGUMENT, ...) is a bug in the request and is raised.
UNANSWERED = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)


class CallPolicy:
    """Deadline, client-side throttling and failure mode for one client."""

    def __init__(
        self,
        timeout: float = 0.020,
        failure_mode: object = "allow",
        throttle: AdaptiveThrottle | bool | None = True,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidParameter(f"timeout must be a number of seconds, got {timeout!r}")
        if not 0 < timeout <= 3600:
            raise InvalidParameter(f"timeout must be in (0, 3600] seconds, got {timeout!r}")
        if throttle is True:
            throttle = AdaptiveThrottle()
        elif throttle is False:
            throttle = None
        elif throttle is not None and not isinstance(throttle, AdaptiveThrottle):
            raise InvalidParameter(
                f"throttle must be True, False, None or an AdaptiveThrottle, got {throttle!r:.80}"
            )
        self.timeout = float(timeout)
        self.fallback = Fallback(failure_mode)
        self.throttle = throttle

    def admit(self) -> bool:
        """May this call go to the service? False: throttled locally."""
        return self.throttle is None or self.throttle.allow_request()

    def answered(self) -> None:
        if self.throttle is not None:
            self.throttle.accepted()

    def failed(self, error: grpc.RpcError, what: str) -> None:
        """Classify a failed call: raise for bad requests, else log and fall back."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code not in UNANSWERED:
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidParameter(f"{what}: {error.details()}") from error
            raise error
        log.debug("%s failed (%s); failure mode %r decides", what, code, self.fallback.mode)

    def fallback_for(self, key: str, cost: int, throttled: bool) -> ClientDecision:
        return self.fallback.decide(key, cost, "throttled" if throttled else "fallback")


def channel(target: str, options: tuple = ()) -> grpc.Channel:
    """A plain-text channel to ``target`` (``host:port``), reused for every call."""
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS + tuple(options))


def aio_channel(target: str, options: tuple = ()) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS + tuple(options))
