"""The security suite: each test reproduces an attack on a real ``limiter serve`` process
and asserts the bound that stops it.

Callers are told apart by their address, so some tests need a caller that is not
127.0.0.1: a ``Relay`` forwards a client's connections to the service from another
loopback address (every 127.x.y.z reaches the loopback interface).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.service.conftest import ServiceProcess

TOKEN = "security-suite-admin-token-0123456789"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``limiter serve`` on ``text`` as its config (ports read back from its log);
    every service started is stopped at the end of the test."""
    started: list[ServiceProcess] = []

    def start(text: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        path = tmp_path / f"rules{len(started)}.yaml"
        path.write_text(text)
        service = ServiceProcess(path, *args, env=env)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


class Relay:
    """Forwards connections made to ``port`` (on 127.0.0.1) to ``target`` from ``source``."""

    def __init__(self, target: int, source: str) -> None:
        self.target, self.source = target, source
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(
                ("127.0.0.1", self.target), source_address=(self.source, 0)
            )
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def close(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay() -> Iterator[Callable[[int, str], Relay]]:
    made: list[Relay] = []

    def make(target: int, source: str) -> Relay:
        made.append(Relay(target, source))
        return made[-1]

    yield make
    for r in made:
        r.close()


def admin(service: ServiceProcess, method: str, path: str, body: object = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    """Call the admin API of ``service`` (started with ``LIMITER_ADMIN_TOKEN=TOKEN``)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{service.http_port}{path}", data=data, method=method
    )
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
