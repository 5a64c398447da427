"""One breaker per Redis node: a dead cluster master trips only the keys it serves.

A real 3-master cluster (its own, as one master is SIGKILLed) with
``cluster-require-full-coverage no``, so the surviving masters keep serving their slots.
"""

from __future__ import annotations

import threading
import time

import pytest

import limiter
from limiter.backends.breaker import NodeBreakers
from limiter.backends.redis import RedisBackend
from tests.redis.conftest import Cluster


@pytest.fixture
def partial_cluster():
    c = Cluster("--cluster-require-full-coverage", "no")
    try:
        yield c.start()
    finally:
        c.stop()


def _owner(cluster: Cluster, slot: int, via: int = 0) -> int:
    """Index of the master serving ``slot``, as node ``via`` sees it."""
    ranges = cluster.client(cluster.nodes[via]).execute_command("CLUSTER", "SLOTS")
    port = next(r[2][1] for r in ranges if r[0] <= slot <= r[1])
    return next(i for i, n in enumerate(cluster.nodes) if n.port == port)


def test_dead_master_trips_only_its_keys(partial_cluster: Cluster) -> None:
    cluster = partial_cluster
    backend = RedisBackend(cluster.url, local_cache=False, timeout=0.5)
    limit = 40
    fw = limiter.FixedWindow(limit, 3600.0, backend=backend, failure_mode="allow")
    by_node: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i in range(200):
        key = f"user-{i}"
        by_node[_owner(cluster, fw.store._keys(key)[1])].append(key)
    victim = by_node[0][:2]
    survivors = by_node[1][:2] + by_node[2][:2]
    keys = victim + survivors
    assert all(fw.acquire(k).allowed for k in keys)  # every node answers
    stop = threading.Event()
    log: list[tuple[str, float, float, bool | None, Exception | None]] = []

    def hammer(offset: int) -> None:
        i = offset
        while not stop.is_set():
            key = keys[i % len(keys)]
            i += 1
            t0 = time.monotonic()
            try:
                log.append((key, t0, time.monotonic() - t0, fw.acquire(key).allowed, None))
            except Exception as exc:  # asserted below: none escapes
                log.append((key, t0, time.monotonic() - t0, None, exc))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.05)
        cluster.nodes[0].kill()
        killed = time.monotonic()
        time.sleep(0.6)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert [e[4] for e in log if e[4] is not None] == []
    assert max(e[2] for e in log) < 2.0  # nothing hangs (a dead node refuses connections)
    dead = f"127.0.0.1:{cluster.nodes[0].port}"
    assert backend.breaker.open_nodes() == [f"redis/{dead}"]
    # Keys on the live masters: still one shared, exact limit (the failure mode "open" would
    # have admitted more than `limit`).
    for key in survivors:
        assert sum(e[3] for e in log if e[0] == key) == limit - 1, key
    # Keys on the dead master: the failure mode (open: admitted beyond the limit).
    after = [e[3] for e in log if e[0] in victim and e[1] > killed + 0.05]
    assert len(after) > 2 * limit and all(after)
    # A batch mixing both kinds of keys: each key decided by its own node's state.
    mixed = fw.acquire_batch([survivors[0], victim[0]], [1, 1])
    assert [d.allowed for d in mixed] == [False, True]
    # The master comes back (same port, same nodes.conf): its keys are shared again.
    cluster.nodes[0].start()
    client = cluster.client(cluster.nodes[0])
    deadline = time.monotonic() + 10
    while client.cluster("info")["cluster_state"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)  # until then it answers CLUSTERDOWN (an error reply: failure mode)
    deadline = time.monotonic() + 5
    while backend.breaker.open_nodes() and time.monotonic() < deadline:
        fw.acquire(victim[0])  # the probe, once per cooldown
        time.sleep(0.05)
    assert backend.breaker.open_nodes() == []
    fresh = limiter.FixedWindow(2, 3600.0, backend=backend)
    assert [fresh.acquire(victim[1]).allowed for _ in range(3)] == [True, True, False]


def test_node_breaker_states() -> None:
    """Pure logic, on a manual clock: trip on one failure, one probe per cooldown, per node."""
    now = [0]
    breakers = NodeBreakers("redis", cooldown=0.2, clock=lambda: now[0])
    assert breakers.allow("a:1") and breakers.allow("b:2")
    breakers.failure("a:1")
    assert not breakers.allow("a:1") and breakers.allow("b:2")
    assert breakers.open_nodes() == ["redis/a:1"] and breakers.trips == 1
    now[0] += 200_000_000
    assert breakers.allow("a:1")  # the probe
    assert not breakers.allow("a:1")  # only one
    now[0] += 200_000_000
    assert breakers.allow("a:1")  # the probe's outcome never came: another one
    breakers.failure("a:1")  # probe failed: open again, not a new trip
    assert not breakers.allow("a:1") and breakers.trips == 1
    now[0] += 200_000_000
    assert breakers.allow("a:1")
    breakers.success("a:1")
    assert breakers.allow("a:1") and breakers.allow("a:1") and not breakers.is_open
    breakers.success("b:2")  # a success while closed records nothing
    assert breakers.node("b:2").snapshot()["calls"] == 0


@pytest.fixture
def replicated_cluster():
    c = Cluster("--cluster-require-full-coverage", "no", replicas=1, node_timeout_ms=1000)
    try:
        yield c.start()
    finally:
        c.stop()


def test_cluster_failover_moves_keys_to_the_promoted_replica(replicated_cluster: Cluster) -> None:
    cluster = replicated_cluster
    backend = RedisBackend(cluster.url, local_cache=False, timeout=0.5)
    fw = limiter.FixedWindow(
        10**9, 3600.0, backend=backend, failure_mode="deny"
    )  # never full: refusal = failure mode
    key = "user-1"
    slot = fw.store._keys(key)[1]
    master = cluster.nodes[_owner(cluster, slot)]

    def replicates(node) -> bool:
        return cluster.client(node).info("replication").get("master_port") == master.port

    replica = next(n for n in cluster.nodes if n is not master and replicates(n))
    shard = _owner(cluster, slot)
    other = next(k for k in (f"user-{i}" for i in range(100))
                 if _owner(cluster, fw.store._keys(k)[1]) != shard)  # fmt: skip
    assert fw.acquire(key).allowed and fw.acquire(other).allowed
    master.kill()
    outcomes: list[tuple[float, bool, bool]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        outcomes.append((time.monotonic(), fw.acquire(key).allowed, fw.acquire(other).allowed))
        if outcomes[-1][1] and not all(allowed for _, allowed, _ in outcomes):
            break  # refused meanwhile, admitted again now
        time.sleep(0.01)
    assert any(not allowed for _, allowed, _ in outcomes), "no failure-mode decision seen"
    assert outcomes[-1][1], "the dead master's keys never came back"
    assert all(o for _, _, o in outcomes), "keys on the other masters must be unaffected"
    assert cluster.nodes[_owner(cluster, slot, via=cluster.nodes.index(replica))] is replica
    assert backend.transport.node_name(slot) == f"127.0.0.1:{replica.port}"  # we follow
    name = f"127.0.0.1:{replica.port}"
    assert backend.breaker.node(name).allow()
    fresh = limiter.FixedWindow(2, 3600.0, backend=backend)
    assert [fresh.acquire(key).allowed for _ in range(3)] == [True, True, False]
