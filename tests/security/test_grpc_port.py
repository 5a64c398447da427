"""The gRPC port bounds its connections: idle ones are closed, and past the cap a
newcomer is closed at accept, so file descriptors never run out.

Attack: tens of thousands of connections that send the HTTP/2 preface and nothing else,
held open until the process has no file descriptor left for anything (health checks,
Redis, its own logs).
"""

from __future__ import annotations

import socket
import time

import grpc

from tests.service.conftest import request, rls_stub

CONFIG = """domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 10}
"""
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def closed(sock: socket.socket) -> bool:
    """Has the server closed ``sock`` (end of stream or reset)? Drains what it sent."""
    try:
        while data := sock.recv(65536):
            del data
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_connections_are_closed_and_capped(serve) -> None:  # type: ignore[no-untyped-def]
    cap, idle = 40, 1.0
    service = serve(CONFIG, "--grpc-max-connections", str(cap), "--grpc-idle-timeout", str(idle))
    socks = []
    try:
        for _ in range(cap + 30):
            s = socket.create_connection(("127.0.0.1", service.grpc_port), timeout=5)
            s.sendall(PREFACE)
            s.setblocking(False)
            socks.append(s)
        time.sleep(0.5)
        # Past the cap, newcomers are closed at once; the first ones are still open.
        shut = [closed(s) for s in socks]
        assert sum(shut) >= 30 and not any(shut[: cap // 2]), shut
        # Idle connections are closed within the idle timeout (plenty of slack here).
        deadline = time.monotonic() + idle + 15
        while not all(shut) and time.monotonic() < deadline:
            time.sleep(0.2)
            shut = [s_ or closed(s) for s_, s in zip(shut, socks, strict=True)]
        assert all(shut), f"{shut.count(False)} idle connections still open"
    finally:
        for s in socks:
            s.close()
    with grpc.insecure_channel(service.target) as channel:
        answer = rls_stub(channel).ShouldRateLimit(request("d", {"user": "u"}), timeout=5)
    assert answer.overall_code == answer.OK
    assert service.http("GET", "/healthcheck")[0] == 200
