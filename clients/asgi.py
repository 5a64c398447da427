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
from collections.abc import Awaitable, Callable
from typing import Any

from limiter.clients.gate import bind, unbind
from limiter.clients.keys import RequestInfo
from limiter.clients.middleware import Middleware, outcome, rejection_body

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RateLimitMiddleware(Middleware):
    """Wrap ``app``: ``RateLimitMiddleware(app, TokenBucket(100, 200), key=client_ip())``.

    Options as for ``Middleware``. The latency fed back runs from admission (or from
    ``started``) to the end of the response. A client that goes away before its
    response is complete is not a success: a drop once it had waited longer than
    the adaptive limiter's target, else nothing is reported. The middleware reads
    the request's messages one ahead of the app to see the disconnect even when
    the app does not read them.
    """

    @staticmethod
    def _level_name(header: str) -> bytes:
        return header.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        request = RequestInfo.from_scope(scope)
        key, cost = self._key_cost(request)
        gate = self.gate
        if gate.inline:
            decision = gate.acquire(key, cost)
        else:
            decision = await gate.acquire_async(key, cost)
        if not decision.allowed:
            await self._reject(decision, send)
            return
        if decision.wait > 0:
            await asyncio.sleep(decision.wait)
        ticket = self.gate.open(decision, self._arrived(request), key)
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
        extra = [(k.encode(), v.encode()) for k, v in self._success_headers(decision)]
        status = 500
        sent = 0  # the status the app answered with, 0 before it starts its response
        watch = _Watch(receive)

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = sent = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                watch.answered = True
            await send(message)

        tokens = bind(decision, ticket.level)
        ok: bool | None = None
        try:
            await self.app(scope, watch.receive, send_wrapper)
            ok = gate.hung_up(ticket) if watch.gone else outcome(status)
        except asyncio.CancelledError:
            ok = gate.hung_up(ticket)
            raise
        except Exception:
            ok = gate.hung_up(ticket) if watch.gone else False
            raise
        finally:
            watch.stop()
            unbind(tokens)
            gate.close_soon(ticket, ok, sent)

    async def _reject(self, decision: Any, send: Send) -> None:
        body = rejection_body(decision)
        headers = [(k.encode(), v.encode()) for k, v in self.gate.headers(decision)]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Watch:
    """The app's ``receive``, read one message ahead by a task of its own so that a
    client's disconnect is seen while the app works; at most one message waits
    for the app, so the server's flow control still applies."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._ahead: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1)
        self._task = asyncio.get_running_loop().create_task(self._read())
        self.gone = False  # the client went away before the answer was complete
        self.answered = False

    async def _read(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = not self.answered
                await self._ahead.put(message)
                return
            await self._ahead.put(message)

    async def receive(self) -> dict[str, Any]:
        if self._task.done() and self._ahead.empty():
            return {"type": "http.disconnect"}
        return await self._ahead.get()

    def stop(self) -> None:
        self._task.cancel()
