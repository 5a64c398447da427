"""Every way to reach Redis by URL: AUTH, TLS (rediss://) and Sentinel (redis+sentinel://)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

import limiter
from limiter.backends.redis import RedisBackend
from tests.redis.conftest import SentinelProcess
from tests.support import RedisServer, refused_port


async def _decide_async(limit: limiter.TokenBucket, n: int) -> list[bool]:
    return [(await limit.acquire_async("a")).allowed for _ in range(n)]


def test_auth_and_tls(tls_files: dict[str, str]) -> None:
    tls = ["--tls-cert-file", tls_files["server.crt"], "--tls-key-file", tls_files["server.key"],
           "--tls-ca-cert-file", tls_files["ca.crt"], "--tls-auth-clients", "no",
           "--requirepass", "s3cret"]  # fmt: skip
    with RedisServer(*tls, tls=True) as server:
        port = server.port
        url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={tls_files['ca.crt']}"
        fw = limiter.FixedWindow(2, 3600.0, backend=RedisBackend(url, timeout=1.0))
        assert [fw.acquire("k").allowed for _ in range(3)] == [True, True, False]
        tb = limiter.TokenBucket(0.001, 2, backend=RedisBackend(url, timeout=1.0))
        answers = asyncio.run(_decide_async(tb, 3))  # the event loop's own TLS connection
        assert answers == [True, True, False] and tb.store.backend.combiner.batches == 0
        untrusted = RedisBackend(
            url.replace(tls_files["ca.crt"], tls_files["server.crt"]),
            timeout=1.0, require_at_start=False,
        )  # fmt: skip
        refused = limiter.TokenBucket(0.001, 1, backend=untrusted, failure_mode="allow")
        time.sleep(untrusted.breaker.cooldown + 0.05)  # the ping at start opened the breaker
        assert asyncio.run(_decide_async(refused, 1)) == [True]  # failure mode: allow
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.store.last_error)
        with pytest.raises(limiter.ConfigError, match=r":\*\*\*@") as info:
            RedisBackend(url.replace("s3cret", "wrong"), timeout=1.0)
        assert "wrong" not in str(info.value)
        with pytest.raises(limiter.ConfigError, match="unreachable"):
            RedisBackend(f"redis://:s3cret@127.0.0.1:{port}/0", timeout=0.2)  # TLS port, no TLS


def test_sentinel_finds_the_master(own_redis: RedisServer, sentinel: SentinelProcess) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"
    tb = limiter.TokenBucket(0.001, 3, backend=RedisBackend(url, timeout=1.0))
    assert [tb.acquire("k").allowed for _ in range(4)] == [True, True, True, False]
    assert redis.Redis(port=own_redis.port).dbsize() == 1


def test_sentinel_list_skips_a_dead_sentinel(
    own_redis: RedisServer, sentinel: SentinelProcess
) -> None:
    """The spec's discovery on both paths: a dead sentinel first in the URL is skipped, and
    the one that answered is asked first next time."""
    with refused_port() as dead:
        url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel.port}/mymaster/0"
        backend = RedisBackend(url, timeout=1.0, local_cache=False)
        tb = limiter.TokenBucket(0.001, 2, backend=backend)
        assert [tb.acquire("a").allowed for _ in range(3)] == [True, True, False]
        threaded = backend.transport.client.connection_pool.sentinel_manager.sentinels
        assert threaded[0].connection_pool.connection_kwargs["port"] == sentinel.port

        async def from_the_loop() -> tuple[list[bool], list]:
            answers = await _decide_async(tb, 1)  # the same bucket, on the loop's own connection
            return answers, backend.loop_transports[asyncio.get_running_loop()].sentinels

        answers, order = asyncio.run(from_the_loop())
        assert answers == [False] and order[0] == ("127.0.0.1", sentinel.port)


def test_sentinel_unknown_service_is_named(sentinel: SentinelProcess) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/nosuch/0"
    with pytest.raises(limiter.ConfigError, match="'nosuch'"):
        RedisBackend(url, timeout=1.0)
    backend = RedisBackend(url, timeout=1.0, require_at_start=False)
    tb = limiter.TokenBucket(0.001, 2, backend=backend, failure_mode="deny")
    time.sleep(backend.breaker.cooldown + 0.05)
    assert asyncio.run(_decide_async(tb, 1)) == [False]  # failure mode: deny
    assert "does not know 'nosuch'" in str(tb.store.last_error)


def test_hiredis_parses_replies() -> None:
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE
