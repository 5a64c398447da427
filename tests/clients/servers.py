"""Real servers on 127.0.0.1 for the client tests: uvicorn, wsgiref, gRPC."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import http_sf


@contextmanager
def asgi_server(app: Any) -> Iterator[int]:
    """Serve ``app`` with uvicorn in a thread; yields the port."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,  # the kernel picks; read back below
        log_level="warning",
        lifespan="off",
        access_log=False,
        proxy_headers=False,  # the middleware decides which forwarding headers to trust
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def wsgi_server(app: Callable) -> Iterator[int]:
    """Serve ``app`` with the stdlib's wsgiref (one thread per request); yields the port."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def http_get(
    port: int, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def check_refusal(
    server: Callable[[Any], AbstractContextManager[int]],
    app: Any,
    policy: str,
    quota: int,
    window: int,
) -> None:
    """Served by ``server``, ``app`` (a middleware over a fixed window of ``quota``
    requests) admits ``quota`` requests with the IETF RateLimit fields counting down,
    then refuses with 429 (its app never runs), the policy, the reset and Retry-After."""
    with server(app) as port:
        answers = [http_get(port) for _ in range(quota + 1)]
    policy_field = [(policy, {"q": quota, "w": window})]
    for i, (status, headers, body) in enumerate(answers[:quota]):
        assert status == 200 and headers["x-app"] == "1"
        assert _structured(headers["ratelimit-policy"]) == policy_field
        assert _structured(headers["ratelimit"])[0][1]["r"] == quota - 1 - i
        assert json.loads(body)["remaining"] == quota - 1 - i
    status, headers, body = answers[quota]
    assert status == 429 and "x-app" not in headers
    assert _structured(headers["ratelimit-policy"]) == policy_field
    (name, params) = _structured(headers["ratelimit"])[0]
    assert name == policy and params["r"] == 0 and 0 < params["t"] <= window
    assert int(headers["retry-after"]) >= params["t"]
    assert json.loads(body)["error"] == "rate_limited"


def _structured(value: str) -> Any:
    """An RFC 9651 list field, parsed."""
    return http_sf.parse(value.encode(), tltype="list")


class Recorder:
    """A feedback target that keeps what the middleware/interceptors report."""

    def __init__(self) -> None:
        self.records: list[tuple[float, bool]] = []
        self.lock = threading.Lock()

    def record(self, latency_s: float, ok: bool = True) -> None:
        with self.lock:
            self.records.append((latency_s, ok))

    def wait_for(self, n: int, timeout: float = 5.0) -> list[tuple[float, bool]]:
        deadline = time.monotonic() + timeout
        while len(self.records) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return list(self.records)


@contextmanager
def grpc_server(generic_handler: Any, interceptors: list) -> Iterator[int]:
    """A real ``grpc.server`` with ``interceptors`` on a free port; yields the port."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
    server.add_generic_rpc_handlers((generic_handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(5)


@contextmanager
def aio_grpc_server(generic_handler: Any, interceptors: list | Callable) -> Iterator[int]:
    """A real ``grpc.aio`` server, on an event loop in its own thread; yields the port."""
    import asyncio

    import grpc

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[Any, int]:
        # A factory builds interceptors inside the loop (grpc.aio clients bind to it).
        chain = interceptors() if callable(interceptors) else interceptors
        server = grpc.aio.server(interceptors=chain)
        server.add_generic_rpc_handlers((generic_handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def frozen(ns: int = 1_800_000_000 * 1_000_000_000) -> Callable[[], int]:
    """A clock stopped at the start of every minute-aligned window: fixed windows in a
    test then never roll over mid-test (which a wall clock would do now and then)."""
    return lambda: ns


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate``: a server finishes a request (releases, records) just after the
    client has read the response, so tests wait for it rather than race it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
