"""asyncio callers on a plain Redis get a connection on their own event loop
(``loop_transport``): the same decisions and the same fault behaviour as threads."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis

import limiter
from limiter.backends.redis import RedisBackend
from tests.support import PATIENT, RedisServer


def _run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_asyncio_callers_share_round_trips_on_their_loop(redis_url: str) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(50, 3600.0, backend=backend)

    async def scenario() -> list[bool]:
        answers = await asyncio.gather(*(fw.acquire_async("k") for _ in range(80)))
        return [d.allowed for d in answers]

    assert sum(_run(scenario())) == 50
    assert backend.combiner.batches == 0  # no flusher thread was involved
    (transport,) = backend.loop_transports.values()
    assert 1 <= transport.trips < 80  # handshake + a few shared round trips
    assert fw.store.failures == 0


def test_leases_released_from_the_loop_precede_its_next_request(redis_url: str) -> None:
    backend = RedisBackend(redis_url, timeout=1.0)
    cl = limiter.ConcurrencyLimit(1, backend=backend)

    async def scenario() -> list[bool]:
        seen = []
        for _ in range(20):
            permit = await cl.acquire_async("jobs")
            seen.append(permit.allowed)
            permit.release()  # posted on the loop's connection, ahead of the next acquire
        return seen

    assert _run(scenario()) == [True] * 20
    assert cl.in_flight("jobs") == 0


def test_unix_socket_url_and_database_selection() -> None:
    server = RedisServer()
    sock = server.dir / "redis.sock"  # this server's own: concurrent runs never share it
    server.extra_args += ["--unixsocket", str(sock)]
    with server:
        url = f"unix://{sock}?db=3"
        fw = limiter.FixedWindow(2, 3600.0, backend=RedisBackend(url, timeout=1.0))

        async def scenario() -> list[bool]:
            return [(await fw.acquire_async("u")).allowed for _ in range(3)]

        assert _run(scenario()) == [True, True, False]
        assert fw.acquire("u").allowed is False  # the threaded path reads the same state
        assert redis.Redis(port=server.port, db=3).dbsize() == 1
        assert redis.Redis(port=server.port, db=0).dbsize() == 0


def test_password_and_acl_user() -> None:
    with RedisServer("--requirepass", "s3cret") as server:
        good = RedisBackend(f"redis://:s3cret@127.0.0.1:{server.port}/1", timeout=1.0)
        fw = limiter.FixedWindow(1, 3600.0, backend=good)
        assert _run(fw.acquire_async("p")).allowed
        assert not _run(fw.acquire_async("p")).allowed
        admin = redis.Redis(port=server.port, password="s3cret")
        admin.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"])
        user = RedisBackend(f"redis://app:pw@127.0.0.1:{server.port}/1", timeout=1.0)
        assert not _run(limiter.FixedWindow(1, 3600.0, backend=user).acquire_async("p")).allowed
        # A wrong password fails like an unreachable server: the rule's failure mode.
        wrong = RedisBackend(
            f"redis://:nope@127.0.0.1:{server.port}/1",
            timeout=1.0, require_at_start=False,
        )  # fmt: skip
        tb = limiter.TokenBucket(1.0, 1, backend=wrong, failure_mode="allow")
        assert _run(tb.acquire_async("w")).allowed
        assert "WRONGPASS" in str(tb.store.last_error) or "invalid" in str(tb.store.last_error)
        assert wrong.breaker.is_open


async def _hammer(fw: limiter.FixedWindow, stop: asyncio.Event, log: list) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            d = await fw.acquire_async("load")
            log.append((t0, time.monotonic() - t0, d.allowed, None))
        except Exception as exc:  # the test asserts that none escaped
            log.append((t0, time.monotonic() - t0, None, exc))
        await asyncio.sleep(0)


@pytest.mark.parametrize("mode", ["deny", "allow", "local"])
def test_sigkill_and_restart_during_asyncio_load(own_redis: RedisServer, mode: str) -> None:
    backend = RedisBackend(own_redis.url, local_cache=False, timeout=0.05)
    fw = limiter.FixedWindow(10**9, 3600.0, backend=backend, failure_mode=mode)
    small = limiter.TokenBucket(0.001, 5, backend=backend, failure_mode=mode)
    client = redis.Redis(port=own_redis.port)

    async def scenario() -> tuple[list, list, float, float, float]:
        stop = asyncio.Event()
        log: list = []
        tasks = [asyncio.create_task(_hammer(fw, stop, log)) for _ in range(8)]
        await asyncio.sleep(0.3)
        own_redis.kill()
        killed = time.monotonic()
        await asyncio.sleep(0.4)
        outage = [(await small.acquire_async("k")).allowed for _ in range(8)]
        restarting = time.monotonic()
        own_redis.start()
        restarted = time.monotonic()
        while client.dbsize() == 0 and time.monotonic() - restarted < 3:
            await asyncio.sleep(0.005)
        resumed = time.monotonic() - restarted
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)
        return log, outage, killed, restarting, resumed

    log, outage, killed, restarting, resumed = _run(scenario())
    assert [e[3] for e in log if e[3] is not None] == []
    assert max(e[1] for e in log) < 2.0
    during = [e[2] for e in log if killed + 0.05 < e[0] and e[0] + e[1] < restarting]
    assert during, "no decisions were made while Redis was down"
    if mode == "deny":
        assert not any(during) and not any(outage)
    else:
        assert all(during)
        assert outage == ([True] * 8 if mode == "allow" else [True] * 5 + [False] * 3)
    assert resumed <= 1.0, f"shared limiting resumed {resumed:.3f}s after Redis returned"
    assert backend.breaker.trips >= 1


def test_a_server_that_stops_answering_costs_one_timeout(own_redis: RedisServer) -> None:
    """SIGSTOP: the connection stays up but nothing comes back. Waiting calls end at the
    timeout, the breaker opens, and later calls are answered without waiting at all."""
    backend = RedisBackend(own_redis.url, local_cache=False, timeout=0.05)
    fw = limiter.FixedWindow(10**9, 3600.0, backend=backend, failure_mode="allow")

    async def scenario() -> tuple[float, float, bool]:
        assert (await fw.acquire_async("k")).allowed
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            stalled = await asyncio.gather(*(fw.acquire_async("k") for _ in range(10)))
            first = time.monotonic() - t0
            t0 = time.monotonic()
            for _ in range(100):
                assert (await fw.acquire_async("k")).allowed
            later = time.monotonic() - t0
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(backend.breaker.cooldown + 0.05)
        assert all(d.allowed for d in stalled)
        back = (await fw.acquire_async("k")).allowed
        return first, later, back

    first, later, back = _run(scenario())
    assert 0.04 <= first < 1.0
    assert later < 0.5  # 100 calls, none waiting for Redis: the breaker is open
    assert back and not backend.breaker.is_open
    assert redis.Redis(port=own_redis.port).keys() != []


def test_script_flush_and_error_replies(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, local_cache=False, timeout=1.0)
    fw = limiter.FixedWindow(3, 3600.0, backend=backend, failure_mode="deny")
    opened = limiter.FixedWindow(3, 3600.0, backend=backend, failure_mode="allow")
    client = redis.Redis(port=own_redis.port)

    async def scenario() -> tuple[list[bool], bool, bool]:
        assert (await fw.acquire_async("k")).allowed
        client.script_flush()  # NOSCRIPT: loaded again and run once more
        flushed = [(await fw.acquire_async("k")).allowed for _ in range(3)]
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        try:
            refused = (await fw.acquire_async("other")).allowed
            admitted = (await opened.acquire_async("other")).allowed
        finally:
            client.config_set("maxmemory", 0)
        return flushed, refused, admitted

    flushed, refused, admitted = _run(scenario())
    assert flushed == [True, True, False]
    assert not refused and admitted  # OOM replies follow each rule's failure mode
    assert isinstance(fw.store.last_error, redis.exceptions.OutOfMemoryError)
    assert not backend.breaker.is_open  # the server is up; only writes fail
    assert client.script_exists(fw.store.codec.script.sha) == [True]


def test_readonly_replica_over_the_loop(own_redis: RedisServer) -> None:
    with RedisServer("--replicaof", "127.0.0.1", str(own_redis.port)) as replica:
        backend = RedisBackend(replica.url, timeout=PATIENT)
        fw = limiter.FixedWindow(5, 1.0, backend=backend)

        async def scenario() -> list[bool]:
            return [(await fw.acquire_async("k")).allowed for _ in range(6)]

        assert _run(scenario()) == [True] * 5 + [False]
        assert fw.store.failures == 6 and backend.breaker.trips == 1


def test_unreachable_at_start_then_back(own_redis: RedisServer) -> None:
    url = own_redis.url
    own_redis.kill()
    backend = RedisBackend(url, require_at_start=False, timeout=0.2)
    tb = limiter.TokenBucket(0.001, 2, backend=backend)

    async def scenario() -> tuple[list[bool], bool]:
        down = [(await tb.acquire_async("k")).allowed for _ in range(3)]
        own_redis.start()
        await asyncio.sleep(backend.breaker.cooldown + 0.05)
        return down, (await tb.acquire_async("k")).allowed

    down, back = _run(scenario())
    assert down == [True, True, False]
    assert back  # a fresh shared bucket
    assert redis.Redis(port=own_redis.port).dbsize() == 1


def test_close_with_a_finished_loop_and_a_live_one(redis_url: str) -> None:
    backend = RedisBackend(redis_url, timeout=1.0)
    fw = limiter.FixedWindow(10, 60.0, backend=backend)
    assert _run(fw.acquire_async("a")).allowed  # its loop is closed by now

    async def live() -> bool:
        allowed = (await fw.acquire_async("a")).allowed
        transport = backend.loop_transports[asyncio.get_running_loop()]
        waiting = asyncio.gather(*(fw.acquire_async("a") for _ in range(3)))
        await asyncio.sleep(0)  # queued or on the wire when the backend closes
        backend.close()
        answers = await waiting  # answered (here: refused, the failure mode), not left hanging
        return allowed and transport.transport is None and len(answers) == 3

    assert _run(live())


def test_batch_window_gathers_requests_from_several_loop_passes(redis_url: str) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0, batch_window=0.2)
    fw = limiter.FixedWindow(100, 3600.0, backend=backend)

    async def scenario() -> tuple[list[bool], int]:
        await fw.acquire_async("w")  # connected
        transport = backend.loop_transports[asyncio.get_running_loop()]
        before = transport.trips
        tasks = []
        for _ in range(5):
            tasks.append(asyncio.create_task(fw.acquire_async("w")))
            await asyncio.sleep(0.01)  # later passes of the loop, inside the window
        allowed = [d.allowed for d in await asyncio.gather(*tasks)]
        return allowed, transport.trips - before

    assert _run(scenario()) == ([True] * 5, 1)  # all five in one round trip


def test_which_urls_get_the_event_loop_connection() -> None:
    from redis.sentinel import Sentinel

    from limiter.backends.redis import _endpoint

    tls = _endpoint(redis.Redis.from_url("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none"))
    assert tls.tls is not None and tls.tls.verify_mode.name == "CERT_NONE"
    assert _endpoint(redis.Redis.from_url("rediss://h:6380/0")).tls.check_hostname
    ocsp = redis.Redis.from_url("rediss://127.0.0.1:6380/0", ssl_validate_ocsp=True)
    assert _endpoint(ocsp) is None  # redis-py's own connections check OCSP
    assert _endpoint(redis.Redis.from_url("redis://127.0.0.1:6380/0?client_name=x")) is None
    managed = Sentinel([("127.0.0.1", 1)]).master_for("mymaster")
    assert _endpoint(managed) is None  # no address until the sentinels are asked
    found = _endpoint(managed, {"sentinels": (("127.0.0.1", 2),), "service": "mymaster"})
    assert found.sentinels == (("127.0.0.1", 2),) and found.service == "mymaster"
    plain = _endpoint(redis.Redis.from_url("redis://u:p@10.0.0.1:6380/2"))
    assert (plain.host, plain.port, plain.db, plain.username, plain.password, plain.tls) == (
        "10.0.0.1", 6380, 2, "u", "p", None,
    )  # fmt: skip


def test_batches_on_the_loop_use_the_cache_and_the_breaker(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, timeout=0.05)
    fw = limiter.FixedWindow(2, 3600.0, backend=backend, failure_mode="allow")

    async def scenario() -> tuple[list[bool], list[bool], list[bool], tuple, list[bool], int]:
        first = await fw.decide(["a", "a", "a", "b"], [1, 1, 1, 1])
        trips = backend.loop_transports[asyncio.get_running_loop()].trips
        cached = await fw.decide(["a", "a"], [1, 1])  # known refusals: no round trip
        trips = backend.loop_transports[asyncio.get_running_loop()].trips - trips
        own_redis.kill()
        down = await fw.decide(["c", "d"], [1, 1])  # trips the breaker: failure mode
        assert backend.breaker.is_open
        own_redis.start()
        await asyncio.sleep(backend.breaker.cooldown + 0.05)
        # Half-open: the whole batch is the one probe, each check decided by Redis.
        back = await fw.decide(["e", "e", "e"], [1, 1, 1])
        return (
            [d.allowed for d in first.decisions],
            [d.allowed for d in cached.decisions],
            [d.allowed for d in down.decisions],
            down.failed + first.failed + back.failed,
            [d.allowed for d in back.decisions],
            trips,
        )

    first, cached, down, failed, back, trips = _run(scenario())
    assert first == [True, True, False, True] and cached == [False, False] and trips == 0
    assert down == [True, True] and failed == (0, 1)  # only the outage's checks failed
    assert back == [True, True, False] and not backend.breaker.is_open


def test_a_full_batch_does_not_wait_for_the_window(redis_url: str) -> None:
    backend = RedisBackend(redis_url, local_cache=False, timeout=1.0, batch_window=5.0)
    fw = limiter.FixedWindow(100, 3600.0, backend=backend)

    async def scenario() -> tuple[int, float]:
        await fw.acquire_async("warm")  # connected: queued calls go as soon as it is
        t0 = time.monotonic()
        answers = await asyncio.gather(*(fw.acquire_async("f") for _ in range(40)))
        return sum(d.allowed for d in answers), time.monotonic() - t0

    allowed, took = _run(scenario(), timeout=20)
    assert allowed == 40 and took < 2.0  # 32 queued calls go at once, the rest follow
