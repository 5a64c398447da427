"""Key functions on the framework-neutral request view (ASGI scope and WSGI environ)."""

from __future__ import annotations

from limiter.clients.keys import RequestInfo, client_ip, combine, header, route


def scope(peer: str, **headers: str) -> RequestInfo:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return RequestInfo.from_scope(
        {"type": "http", "method": "POST", "path": "/a", "client": (peer, 1), "headers": raw}
    )


def environ(peer: str, **headers: str) -> RequestInfo:
    env = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "/app", "PATH_INFO": "/a"}
    env["REMOTE_ADDR"] = peer
    env.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return RequestInfo.from_environ(env)


def test_client_ip_counts_hops_from_the_right():
    two_proxies = client_ip("X-Forwarded-For", hops=2)
    for view in (scope, environ):
        request = view("10.0.0.2", x_forwarded_for="6.6.6.6, 1.2.3.4, 10.0.0.1")
        assert two_proxies(request) == "1.2.3.4"  # 10.0.0.1 is our outer proxy
        assert client_ip("X-Forwarded-For")(request) == "10.0.0.1"
        assert client_ip()(request) == "10.0.0.2"  # no header configured: the peer
        short = view("10.0.0.2", x_forwarded_for="1.2.3.4")
        assert two_proxies(short) == "1.2.3.4"
        assert two_proxies(view("10.0.0.2", x_forwarded_for=" , ")) == "10.0.0.2"


def test_trusted_networks():
    key = client_ip("X-Real-IP", trusted=["10.0.0.0/8", "::1/128"])
    assert key(scope("10.9.9.9", x_real_ip="1.2.3.4")) == "1.2.3.4"
    assert key(scope("::1", x_real_ip="1.2.3.4")) == "1.2.3.4"
    assert key(scope("8.8.8.8", x_real_ip="1.2.3.4")) == "8.8.8.8"
    assert key(scope("not-an-ip", x_real_ip="1.2.3.4")) == "not-an-ip"


def test_header_route_and_combine():
    for view in (scope, environ):
        request = view("10.0.0.2", x_api_key="k1")
        assert header("X-Api-Key")(request) == "k1"
        assert header("X-Other", "none")(request) == "none"
        assert combine(route(), header("x-api-key"))(request).endswith("/a|k1")
    assert route()(scope("1.1.1.1")) == "POST /a"
    assert route(method=False)(environ("1.1.1.1")) == "/app/a"
    repeated = RequestInfo.from_scope(
        {"client": ("1.1.1.1", 1), "headers": [(b"x-tag", b"a"), (b"X-Tag", b"b")]}
    )
    assert repeated.header("x-tag") == "a, b"
