"""Fixtures for the client tests: a real `limiter serve` process the tests own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, wait_for_port

RULES = """\
domain: sdk
descriptors:
  - key: key
    rate_limit:
      name: per-key
      unit: hour  # fixed windows align to the unit: an hour rarely rolls over mid-test
      requests_per_unit: 3
  - key: user
    rate_limit:
      name: per-user
      unit: day
      requests_per_unit: 1000
  - key: tenant
    rate_limit:
      name: inflight
      algorithm: concurrency
      requests_per_unit: 1
  - key: backend
    rate_limit:
      name: adaptive
      algorithm: adaptive
      mode: concurrency
      target_latency: 0.1
      unit: second
      requests_per_unit: 50
"""


class LimiterService:
    """`limiter serve` on free ports; ``kill()`` is SIGKILL (a crash), ``start()`` reuses
    the same ports so clients reconnect to the same address."""

    def __init__(self, rules: str = RULES) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="limiter-clients-"))
        self.config = self.dir / "rules.yaml"
        self.config.write_text(rules)
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> LimiterService:
        args = [
            sys.executable, "-m", "limiter.server.cli", "serve",
            "--config", str(self.config),
            "--host", "127.0.0.1",
            "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port),
            "--log-level", "warning",
        ]  # fmt: skip
        log = open(self.dir / "service.log", "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ})
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                wait_for_port(self.grpc_port, timeout=0.2)
                return self
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()  # say why at once rather than after the whole timeout
                    log = (self.dir / "service.log").read_text()[-2000:]
                    raise RuntimeError(f"limiter serve did not start: {log}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.kill()


@pytest.fixture(scope="module")
def service() -> Iterator[LimiterService]:
    """One decision service for a test module (tests use distinct keys)."""
    server = LimiterService().start()
    yield server
    server.stop()


@pytest.fixture
def own_service() -> Iterator[LimiterService]:
    """A decision service this test alone may kill and restart."""
    server = LimiterService().start()
    yield server
    server.stop()
