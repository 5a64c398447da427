"""WSGI middleware under a real threaded wsgiref server, driven over HTTP."""

from __future__ import annotations

import json
import time

import pytest
from limiter.clients.keys import client_ip, everyone, header
from limiter.clients.wsgi import RateLimitMiddleware

from limiter import ConcurrencyLimit, FixedWindow, InvalidParameter, TokenBucket
from tests.clients.servers import Recorder, check_refusal, frozen, http_get, wait_until, wsgi_server


def app(environ, start_response):
    """A bare WSGI app: echoes the level it was given; /slow, /fail, /boom misbehave."""
    path = environ["PATH_INFO"]
    if path == "/slow":
        time.sleep(0.05)
    if path == "/boom":
        raise RuntimeError("handler failed")
    status = {"/fail": "503 Service Unavailable", "/missing": "404 Not Found"}.get(path, "200 OK")
    body = json.dumps(
        {
            "level": environ.get("limiter.level"),
            "level_header": environ.get("HTTP_X_LIMITER_LEVEL", ""),
            "remaining": getattr(environ.get("limiter.decision"), "remaining", None),
        }
    ).encode()
    start_response(status, [("Content-Type", "application/json"), ("X-App", "1")])
    return [body]


def streaming_app(environ, start_response):
    """Yields its body in parts: the request ends only when the server closes it."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    for part in (b"a", b"b", b"c"):
        time.sleep(0.01)
        yield part


def test_refuses_with_429_and_ietf_headers():
    mw = RateLimitMiddleware(
        app, FixedWindow(2, 30.0, clock=frozen()), key=client_ip(), policy="per-ip"
    )
    check_refusal(wsgi_server, mw, "per-ip", 2, 30)


def test_keys_trusted_proxy_and_header():
    mw = RateLimitMiddleware(app, FixedWindow(1, 60.0, clock=frozen()), key=client_ip("X-Real-IP"))
    with wsgi_server(mw) as port:
        assert http_get(port, headers={"X-Real-IP": "1.1.1.1"})[0] == 200
        assert http_get(port, headers={"X-Real-IP": "1.1.1.1"})[0] == 429
        assert http_get(port, headers={"X-Real-IP": "2.2.2.2"})[0] == 200
        assert http_get(port)[0] == 200  # no header: the peer address is the key
    mw = RateLimitMiddleware(
        app, FixedWindow(1, 60.0, clock=frozen()), key=header("X-Api-Key", "anonymous")
    )
    with wsgi_server(mw) as port:
        assert http_get(port)[0] == 200
        assert http_get(port)[0] == 429
        assert http_get(port, headers={"X-Api-Key": "k"})[0] == 200


def test_level_in_environ_and_exempt_paths():
    mw = RateLimitMiddleware(
        app,
        FixedWindow(1, 60.0, clock=frozen()),
        key=everyone(),
        level=lambda: 3,
        exempt=["/health"],
    )
    with wsgi_server(mw) as port:
        body = json.loads(http_get(port, headers={"X-Limiter-Level": "9"})[2])  # spoofed
        assert body == {"level": 3, "level_header": "3", "remaining": 0}
        assert http_get(port)[0] == 429
        assert http_get(port, "/health")[0] == 200
    calm = RateLimitMiddleware(app, TokenBucket(1000, 1000), key=everyone())
    with wsgi_server(calm) as port:
        body = json.loads(http_get(port, headers={"X-Limiter-Level": "9"})[2])
    assert (body["level"], body["level_header"]) == (0, "")


def test_feedback_and_permit_release():
    recorder = Recorder()
    limit = ConcurrencyLimit(1)
    mw = RateLimitMiddleware(app, limit, key=lambda request: "all", feedback=recorder)
    with wsgi_server(mw) as port:
        for path in ("/slow", "/fail", "/missing", "/boom"):
            http_get(port, path)
        records = recorder.wait_for(3)
        assert wait_until(lambda: limit.in_flight("all") == 0)
    assert [ok for _, ok in records] == [True, False, False]
    assert records[0][0] >= 0.05


def test_streaming_body_holds_permit_until_closed():
    recorder = Recorder()
    limit = ConcurrencyLimit(1)
    mw = RateLimitMiddleware(streaming_app, limit, key=lambda request: "all", feedback=recorder)
    with wsgi_server(mw) as port:
        status, _, body = http_get(port)
        ((latency, ok),) = recorder.wait_for(1)
        assert wait_until(lambda: limit.in_flight("all") == 0)
    assert (status, body, ok) == (200, b"abc", True)
    assert latency >= 0.03  # measured to the end of the body, not to the first byte


def test_bad_options_are_named():
    with pytest.raises(InvalidParameter, match="exempt"):
        RateLimitMiddleware(app, TokenBucket(1, 1), exempt="/health")
    with pytest.raises(InvalidParameter, match="level"):
        RateLimitMiddleware(app, TokenBucket(1, 1), level=3)
    with pytest.raises(InvalidParameter, match="policy"):
        RateLimitMiddleware(app, TokenBucket(1, 1), policy="")
