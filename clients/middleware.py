"""What the ASGI and WSGI middleware share (sans-I/O): options, the request's key and
cost, the 429 body, and what a response status says about the backend. The two
modules only map this onto their server interface."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from limiter.clients.gate import Gate
from limiter.clients.keys import KeyFunc, RequestInfo, everyone

from limiter.errors import InvalidParameter

MAX_BEFORE = 60.0  # seconds before the app beyond which a request-start header is ignored


def outcome(status: int) -> bool | None:
    """What a response says about the backend: 5xx/429 bad, 4xx nothing, else good."""
    if status >= 500 or status == 429:
        return False
    if status >= 400:
        return None
    return True


def rejection_body(decision: Any) -> bytes:
    return json.dumps(
        {"error": "rate_limited", "retry_after": round(decision.retry_after, 3)}
    ).encode()


def is_global(limiter: object) -> bool:
    """A limiter with one limit for the whole backend whatever the key (adaptive)."""
    return hasattr(limiter, "current_limit")


class Middleware:
    """Wrap ``app`` with ``limiter``.

    ``key`` says what a limit applies to and must be given for a keyed limiter:
    ``keys.client_ip()`` (a limit per client), ``keys.everyone()`` (one limit for
    the whole app), ``keys.header("X-Api-Key")``, ...; an adaptive limiter has one
    limit whatever the key, so it defaults to ``everyone()``. ``cost`` is an int or
    a function of the ``RequestInfo``; ``exempt`` paths (e.g. health checks) bypass
    the limiter; ``headers_on_success`` adds the RateLimit fields to admitted
    responses too; ``level_header`` carries the degradation level to the app (None:
    not sent). ``started`` (e.g. ``keys.request_start()``) returns when the request
    reached the proxy in front of the app (epoch seconds, or None): the latency fed
    back then includes the time before the app, in the proxy, the server's backlog
    and the event loop, instead of starting at the middleware. Other keyword
    arguments go to ``Gate``."""

    def __init__(
        self,
        app: Callable[..., Any],
        limiter: object,
        *,
        key: KeyFunc | None = None,
        cost: int | Callable[[RequestInfo], int] = 1,
        started: Callable[[RequestInfo], float | None] | None = None,
        exempt: Iterable[str] = (),
        headers_on_success: bool = True,
        level_header: str | None = "x-limiter-level",
        **gate_options: Any,
    ) -> None:
        gate = Gate(limiter, **gate_options)  # first: a bad limiter is named before the rest
        if not callable(cost) and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 1):
            raise InvalidParameter(f"cost must be an integer >= 1 or a callable, got {cost!r:.80}")
        paths = None if isinstance(exempt, str) else frozenset(exempt)
        if paths is None or not all(isinstance(p, str) for p in paths):
            raise InvalidParameter(
                f"exempt must be a collection of path strings, got {exempt!r:.80}"
            )
        if level_header is not None and (not isinstance(level_header, str) or not level_header):
            raise InvalidParameter(
                f"level_header must be a non-empty str or None, got {level_header!r}"
            )
        if started is not None and not callable(started):
            raise InvalidParameter(
                f"started must be a function of the request returning epoch seconds, "
                f"got {started!r:.80}"
            )
        if key is None:
            if not is_global(limiter):
                raise InvalidParameter(
                    "key is required for a keyed limiter: key=client_ip() for a limit per "
                    "client, key=everyone() for one limit for every request "
                    "(limiter.clients.keys)"
                )
            key = everyone()
        if not callable(key):
            raise InvalidParameter(
                f"key must be a key function (RequestInfo -> str), got {key!r:.80}"
            )
        self.app = app
        self.started = started
        self.gate = gate
        self.key = key
        self.cost = cost
        self.exempt = paths
        self.headers_on_success = headers_on_success
        self.level_header = self._level_name(level_header) if level_header else None

    @staticmethod
    def _level_name(header: str) -> Any:
        """The level header as the server interface names it."""
        raise NotImplementedError

    def _key_cost(self, request: RequestInfo) -> tuple[str, int]:
        cost = self.cost(request) if callable(self.cost) else self.cost
        return self.key(request), cost

    def _arrived(self, request: RequestInfo) -> float:
        """Seconds the request spent before the middleware (0 when not known)."""
        if self.started is None:
            return 0.0
        at = self.started(request)
        if at is None:
            return 0.0
        before = time.time() - at
        # A clock ahead of ours or a stale header says nothing reliable.
        return before if 0.0 < before < MAX_BEFORE else 0.0

    def _success_headers(self, decision: Any) -> list[tuple[str, str]]:
        return self.gate.headers(decision) if self.headers_on_success else []
