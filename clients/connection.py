"""The SDK clients' I/O shells: one gRPC channel per client, and calls made on it.

Everything a call decides (throttling, failure mode, what the answer means) is in
the sans-I/O ``Call``; ``Connection`` (blocking) and ``AioConnection`` (asyncio)
only make the call and own the channel, so the clients built on them differ in
nothing but how they wait.
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

import grpc
from limiter.clients.policy import Call

# Quick reconnects: after the service restarts, decisions should come from it again
# within about a second, not after gRPC's default backoff of up to two minutes.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
)


def channel(target: str, options: tuple = ()) -> grpc.Channel:
    """A plain-text channel to ``target`` (``host:port``), reused for every call."""
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS + tuple(options))


def aio_channel(target: str, options: tuple = ()) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS + tuple(options))


class _Channel:
    """``target`` is ``host:port`` (the client opens and closes the channel) or an
    existing channel (which the client does not close)."""

    connect: Any

    def _open(self, target: Any) -> None:
        self._owned = isinstance(target, str)
        self.channel = self.connect(target) if self._owned else target


class Connection(_Channel):
    """Blocking shell; thread-safe."""

    blocking = True  # acquire() does network I/O: async callers run it in a thread
    connect = staticmethod(channel)

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the channel is connected (the first call then skips the handshake)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def call(self, call: Call) -> Any:
        if not call.admit():
            return call.throttled()
        try:
            response = call.rpc(call.request, timeout=call.timeout)
        except grpc.RpcError as error:
            return call.failed(error)
        return call.answered(response)

    def close(self) -> None:
        if self._owned:
            self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AioConnection(_Channel):
    """asyncio shell: create it inside the event loop that uses it (a grpc.aio
    channel is bound to one)."""

    connect = staticmethod(aio_channel)

    async def wait_ready(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    async def call(self, call: Call) -> Any:
        if not call.admit():
            return call.throttled()
        try:
            response = await call.rpc(call.request, timeout=call.timeout)
        except grpc.RpcError as error:
            return call.failed(error)
        return call.answered(response)

    async def close(self) -> None:
        if self._owned:
            await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
