"""Odd keys are safe, bad URLs and options give errors naming the value."""

from __future__ import annotations

import pytest
import redis

import limiter
from limiter.backends.redis import RedisBackend
from tests.support import PATIENT

ODD_KEYS = ["ключ ☃", "with space", "a:b:c", "{brace}", "}{", "x" * 10_000, "x" * 10_001, ""]
ODD_KEYS.append("\ud800")  # a lone surrogate: still a str


def test_odd_keys_are_independent_and_stored_safely(redis_url: str) -> None:
    fw = limiter.FixedWindow(1, 3600.0, backend=RedisBackend(redis_url, timeout=PATIENT))
    assert [fw.acquire(k).allowed for k in ODD_KEYS] == [True] * len(ODD_KEYS)
    assert [fw.acquire(k).allowed for k in ODD_KEYS] == [False] * len(ODD_KEYS)
    names = redis.Redis.from_url(redis_url).keys("*")
    assert len(names) == len(ODD_KEYS)
    assert max(len(n) for n in names) < 120  # 10 kB keys are hashed
    assert all(n.count(b"{") == 1 and n.count(b"}") == 1 for n in names)  # one hash tag each


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("redis+nope://127.0.0.1:1", limiter.InvalidParameter, "redis\\+nope"),
        ("127.0.0.1:6379", limiter.InvalidParameter, "127.0.0.1:6379"),
        ("redis+cluster://127.0.0.1:notaport", limiter.ConfigError, "notaport"),
        ("redis+cluster://127.0.0.1:\u00b2", limiter.ConfigError, "host:port '127.0.0.1:\u00b2'"),
        ("redis+sentinel://127.0.0.1:1", limiter.ConfigError, "service name"),
        ("redis://127.0.0.1:1/0?timeout=abc", limiter.ConfigError, "timeout"),
        ("redis://127.0.0.1:1/0?local_cache=perhaps", limiter.ConfigError, "perhaps"),
        ("redis://u:secret@127.0.0.1:1/0", limiter.ConfigError, "u:\\*\\*\\*@127.0.0.1:1"),
    ],
)
def test_bad_urls(url: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        RedisBackend(url)
    assert "secret" not in str(info.value)


def test_bad_options(redis_url: str) -> None:
    with pytest.raises(limiter.InvalidParameter, match="lease_ttl"):
        RedisBackend(redis_url, lease_ttl=-1, timeout=PATIENT)
    with pytest.raises(limiter.InvalidParameter, match="timeout"):
        RedisBackend(redis_url, timeout=0)
    with pytest.raises(limiter.InvalidParameter, match="prefix"):
        RedisBackend(redis_url, prefix="a{b}", timeout=PATIENT)
    with pytest.raises(limiter.InvalidParameter, match="period"):
        limiter.FixedWindow(5, 0.0001, backend=RedisBackend(redis_url, timeout=PATIENT))
    fw = limiter.FixedWindow(5, 1.0, backend=RedisBackend(redis_url, timeout=PATIENT))
    with pytest.raises(limiter.InvalidParameter, match="cost"):
        fw.acquire("k", 6)
    with pytest.raises(limiter.InvalidParameter, match="key"):
        fw.acquire(b"bytes")


def test_limit_options_share_one_connection(redis_url: str) -> None:
    backend = RedisBackend(redis_url, timeout=PATIENT)
    opened = limiter.TokenBucket(1.0, 1, backend=backend, failure_mode="allow")
    assert opened.failure_mode == "allow" and opened.store.backend is backend
    with pytest.raises(limiter.InvalidParameter, match="failure_mode"):
        limiter.TokenBucket(1.0, 1, backend=backend, failure_mode="open")
    with pytest.raises(limiter.InvalidParameter, match="fail_mode"):
        backend.bind(opened.store.spec, fail_mode="open")
