"""The HTTP port refuses on the request head, caps connections, and answers keep-alive
requests without a delayed-ACK stall.

Attacks: large bodies sent to every path (read in full before routing or auth), a web
page posting ``text/plain`` to ``/json`` from an operator's browser, idle connections
held open by the hundred, and keep-alive clients slowed by Nagle's algorithm.
"""

from __future__ import annotations

import socket
import statistics
import time

from limiter.server.http import MAX_CONNECTIONS

TOKEN = "s3cret-admin-token-0123456789"
CONFIG = """domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000}
"""


def exchange(port: int, head: str, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send ``head`` (and ``body``) and return what the server answers before closing or
    ``timeout`` (an empty answer: it was still waiting)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + body)
        out = b""
        try:
            while b"\r\n\r\n" not in out and (chunk := s.recv(65536)):
                out += chunk
        except TimeoutError:
            pass
        return out


def test_admin_refuses_a_caller_without_the_token_before_reading_its_body(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, env={"LIMITER_ADMIN_TOKEN": TOKEN})
    for auth in ("", "Authorization: Bearer wrong-token-0123456789\r\n"):
        # The body is announced but never sent: the answer must come from the head alone.
        head = (
            "PUT /v1/switches/global HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: 60000\r\n\r\n"
        )
        answer = exchange(service.http_port, head)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    # With the token, the same head is read on (the body is within the admin bound).
    head = (
        "GET /v1/switches HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    assert exchange(service.http_port, head).startswith(b"HTTP/1.1 200 ")


def test_json_bounds_are_checked_on_the_head(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG)
    port = service.http_port
    # 8 MB announced, nothing sent: refused at once.
    head = (
        "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 8000000\r\n\r\n"
    )
    assert exchange(port, head).startswith(b"HTTP/1.1 413 ")
    # A browser's cross-site form post (text/plain needs no CORS preflight): refused.
    body = b'{"domain": "d", "descriptors": [{"entries": [{"key": "user", "value": "u"}]}]}'
    head = (
        "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    assert exchange(port, head, body).startswith(b"HTTP/1.1 415 ")
    # Unknown paths and methods are refused before a body is read, too.
    for head in (
        "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n",
        "PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n",
    ):
        assert exchange(port, head)[:12] in (b"HTTP/1.1 404", b"HTTP/1.1 405")
    # Within the bounds, /json answers.
    status, _ = service.http("POST", "/json", body)
    assert status == 200
    assert service.metric("limiter_rule_total_hits_total", domain="d", rule="user") == 1


def test_connections_beyond_the_cap_are_closed_at_accept(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG)
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", service.http_port), timeout=5))
        # A request on each proves the server has accepted every one of them.
        for s in held:
            s.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in held:
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        extra = socket.create_connection(("127.0.0.1", service.http_port), timeout=5)
        extra.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = extra.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert answer == b"", answer  # the newcomer is closed, not served
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert service.http("GET", "/healthcheck")[0] == 200


def test_keep_alive_responses_are_not_delayed(serve) -> None:  # type: ignore[no-untyped-def]
    """Each response is written as a head and a body; without TCP_NODELAY the body waits
    for the client's delayed ACK of the head (40 ms on Linux) on every request but the
    first few of a connection."""
    service = serve(CONFIG)
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=5) as s:
        took = []
        for _ in range(30):
            start = time.perf_counter()
            s.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"OK\n"):
                answer += s.recv(4096)
            took.append(time.perf_counter() - start)
    assert statistics.median(took) < 0.02, took
