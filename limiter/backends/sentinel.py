"""Finding the master through Redis Sentinel, the way the Sentinel client spec asks.

The spec's step 2 is ``SENTINEL GET-MASTER-ADDR-BY-NAME``: during a failover it names
the promoted replica as soon as that replica has taken the master role, while the
master's entry in ``SENTINEL MASTERS`` (what redis-py asks) keeps the old, down address
until every other replica is reconfigured. Asking the spec's way lets limiting resume
on the new master that much sooner. The spec's step 3 (is it really a master?) needs no
extra command here: every request runs a script that writes, and a replica answers it
READONLY, which drops the connection like any other failure.

A sentinel that answers moves to the front of the list (step 1), so the next
connection asks a live one first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.exceptions import ConnectionError, RedisError, ResponseError
from redis.sentinel import MasterNotFoundError, Sentinel

from limiter.backends.transport import pack


class SpecSentinel(Sentinel):
    """redis-py's ``Sentinel`` (threaded callers) with the spec's master discovery."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for i, sentinel in enumerate(self.sentinels):
            try:
                addr = sentinel.sentinel_get_master_addr_by_name(service_name)
            except RedisError as exc:  # down, slow or refusing: ask the next one
                errors.append(f"{sentinel}: {exc!r}")
                continue
            if addr:
                self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]
                return addr[0], int(addr[1])
            errors.append(f"{sentinel}: does not know {service_name!r}")
        raise MasterNotFoundError(f"no master for {service_name!r}: {'; '.join(errors)}")


async def ask_master(
    sentinels: list[tuple[str, int]], service: str, password: str | None, timeout: float
) -> tuple[str, int]:
    """The master's address from the first of ``sentinels`` that knows it, each asked
    within ``timeout`` on the running event loop; the one that answered moves first."""
    errors = []
    for i, (host, port) in enumerate(sentinels):
        try:
            addr = await asyncio.wait_for(_ask_one(host, port, service, password), timeout)
        except (OSError, TimeoutError, RedisError) as exc:
            errors.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
            continue
        sentinels[0], sentinels[i] = sentinels[i], sentinels[0]
        return addr
    raise MasterNotFoundError(f"no master for {service!r}: {'; '.join(errors)}")


async def _ask_one(host: str, port: int, service: str, password: str | None) -> tuple[str, int]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        commands = [[b"AUTH", password]] if password else []
        commands.append([b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", service])
        writer.write(b"".join(pack(c) for c in commands))
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the sentinel closed the connection")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
    finally:
        writer.close()
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
    if not replies[-1]:
        raise MasterNotFoundError(f"the sentinel does not know {service!r}")
    return replies[-1][0].decode(), int(replies[-1][1])
