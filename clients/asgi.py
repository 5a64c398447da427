"""ASGI middleware: rate-limit HTTP requests of any ASGI app (Starlette, FastAPI, ...).

Refused requests get ``429 Too Many Requests`` with ``RateLimit-Policy``,
``RateLimit`` and ``Retry-After``; admitted ones run with the degradation level in
``scope["limiter.level"]`` (and in ``current_level()``, and as a request header
when above 0, so the app can degrade), and their latency and outcome go back to the
adaptive limiter. The event loop never blocks: in-process kernels answer inline,
async SDK clients are awaited, and limiters doing blocking I/O run in a thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from limiter.clients.gate import Gate, bind, unbind
from limiter.clients.keys import KeyFunc, RequestInfo, client_ip

from limiter.errors import InvalidParameter

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def outcome(status: int) -> bool | None:
    """What a response says about the backend: 5xx/429 bad, 4xx nothing, else good."""
    if status >= 500 or status == 429:
        return False
    if status >= 400:
        return None
    return True


def check_options(
    key: object, cost: object, exempt: object, level_header: object
) -> frozenset[str]:
    """Validate the middleware options both flavours share; returns the exempt paths."""
    if not callable(key):
        raise InvalidParameter(f"key must be a key function (RequestInfo -> str), got {key!r:.80}")
    if not callable(cost) and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 1):
        raise InvalidParameter(f"cost must be an integer >= 1 or a callable, got {cost!r:.80}")
    paths = None if isinstance(exempt, str) else frozenset(exempt)  # type: ignore[arg-type]
    if paths is None or not all(isinstance(p, str) for p in paths):
        raise InvalidParameter(f"exempt must be a collection of path strings, got {exempt!r:.80}")
    if level_header is not None and (not isinstance(level_header, str) or not level_header):
        raise InvalidParameter(
            f"level_header must be a non-empty str or None, got {level_header!r}"
        )
    return paths


def rejection_body(decision: Any) -> bytes:
    return json.dumps(
        {"error": "rate_limited", "retry_after": round(decision.retry_after, 3)}
    ).encode()


class RateLimitMiddleware:
    """Wrap ``app``: ``RateLimitMiddleware(app, TokenBucket(100, 200), key=client_ip())``.

    ``cost`` is an int or a function of the ``RequestInfo``; ``exempt`` paths (e.g.
    health checks) bypass the limiter; ``headers_on_success`` adds the RateLimit
    fields to admitted responses too. Other keyword arguments go to ``Gate``.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
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
        exempt = check_options(key, cost, exempt, level_header)
        self.app = app
        self.gate = Gate(limiter, **gate_options)
        self.key = key
        self.cost = cost
        self.exempt = exempt
        self.headers_on_success = headers_on_success
        self.level_header = level_header.lower().encode() if level_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        request = RequestInfo.from_scope(scope)
        cost = self.cost(request) if callable(self.cost) else self.cost
        gate = self.gate
        if gate.inline:
            decision = gate.acquire(self.key(request), cost)
        else:
            decision = await gate.acquire_async(self.key(request), cost)
        if not decision.allowed:
            await self._reject(decision, send)
            return
        if decision.wait > 0:
            await asyncio.sleep(decision.wait)
        ticket = self.gate.open(decision)
        scope = dict(scope)
        scope["limiter.level"] = ticket.level
        scope["limiter.decision"] = decision
        if self.level_header:
            # Only limiter may set the level header: a client's own copy is dropped.
            name = self.level_header
            headers = [h for h in scope.get("headers", ()) if h[0] != name]
            if ticket.level:
                headers.append((name, str(ticket.level).encode()))
            scope["headers"] = headers
        extra = (
            [(k.encode(), v.encode()) for k, v in self.gate.headers(decision)]
            if self.headers_on_success
            else []
        )
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        tokens = bind(decision, ticket.level)
        ok: bool | None = None
        try:
            await self.app(scope, receive, send_wrapper)
            ok = outcome(status)
        except Exception:  # not CancelledError: a client going away says nothing (ok None)
            ok = False
            raise
        finally:
            unbind(tokens)
            gate.close_soon(ticket, ok)

    async def _reject(self, decision: Any, send: Send) -> None:
        body = rejection_body(decision)
        headers = [(k.encode(), v.encode()) for k, v in self.gate.headers(decision)]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
