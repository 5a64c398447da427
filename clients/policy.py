"""How an SDK client calls the decision service: deadline, throttling, failure mode.

Sans-I/O: a ``Call`` describes one RPC and what to answer whatever becomes of it;
the blocking and asyncio shells in ``connection`` only make it, so both clients
behave the same by construction. A decision that cannot arrive within the deadline
is worth less than a local guess, so every call has a short deadline (20 ms by
default, as Envoy's rate-limit filter) and a failure mode decides when the service
does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from limiter.clients.fallback import ClientDecision, Fallback
from limiter.clients.throttle import AdaptiveThrottle

from limiter.errors import InvalidParameter

log = logging.getLogger("limiter.clients")

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
            self.answered()  # refusing a bad request is an answer: the service is up
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidParameter(f"{what}: {error.details()}") from error
            raise error
        if self.throttle is not None:
            self.throttle.rejected()
        log.debug("%s failed (%s); failure mode %r decides", what, code, self.fallback.mode)

    def fallback_for(self, key: str, cost: int, throttled: bool) -> ClientDecision:
        return self.fallback.decide(key, cost, throttled)


@dataclass(frozen=True, slots=True)
class Call:
    """One RPC described without making it: the request, its deadline, and what to
    answer when the service answers, fails, or is not asked (throttled).

    With a ``policy`` the call is on the decision path: throttled, classified on
    failure, answered by the failure mode. Without one it is a side call (Release,
    Observe): always sent, and a failure is logged, never raised.
    """

    policy: CallPolicy | None
    what: str
    rpc: Callable[..., Any]
    request: Any
    timeout: float
    answer: Callable[[Any], Any]  # response -> answer
    fallback: Callable[[bool], Any]  # throttled -> answer without the service

    def admit(self) -> bool:
        return self.policy is None or self.policy.admit()

    def throttled(self) -> Any:
        return self.fallback(True)

    def answered(self, response: Any) -> Any:
        if self.policy is not None:
            self.policy.answered()
        return self.answer(response)

    def failed(self, error: grpc.RpcError) -> Any:
        if self.policy is None:
            log.warning("%s failed: %s", self.what, error.code())
        else:
            self.policy.failed(error, self.what)
        return self.fallback(False)
