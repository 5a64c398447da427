"""gRPC interceptors on real servers (grpc.server and grpc.aio), called over loopback."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import http_sf
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from limiter.clients import (
    AioPushbackRetryInterceptor,
    AioRateLimitInterceptor,
    PushbackRetryInterceptor,
    RateLimitInterceptor,
    by_metadata,
    by_peer,
    current_level,
    retry_delay,
)

from limiter import ConcurrencyLimit, FixedWindow, InvalidParameter, TokenBucket
from limiter._core import AdaptiveLimiter
from tests.clients.servers import Recorder, aio_grpc_server, frozen, grpc_server, wait_until

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"


class SyncEcho:
    """Handlers whose behaviour the request picks (bytes in, bytes out)."""

    def __init__(self) -> None:
        self.calls = 0
        self.hanging = threading.Event()
        self.unhang = threading.Event()

    def unary(self, request: bytes, context) -> bytes:
        self.calls += 1
        if request == b"slow":
            time.sleep(0.05)
        elif request == b"unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend down")
        elif request == b"invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        elif request == b"error":
            raise RuntimeError("handler bug")
        elif request == b"hang":
            self.hanging.set()
            self.unhang.wait(10)
        return b"level=%d" % current_level()

    def stream(self, request: bytes, context):
        for i in range(3):
            yield b"%d:%d" % (i, current_level())

    def count(self, requests, context) -> bytes:
        return b"%d:%d" % (sum(1 for _ in requests), current_level())

    def chat(self, requests, context):
        for request in requests:
            yield request + b":%d" % current_level()

    def handler(self):
        return grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
                "Count": grpc.stream_unary_rpc_method_handler(self.count),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            },
        )


class AioEcho:
    def __init__(self) -> None:
        self.hanging: asyncio.Event | None = None
        self.hang_seen = threading.Event()

    async def unary(self, request: bytes, context) -> bytes:
        if request == b"slow":
            await asyncio.sleep(0.05)
        elif request == b"unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "backend down")
        elif request == b"hang":
            self.hang_seen.set()
            await asyncio.sleep(3600)
        return b"level=%d" % current_level()

    async def stream(self, request: bytes, context):
        for i in range(3):
            await asyncio.sleep(0)
            yield b"%d:%d" % (i, current_level())

    def handler(self):
        return grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            },
        )


def check_rejection(error: grpc.RpcError, limit: int, window: int) -> None:
    """RESOURCE_EXHAUSTED with RetryInfo, pushback and RateLimit trailers that agree."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(error)
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    delay = info.retry_delay.ToNanoseconds() / 1e9
    assert 0 < delay <= window
    trailers = dict(error.trailing_metadata())
    assert int(trailers["grpc-retry-pushback-ms"]) == pytest.approx(delay * 1000, abs=1)
    policy = http_sf.parse(trailers["ratelimit-policy"].encode(), tltype="list")
    assert policy == [("default", {"q": limit, "w": window})]
    state = http_sf.parse(trailers["ratelimit"].encode(), tltype="list")[0][1]
    assert state["r"] == 0 and int(trailers["retry-after"]) >= state["t"]
    assert retry_delay(error.trailing_metadata()) == pytest.approx(delay, abs=0.001)


def test_sync_rejection_carries_retry_info_and_pushback():
    echo = SyncEcho()
    interceptor = RateLimitInterceptor(FixedWindow(2, 30.0, clock=frozen()))
    with (
        grpc_server(echo.handler(), [interceptor]) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = channel.unary_unary(UNARY)
        assert call(b"x", timeout=5) == b"level=0"
        assert call(b"x", timeout=5) == b"level=0"
        with pytest.raises(grpc.RpcError) as refused:
            call(b"x", timeout=5)
    check_rejection(refused.value, 2, 30)
    assert echo.calls == 2  # the refused call never reached the handler


def test_sync_level_keys_and_streams():
    echo = SyncEcho()
    interceptor = RateLimitInterceptor(
        FixedWindow(1, 60.0, clock=frozen()), key=by_metadata("x-tenant"), level=lambda: 3
    )
    with (
        grpc_server(echo.handler(), [interceptor]) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        unary, stream = channel.unary_unary(UNARY), channel.unary_stream(STREAM)
        assert unary(b"x", metadata=[("x-tenant", "a")], timeout=5) == b"level=3"
        assert list(stream(b"x", metadata=[("x-tenant", "b")], timeout=5)) == [
            b"0:3",
            b"1:3",
            b"2:3",
        ]
        with pytest.raises(grpc.RpcError) as refused:
            list(stream(b"x", metadata=[("x-tenant", "b")], timeout=5))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert unary(b"x", metadata=[("x-tenant", "c")], timeout=5) == b"level=3"


def test_sync_feedback_and_permit_release():
    echo = SyncEcho()
    limit = ConcurrencyLimit(1)
    recorder = Recorder()
    interceptor = RateLimitInterceptor(limit, key=by_peer, feedback=recorder)
    with (
        grpc_server(echo.handler(), [interceptor]) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = channel.unary_unary(UNARY)
        assert call(b"slow", timeout=5) == b"level=0"
        for request, code in (
            (b"unavailable", grpc.StatusCode.UNAVAILABLE),
            (b"invalid", grpc.StatusCode.INVALID_ARGUMENT),
            (b"error", grpc.StatusCode.UNKNOWN),
        ):
            with pytest.raises(grpc.RpcError) as failed:
                call(request, timeout=5)
            assert failed.value.code() == code
        list(channel.unary_stream(STREAM)(b"x", timeout=5))
        assert wait_until(lambda: len(recorder.records) == 3)
        assert wait_until(lambda: limit.in_flight("127.0.0.1") == 0)
    # Success, a congestion signal; client errors and handler bugs say nothing; stream ok.
    assert [ok for _, ok in recorder.records] == [True, False, True]
    assert recorder.records[0][0] >= 0.05


def test_sync_permit_released_on_cancellation():
    echo = SyncEcho()
    limit = ConcurrencyLimit(1)
    interceptor = RateLimitInterceptor(limit, key=lambda call: "all")
    with (
        grpc_server(echo.handler(), [interceptor]) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = channel.unary_unary(UNARY)
        future = call.future(b"hang", timeout=10)
        assert echo.hanging.wait(5)
        assert limit.in_flight("all") == 1
        future.cancel()
        # Released when the RPC is cancelled, while the handler thread is still stuck.
        assert wait_until(lambda: limit.in_flight("all") == 0)
        assert call(b"x", timeout=5) == b"level=0"
        echo.unhang.set()


def test_client_interceptor_honours_pushback():
    echo = SyncEcho()
    server_side = RateLimitInterceptor(TokenBucket(rate=5.0, burst=1))  # 200 ms apart
    with grpc_server(echo.handler(), [server_side]) as port:
        plain = grpc.insecure_channel(f"127.0.0.1:{port}")
        patient = grpc.intercept_channel(plain, PushbackRetryInterceptor(max_attempts=5))
        impatient = grpc.intercept_channel(plain, PushbackRetryInterceptor(max_attempts=1))
        assert patient.unary_unary(UNARY)(b"x", timeout=5) == b"level=0"
        started = time.monotonic()
        assert patient.unary_unary(UNARY)(b"x", timeout=5) == b"level=0"  # after pushback
        waited = time.monotonic() - started
        with pytest.raises(grpc.RpcError) as refused:
            impatient.unary_unary(UNARY)(b"x", timeout=5)
        plain.close()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert waited >= 0.1  # it did wait for the server's pushback before retrying
    assert echo.calls == 2


def test_client_interceptor_obeys_do_not_retry_and_retry_info():
    attempts = {"never": 0, "info": 0}

    def never(request, context):
        attempts["never"] += 1
        context.set_trailing_metadata((("grpc-retry-pushback-ms", "-1"),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "go away")

    def info(request, context):
        attempts["info"] += 1
        if attempts["info"] > 1:
            return b"ok"
        status = status_pb2.Status(code=8, message="later")
        detail = error_details_pb2.RetryInfo()
        detail.retry_delay.FromMilliseconds(20)
        status.details.add().Pack(detail)
        context.abort_with_status(rpc_status.to_status(status))

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Never": grpc.unary_unary_rpc_method_handler(never),
            "Info": grpc.unary_unary_rpc_method_handler(info),
        },
    )
    with grpc_server(handler, []) as port:
        channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{port}"), PushbackRetryInterceptor()
        )
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/test.Echo/Never")(b"x", timeout=5)
        assert channel.unary_unary("/test.Echo/Info")(b"x", timeout=5) == b"ok"
        channel.close()
    assert attempts == {"never": 1, "info": 2}


def test_client_interceptor_respects_the_deadline():
    echo = SyncEcho()
    server_side = RateLimitInterceptor(TokenBucket(rate=0.1, burst=1))  # 10 s pushback
    with grpc_server(echo.handler(), [server_side]) as port:
        channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{port}"), PushbackRetryInterceptor()
        )
        call = channel.unary_unary(UNARY)
        call(b"x", timeout=5)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            call(b"x", timeout=5)  # the pushback would outlive the deadline: give up now
        channel.close()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # At once, not at the deadline (the bound is slack for a loaded machine).
    assert time.monotonic() - started < 2.5


def test_aio_server_rejection_level_stream_and_cancellation():
    echo = AioEcho()
    limit = ConcurrencyLimit(1)
    recorder = Recorder()
    gate = AioRateLimitInterceptor(
        limit, key=lambda call: "all", level=lambda: 2, feedback=recorder
    )
    with (
        aio_grpc_server(echo.handler(), [gate]) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = channel.unary_unary(UNARY)
        assert call(b"slow", timeout=5) == b"level=2"
        assert list(channel.unary_stream(STREAM)(b"x", timeout=5)) == [b"0:2", b"1:2", b"2:2"]
        with pytest.raises(grpc.RpcError):
            call(b"unavailable", timeout=5)
        future = call.future(b"hang", timeout=10)
        assert echo.hang_seen.wait(5)
        with pytest.raises(grpc.RpcError) as refused:  # the one permit is held
            call(b"x", timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        future.cancel()
        assert wait_until(lambda: limit.in_flight("all") == 0)
        assert call(b"x", timeout=5) == b"level=2"
    oks = [ok for _, ok in recorder.records]
    assert oks == [True, True, False, True]


def test_aio_server_and_aio_client_pushback():
    echo = AioEcho()
    gate = AioRateLimitInterceptor(FixedWindow(2, 30.0, clock=frozen()))

    async def client(port: int):
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=[AioPushbackRetryInterceptor(max_delay=0.5)]
        ) as channel:
            call = channel.unary_unary(UNARY)
            assert await call(b"x", timeout=5) == b"level=0"
            assert await call(b"x", timeout=5) == b"level=0"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"x", timeout=5)  # pushback ~30 s > max_delay: not retried
            return refused.value

    with aio_grpc_server(echo.handler(), [gate]) as port:
        error = asyncio.run(client(port))
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            channel.unary_unary(UNARY)(b"x", timeout=5)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(error.trailing_metadata()) > 0.5
    check_rejection(refused.value, 2, 30)


def test_bad_options_are_named():
    with pytest.raises(InvalidParameter, match="cost"):
        RateLimitInterceptor(TokenBucket(1, 1), cost=-1)
    with pytest.raises(InvalidParameter, match="methods"):
        RateLimitInterceptor(TokenBucket(1, 1), methods="/a/b")
    with pytest.raises(InvalidParameter, match="max_attempts"):
        PushbackRetryInterceptor(max_attempts=0)
    with pytest.raises(InvalidParameter, match="jitter"):
        AioPushbackRetryInterceptor(jitter=2)
    with pytest.raises(InvalidParameter, match="metadata"):
        by_metadata("")
    assert retry_delay([("grpc-status-details-bin", b"\xff\xff garbage")]) is None
    assert retry_delay([("grpc-retry-pushback-ms", "soon")]) is None


def test_adaptive_limiter_gets_each_outcome_once():
    adaptive = AdaptiveLimiter(target_latency=1.0, mode="concurrency", initial_limit=4)
    echo = SyncEcho()
    with (
        grpc_server(echo.handler(), [RateLimitInterceptor(adaptive)]) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = channel.unary_unary(UNARY)
        call(b"slow", timeout=5)
        for request in (b"invalid", b"error", b"unavailable"):
            with pytest.raises(grpc.RpcError):
                call(request, timeout=5)
        assert wait_until(lambda: adaptive.in_flight == 0)
    summary = adaptive.summary()
    # Samples: the slow success and the UNAVAILABLE drop; client errors and bugs ignored.
    assert summary["admitted"] == 4
    assert len(summary["values"]) == 2
    assert max(summary["values"]) >= 0.05


def test_sync_client_streaming_methods_are_gated_too():
    interceptor = RateLimitInterceptor(
        FixedWindow(2, 60.0, clock=frozen()), key=lambda call: call.method, level=lambda: 1
    )
    with (
        grpc_server(SyncEcho().handler(), [interceptor]) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        count = channel.stream_unary("/test.Echo/Count")
        chat = channel.stream_stream("/test.Echo/Chat")
        assert count(iter([b"a", b"b", b"c"]), timeout=5) == b"3:1"
        assert list(chat(iter([b"a", b"b"]), timeout=5)) == [b"a:1", b"b:1"]
        assert count(iter([b"a"]), timeout=5) == b"1:1"
        with pytest.raises(grpc.RpcError) as refused:
            count(iter([b"a"]), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
