"""The store behind quota (RLQS) allocation across replicas (limiter.backends.quota_store):
each replica's instances of a bucket in one Redis hash, read back by the others, bounded,
expiring with their leases, and a failure answered as no view rather than raised."""

from __future__ import annotations

import time

import pytest
import redis

from limiter.backends.quota_store import QuotaStore, Remote
from limiter.backends.redis import RedisBackend
from limiter.errors import InvalidParameter
from limiter.quota import Entry
from tests.support import PATIENT, RedisServer

PAIRS = [("api_key", "alice")]


def stores(url: str, n: int = 2, **kw: int) -> list[QuotaStore]:
    backend = RedisBackend(url, timeout=PATIENT)
    return [QuotaStore(backend, replica=f"r{i}", **kw) for i in range(n)]


def live(name: str, demand: float | None, lease: float = 30.0) -> Entry:
    return Entry(name, demand, None, lease)


def test_each_replica_reads_the_others_instances(redis_url: str) -> None:
    a, b = stores(redis_url)
    key = a.key("d", PAIRS)
    assert key == b.key("d", list(reversed(PAIRS)))  # the same bucket on every replica
    assert a.exchange([(key, [live("e1", 45.0), live("e2", None)])]) == [Remote({}, 0.0)]
    [seen] = b.exchange([(key, [live("e3", 15.0), Entry("e4", None, 7.5, 30.0)])])
    assert seen == Remote({"r0/e1": 45.0, "r0/e2": None}, 0.0)
    [seen] = a.exchange([(key, [live("e1", 40.0)])])  # e2 is gone from r0
    assert seen == Remote({"r1/e3": 15.0}, 7.5)  # e4's stream ended: its grant is held
    [seen] = b.exchange([(key, [])])
    assert seen == Remote({"r0/e1": 40.0}, 0.0)
    assert a.exchange([(key, [])]) == [Remote({}, 0.0)]
    assert redis.Redis.from_url(redis_url).exists(key) == 0  # nothing left behind


def test_an_entry_expires_with_its_lease(redis_url: str) -> None:
    a, b = stores(redis_url)
    key = a.key("d", PAIRS)
    a.exchange([(key, [live("short", 1.0, lease=0.2), live("long", 2.0)])])
    assert b.exchange([(key, [])])[0] == Remote({"r0/short": 1.0, "r0/long": 2.0}, 0.0)
    time.sleep(0.4)
    assert b.exchange([(key, [])])[0] == Remote({"r0/long": 2.0}, 0.0)
    assert 0 < redis.Redis.from_url(redis_url).pttl(key) <= 30_000


def test_a_bucket_keeps_at_most_max_entries(redis_url: str) -> None:
    a, b = stores(redis_url, max_entries=3)
    key = a.key("d", PAIRS)
    a.exchange([(key, [live(f"e{i}", 1.0) for i in range(5)])])
    [seen] = b.exchange([(key, [live("x", 1.0)])])
    assert len(seen.demands) == 3
    assert redis.Redis.from_url(redis_url).hlen(key) == 3  # b's newcomer was not kept


def test_entries_not_written_by_the_store_are_ignored(redis_url: str) -> None:
    a, b = stores(redis_url)
    key = a.key("d", PAIRS)
    far = int(time.time() * 1000) + 60_000
    redis.Redis.from_url(redis_url).hset(
        key, mapping={"x/bad": f"{far} d nan", "x/odd": f"{far} ?", "x/neg": f"{far} h -5"}
    )
    a.exchange([(key, [live("e1", 3.0)])])
    assert b.exchange([(key, [])]) == [Remote({"r0/e1": 3.0}, 0.0)]


def test_a_failed_exchange_is_no_view_not_an_error() -> None:
    with RedisServer() as server:
        [a] = stores(f"{server.url}?breaker_cooldown=60", n=1)
        key = a.key("d", PAIRS)
        assert a.exchange([(key, [live("e1", 1.0)])]) == [Remote({}, 0.0)]
        server.kill()
        assert a.exchange([(key, [live("e1", 1.0)]), (key, [])]) == [None, None]
        assert a.exchange([(key, [])]) == [None]  # the breaker answers now: no wait


def test_bad_input_names_the_field(redis_url: str) -> None:
    backend = RedisBackend(redis_url, timeout=PATIENT)
    with pytest.raises(InvalidParameter, match="max_entries"):
        QuotaStore(backend, max_entries=0)
    with pytest.raises(InvalidParameter, match="replica"):
        QuotaStore(backend, replica="a/b")


def test_buckets_on_every_node_of_a_cluster(cluster) -> None:  # type: ignore[no-untyped-def]
    backend = RedisBackend(cluster.url, timeout=PATIENT)
    a, b = (QuotaStore(backend, replica=name) for name in ("r0", "r1"))
    keys = [a.key("d", [("api_key", f"k{i}")]) for i in range(12)]
    assert a.exchange([(key, [live("e", float(i))]) for i, key in enumerate(keys)]) == [
        Remote({}, 0.0)
    ] * len(keys)
    seen = b.exchange([(key, []) for key in keys])
    assert seen == [Remote({"r0/e": float(i)}, 0.0) for i in range(len(keys))]
