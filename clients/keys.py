"""Who is asking: key functions for the HTTP middleware, ASGI and WSGI alike.

A key function takes a ``RequestInfo`` (method, path, peer address, headers) and
returns the string the limit applies to. ``client_ip`` only believes a forwarding
header when told to: a client can write any ``X-Forwarded-For`` it likes, so the
address is read ``hops`` entries from the right (the ones our own proxies appended)
and, if ``trusted`` networks are given, only when the peer is one of them.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable
from typing import Any

from limiter.errors import InvalidParameter

KeyFunc = Callable[["RequestInfo"], str]


class RequestInfo:
    """A framework-neutral, read-only view of one HTTP request (headers read lazily)."""

    __slots__ = ("_asgi_headers", "_environ", "method", "path", "peer")

    def __init__(self, method: str, path: str, peer: str) -> None:
        self.method = method
        self.path = path
        self.peer = peer
        self._asgi_headers: list[tuple[bytes, bytes]] | None = None
        self._environ: dict[str, Any] | None = None

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> RequestInfo:
        client = scope.get("client")
        info = cls(scope.get("method", "GET"), scope.get("path", "/"), client[0] if client else "")
        info._asgi_headers = scope.get("headers") or []
        return info

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> RequestInfo:
        info = cls(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/"),
            environ.get("REMOTE_ADDR", ""),
        )
        info._environ = environ
        return info

    def header(self, name: str) -> str | None:
        """The header's value (several occurrences joined by ", "), or None."""
        if self._environ is not None:
            upper = name.upper().replace("-", "_")
            if upper in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                return self._environ.get(upper)
            return self._environ.get("HTTP_" + upper)
        wanted = name.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in self._asgi_headers or () if k.lower() == wanted]
        return ", ".join(values) if values else None


def _networks(trusted: Iterable[str] | None) -> tuple[Any, ...] | None:
    if trusted is None:
        return None
    if isinstance(trusted, str):
        trusted = [trusted]
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
    except ValueError as exc:
        raise InvalidParameter(
            f"trusted must hold IP networks, got {trusted!r:.80}: {exc}"
        ) from None


def _is_trusted(peer: str, networks: tuple[Any, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in n for n in networks)


def client_ip(
    header: str | None = None, *, hops: int = 1, trusted: Iterable[str] | None = None
) -> KeyFunc:
    """Key by client address: the peer, or ``header`` when it is trusted.

    ``header`` is a comma-separated forwarding list such as ``X-Forwarded-For`` (or a
    single-valued one such as ``X-Real-IP``); ``hops`` is the number of proxies of
    ours in front of the app, so the client is the ``hops``-th entry from the right.
    ``trusted`` (CIDRs) restricts the header to requests arriving from those peers.
    """
    if header is not None and (not isinstance(header, str) or not header):
        raise InvalidParameter(f"header must be a non-empty str or None, got {header!r}")
    if isinstance(hops, bool) or not isinstance(hops, int) or not 1 <= hops <= 64:
        raise InvalidParameter(f"hops must be an integer in [1, 64], got {hops!r}")
    networks = _networks(trusted)

    def by_client_ip(request: RequestInfo) -> str:
        if header is None or (networks is not None and not _is_trusted(request.peer, networks)):
            return request.peer
        value = request.header(header)
        if not value:
            return request.peer
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            return request.peer
        return parts[-hops] if len(parts) >= hops else parts[0]

    return by_client_ip


def everyone(name: str = "all") -> KeyFunc:
    """One key for every request: the limiter guards the whole app (a global limit).

    The middleware needs the key said out loud: a keyed limiter (``ConcurrencyLimit``,
    ``TokenBucket``, ...) under ``client_ip()`` is a limit per client, under
    ``everyone()`` one limit for all.
    """
    if not isinstance(name, str):
        raise InvalidParameter(f"name must be a str, got {name!r:.80}")

    def for_everyone(request: RequestInfo) -> str:
        return name

    return for_everyone


def request_start(header: str = "X-Request-Start") -> Callable[[RequestInfo], float | None]:
    """When the request reached the proxy in front of the app, from ``header``.

    Reads ``t=<seconds>`` with a fraction (nginx: ``proxy_set_header X-Request-Start
    "t=${msec}";``), or whole milliseconds or microseconds since the epoch, with or
    without ``t=``; None when absent or unreadable. The proxy's clock must agree
    with this host's (the same host, or NTP).
    """
    if not isinstance(header, str) or not header:
        raise InvalidParameter(f"header must be a non-empty str, got {header!r}")

    def started(request: RequestInfo) -> float | None:
        value = request.header(header)
        if not value:
            return None
        value = value.strip()
        if value.startswith("t="):
            value = value[2:]
        try:
            t = float(value)
        except ValueError:
            return None
        if not math.isfinite(t) or t <= 0:
            return None
        # Seconds, milliseconds or microseconds since the epoch, by magnitude.
        while t > 1e11:
            t /= 1000.0
        return t

    return started


def header(name: str, default: str = "") -> KeyFunc:
    """Key by a request header's value, e.g. ``header("X-Api-Key")``."""
    return value_of(RequestInfo.header, name, default, "header")


def value_of(
    read: Callable[[Any, str], str | None], name: str, default: str, what: str
) -> Callable[[Any], str]:
    """A key function returning ``read(request, name)``, or ``default`` when absent
    (for HTTP headers and gRPC metadata alike)."""
    if not isinstance(name, str) or not name:
        raise InvalidParameter(f"{what} name must be a non-empty str, got {name!r}")

    def by_value(request: Any) -> str:
        value = read(request, name)
        return default if value is None else value

    return by_value


def route(*, method: bool = True) -> KeyFunc:
    """Key by route: ``"GET /items"`` (or the path alone with ``method=False``)."""

    def by_route(request: RequestInfo) -> str:
        return f"{request.method} {request.path}" if method else request.path

    return by_route


def combine(*keys: KeyFunc, sep: str = "|") -> KeyFunc:
    """Key by several parts, e.g. ``combine(route(), client_ip())``: a limit per client
    per route."""
    if not keys or not all(callable(k) for k in keys):
        raise InvalidParameter(f"combine needs one or more key functions, got {keys!r:.80}")

    def combined(request: RequestInfo) -> str:
        return sep.join(k(request) for k in keys)

    return combined
