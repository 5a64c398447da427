"""Overhead of the gRPC interceptors and the HTTP middleware, per request.

    python benchmarks/clients_bench.py            # full run, writes benchmarks/results/clients.md
    python benchmarks/clients_bench.py --quick    # fewer requests, for a smoke check

Every number compares the same app with and without limiter in the same run, with
the embedded engine (a token bucket per client that always admits, so the allow
path is measured, RateLimit headers included):

- end to end: a real server in a child process (grpc.server, grpc.aio, uvicorn,
  wsgiref) driven by a sequential client over loopback on one reused connection;
  requests alternate between the two variants one by one and per-request latency
  percentiles are compared, so machine noise hits both alike;
- in process: the ASGI/WSGI callable invoked the way a server invokes it, without
  a network, which isolates limiter's own cost from transport noise.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import free_port, wait_for_port  # noqa: E402

METHOD = "/bench.Echo/Call"
ALWAYS = {"rate": 1e9, "burst": 1_000_000_000}


# --- the apps under test (run in child processes) ---------------------------------


def limiter_bucket():
    from limiter import TokenBucket

    return TokenBucket(**ALWAYS)


def serve_grpc_sync(port: int, variant: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from limiter.clients import RateLimitInterceptor, by_peer

    class Noop(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Callable, details: object) -> object:
            return continuation(details)

    interceptors = {
        "plain": [],
        "noop": [Noop()],
        "gated": [RateLimitInterceptor(limiter_bucket(), key=by_peer)],
    }[variant]
    server = grpc.server(ThreadPoolExecutor(4), interceptors=interceptors)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_grpc_aio(port: int, variant: str) -> None:
    import grpc
    from limiter.clients import AioRateLimitInterceptor, by_peer

    async def echo(request: bytes, context: object) -> bytes:
        return request

    async def main() -> None:
        class Noop(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation: Callable, details: object) -> object:
                return await continuation(details)

        interceptors = {
            "plain": [],
            "noop": [Noop()],
            "gated": [AioRateLimitInterceptor(limiter_bucket(), key=by_peer)],
        }[variant]
        server = grpc.aio.server(interceptors=interceptors)
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


async def asgi_app(scope: dict, receive: Callable, send: Callable) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict, start_response: Callable) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def asgi_gated(headers: bool = True):
    from limiter.clients.asgi import RateLimitMiddleware
    from limiter.clients.keys import client_ip

    return RateLimitMiddleware(
        asgi_app, limiter_bucket(), key=client_ip(), headers_on_success=headers
    )


def wsgi_gated(headers: bool = True):
    from limiter.clients.keys import client_ip
    from limiter.clients.wsgi import RateLimitMiddleware

    return RateLimitMiddleware(
        wsgi_app, limiter_bucket(), key=client_ip(), headers_on_success=headers
    )


def serve_asgi(port: int, variant: str) -> None:
    import uvicorn

    app = asgi_app if variant == "plain" else asgi_gated(variant == "gated")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def serve_wsgi(port: int, variant: str) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Handler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def log_message(self, *args: object) -> None:
            pass

    app = wsgi_app if variant == "plain" else wsgi_gated(variant == "gated")
    make_server("127.0.0.1", port, app, WSGIServer, Handler).serve_forever()


SERVERS = {
    "grpc-sync": serve_grpc_sync,
    "grpc-aio": serve_grpc_aio,
    "asgi-uvicorn": serve_asgi,
    "wsgi-wsgiref": serve_wsgi,
}


# --- clients --------------------------------------------------------------------


class GrpcClient:
    def __init__(self, port: int) -> None:
        import grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.call = self.channel.unary_unary(METHOD)

    def one(self) -> None:
        self.call(b"x", timeout=5)

    def close(self) -> None:
        self.channel.close()


class HttpClient:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def one(self) -> None:
        self.conn.request("GET", "/items")
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"unexpected status {response.status}")

    def close(self) -> None:
        self.conn.close()


def end_to_end(kind: str, variants: tuple[str, ...], n: int) -> dict[str, list[float]]:
    """Per-request seconds for each variant ("plain", "gated", "bare": gated without
    RateLimit headers on admitted responses, "noop": a gRPC interceptor doing nothing).

    Requests rotate over the servers one by one, so a burst of load from elsewhere on
    the machine hits every variant alike; percentiles of the per-request latencies
    then compare like with like.
    """
    procs, clients = [], {}
    try:
        for variant in variants:
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--serve", kind, str(port), variant], cwd=ROOT
                )
            )
            wait_for_port(port, timeout=20)
            clients[variant] = GrpcClient(port) if kind.startswith("grpc") else HttpClient(port)
        for client in clients.values():
            for _ in range(500):  # warm up: connections, caches
                client.one()
        samples: dict[str, list[float]] = {v: [] for v in variants}
        clock = time.perf_counter
        for i in range(n):
            for j in range(len(variants)):
                variant = variants[(i + j) % len(variants)]
                client = clients[variant]
                started = clock()
                client.one()
                samples[variant].append(clock() - started)
        return samples
    finally:
        for client in clients.values():
            client.close()
        for proc in procs:
            proc.terminate()
            proc.wait(10)


# --- in-process -----------------------------------------------------------------


def asgi_in_process(n: int, rounds: int) -> tuple[float, float, float]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/items",
        "headers": [(b"host", b"example"), (b"user-agent", b"bench")],
        "client": ("10.1.2.3", 5555),
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    async def loop(app: Callable) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / n

    gated, bare = asgi_gated(), asgi_gated(headers=False)

    async def main() -> tuple[float, float, float]:
        times: list[list[float]] = [[], [], []]
        for _ in range(rounds):
            for i, app in enumerate((asgi_app, gated, bare)):
                times[i].append(await loop(app))
        return min(times[0]), min(times[1]), min(times[2])

    return asyncio.run(main())


def wsgi_in_process(n: int, rounds: int) -> tuple[float, float, float]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items",
        "SCRIPT_NAME": "",
        "REMOTE_ADDR": "10.1.2.3",
        "HTTP_HOST": "example",
    }

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        pass

    def loop(app: Callable) -> float:
        started = time.perf_counter()
        for _ in range(n):
            body = app(dict(environ), start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return (time.perf_counter() - started) / n

    gated, bare = wsgi_gated(), wsgi_gated(headers=False)
    times: list[list[float]] = [[], [], []]
    for _ in range(rounds):
        for i, app in enumerate((wsgi_app, gated, bare)):
            times[i].append(loop(app))
    return min(times[0]), min(times[1]), min(times[2])


class StandInContext:
    """The few ServicerContext methods the interceptors call on the allow path.

    Only for the in-process rows: it lets the guarded handler run without a
    transport so limiter's own CPU cost shows; the end-to-end rows use real servers.
    """

    def peer(self) -> str:
        return "ipv4:10.1.2.3:5555"

    def invocation_metadata(self) -> tuple:
        return ()

    def add_callback(self, callback: Callable) -> bool:
        return True

    def code(self) -> None:
        return None


class CallDetails:
    method = METHOD
    invocation_metadata = ()


def grpc_in_process(n: int, rounds: int) -> tuple[float, float, float, float]:
    """(plain, sync-gated, plain, aio-gated) seconds per call of the handler path."""
    import grpc
    from limiter.clients import AioRateLimitInterceptor, RateLimitInterceptor, by_peer

    context, details = StandInContext(), CallDetails()
    sync_handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    sync_gate = RateLimitInterceptor(limiter_bucket(), key=by_peer)

    def sync_loop(gated: bool) -> float:
        started = time.perf_counter()
        for _ in range(n):
            if gated:
                handler = sync_gate.intercept_service(lambda d: sync_handler, details)
            else:
                handler = sync_handler
            handler.unary_unary(b"x", context)
        return (time.perf_counter() - started) / n

    async def echo(request: bytes, context: object) -> bytes:
        return request

    aio_handler = grpc.unary_unary_rpc_method_handler(echo)
    aio_gate = AioRateLimitInterceptor(limiter_bucket(), key=by_peer)

    async def continuation(details: object) -> object:
        return aio_handler

    async def aio_loop(gated: bool) -> float:
        started = time.perf_counter()
        for _ in range(n):
            handler = await (aio_gate.intercept_service(continuation, details) if gated else
                             continuation(details))  # fmt: skip
            await handler.unary_unary(b"x", context)
        return (time.perf_counter() - started) / n

    async def aio_rounds() -> tuple[float, float]:
        plain, gated = [], []
        for _ in range(rounds):
            plain.append(await aio_loop(False))
            gated.append(await aio_loop(True))
        return min(plain), min(gated)

    sync_plain = min(sync_loop(False) for _ in range(rounds))
    sync_gated = min(sync_loop(True) for _ in range(rounds))
    return (sync_plain, sync_gated, *asyncio.run(aio_rounds()))


# --- report ---------------------------------------------------------------------


def row(name: str, plain: float, gated: float, relative: bool = True) -> str:
    overhead = gated - plain
    share = f"{overhead / plain * 100:+.1f}%" if relative else "n/a (no transport)"
    return (
        f"| {name} | {plain * 1e6:,.2f} | {gated * 1e6:,.2f} | {overhead * 1e6:+,.2f} | {share} |"
    )


TABLE = [
    "| surface | without limiter (µs/request) | with limiter (µs/request) | overhead (µs) "
    "| relative |",
    "|---|---:|---:|---:|---:|",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument(
        "--serve", nargs=3, metavar=("KIND", "PORT", "GATED"), help=argparse.SUPPRESS
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "clients.md"))
    args = parser.parse_args()
    if args.serve:
        kind, port, variant = args.serve
        SERVERS[kind](int(port), variant)
        return
    n = 2_000 if args.quick else 20_000
    reps = 20_000 if args.quick else 100_000
    p50, p90 = list(TABLE), list(TABLE)
    for kind in SERVERS:
        http = not kind.startswith("grpc")
        variants = ("plain", "gated", "bare") if http else ("plain", "gated", "noop")
        samples = end_to_end(kind, variants, n)
        ranked = {variant: sorted(times) for variant, times in samples.items()}
        for table, q in ((p50, 0.5), (p90, 0.9)):
            at = {variant: times[int(len(times) * q)] for variant, times in ranked.items()}
            table.append(row(kind, at["plain"], at["gated"]))
            if http:
                table.append(row(f"{kind}, no headers on 2xx", at["plain"], at["bare"]))
            else:
                table.append(row(f"{kind}, a no-op interceptor", at["plain"], at["noop"]))
        print(*p50[-2:], sep="\n", flush=True)
    in_process = list(TABLE)
    sync_plain, sync_gated, aio_plain, aio_gated = grpc_in_process(reps, 5)
    in_process.append(row("grpc.server interceptor", sync_plain, sync_gated, False))
    in_process.append(row("grpc.aio interceptor", aio_plain, aio_gated, False))
    for name, (plain, gated, bare) in (
        ("ASGI middleware", asgi_in_process(reps, 5)),
        ("WSGI middleware", wsgi_in_process(reps, 5)),
    ):
        in_process.append(row(name, plain, gated, False))
        in_process.append(row(f"{name}, no headers on 2xx", plain, bare, False))
    print("\n".join(in_process[2:]), flush=True)
    command = f"python benchmarks/clients_bench.py{' --quick' if args.quick else ''}"
    load = os.getloadavg()
    text = [
        "# Clients: interceptor and middleware overhead per request",
        "",
        f"`{command}` on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (other jobs shared the machine).",
        "",
        "Embedded engine: a TokenBucket keyed by the client address that always admits, so",
        "the allow path is measured, with RateLimit headers on every response (the default;",
        'rows marked "no headers on 2xx" use `headers_on_success=False`: 429s still carry them).',
        "",
        "## End to end over loopback",
        "",
        "A real server in a child process (grpc.server with 4 threads, grpc.aio, uvicorn",
        "with h11, wsgiref) and a sequential client (grpc, http.client) on one reused",
        "connection. The servers without and with limiter run side by side and requests",
        f"rotate over them one by one, so noise from elsewhere hits all alike; {n:,} requests",
        "each. Over HTTP the extra response headers cost the (pure-Python) server and client",
        "more than limiter's decision does: compare with the rows without them. For gRPC,",
        "the rows with a no-op interceptor show what grpc's own interceptor hook costs.",
        "",
        "Median (p50) request latency:",
        "",
        *p50,
        "",
        "p90 request latency:",
        "",
        *p90,
        "",
        "## In process (limiter's own CPU cost)",
        "",
        "The app called the way a server calls it (ASGI `await app(scope, receive, send)`,",
        "WSGI `app(environ, start_response)` then close, gRPC `intercept_service` then the",
        f"handler with a stand-in context), no network; best of 5 rounds of {reps:,} requests.",
        "",
        *in_process,
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
