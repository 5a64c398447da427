"""The middleware report each request's outcome to the decision service when their
limiter is its SDK client: with the request's key and status, a mostly-4xx key is
blocked there and a key whose requests fail opens its rule's breaker, and the middleware
then refuses that key while the others pass (a real ``limiter serve``, real servers); the
gRPC interceptors report the key of failing calls the same way."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from limiter.clients import LimiterClient
from limiter.clients.asgi import RateLimitMiddleware as AsgiMiddleware
from limiter.clients.interceptors import RateLimitInterceptor, by_metadata
from limiter.clients.keys import header
from limiter.clients.wsgi import RateLimitMiddleware as WsgiMiddleware

from tests.clients import test_asgi, test_interceptors, test_wsgi
from tests.clients.conftest import LimiterService
from tests.clients.servers import asgi_server, grpc_server, http_get, wsgi_server

RULES = """\
domain: mw
descriptors:
  - key: user
    rate_limit:
      name: per-user
      unit: hour
      requests_per_unit: 100000
      breaker: {dependency: app, partition: user}
---
breakers:
  app: {minimum_calls: 5, failure_ratio: 0.5, open_for: 60}
shedding:
  abnormal: {min_responses: 5, error_ratio: 0.5, burst: 1000000, cooldown: 60}
"""
SERVERS = {
    "asgi": (asgi_server, AsgiMiddleware, test_asgi.app),
    "wsgi": (wsgi_server, WsgiMiddleware, test_wsgi.app),
}


@pytest.fixture(scope="module")
def service() -> Iterator[LimiterService]:
    server = LimiterService(RULES).start()
    yield server
    server.stop()


def until_refused(port: int, path: str, key: str, timeout: float = 30.0) -> list[int]:
    """Statuses of requests by ``key`` up to the first 429 (observations go in batches,
    so the service learns of the last requests only with the next ones)."""
    statuses: list[int] = []
    deadline = time.monotonic() + timeout
    while not statuses or statuses[-1] != 429:
        assert time.monotonic() < deadline, statuses
        statuses.append(http_get(port, path, {"X-Api-Key": key})[0])
        time.sleep(0.02)
    return statuses


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_middleware_reports_key_and_status_to_the_service(
    service: LimiterService, kind: str
) -> None:
    serve, middleware, app = SERVERS[kind]
    with LimiterClient(service.target, "mw", rule="per-user", timeout=5) as client:
        wrapped = middleware(app, client, key=header("X-Api-Key"))
        with serve(wrapped) as port:
            missing = until_refused(port, "/missing", f"{kind}-mallory")
            assert len(missing) > 5 and set(missing[:-1]) == {404}, missing
            failing = until_refused(port, "/fail", f"{kind}-bob")
            assert len(failing) > 5 and set(failing[:-1]) == {503}, failing
            assert http_get(port, "/", {"X-Api-Key": f"{kind}-alice"})[0] == 200
    blocked, broken, fine = client_decisions(service, kind)
    assert not blocked.allowed and not broken.allowed and fine.allowed


def client_decisions(service: LimiterService, kind: str) -> list[object]:
    with LimiterClient(service.target, "mw", rule="per-user", timeout=5) as client:
        return [client.decide(f"{kind}-{who}") for who in ("mallory", "bob", "alice")]


def test_interceptor_reports_the_key_of_failing_calls_to_its_rules_breaker(
    service: LimiterService,
) -> None:
    echo = test_interceptors.SyncEcho()
    with LimiterClient(service.target, "mw", rule="per-user", timeout=5) as client:
        interceptor = RateLimitInterceptor(client, key=by_metadata("x-api-key"))
        with (
            grpc_server(echo.handler(), [interceptor]) as port,
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            unary = channel.unary_unary(test_interceptors.UNARY)
            codes: list[grpc.StatusCode] = []
            deadline = time.monotonic() + 30
            # UNAVAILABLE is a failure of the backend: the key's breaker opens, and the
            # interceptor refuses the key (RESOURCE_EXHAUSTED) while another key passes.
            while not codes or codes[-1] != grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert time.monotonic() < deadline, codes
                try:
                    unary(b"unavailable", metadata=[("x-api-key", "grpc-bob")], timeout=5)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                time.sleep(0.02)
            assert len(codes) > 5 and set(codes[:-1]) == {grpc.StatusCode.UNAVAILABLE}, codes
            assert unary(b"x", metadata=[("x-api-key", "grpc-alice")], timeout=5).startswith(
                b"level="
            )
    _, bob, alice = client_decisions(service, "grpc")
    assert not bob.allowed and alice.allowed
