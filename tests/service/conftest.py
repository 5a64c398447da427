"""A real ``limiter serve`` process per test module, and stubs to talk to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from limiter.server import v1

from tests.support import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """``python -m limiter.server.cli serve`` on free ports, stopped with SIGTERM."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.with_suffix(f".{self.grpc_port}.log")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> ServiceProcess:
        command = [
            sys.executable, "-m", "limiter.server.cli", "serve",
            "--config", str(self.config),
            "--host", "127.0.0.1",
            "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port),
            "--reload-interval", "0.1",
            *self.args,
        ]  # fmt: skip
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_for_port(self.grpc_port, timeout=20)
            wait_for_port(self.http_port, timeout=20)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"service did not start:\n{self.logs()}") from None
        return self

    def logs(self) -> str:
        return self.log.read_text()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        self._log.close()
        return code

    def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        status, body = self.http("GET", "/metrics")
        assert status == 200
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
