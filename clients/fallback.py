"""What a client answers when the decision service cannot: the failure mode.

``"allow"`` (fail open, Envoy's default) lets the request through, ``"deny"`` (fail
closed) refuses it, and a limiter object (anything with ``acquire(key, cost)``,
e.g. a ``TokenBucket``) decides locally with the embedded engine until the service
is back.

A call the client's own throttle kept from the service is not a failure to answer:
the client judged the service overloaded, and letting the request through would
undo that protection. It is refused whatever the mode, unless a local limiter
stands in for the service, which then decides.
"""

from __future__ import annotations

from typing import Any

from limiter import Decision
from limiter.errors import InvalidParameter

# What a fail-closed refusal tells the caller: the service may well be back by then.
DENY_RETRY_AFTER = 1.0


class ClientDecision(Decision):
    """A Decision plus where it came from and what the service said besides.

    ``source`` is ``"service"`` (the service answered), ``"fallback"`` (the service
    failed or timed out and the failure mode decided) or ``"throttled"`` (kept from
    the service by client-side throttling: refused, or decided by a local limiter
    failure mode).
    ``level`` is the degradation level the service reported (0 if unknown),
    ``lease`` identifies concurrency permits to release on the native API, and
    ``headers`` are the rate-limit response headers the service chose (Envoy RLS),
    which the middleware then sends as they are.
    """

    __slots__ = ("headers", "lease", "level", "source")

    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_after: float,
        retry_after: float = 0.0,
        wait: float = 0.0,
        *,
        level: int = 0,
        source: str = "service",
        lease: Any = None,
        headers: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        super().__init__(allowed, limit, remaining, reset_after, retry_after, wait)
        self.level = level
        self.source = source
        self.lease = lease
        self.headers = headers

    @classmethod
    def wrap(cls, decision: Decision, source: str, level: int = 0) -> ClientDecision:
        return cls(
            decision.allowed,
            decision.limit,
            decision.remaining,
            decision.reset_after,
            decision.retry_after,
            decision.wait,
            level=level,
            source=source,
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, level={self.level}, source={self.source!r})"


class Fallback:
    """Resolves a failure mode into a Decision for one (key, cost)."""

    def __init__(self, mode: object = "allow") -> None:
        if isinstance(mode, str):
            if mode not in ("allow", "deny"):
                raise InvalidParameter(
                    f"failure_mode must be 'allow', 'deny' or a limiter object, got {mode!r}"
                )
        elif not callable(getattr(mode, "acquire", None)):
            raise InvalidParameter(
                f"failure_mode must be 'allow', 'deny' or a limiter object, got {mode!r:.80}"
            )
        self.mode = mode

    def decide(self, key: str, cost: int, throttled: bool) -> ClientDecision:
        """The answer for a call that failed (``throttled`` False) or was throttled."""
        source = "throttled" if throttled else "fallback"
        if self.mode == "allow" and not throttled:
            return ClientDecision(True, 0, 0, 0.0, source=source)
        if isinstance(self.mode, str):
            return ClientDecision(False, 0, 0, DENY_RETRY_AFTER, DENY_RETRY_AFTER, source=source)
        return ClientDecision.wrap(self.mode.acquire(key, cost), source)

    def __repr__(self) -> str:
        return f"Fallback({self.mode!r})"
