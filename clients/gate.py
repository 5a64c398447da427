"""Admission shared by the gRPC interceptors and the HTTP middleware.

A ``Gate`` wraps any limiter (an in-process kernel, the adaptive limiter or an SDK
client of the decision service) and does, per request: decide, tell the handler
the degradation level, and when the request ends release its permit and feed its
latency and outcome back to the adaptive limiter. The protocol adapters only map
this onto their own wire (status codes, headers, metadata).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Callable
from typing import Any

from limiter import headers as rl_headers
from limiter.decorators import async_acquirer, check_limiter, is_blocking
from limiter.errors import InvalidParameter

_level: contextvars.ContextVar[int] = contextvars.ContextVar("limiter_level", default=0)
_decision: contextvars.ContextVar[Any] = contextvars.ContextVar("limiter_decision", default=None)


def current_level() -> int:
    """Degradation level of the request being handled (0 = normal service).

    Set by the interceptors and middleware for the handler's duration; a handler
    may switch off secondary features or serve cached data when it is above 0.
    """
    return _level.get()


def current_decision() -> Any:
    """The Decision that admitted the request being handled, or None outside one."""
    return _decision.get()


def bind(decision: Any, level: int) -> tuple[contextvars.Token, contextvars.Token]:
    return _level.set(level), _decision.set(decision)


def unbind(tokens: tuple[contextvars.Token, contextvars.Token]) -> None:
    _level.reset(tokens[0])
    _decision.reset(tokens[1])


def window_of(limiter: object) -> tuple[float | None, str]:
    """The policy window (seconds) and quota unit a limiter enforces, for headers;
    None when the limiter does not say (an SDK client: the rule lives on the service)."""
    period = getattr(limiter, "period", None)
    if isinstance(period, int | float) and period > 0:
        return float(period), "requests"
    rate, burst = getattr(limiter, "rate", None), getattr(limiter, "burst", None)
    if isinstance(rate, int | float) and isinstance(burst, int) and rate > 0:
        return burst / rate, "requests"
    if (
        type(limiter).__name__ == "ConcurrencyLimit"
        or getattr(limiter, "mode", "") == "concurrency"
    ):
        return 0.0, "concurrent-requests"
    if getattr(limiter, "mode", "") == "rate":  # the adaptive limiter: a limit per second
        return 1.0, "requests"
    return None, "requests"


class Ticket:
    """One admitted request: ends exactly once, whichever of completion, error or
    cancellation comes first (gRPC may report cancellation from another thread)."""

    __slots__ = ("_once", "_tokens", "before", "decision", "key", "level", "started")

    def __init__(self, decision: Any, level: int, before: float = 0.0, key: str = "") -> None:
        self.decision = decision
        self.level = level
        self.started = time.perf_counter()
        self.before = before  # seconds the request spent before admission
        self.key = key  # what the request was limited by (reported to the service)
        self._once = [True]

    def __enter__(self) -> Ticket:
        """Inside ``with ticket:``, ``current_decision()`` / ``current_level()`` are its own."""
        self._tokens = bind(self.decision, self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        unbind(self._tokens)

    def claim(self) -> bool:
        try:
            return self._once.pop()  # list.pop is atomic: only one caller gets True
        except IndexError:
            return False


class Gate:
    """Decide, expose the level, release and feed back, for one limiter.

    ``feedback`` receives ``record(latency_s, ok=...)`` for every finished request
    whose outcome says something about the backend (defaults to the limiter itself
    when it has ``record``, as the adaptive limiter does). ``level`` is a callable
    returning the current degradation level; without it the level a remote decision
    carries is used. ``policy`` names the quota in RateLimit headers and ``window``
    its length in seconds, derived from the limiter when it can be; for the native
    client, whose answers do not say, give it or only ``RateLimit`` is sent.
    """

    def __init__(
        self,
        limiter: object,
        *,
        feedback: object = None,
        level: Callable[[], int] | None = None,
        policy: str = "default",
        window: float | None = None,
        legacy_headers: bool = False,
    ) -> None:
        self.acquire = check_limiter(limiter)
        self.acquire_async = async_acquirer(limiter)
        self.is_async = inspect.iscoroutinefunction(self.acquire)
        # In-process kernels answer in well under a microsecond: async adapters call
        # them directly instead of awaiting a wrapper coroutine.
        self.inline = not self.is_async and not is_blocking(limiter)
        if feedback is None and callable(getattr(limiter, "record", None)):
            feedback = limiter
        if feedback is not None and not callable(getattr(feedback, "record", None)):
            raise InvalidParameter(
                f"feedback must have a record(latency_s, ok=...) method, got {feedback!r:.80}"
            )
        if level is not None and not callable(level):
            raise InvalidParameter(f"level must be a callable returning an int, got {level!r:.80}")
        if not isinstance(policy, str) or not policy:
            raise InvalidParameter(f"policy must be a non-empty str, got {policy!r}")
        default_window, self.unit = window_of(limiter)
        if window is None:
            window = default_window
        elif isinstance(window, bool) or not isinstance(window, int | float) or window < 0:
            raise InvalidParameter(f"window must be a number of seconds >= 0, got {window!r}")
        self.record = feedback.record if feedback is not None else None
        # An SDK client of the service also takes the request's key and status, which
        # feed the rule's breaker and abnormal-access blocking there.
        self.records_calls = getattr(feedback, "records_calls", False) is True
        self.own_record = getattr(limiter, "record", None)
        controller = getattr(limiter, "controller", None)
        self.target = getattr(controller, "target_latency", None) or getattr(
            limiter, "target_latency", None
        )
        # The adaptive limiter's permits measure and report themselves; recording the
        # same call again through limiter.record would count it twice.
        self.record_reported = feedback is not limiter
        self.level = level
        self.policy = policy
        self.window = None if window is None else float(window)
        self.legacy_headers = legacy_headers
        self._policy_fields: dict[int, str] = {}  # RateLimit-Policy by limit: it rarely changes

    def open(self, decision: Any, before: float = 0.0, key: str = "") -> Ticket:
        """Start an admitted request limited by ``key`` that spent ``before`` seconds
        before admission (in a proxy, the server's backlog, the event loop), 0 when not
        known."""
        level = self.level() if self.level is not None else getattr(decision, "level", 0)
        return Ticket(decision, level, before, key)

    def hung_up(self, ticket: Ticket) -> bool | None:
        """The outcome of a request whose client went away before its answer: a drop
        once it had taken longer than the adaptive limiter's target (the client most
        likely gave up waiting), else nothing (it left for its own reasons)."""
        if self.target is None:
            return None
        waited = time.perf_counter() - ticket.started + ticket.before
        return False if waited >= self.target else None

    def close(self, ticket: Ticket, ok: bool | None, status: int = 0) -> None:
        """End a request: release its permit; ``ok`` None means "say nothing" (e.g. a
        client error or a cancellation), True a success, False an error or timeout;
        ``status``: the response's HTTP status (0: none), reported to the service with
        the request's key when the feedback is its SDK client, even when ``ok`` is None."""
        if not ticket.claim():
            return
        decision = ticket.decision
        if hasattr(decision, "dropped") and ticket.before > 0 and self.own_record is not None:
            # The permit measures from admission; report the whole wait instead.
            decision.ignore()
            if ok is not None:
                latency = time.perf_counter() - ticket.started + ticket.before
                self.own_record(latency, ok=ok)
            if not self.record_reported:
                return
        elif hasattr(decision, "dropped"):  # a self-reporting permit (AdaptivePermit)
            if ok is None:
                decision.ignore()
            elif ok:
                decision.success()
            else:
                decision.dropped()
            if not self.record_reported:
                return
        else:
            release = getattr(decision, "release", None)
            if release is not None:
                release()
        if self.record is None:
            return
        latency = time.perf_counter() - ticket.started + ticket.before
        if self.records_calls and (ok is not None or status):
            self.record(latency, ok=ok, key=ticket.key, status=status)
        elif ok is not None:
            self.record(latency, ok=ok)

    def close_soon(self, ticket: Ticket, ok: bool | None, status: int = 0) -> None:
        """``close`` for event-loop code: when releasing or recording may do blocking I/O
        (a sync SDK client, a Redis-backed permit) it runs in a worker thread."""
        if self.inline or self.is_async:
            self.close(ticket, ok, status)
        else:
            asyncio.get_running_loop().run_in_executor(None, self.close, ticket, ok, status)

    def headers(self, decision: Any) -> list[tuple[str, str]]:
        """IETF RateLimit-Policy / RateLimit (and Retry-After when refused).

        An Envoy RLS answer carries the service's own headers, which are used as they are.
        """
        own = getattr(decision, "headers", None)
        if own is not None:
            return list(own)
        quota = rl_headers.Quota(
            name=self.policy,
            limit=max(decision.limit, 0),
            window=self.window or 0.0,
            remaining=decision.remaining,
            reset_after=decision.reset_after,
            allowed=decision.allowed,
            retry_after=decision.retry_after,
            unit=self.unit,
        )
        limited = decision.limit > 0  # 0: no rule applied (e.g. a failure-mode answer)
        if self.legacy_headers and limited and self.window is not None:
            return rl_headers.build([quota], legacy=True)
        headers = []
        if limited and self.window is not None:
            headers.append(("RateLimit-Policy", self._policy_field(quota)))
        if limited:
            headers.append(("RateLimit", rl_headers.ratelimit_field([quota])))
        if not decision.allowed:
            headers.append(("Retry-After", str(rl_headers.retry_after([quota]))))
        return headers

    def _policy_field(self, quota: rl_headers.Quota) -> str:
        """RateLimit-Policy, cached by limit: it only changes when the limit does."""
        field = self._policy_fields.get(quota.limit)
        if field is None:
            if len(self._policy_fields) > 64:  # an adaptive limit moves: keep the cache small
                self._policy_fields.clear()
            field = self._policy_fields[quota.limit] = rl_headers.policy_field([quota])
        return field
