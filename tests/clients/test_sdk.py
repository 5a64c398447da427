"""SDK clients against a real `limiter serve` process, including it being killed."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import http_sf
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from limiter.clients import (
    AdaptiveThrottle,
    AioRateLimitInterceptor,
    AsyncLimiterClient,
    AsyncRlsClient,
    LimiterClient,
    RateLimitInterceptor,
    RemotePermit,
    RlsClient,
)
from limiter.clients.asgi import RateLimitMiddleware
from limiter.clients.rls import descriptor, parse
from limiter.clients.wsgi import RateLimitMiddleware as WsgiMiddleware
from limiter.server import v1

from limiter import InvalidParameter, RateLimited, TokenBucket
from limiter.decorators import limited, rate_limited
from tests.clients.servers import aio_grpc_server, asgi_server, grpc_server, http_get, wsgi_server
from tests.clients.test_asgi import app as asgi_app
from tests.clients.test_interceptors import UNARY, AioEcho, SyncEcho
from tests.clients.test_wsgi import app as wsgi_app

SLOW_CI = 1.0  # generous deadline for calls that must reach the service in these tests


def test_rls_client_semantics(service):
    with RlsClient(service.target, "sdk", timeout=SLOW_CI) as client:
        client.wait_ready()
        answers = [client.should_rate_limit([{"key": "rls-a"}]) for _ in range(4)]
        assert [a.allowed for a in answers] == [True, True, True, False]
        status = answers[2].statuses[0]
        assert (status.limit, status.unit_seconds, status.name, status.remaining) == (
            3,
            3600,
            "per-key",
            0,
        )
        assert 0 < status.reset_after <= 3600
        refused = answers[3]
        assert refused.source == "service" and refused.level == 0
        headers = dict(refused.response_headers)
        assert http_sf.parse(headers["RateLimit"].encode(), tltype="list")[0][1]["r"] == 0
        assert int(headers["Retry-After"]) >= 1
        decision = refused.decision
        assert not decision.allowed and decision.limit == 3 and decision.retry_after > 0
        # Many descriptors in one request: the whole request is over if any is.
        mixed = client.should_rate_limit([{"key": "rls-a"}, {"user": "u1"}])
        assert not mixed.allowed and [s.allowed for s in mixed.statuses] == [False, True]
        # acquire() is the limiter interface: descriptor (descriptor_key, key), hits = cost.
        assert client.acquire("rls-b", 3).allowed and not client.acquire("rls-b").allowed
        unknown = client.should_rate_limit([{"nothing": "here"}], domain="nowhere")
        assert unknown.allowed and unknown.statuses[0].limit == 0
        addend = client.should_rate_limit([descriptor({"key": "rls-c"}, hits_addend=3)])
        assert addend.allowed and addend.statuses[0].remaining == 0


BURST = 16  # concurrent first calls of a fresh client, on a key limited to 3 a day


def burst_in_threads(acquire) -> list:
    """``BURST`` threads sharing one client, released together, one call each."""
    start = threading.Barrier(BURST)

    def one(_):
        start.wait(10)
        return acquire()

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(one, range(BURST)))


def check_burst(decisions: list) -> None:
    """A healthy service answered every call (none throttled locally, none fell back),
    so exactly the limit was admitted."""
    assert sum(d.allowed for d in decisions) == 3
    assert sorted(d.source for d in decisions) == ["service"] * BURST


@pytest.mark.parametrize("flavour", ["rls", "native"])
def test_concurrent_burst_on_a_fresh_blocking_client_admits_the_limit(service, flavour):
    """Calls in flight are not failures: a burst of a fresh client's first calls all
    reach a healthy service (default throttle and failure mode)."""
    key = f"burst-{flavour}"
    if flavour == "rls":
        client = RlsClient(service.target, "sdk", timeout=SLOW_CI, descriptor_key="day")
    else:
        client = LimiterClient(service.target, "sdk", rule="per-day", timeout=SLOW_CI)
    with client:
        client.wait_ready()
        check_burst(burst_in_threads(lambda: client.acquire(key)))


def test_concurrent_burst_on_a_fresh_async_client_admits_the_limit(service):
    async def main():
        async with AsyncRlsClient(service.target, "sdk", timeout=SLOW_CI) as client:
            await client.wait_ready()
            answers = await asyncio.gather(
                *(client.should_rate_limit([{"day": "burst-async"}]) for _ in range(BURST))
            )
            return [answer.decision for answer in answers]

    check_burst(asyncio.run(main()))


def test_async_rls_client_with_decorator(service):
    async def main():
        async with AsyncRlsClient(service.target, "sdk", timeout=SLOW_CI) as client:
            await client.wait_ready()

            @rate_limited(client, key=lambda n: "rls-async")
            async def work(n):
                return n

            assert [await work(i) for i in range(3)] == [0, 1, 2]
            with pytest.raises(RateLimited) as refused:
                await work(3)
            assert refused.value.retry_after > 0
            answer = await client.should_rate_limit({"user": "u2"}, hits_addend=10)
            return answer.statuses[0].remaining

    assert asyncio.run(main()) == 990


def test_native_client_decide_batch_and_permits(service):
    with LimiterClient(service.target, "sdk", rule="per-key", timeout=SLOW_CI) as client:
        client.wait_ready()
        got = [client.decide("n-a").allowed for _ in range(4)]
        assert got == [True, True, True, False]
        batch = client.decide_batch(
            [
                {"key": "n-b", "cost": 2},
                {"key": "n-b", "cost": 2},
                {"key": "n-c", "rule": "per-user", "priority": "sheddable"},
                {"key": "n-d", "rule": "no-such-rule"},
            ]
        )
        assert [d.allowed for d in batch] == [True, False, True, True]
        assert batch[0].remaining == 1 and batch[2].limit == 1000
        assert batch[1].retry_after > 0 and batch[1].source == "service"
        # Concurrency rule: Decide hands out a permit that Release gives back.
        with client.decide("t1", rule="inflight") as permit:
            assert isinstance(permit, RemotePermit) and permit.lease
            assert not client.decide("t1", rule="inflight").allowed
        assert client.decide("t1", rule="inflight").allowed  # released on leaving the block
        assert client.release("not-a-permit") == 0
        client.record(0.01, ok=True, key="t1")
        assert client.flush() == 0  # delivered; no adaptive rule here to accept it
        for ok in (True, True, False):
            client.record(0.02, ok=ok, rule="adaptive")
        assert client.flush() == 3  # the service's adaptive rule took all three


def test_native_client_errors_and_bad_input(service):
    with LimiterClient(service.target, "sdk", rule="per-key", timeout=SLOW_CI) as client:
        with pytest.raises(InvalidParameter, match="key"):  # refused by the service
            client.decide("k" * 5000)
        with pytest.raises(InvalidParameter, match="cost"):
            client.decide("x", 0)
        with pytest.raises(InvalidParameter, match="priority"):
            client.decide("x", priority="urgent")
        with pytest.raises(InvalidParameter, match="at least one"):
            client.decide_batch([])
    with pytest.raises(InvalidParameter, match="failure_mode"):
        LimiterClient(service.target, "sdk", failure_mode="maybe")
    with pytest.raises(InvalidParameter, match="timeout"):
        RlsClient(service.target, "sdk", timeout=0)
    with pytest.raises(InvalidParameter, match="domain"):
        RlsClient(service.target, "")
    with (
        RlsClient(service.target, "sdk") as client,
        pytest.raises(InvalidParameter, match="entries"),
    ):
        client.should_rate_limit([{}])


def test_client_options_checked_and_a_borrowed_channel_left_open(service):
    """Both flavours check the options they share before opening a channel; a channel
    the caller passed in stays the caller's to close."""
    for bad, match in (
        ({"max_batch": 0}, "max_batch"),
        ({"observe_batch": 0}, "observe_batch"),
        ({"throttle": "yes"}, "throttle"),
    ):
        with pytest.raises(InvalidParameter, match=match):
            AsyncLimiterClient(service.target, "sdk", **bad)
    with pytest.raises(InvalidParameter, match="observe_batch"):
        LimiterClient(service.target, "sdk", observe_batch=True)
    with pytest.raises(TypeError, match="max_batch"):
        LimiterClient(service.target, "sdk", max_batch=8)  # only the asyncio client batches
    with pytest.raises(InvalidParameter, match="descriptor_key"):
        AsyncRlsClient(service.target, "sdk", descriptor_key="")
    channel = grpc.insecure_channel(service.target)
    try:
        with (
            RlsClient(channel, "sdk", timeout=SLOW_CI) as rls,
            LimiterClient(channel, "sdk", rule="per-key", timeout=SLOW_CI) as native,
        ):
            assert rls.channel is channel and native.channel is channel
            assert rls.acquire("borrowed").source == "service"
            assert native.acquire("borrowed").source == "service"
        answer = RlsClient(channel, "sdk", timeout=SLOW_CI).should_rate_limit([{"key": "borrowed"}])
        assert answer.source == "service" and answer.statuses[0].name == "per-key"
    finally:
        channel.close()


def test_async_native_client_coalesces_concurrent_checks(service):
    rpcs = []

    class Count(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, details, request):
            method = details.method
            method = method.decode() if isinstance(method, bytes) else method
            rpcs.append((method, len(getattr(request, "checks", ()))))
            return await continuation(details, request)

    async def main():
        channel = grpc.aio.insecure_channel(service.target, interceptors=[Count()])
        client = AsyncLimiterClient(channel, "sdk", rule="per-user", timeout=SLOW_CI)
        await client.wait_ready()
        decisions = await asyncio.gather(*(client.acquire(f"c{i % 5}") for i in range(50)))
        permit = await client.decide("t-async", rule="inflight")
        refused = await client.decide("t-async", rule="inflight")
        async with limited(client, "c0") as decision:
            assert decision.allowed
        permit.release()  # sent in the background
        await client.flush()
        again = await client.decide("t-async", rule="inflight")
        client.record(0.02, ok=False)
        await client.close()
        await channel.close()
        return decisions, permit, refused, again

    decisions, permit, refused, again = asyncio.run(main())
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions[:5]] == [999] * 5
    decides = [n for method, n in rpcs if method.endswith("/Decide")]
    assert decides[0] == 50  # fifty awaits in one loop turn: one RPC
    assert isinstance(permit, RemotePermit) and not refused.allowed and again.allowed
    assert any(m.endswith("/Release") for m, _ in rpcs)
    assert any(m.endswith("/Observe") for m, _ in rpcs)


OUTAGE_DEADLINE = 0.25  # per-call deadline in the outage tests: robust on a busy CI box
# A call over its deadline by more than this hung (a stalled 2-core machine stays under it;
# a call with no deadline waits for the restart, seconds later).
HANG_SLACK = 1.5


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def run_through_outage(client, calls: list, stop: threading.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        decision = client.acquire("outage", 1)
        calls.append((time.monotonic() - started, decision.source, decision.allowed))
        time.sleep(0.002)


@pytest.mark.parametrize("mode", ["allow", "deny", "local"])
def test_service_killed_mid_run(own_service, mode):
    """Decisions keep coming within the deadline while the service is down (failure
    mode decides, throttling kicks in), and come from the service again after restart."""
    failure_mode = TokenBucket(rate=1000.0, burst=1000) if mode == "local" else mode
    client = LimiterClient(
        own_service.target,
        "sdk",
        rule="per-user",
        timeout=OUTAGE_DEADLINE,
        failure_mode=failure_mode,
        throttle=AdaptiveThrottle(window=1.0, buckets=10),
    )
    client.wait_ready()
    calls: list = []
    stop = threading.Event()
    worker = threading.Thread(target=run_through_outage, args=(client, calls, stop))
    worker.start()
    try:
        assert wait_for(lambda: any(c[1] == "service" for c in calls), 5)
        own_service.kill()
        killed_at = len(calls)
        started = time.monotonic()
        # Long enough for the window to hold only failures, and for plenty of calls.
        wait_for(lambda: time.monotonic() - started > 1.2 and len(calls) - killed_at > 60, 10)
        down = calls[killed_at:]
        own_service.start()
        recovered = wait_for(lambda: calls[-1][1] == "service", 10)
    finally:
        stop.set()
        worker.join(10)
        client.close()

    assert recovered, "decisions never came from the service again after the restart"
    # No call hung: each returned within its deadline plus scheduling slack.
    assert max(elapsed for elapsed, _, _ in calls) < OUTAGE_DEADLINE + HANG_SLACK
    sources = {source for _, source, _ in down[1:]}  # the first may have been in flight
    assert sources <= {"fallback", "throttled"}
    assert len(down) > 60
    assert "throttled" in sources  # a dead service is not hammered at full rate
    fallen = [allowed for _, source, allowed in down[1:] if source == "fallback"]
    throttled = [allowed for _, source, allowed in down[1:] if source == "throttled"]
    assert fallen and (all(fallen) if mode in ("allow", "local") else not any(fallen))
    # Throttling protects the service: fail-open does not wave those calls through;
    # a local limiter stands in for the service and decides them.
    assert all(throttled) if mode == "local" else not any(throttled)


def test_async_rls_client_through_a_kill(own_service):
    """The asyncio RLS client: bounded calls while the service is gone, then recovery."""

    async def main():
        client = AsyncRlsClient(
            own_service.target, "sdk", timeout=OUTAGE_DEADLINE, failure_mode="deny", throttle=False
        )
        await client.wait_ready()
        calls = []

        async def call():
            started = time.monotonic()
            answer = await client.should_rate_limit([{"user": "outage"}])
            calls.append((time.monotonic() - started, answer.source, answer.allowed))
            await asyncio.sleep(0.005)

        async def until_service(timeout):
            deadline = time.monotonic() + timeout
            await call()
            while time.monotonic() < deadline and calls[-1][1] != "service":
                await call()
            return calls[-1][1] == "service"

        assert await until_service(5)
        before = len(calls)
        await asyncio.to_thread(own_service.kill)
        for _ in range(20):
            await call()
        down = calls[before:]
        await asyncio.to_thread(own_service.start)
        recovered = await until_service(10)
        await client.close()
        return calls, down, recovered

    calls, down, recovered = asyncio.run(main())
    assert all(source == "fallback" and not allowed for _, source, allowed in down)
    assert recovered and calls[-1][2]
    assert max(elapsed for elapsed, _, _ in calls) < OUTAGE_DEADLINE + HANG_SLACK


class Stalled(rls_pb2_grpc.RateLimitServiceServicer):
    """A real RLS server that answers too late (an overloaded service)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def ShouldRateLimit(self, request, context):
        self.release.wait(2)
        return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


class StalledNative:
    def __init__(self) -> None:
        self.release = threading.Event()

    def Decide(self, request, context):
        self.release.wait(2)
        return v1.DecideResponse()

    def Release(self, request, context):
        return v1.ReleaseResponse()

    def Observe(self, request, context):
        return v1.ObserveResponse()


def test_default_deadline_is_20ms_and_failure_mode_answers():
    stalled, native = Stalled(), StalledNative()
    server = grpc.server(ThreadPoolExecutor(8))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(stalled, server)
    v1.add_limiter_servicer(server, native)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        target = f"127.0.0.1:{port}"
        with (
            RlsClient(target, "d", failure_mode="deny") as rls,
            LimiterClient(target, "d", failure_mode="allow") as client,
        ):
            rls.wait_ready()
            assert rls.policy.timeout == client.policy.timeout == 0.020
            timings, sources = [], set()
            for _ in range(5):
                started = time.monotonic()
                answer = rls.should_rate_limit([{"k": "v"}])
                decision = client.acquire("k")
                timings.append(time.monotonic() - started)
                assert not answer.allowed and decision.allowed
                sources |= {answer.source, decision.source}
            # Each call waited for the deadline; five failures are too few to throttle.
            assert sources == {"fallback"}
    finally:
        stalled.release.set()
        native.release.set()
        server.stop(None)
    # Two calls per round, each cut at 20 ms: far below the 2 s the server would take.
    assert max(timings) < 1.0


def test_middleware_and_interceptors_gated_by_the_service(service):
    """The same adapters with the remote service deciding: its headers and level pass
    through, and a blocking client never runs on the event loop."""
    with RlsClient(service.target, "sdk", timeout=SLOW_CI) as rls:
        key = lambda request: "mw-asgi"  # noqa: E731
        with asgi_server(RateLimitMiddleware(asgi_app, rls, key=key)) as port:
            answers = [http_get(port) for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    policy = http_sf.parse(answers[3][1]["ratelimit-policy"].encode(), tltype="list")
    assert policy == [("per-key", {"q": 3, "w": 3600})]  # the service's own policy and window

    with LimiterClient(service.target, "sdk", rule="per-key", timeout=SLOW_CI) as native:
        key = lambda request: "mw-wsgi"  # noqa: E731
        mw = WsgiMiddleware(wsgi_app, native, key=key, policy="per-key", window=3600)
        with wsgi_server(mw) as port:
            answers = [http_get(port) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 429]
        assert answers[3][1]["ratelimit-policy"] == '"per-key";q=3;w=3600'
        # Without a window the native answer says nothing of the policy: RateLimit only.
        unsized = WsgiMiddleware(wsgi_app, native, key=lambda request: "mw-wsgi")
        with wsgi_server(unsized) as port:
            status, headers, _ = http_get(port)
        assert status == 429 and "ratelimit-policy" not in headers
        assert headers["ratelimit"].startswith('"default";r=0;t=')
        gate = RateLimitInterceptor(native, key=lambda call: "grpc-sync")
        with grpc_server(SyncEcho().handler(), [gate]) as port:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            results = []
            for _ in range(4):
                try:
                    results.append(channel.unary_unary(UNARY)(b"x", timeout=5))
                except grpc.RpcError as error:
                    results.append(error.code())
            channel.close()
    assert results == [b"level=0"] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]

    def remote_gate():  # built inside the server's event loop, as grpc.aio requires
        client = AsyncLimiterClient(service.target, "sdk", rule="per-key", timeout=SLOW_CI)
        return [AioRateLimitInterceptor(client, key=lambda call: "grpc-aio")]

    with aio_grpc_server(AioEcho().handler(), remote_gate) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        codes = []
        for _ in range(4):
            try:
                channel.unary_unary(UNARY)(b"x", timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        channel.close()
    assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]


def test_the_level_header_is_read_only_from_ascii_digits() -> None:
    """A level the service adds as a request header; anything but ASCII digits is level 0
    (``"²"`` passes str.isdigit but not int())."""

    def level(value: str) -> int:
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        response.request_headers_to_add.add(key="X-Limiter-Level", value=value)
        return parse(response, "x-limiter-level").level

    assert [level(v) for v in ("3", " 2 ", "\u00b2", "-1", "", "x")] == [3, 2, 0, 0, 0, 0]
