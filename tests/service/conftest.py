"""A real ``limiter serve`` process per test module, and stubs to talk to it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from limiter.server import v1
from limiter.server.logs import serving_ports

from tests.support import free_port, start_on_free_ports, stop_process, wait_ready

ROOT = Path(__file__).resolve().parents[2]
_SERIAL = itertools.count()


class ServiceProcess:
    """``python -m limiter.server.cli serve``, stopped with SIGTERM; its output is in
    ``self.log``.

    The first start binds port 0 and reads the ports back from the service's "serving"
    log line, so no port is reserved and released beforehand. With ``--workers`` (every
    worker must bind the same ports) it picks free ports and picks again if another
    process took one first. Later starts reuse the ports, so clients reconnect to the
    same address. ``program`` runs another ``limiter`` executable.
    """

    def __init__(
        self,
        config: Path,
        *args: str,
        env: dict[str, str] | None = None,
        program: Sequence[str] = (sys.executable, "-m", "limiter.server.cli"),
    ) -> None:
        self.config = config
        self.grpc_port = 0
        self.http_port = 0
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.program = list(program)
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.with_suffix(f".{next(_SERIAL)}.log")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            *self.program, "serve",
            "--config", str(self.config),
            "--host", "127.0.0.1",
            "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port),
            "--reload-interval", "0.1",
            *self.args,
        ]  # fmt: skip

    def start(self) -> ServiceProcess:
        if self.grpc_port:
            self._spawn()
        elif "--workers" in self.args:
            start_on_free_ports(self._first_start_on_free_ports)
        else:
            self._spawn()
        return self

    def _first_start_on_free_ports(self) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        try:
            self._spawn()
        except Exception:
            self.grpc_port = self.http_port = 0
            raise

    def _spawn(self) -> None:
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            if self.grpc_port:
                ports = [self.grpc_port, self.http_port]
                wait_ready(self.proc, self.log, "limiter serve", ports=ports)
            else:
                wait_ready(self.proc, self.log, "limiter serve", line='"msg": "serving"')
                ports = self._serving()
                self.grpc_port, self.http_port = ports["grpc"], ports["http"]
        except Exception:
            self.stop()
            raise

    def _serving(self) -> dict[str, int]:
        for line in self.logs().splitlines():
            ports = serving_ports(line)
            if ports is not None:
                return ports
        raise RuntimeError(f"limiter serve: no 'serving' line in its log:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        code = stop_process(self.proc, timeout)
        self.proc = None
        self._log.close()
        return code

    def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        status, body = self.http("GET", "/metrics")
        assert status == 200, f"/metrics: {status}; the service's log:\n{self.logs()[-4000:]}"
        want = {k: json.dumps(v) for k, v in labels.items()}
        for line in body.decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            found = dict(
                part.split("=", 1) for part in head[len(name) + 1 : -1].split(",") if "=" in part
            )
            if all(found.get(k) == v for k, v in want.items()):
                return float(value)
        return 0.0


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def channel_for() -> Iterator[object]:
    channels: list[grpc.Channel] = []

    def make(service: ServiceProcess) -> grpc.Channel:
        channel = grpc.insecure_channel(service.target)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        channel.close()


def rls_stub(channel: grpc.Channel) -> rls_pb2_grpc.RateLimitServiceStub:
    return rls_pb2_grpc.RateLimitServiceStub(channel)


def native_stub(channel: grpc.Channel) -> v1.LimiterStub:
    return v1.LimiterStub(channel)


def request(domain: str, *descriptors: dict[str, str] | list, hits: int = 0):  # type: ignore[type-arg]
    """A RateLimitRequest from plain dicts: each descriptor a {key: value} mapping."""
    msg = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for d in descriptors:
        desc = msg.descriptors.add()
        for key, value in d.items():
            desc.entries.add(key=key, value=value)
    return msg


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
