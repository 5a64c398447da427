"""Fixtures for the client tests: a real `limiter serve` process the tests own."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import ServiceProcess

RULES = """\
domain: sdk
descriptors:
  - key: key
    rate_limit:
      name: per-key
      unit: hour  # fixed windows align to the unit: an hour rarely rolls over mid-test
      requests_per_unit: 3
  - key: day
    rate_limit:
      name: per-day
      unit: day
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


class LimiterService(ServiceProcess):
    """`limiter serve` on free ports; ``kill()`` is SIGKILL (a crash), ``start()`` reuses
    the same ports so clients reconnect to the same address."""

    def __init__(self, rules: str = RULES) -> None:
        config = Path(tempfile.mkdtemp(prefix="limiter-clients-")) / "rules.yaml"
        config.write_text(rules)
        super().__init__(config)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.stop()


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
