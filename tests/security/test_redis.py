"""What a Redis fault does is visible: a restart that reset every window is logged and
counted, and a stall is logged once, not once per timed-out check.

Attack (or accident): restarting a Redis that does not persist its data hands every
caller a fresh quota; stalling it (SIGSTOP, a full disk) makes every check time out,
which the logs did not show at all.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.service.conftest import request, rls_stub, wait_until
from tests.support import RedisServer

CONFIG = """domain: d
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 3}
"""


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:  # no persistence (--save "", --appendonly no)
        yield server


def ask(service, user: str = "u") -> int:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(service.target) as channel:
        answer = rls_stub(channel).ShouldRateLimit(request("d", {"user": user}), timeout=5)
    return answer.overall_code


def test_a_redis_restart_is_logged_and_counted(serve, redis) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, "--redis", redis.url)
    assert [ask(service) for _ in range(3)] == [1, 1, 1]  # the hour's 3 are used up
    time.sleep(1.0)  # housekeeping has seen the server's run id
    redis.restart()
    assert wait_until(lambda: service.metric("limiter_redis_restarts_total") == 1, 15)
    assert "Redis restarted" in service.logs()
    # What the log warns of: the hour's window started over, 3 more are allowed.
    assert [ask(service) for _ in range(4)] == [1, 1, 1, 2]


def test_a_redis_stall_is_logged_once(serve, redis) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, "--redis", redis.url)
    assert ask(service, "before") == 1
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        codes = [ask(service, f"stalled-{i}") for i in range(100)]
        took = time.monotonic() - start
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    assert codes == [1] * 100  # answered by the rules' failure mode (local)
    assert took < 30
    lines = [line for line in service.logs().splitlines() if "Redis requests failing" in line]
    assert 1 <= len(lines) <= 1 + int(took / 5), lines
    assert "did not answer within" in lines[0], lines[0]
