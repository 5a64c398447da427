"""Manual switches: validation, expiry, audit; in memory and in a real Redis."""

from __future__ import annotations

import time

import pytest
import redis

from limiter.errors import ConfigError, InvalidParameter
from limiter.ops.switches import (
    MemorySwitches,
    RedisSwitches,
    StoreUnavailable,
    Switch,
    SwitchesConfig,
    open_switches,
)
from limiter.schema import load
from tests.support import RedisServer


def make(sid, clock, **body):
    return Switch.from_request(sid, {"who": "alice", "why": "incident 42", **body}, clock())


def wait(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def wall():
    from tests.ops.conftest import Clock

    return Clock(start=time.time_ns())


def test_every_switch_kind_answers_the_service(wall):
    s = MemorySwitches(clock=wall)
    assert s.rule("api") is None and s.level("web") is None and s.breaker("db") is None
    s.put(make("rule:api", wall, action="override", limit=5))
    s.put(make("level:web", wall, level=3))
    s.put(make("breaker:db/7", wall, action="force_open"))
    assert s.rule("api").action == "override" and s.rule("api").limit == 5
    assert s.rule("other") is None
    assert s.level("web") == 3 and s.breaker("db/7") == "force_open"
    s.put(make("global", wall, action="force_deny"))
    assert s.rule("other").action == "force_deny"  # the kill switch wins everywhere
    assert s.killed().id == "global"
    assert [x.id for x in s.list()] == ["breaker:db/7", "global", "level:web", "rule:api"]


def test_expiry_reverts_by_itself_and_is_audited(wall):
    s = MemorySwitches(clock=wall)
    changes = []
    s.subscribe(lambda sid, sw: changes.append((sid, sw is not None)))
    s.put(make("rule:api", wall, action="force_deny", ttl=60))
    wall.advance(59.9)
    assert s.rule("api") is not None
    wall.advance(0.1)
    assert s.rule("api") is None and s.get("rule:api") is None and s.list() == []
    assert [x.id for x in s.sweep()] == ["rule:api"]
    audit = s.audit()
    assert [a["op"] for a in audit] == ["expire", "put"]
    assert audit[1]["who"] == "alice" and audit[1]["why"] == "incident 42"
    assert audit[0]["who"] == "system" and audit[0]["before"]["action"] == "force_deny"
    assert changes == [("rule:api", True), ("rule:api", False)]


def test_delete_and_replace_are_audited(wall):
    s = MemorySwitches(clock=wall)
    s.put(make("rule:api", wall, action="shadow"))
    s.put(make("rule:api", wall, action="force_allow"))
    assert s.delete("rule:api", "bob", "resolved").action == "force_allow"
    assert s.delete("rule:api", "bob", "again") is None
    audit = s.audit()
    assert [(a["op"], a["who"]) for a in audit] == [
        ("delete", "bob"),
        ("put", "alice"),
        ("put", "alice"),
    ]
    assert audit[1]["before"]["action"] == "shadow" and audit[1]["after"]["action"] == "force_allow"
    assert len(s.audit(limit=1)) == 1


@pytest.mark.parametrize(
    ("sid", "body", "match"),
    [
        ("rule", {"action": "force_deny"}, "switch id"),
        ("rule:", {"action": "force_deny"}, "switch id"),
        ("rule:a b", {"action": "force_deny"}, "switch id"),
        ("tenant:x", {"action": "force_deny"}, "switch id"),
        ("rule:x", {"action": "explode"}, "action"),
        ("rule:x", {"action": "override"}, "limit"),
        ("rule:x", {"action": "override", "limit": -1}, "limit"),
        ("rule:x", {"action": "force_deny", "limit": 3}, "limit applies only"),
        ("level:x", {"level": 101}, "level"),
        ("level:x", {"level": True}, "level"),
        ("level:x", {"action": "force_deny", "level": 1}, "action does not apply"),
        ("breaker:db", {"action": "force_deny"}, "action"),
        ("global", {"action": "shadow"}, "action"),
        ("rule:x", {"action": "shadow", "ttl": 0}, "ttl"),
        ("rule:x", {"action": "shadow", "ttl": "1h"}, "ttl"),
        ("rule:x", {"action": "shadow", "expires_at": 5}, "expires_at"),
        ("rule:x", {"action": "shadow", "ttl": 5, "expires_at": 5}, "not both"),
        ("rule:x", {"action": "shadow", "who": ""}, "who"),
        ("rule:x", {"action": "shadow", "why": "x" * 1001}, "why"),
        ("rule:x", {"action": "shadow", "color": "red"}, "unknown field"),
    ],
)
def test_bad_switches(sid, body, match, wall):
    full = {"who": "alice", "why": "because", **body}
    with pytest.raises(InvalidParameter, match=match):
        Switch.from_request(sid, full, wall())


def test_config():
    assert SwitchesConfig().store == "auto"
    assert isinstance(open_switches(SwitchesConfig(store="memory")), MemorySwitches)
    with pytest.raises(ConfigError, match=r"needs switches\.url"):
        open_switches(load(SwitchesConfig, {"store": "REDIS"}, "switches"))
    # A cluster/sentinel backend URL is not used for switches (kept in process, logged).
    assert isinstance(open_switches(None, "redis+cluster://h:1"), MemorySwitches)
    for section, match in (
        ({"store": "etcd"}, "store"),
        ({"url": "http://x"}, "redis://"),
        ({"resync": 0}, "resync"),
        ({"bogus": 1}, "unknown field 'bogus'"),
        (["x"], "mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(SwitchesConfig, section, "switches")


def test_redis_store_replicates_by_push(redis_url, wall):
    a = RedisSwitches(redis_url, clock=wall)
    b = RedisSwitches(redis_url, clock=wall, resync=60)  # only pub/sub can tell b in time
    try:
        seen = []
        b.subscribe(lambda sid, sw: seen.append((sid, None if sw is None else sw.action)))
        start = time.monotonic()
        a.put(make("rule:api", wall, action="force_deny"))
        assert a.rule("api").action == "force_deny"  # the writer reads its own write at once
        # Long before the resync (the bound is slack for a loaded machine).
        assert wait(lambda: b.rule("api") is not None, 3.0)
        assert time.monotonic() - start < 3.0
        a.delete("rule:api", "bob", "done")
        assert wait(lambda: b.rule("api") is None, 3.0)
        assert seen == [("rule:api", "force_deny"), ("rule:api", None)]
        assert [x["op"] for x in b.audit()] == ["delete", "put"]
    finally:
        a.close()
        b.close()


def test_redis_expiry_is_swept_once(redis_url, wall):
    a = RedisSwitches(redis_url, clock=wall)
    b = RedisSwitches(redis_url, clock=wall)
    try:
        a.put(make("level:web", wall, level=2, ttl=10))
        assert wait(lambda: b.level("web") == 2)
        wall.advance(10)
        assert a.level("web") is None and b.level("web") is None
        swept = a.sweep() + b.sweep()
        assert len(swept) == 1
        assert [x["op"] for x in a.audit()] == ["expire", "put"]
        assert redis.Redis.from_url(redis_url).hlen("limiter:switches") == 0
    finally:
        a.close()
        b.close()


def test_redis_restart_heals_and_outage_refuses_writes(wall):
    with RedisServer() as server:
        a = RedisSwitches(server.url, clock=wall, resync=0.2)
        b = RedisSwitches(server.url, clock=wall, resync=0.2)
        try:
            a.put(make("rule:api", wall, action="shadow"))
            assert wait(lambda: b.rule("api") is not None)
            server.kill()
            assert b.rule("api").action == "shadow"  # keeps the last known switches
            with pytest.raises(StoreUnavailable):
                a.put(make("rule:x", wall, action="shadow"))
            server.start()  # empty again: e.g. a failover to a fresh replica
            redis.Redis.from_url(server.url).hset(
                "limiter:switches", "global", make("global", wall, action="force_allow").to_json()
            )
            # No publish happened: the periodic resync heals the missed change.
            assert wait(lambda: b.killed() is not None, 3.0)
            assert wait(lambda: a.rule("api").id == "global", 3.0)
        finally:
            a.close()
            b.close()


def test_malformed_redis_entry_is_ignored(redis_url, wall):
    r = redis.Redis.from_url(redis_url)
    r.hset("limiter:switches", "rule:bad", b"{not json")
    r.hset("limiter:switches", "rule:ok", make("rule:ok", wall, action="shadow").to_json())
    s = RedisSwitches(redis_url, clock=wall)
    try:
        assert [x.id for x in s.list()] == ["rule:ok"]
    finally:
        s.close()


def test_the_service_redis_url_may_carry_backend_options(redis_url, wall):
    # ``limiter serve --redis redis://...?timeout=0.5&prefix=x:`` configures the limiter
    # backend; redis-py refuses those options, so the switch store leaves them out.
    store = open_switches(None, f"{redis_url}?timeout=0.5&prefix=x:&local_cache=0", clock=wall)
    try:
        assert isinstance(store, RedisSwitches) and store.healthy
        body = {"action": "force_deny", "who": "t", "why": "w", "ttl": 60}
        store.put(Switch.from_request("rule:a/b", body, wall()))
        assert store.rule("a/b").action == "force_deny"
    finally:
        store.close()
    with pytest.raises(ConfigError, match=r"switches: bad Redis URL redis://.*bogus"):
        RedisSwitches(f"{redis_url}?bogus=1", clock=wall)
