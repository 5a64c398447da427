"""What the ASGI and WSGI middleware share (sans-I/O): options, the request's key and
cost, the 429 body, and what a response status says about the backend. The two
modules only map this onto their server interface."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from limiter.clients.gate import Gate
from limiter.clients.keys import KeyFunc, RequestInfo, client_ip

from limiter.errors import InvalidParameter


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


class Middleware:
    """Wrap ``app`` with ``limiter``. ``cost`` is an int or a function of the
    ``RequestInfo``; ``exempt`` paths (e.g. health checks) bypass the limiter;
    ``headers_on_success`` adds the RateLimit fields to admitted responses too;
    ``level_header`` carries the degradation level to the app (None: not sent).
    Other keyword arguments go to ``Gate``."""

    def __init__(
        self,
        app: Callable[..., Any],
        limiter: object,
        *,
        key: KeyFunc | None = None,
        cost: int | Callable[[RequestInfo], int] = 1,
        exempt: Iterable[str] = (),
        headers_on_success: bool = True,
        level_header: str | None = "x-limiter-level",
        **gate_options: Any,
    ) -> None:
        key = key or client_ip()
        if not callable(key):
            raise InvalidParameter(
                f"key must be a key function (RequestInfo -> str), got {key!r:.80}"
            )
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
        self.app = app
        self.gate = Gate(limiter, **gate_options)
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

    def _success_headers(self, decision: Any) -> list[tuple[str, str]]:
        return self.gate.headers(decision) if self.headers_on_success else []
