"""The service's operational HTTP port, served on its own thread and event loop.

Why its own loop: the decision loop only decides. Health checks, ``/metrics``
rendering, ``/json`` parsing and the admin API run here, so a slow scrape or a large
body delays none of the checks; a handler that needs a decision hands it to the
decision loop (``Service.on_decision_loop``) and awaits the result.

Why not a framework: a handful of JSON/text endpoints need keep-alive, Content-Length
bodies (no chunked uploads) and bounds, which this file gives without dependencies.
Every bound is checked on the request head, before the body is read: the route must
exist and accept the method, a mount's guard (the admin token) must let the caller in,
the body must fit the route's ``max_body`` (default ``MAX_BODY``) and, where the route
names one, the content type must match; at most
``MAX_CONNECTIONS`` connections are open at once (more are closed at accept) and an idle
connection is closed after ``IDLE_TIMEOUT`` seconds. With ``tls`` (a callable giving the
``ssl.SSLContext`` for a new connection, so a renewed certificate applies to the next
one), each connection completes its handshake within ``HANDSHAKE_TIMEOUT`` seconds.

Registration (before ``start``): ``route(method, path, handler, max_body=,
content_type=)`` for one method and exact path, ``mount(prefix, handler, guard=)`` for
every method under a prefix (the admin API ``/v1/``, the console ``/console/``). A
handler is ``async def handler(request: Request) -> Response``; a ``guard`` sees the
request's head (its ``body`` still empty) and answers a refusal (e.g. a missing token)
or None, so a caller who may not use a mount cannot make the server read a body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from limiter.courtesy import courteous

log = logging.getLogger("limiter.server")

REASONS = {
    200: "OK",
    301: "Moved Permanently",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 512
IDLE_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, document: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(document).encode(), "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Request], "Response | None"]


@dataclass(frozen=True)
class _Route:
    handler: Handler
    max_body: int = MAX_BODY
    content_type: str | None = None  # required media type, if any
    guard: Guard | None = None  # refuses on the head alone (e.g. authentication)


class HttpServer:
    """Routes plus a listener on its own thread; see the module docstring."""

    def __init__(self, *, tls: Callable[[], ssl.SSLContext] | None = None) -> None:
        self.routes: dict[tuple[str, str], _Route] = {}
        self.mounts: list[tuple[str, _Route]] = []
        self.tls = tls
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        max_body: int = MAX_BODY,
        content_type: str | None = None,
    ) -> None:
        self.routes[(method.upper(), path)] = _Route(handler, max_body, content_type)

    def mount(self, prefix: str, handler: Handler, *, guard: Guard | None = None) -> None:
        self.mounts.append((prefix, _Route(handler, guard=guard)))
        self.mounts.sort(key=lambda m: -len(m[0]))

    def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen (the socket is bound here, so a port in use fails at once) and serve on a
        new thread; returns the bound port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it every keep-alive response after the first waits for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            with courteous():  # rendering, parsing and the admin API never hold up decisions
                serve()

        def serve() -> None:
            loop = self.loop
            assert loop is not None
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, sock=sock, limit=MAX_HEADER_BYTES)
                )
            except BaseException as exc:  # handed to the caller of start
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="limiter-http", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return sock.getsockname()[1]

    def stop(self) -> None:
        """Close the listener and every connection, and end the thread (blocks)."""
        loop = self.loop
        if loop is None or self._thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            if self._server is not None:
                await self._server.wait_closed()
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        self._thread.join(timeout=10)
        self._thread = None

    def _admit(self, request: Request) -> tuple[_Route, int] | Response:
        """The route of ``request`` and the length of its body, or the answer refusing it
        on its head alone (nothing of the body read)."""
        method = "GET" if request.method == "HEAD" else request.method
        path = request.path
        route = self.routes.get((method, path))
        if route is None:
            route = next((r for prefix, r in self.mounts if path.startswith(prefix)), None)
        if route is None:
            if any(p == path for _, p in self.routes):
                return Response.text("method not allowed\n", 405)
            return Response.text("not found\n", 404)
        if route.guard is not None:
            refusal = route.guard(request)
            if refusal is not None:
                return refusal
        headers = request.headers
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Response.text("chunked bodies are not supported\n", 411)
        raw = headers.get("content-length", "0")
        if not (raw.isascii() and raw.isdigit()):
            return Response.text("invalid Content-Length\n", 400)
        length = int(raw)
        if length > route.max_body:
            return Response.text(f"body of {length} bytes exceeds {route.max_body}\n", 413)
        wanted = route.content_type
        if wanted is not None and length:
            given = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if given != wanted:
                return Response.text(f"Content-Type must be {wanted}\n", 415)
        return route, length

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()  # at the bound: the newcomer is refused, not everyone
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        try:
            if self.tls is not None:
                await writer.start_tls(self.tls(), ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            while await self._one(reader, writer, client):
                pass
        except (
            asyncio.CancelledError,
            asyncio.IncompleteReadError,
            ConnectionError,
            TimeoutError,
            ssl.SSLError,
        ):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> bool:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError:
            await self._send(writer, Response.text("request headers too large\n", 431), False)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, Response.text("malformed request line\n", 400), False)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                await self._send(writer, Response.text("malformed header line\n", 400), False)
                return False
            headers[name.lower()] = value.strip()
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        path, _, query = target.partition("?")
        request = Request(method.upper(), unquote(path), query, headers, b"", client)
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            # Nothing of the body has been read: the connection cannot be reused.
            await self._send(writer, admitted, False)
            return False
        route, length = admitted
        if length:
            request.body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT)
        try:
            response = await route.handler(request)
        except Exception:
            log.exception("http handler failed", extra={"fields": {"path": request.path}})
            response = Response.text("internal error\n", 500)
        await self._send(writer, response, keep_alive, head_only=request.method == "HEAD")
        return keep_alive

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        keep_alive: bool,
        head_only: bool = False,
    ) -> None:
        reason = REASONS.get(response.status, "Unknown")
        head = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: " + ("keep-alive" if keep_alive else "close"),
            *(f"{k}: {v}" for k, v in response.headers),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        await writer.drain()
