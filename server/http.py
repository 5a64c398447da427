"""A small asyncio HTTP/1.1 server for the service's operational port.

Why not a framework: the port serves a handful of JSON/text endpoints next to the
gRPC server in the same event loop, and a dependency-free server keeps that loop free
of threads. It supports keep-alive, Content-Length bodies (no chunked uploads) and
bounded header/body sizes, and answers 400/404/405/413/431/500 itself.

Registration point (other modules add endpoints here, before or after ``start``)::

    http.route("GET", "/healthcheck", handler)   # one method + exact path
    http.mount("/v1/", handler)                  # every method and path under a prefix

A handler is ``async def handler(request: Request) -> Response``. Exact routes win;
otherwise the longest mounted prefix gets the request and does its own dispatch
(the ops admin API mounts ``/v1/`` this way, the ops console ``/console/``).
``Request.client`` is the peer address, for handlers that only serve loopback callers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

log = logging.getLogger("limiter.server")

REASONS = {
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT = 30.0


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


class HttpServer:
    """Routes plus a listener; see the module docstring for the registration API."""

    def __init__(self, *, max_body: int = 8 * 1024 * 1024) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.mounts: list[tuple[str, Handler]] = []
        self.max_body = max_body
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    def mount(self, prefix: str, handler: Handler) -> None:
        self.mounts.append((prefix, handler))
        self.mounts.sort(key=lambda m: -len(m[0]))

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen; returns the bound port."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEADER_BYTES)
        return sock.getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await self._server.wait_closed()
            self._server = None

    def _find(self, method: str, path: str) -> Handler | bool | None:
        handler = self.routes.get((method, path))
        if handler is not None:
            return handler
        for prefix, mounted in self.mounts:
            if path.startswith(prefix):
                return mounted
        # True: the path exists under another method (405), else None (404).
        return any(p == path for _, p in self.routes) or None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        try:
            while True:
                keep_alive = await self._one(reader, writer, client)
                if not keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
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
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await self._send(
                writer, Response.text("chunked bodies are not supported\n", 411), False
            )
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            await self._send(writer, Response.text("invalid Content-Length\n", 400), False)
            return False
        if length > self.max_body:
            text = f"body of {length} bytes exceeds {self.max_body}\n"
            await self._send(writer, Response.text(text, 413), False)
            return False
        body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT) if length else b""
        path, _, query = target.partition("?")
        request = Request(method.upper(), unquote(path), query, headers, body, client)
        response = await self._dispatch(request)
        await self._send(writer, response, keep_alive, head_only=request.method == "HEAD")
        return keep_alive

    async def _dispatch(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler = self._find(method, request.path)
        if handler is None:
            return Response.text("not found\n", 404)
        if handler is True:
            return Response.text("method not allowed\n", 405)
        try:
            return await handler(request)  # type: ignore[operator]
        except Exception:
            log.exception("http handler failed", extra={"fields": {"path": request.path}})
            return Response.text("internal error\n", 500)

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
