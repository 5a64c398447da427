"""WSGI middleware: rate-limit HTTP requests of any WSGI app (Flask, Django, ...).

Same behaviour as the ASGI middleware: 429 with RateLimit headers and Retry-After,
the degradation level in ``environ["limiter.level"]`` (and ``HTTP_X_LIMITER_LEVEL``
when above 0), and latency/outcome feedback. A request ends when the server closes
the response iterable (PEP 3333), which also covers clients that disconnect.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from limiter.clients.gate import bind, unbind
from limiter.clients.keys import RequestInfo
from limiter.clients.middleware import Middleware, outcome, rejection_body

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Response:
    """The app's response iterable; closing it ends the request exactly once."""

    def __init__(
        self, body: Iterable[bytes], end: Callable[[bool | None, int], None], state: list
    ) -> None:
        self._body = body
        self._end = end
        self._state = state  # [status], filled in by start_response

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except Exception:
            self._end(False, self._state[0] if self._state else 0)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            status = self._state[0] if self._state else 0
            self._end(outcome(status) if status else None, status)


class RateLimitMiddleware(Middleware):
    """Wrap ``app``: ``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter)``.

    Options as for ``Middleware``. The limiter is called inline: WSGI servers
    run each request on its own thread, so a remote limiter blocks only that one.
    """

    def __init__(self, app: WSGIApp, limiter: object, **options: Any) -> None:
        super().__init__(app, limiter, **options)
        if self.gate.is_async:
            raise TypeError("a WSGI app needs a synchronous limiter, not an asyncio client")

    @staticmethod
    def _level_name(header: str) -> str:
        return "HTTP_" + header.upper().replace("-", "_")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") in self.exempt:
            return self.app(environ, start_response)
        key, cost = self._key_cost(RequestInfo.from_environ(environ))
        decision = self.gate.acquire(key, cost)
        if not decision.allowed:
            body = rejection_body(decision)
            start_response(
                "429 Too Many Requests",
                [
                    *self.gate.headers(decision),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        if decision.wait > 0:
            time.sleep(decision.wait)
        ticket = self.gate.open(decision, key=key)
        environ["limiter.level"] = ticket.level
        environ["limiter.decision"] = decision
        if self.level_header:
            # Only limiter may set the level header: a client's own copy is dropped.
            environ.pop(self.level_header, None)
            if ticket.level:
                environ[self.level_header] = str(ticket.level)
        extra = self._success_headers(decision)
        state: list[int] = []

        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            state[:] = [int(status.split(" ", 1)[0])]
            return start_response(status, headers + extra, exc_info)

        tokens = bind(decision, ticket.level)
        try:
            body = self.app(environ, start)
        except Exception:
            self.gate.close(ticket, False)
            raise
        finally:
            unbind(tokens)
        return _Response(body, functools.partial(self.gate.close, ticket), state)
