"""A gRPC service behind the rate-limit interceptor, and a client that honours pushback.

    python examples/grpc_service.py           # serve on 127.0.0.1:50051 and run the demo
    python examples/grpc_service.py --serve   # only serve

The server (grpc.aio) gates every RPC with an embedded token bucket per caller
address; a refused RPC ends with RESOURCE_EXHAUSTED, google.rpc.RetryInfo and
grpc-retry-pushback-ms. The demo client sends a burst twice: without the pushback
interceptor some calls fail, with it they wait as told and all succeed.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from limiter.clients import (
    AioPushbackRetryInterceptor,
    AioRateLimitInterceptor,
    by_peer,
    current_level,
)

from limiter import TokenBucket

METHOD = "/demo.Greeter/SayHello"


async def say_hello(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    suffix = b"" if current_level() == 0 else b" (degraded)"
    return b"hello " + request + suffix


async def serve(port: int) -> tuple[grpc.aio.Server, int]:
    """The server, started, and the port it listens on (port 0: any free port)."""
    interceptor = AioRateLimitInterceptor(TokenBucket(rate=10.0, burst=5), key=by_peer)
    server = grpc.aio.server(interceptors=[interceptor])
    handler = grpc.unary_unary_rpc_method_handler(say_hello)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Greeter", {"SayHello": handler}),)
    )
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


async def burst(target: str, interceptors: list) -> tuple[int, int]:
    ok = refused = 0
    async with grpc.aio.insecure_channel(target, interceptors=interceptors) as channel:
        call = channel.unary_unary(METHOD)
        for i in range(15):
            try:
                await call(b"world %d" % i, timeout=5)
                ok += 1
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused += 1
    return ok, refused


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50051, help="0: any free port")
    parser.add_argument("--serve", action="store_true", help="serve until interrupted")
    args = parser.parse_args()
    server, port = await serve(args.port)
    if args.serve:
        await server.wait_for_termination()
        return
    target = f"127.0.0.1:{port}"
    ok, refused = await burst(target, [])
    print(f"plain client:    ok={ok} refused={refused}")
    await asyncio.sleep(1.0)  # let the bucket refill
    retrying = [AioPushbackRetryInterceptor(max_attempts=20)]
    ok, refused = await burst(target, retrying)
    print(f"pushback client: ok={ok} refused={refused}")
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
