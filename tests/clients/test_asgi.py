"""ASGI middleware under a real uvicorn server, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time

import pytest
from fastapi import FastAPI, Request
from limiter.clients import current_level
from limiter.clients.asgi import RateLimitMiddleware
from limiter.clients.keys import RequestInfo, client_ip, everyone, header, request_start, route

from limiter import ConcurrencyLimit, Decision, FixedWindow, InvalidParameter, TokenBucket
from limiter._core import AdaptiveLimiter
from tests.clients.servers import Recorder, asgi_server, check_refusal, frozen, http_get, wait_until


async def app(scope, receive, send):
    """A bare ASGI app: echoes what the middleware told it; /slow, /fail, /boom misbehave."""
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(0.05)
    if path == "/boom":
        raise RuntimeError("handler failed")
    status = {"/fail": 503, "/missing": 404}.get(path, 200)
    headers = dict(scope["headers"])
    body = json.dumps(
        {
            "level": scope.get("limiter.level"),
            "level_header": headers.get(b"x-limiter-level", b"").decode(),
            "current_level": current_level(),
            "remaining": getattr(scope.get("limiter.decision"), "remaining", None),
        }
    ).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": body})


def test_refuses_with_429_and_ietf_headers():
    mw = RateLimitMiddleware(
        app, FixedWindow(3, 60.0, clock=frozen()), key=client_ip(), policy="per-ip"
    )
    check_refusal(asgi_server, mw, "per-ip", 3, 60)


def test_client_ip_honours_trusted_proxy_header_only():
    trusting = RateLimitMiddleware(
        app, FixedWindow(1, 60.0, clock=frozen()), key=client_ip("X-Forwarded-For", hops=1)
    )
    with asgi_server(trusting) as port:
        spoofed_a = {"X-Forwarded-For": "6.6.6.6, 1.1.1.1"}
        spoofed_b = {"X-Forwarded-For": "6.6.6.6, 2.2.2.2"}
        # The client is the entry our one proxy appended (rightmost), not the spoofable left.
        assert http_get(port, headers=spoofed_a)[0] == 200
        assert http_get(port, headers={"X-Forwarded-For": "1.1.1.1"})[0] == 429
        assert http_get(port, headers=spoofed_b)[0] == 200
    # Header only trusted from 10.0.0.0/8 peers: from 127.0.0.1 it is ignored.
    distrusting = RateLimitMiddleware(
        app,
        FixedWindow(1, 60.0, clock=frozen()),
        key=client_ip("X-Forwarded-For", trusted=["10.0.0.0/8"]),
    )
    with asgi_server(distrusting) as port:
        assert http_get(port, headers={"X-Forwarded-For": "1.1.1.1"})[0] == 200
        assert http_get(port, headers={"X-Forwarded-For": "2.2.2.2"})[0] == 429


def test_header_and_route_keys():
    by_key = RateLimitMiddleware(app, FixedWindow(1, 60.0, clock=frozen()), key=header("X-Api-Key"))
    with asgi_server(by_key) as port:
        assert http_get(port, headers={"X-Api-Key": "a"})[0] == 200
        assert http_get(port, headers={"X-Api-Key": "a"})[0] == 429
        assert http_get(port, headers={"X-Api-Key": "b"})[0] == 200
    by_route = RateLimitMiddleware(app, FixedWindow(1, 60.0, clock=frozen()), key=route())
    with asgi_server(by_route) as port:
        assert http_get(port, "/a")[0] == 200
        assert http_get(port, "/a")[0] == 429
        assert http_get(port, "/b")[0] == 200


def test_degradation_level_reaches_the_app():
    mw = RateLimitMiddleware(app, TokenBucket(1000, 1000), key=everyone(), level=lambda: 2)
    with asgi_server(mw) as port:
        body = json.loads(http_get(port)[2])
    assert body == {"level": 2, "level_header": "2", "current_level": 2, "remaining": 999}
    calm = RateLimitMiddleware(app, TokenBucket(1000, 1000), key=everyone())
    with asgi_server(calm) as port:
        body = json.loads(http_get(port, headers={"X-Limiter-Level": "9"})[2])  # spoofed
    assert body["level"] == 0 and body["level_header"] == "" and body["current_level"] == 0


def test_latency_and_outcome_feedback():
    recorder = Recorder()
    mw = RateLimitMiddleware(app, TokenBucket(1000, 1000), key=everyone(), feedback=recorder)
    with asgi_server(mw) as port:
        assert http_get(port, "/slow")[0] == 200
        assert http_get(port, "/fail")[0] == 503
        assert http_get(port, "/missing")[0] == 404  # a client error says nothing
        assert http_get(port, "/boom")[0] == 500
        records = recorder.wait_for(3)
    assert [ok for _, ok in records] == [True, False, False]
    assert records[0][0] >= 0.05


def test_permits_released_on_success_and_error():
    limit = ConcurrencyLimit(2)
    mw = RateLimitMiddleware(app, limit, key=lambda request: "all")
    with asgi_server(mw) as port:
        for path in ("/", "/boom", "/fail", "/slow"):
            http_get(port, path)
        assert wait_until(lambda: limit.in_flight("all") == 0)


def test_blocking_limiter_never_blocks_the_event_loop():
    release = threading.Event()

    class SlowRemote:
        """Stands for a limiter doing network I/O: acquire blocks until released."""

        blocking = True

        def acquire(self, key, cost=1):
            assert release.wait(10), "the event loop was blocked"
            return Decision(True, 10, 9, 1.0)

    mw = RateLimitMiddleware(app, SlowRemote(), key=everyone(), exempt={"/health"})
    with asgi_server(mw) as port:
        slow = {}
        thread = threading.Thread(target=lambda: slow.update(answer=http_get(port, "/")))
        thread.start()
        # While acquire() is blocked, the same server still answers other requests.
        assert http_get(port, "/health")[0] == 200
        release.set()
        thread.join(10)
    assert slow["answer"][0] == 200


def test_fastapi_app():
    api = FastAPI()

    @api.get("/items/{item}")
    async def item(item: str, request: Request):
        return {"item": item, "level": request.scope["limiter.level"]}

    api.add_middleware(
        RateLimitMiddleware,
        limiter=FixedWindow(2, 60.0, clock=frozen()),
        key=everyone(),
        level=lambda: 1,
    )
    with asgi_server(api) as port:
        first = http_get(port, "/items/x")
        second = http_get(port, "/items/y")
        third = http_get(port, "/items/z")
    assert json.loads(first[2]) == {"item": "x", "level": 1}
    assert second[0] == 200 and third[0] == 429
    assert "ratelimit" in first[1] and "retry-after" in third[1]


def test_bad_options_are_named():
    limiter = TokenBucket(1, 1)
    with pytest.raises(InvalidParameter, match="cost"):
        RateLimitMiddleware(app, limiter, cost=0)
    with pytest.raises(InvalidParameter, match="key"):
        RateLimitMiddleware(app, limiter, key="ip")
    with pytest.raises(InvalidParameter, match="limiter"):
        RateLimitMiddleware(app, object())
    with pytest.raises(InvalidParameter, match="hops"):
        client_ip("X-Forwarded-For", hops=0)
    with pytest.raises(InvalidParameter, match="trusted"):
        client_ip("X-Forwarded-For", trusted=["not-a-network"])
    with pytest.raises(InvalidParameter, match="feedback"):
        RateLimitMiddleware(app, limiter, key=everyone(), feedback=object())
    # A keyed limiter needs its key said: per client or one for all.
    with pytest.raises(InvalidParameter, match=r"key is required.*everyone"):
        RateLimitMiddleware(app, limiter)


def test_adaptive_limiter_permits_report_themselves():
    adaptive = AdaptiveLimiter(target_latency=1.0, mode="concurrency", initial_limit=4)
    with asgi_server(RateLimitMiddleware(app, adaptive)) as port:
        for path in ("/slow", "/slow", "/missing", "/fail"):
            http_get(port, path)
        assert wait_until(lambda: len(adaptive.summary()["values"]) == 3)
    summary = adaptive.summary()
    assert adaptive.in_flight == 0 and summary["admitted"] == 4
    assert len(summary["values"]) == 3  # two successes, one 503 drop; the 404 ignored
    assert sorted(summary["values"])[-2] >= 0.05


def test_adaptive_limiter_as_feedback_of_another_limiter():
    adaptive = AdaptiveLimiter(target_latency=1.0, mode="rate", initial_limit=100)
    mw = RateLimitMiddleware(app, TokenBucket(1000, 1000), key=everyone(), feedback=adaptive)
    with asgi_server(mw) as port:
        for path in ("/slow", "/", "/missing"):
            http_get(port, path)
        assert wait_until(lambda: len(adaptive.summary()["values"]) == 2)
    values = adaptive.summary()["values"]
    assert len(values) == 2 and max(values) >= 0.05  # record(latency, ok=...) per request


async def held_app(scope, receive, send):
    """Answers after 0.3 s without ever reading the request (as many handlers do)."""
    await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"late"})


def hang_up(port: int, after: float) -> None:
    """Send a request and close the connection ``after`` seconds later, unanswered."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(after)


def test_client_that_hangs_up_is_not_a_slow_success():
    # Waited past the target (0.1 s) then left: the client gave up, a drop (inf).
    adaptive = AdaptiveLimiter(target_latency=0.1, mode="concurrency", initial_limit=4)
    with asgi_server(RateLimitMiddleware(held_app, adaptive)) as port:
        hang_up(port, 0.15)
        assert wait_until(lambda: adaptive.in_flight == 0)
    assert list(adaptive.summary()["values"]) == [math.inf]
    # Left well within the target: says nothing about load, no sample at all.
    adaptive = AdaptiveLimiter(target_latency=1.0, mode="concurrency", initial_limit=4)
    with asgi_server(RateLimitMiddleware(held_app, adaptive)) as port:
        hang_up(port, 0.05)
        assert wait_until(lambda: adaptive.in_flight == 0)
        time.sleep(0.4)  # the handler has finished by now
    assert len(adaptive.summary()["values"]) == 0
    # Answered: a success of about the handler's time.
    with asgi_server(RateLimitMiddleware(held_app, adaptive)) as port:
        assert http_get(port, "/held")[0] == 200
        assert wait_until(lambda: len(adaptive.summary()["values"]) == 1)
    assert 0.3 <= adaptive.summary()["values"][0] < 1.0


def test_request_start_header_counts_the_time_before_the_app():
    # A proxy stamped the request 0.5 s before it reached the app (nginx's t=${msec}):
    # the latency fed back includes that wait.
    adaptive = AdaptiveLimiter(target_latency=1.0, mode="concurrency", initial_limit=4)
    mw = RateLimitMiddleware(app, adaptive, started=request_start())
    with asgi_server(mw) as port:
        stamp = f"t={time.time() - 0.5:.3f}"
        assert http_get(port, "/", headers={"X-Request-Start": stamp})[0] == 200
        assert http_get(port, "/")[0] == 200  # no header: from admission
        assert wait_until(lambda: len(adaptive.summary()["values"]) == 2)
    values = sorted(adaptive.summary()["values"])
    assert values[0] < 0.2 and 0.5 <= values[1] < 1.5
    assert (
        request_start()(RequestInfo.from_scope({"headers": [(b"x-request-start", b"t=x")]})) is None
    )
    assert request_start("X-Start")(
        RequestInfo.from_scope({"headers": [(b"x-start", b"1700000000123456")]})
    ) == pytest.approx(1700000000.123456)
