"""A real 3-master Redis Cluster, including a slot migration (ASK, then MOVED) mid-run."""

from __future__ import annotations

import threading
import time

import pytest
import redis

import limiter
from limiter.backends.keys import hash_tag
from limiter.backends.redis import RedisBackend
from tests.redis.conftest import Cluster


def test_algorithms_on_cluster_match_memory(cluster: Cluster) -> None:
    backend = RedisBackend(cluster.url, local_cache=False, timeout=1.0)
    keys = [f"user-{i}" for i in range(12)]  # spread over the three masters
    for make in (lambda **kw: limiter.TokenBucket(100.0, 3, **kw),
                 lambda **kw: limiter.SlidingWindow(3, 0.05, **kw)):  # fmt: skip
        remote = make(backend=backend)
        now = [0]
        local = make(clock=lambda now=now: now[0])
        for i in range(60):
            key = keys[i % len(keys)]
            got = remote.acquire(key, 1 + i % 2)
            now[0] = remote.store.last_server_time_ns
            assert local.acquire(key, 1 + i % 2) == got
    batch = limiter.FixedWindow(2, 3600.0, backend=backend).allow_batch(keys * 3)
    assert list(batch) == [True] * 24 + [False] * 12  # grouped per slot, one pipeline per node
    cl = limiter.ConcurrencyLimit(1, backend=backend)
    permit = cl.acquire("job")
    assert permit.allowed and not cl.acquire("job").allowed
    permit.release()
    assert cl.in_flight("job") == 0


def _migrate(cluster: Cluster, slot: int) -> tuple[str, str]:
    """Move ``slot`` to another master as redis-cli does: IMPORTING/MIGRATING, MIGRATE, NODE."""
    clients = [cluster.client(n) for n in cluster.nodes]
    ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
    ranges = clients[0].execute_command("CLUSTER", "SLOTS")
    port = next(r[2][1] for r in ranges if r[0] <= slot <= r[1])
    owner = next(i for i, n in enumerate(cluster.nodes) if n.port == port)
    target = (owner + 1) % 3
    src, dst = clients[owner], clients[target]
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.migrate("127.0.0.1", cluster.nodes[target].port, keys, 0, 5000)
        time.sleep(0.02)  # decisions meanwhile follow ASK redirections
    for c in clients:
        c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    return ids[owner], ids[target]


def _node_id(node: object) -> str:
    return redis.Redis(port=node.port).execute_command("CLUSTER", "MYID").decode()


def test_slot_migration_during_load(cluster: Cluster) -> None:
    from redis.crc import key_slot

    backend = RedisBackend(cluster.url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(25, 0.1, backend=backend)
    slot = key_slot(hash_tag("hot"))
    log: list[tuple[int, bool]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            d = fw.acquire("hot")
            log.append((fw.store.last_server_time_ns, d.allowed))

    thread = threading.Thread(target=hammer)
    thread.start()
    time.sleep(0.2)
    source, target = _migrate(cluster, slot)
    time.sleep(0.3)
    stop.set()
    thread.join()
    assert source != target
    assert fw.store.failures == 0  # every decision was made by Redis, across the move
    holders = [n for n in cluster.nodes if cluster.client(n).cluster("countkeysinslot", slot)]
    assert holders in ([], [cluster.nodes[[*map(_node_id, cluster.nodes)].index(target)]])
    per_window: dict[int, list[bool]] = {}
    for t, allowed in log:
        per_window.setdefault(t // 100_000_000, []).append(allowed)
    for outcomes in per_window.values():
        assert sum(outcomes) <= 25
        if not all(outcomes):
            assert sum(outcomes) == 25


def test_cluster_away_at_start() -> None:
    from tests.support import refused_port

    with refused_port() as port:
        url = f"redis+cluster://127.0.0.1:{port}"
        with pytest.raises(limiter.ConfigError, match="unreachable"):
            RedisBackend(url, timeout=0.2)
        backend = RedisBackend(url, require_at_start=False, timeout=0.2)
        tb = limiter.TokenBucket(1.0, 1, backend=backend, failure_mode="allow")
        assert tb.acquire("k").allowed
        assert backend.breaker.is_open
