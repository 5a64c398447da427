"""Pipelined round trips to one Redis server on the caller's own asyncio event loop.

The threaded path (``combiner`` + ``transport``) serves asyncio callers through a
flusher thread: every round trip then costs two thread hand-offs, a wake-up of the
event loop and a fight for the GIL with it. Here the Redis socket sits in the event
loop's own selector instead, so a round trip is one ``write`` and one read callback on
the loop thread, with no other thread involved.

A caller's requests go out at once when fewer than ``MAX_IN_FLIGHT`` round trips are
on the wire; otherwise they queue, and each reply sends everything queued since, in one
write. With a ``window`` (the backend's ``batch_window``) a request that finds nothing
on the wire waits that long for others first (unless ``FULL_BATCH`` are queued); the
event loop's selector counts in whole milliseconds, so on an idle loop any window
shorter than 1 ms lasts about 1 ms. Without a window, on a loop made by
``idle_loop.new_event_loop`` (the service's), requests that would go at once go when the
loop is next about to wait instead, together with whatever else arrived meanwhile.
Replies come back in order, so they are matched to requests first in, first out.
Behaviour matches ``transport.SingleServer``: every (re)connection authenticates,
selects the database and loads all scripts before anything else; NOSCRIPT is answered
by loading the script and retrying once; a timeout, a lost connection or a READONLY
reply fails everything on the wire as ``Unavailable``, trips the breaker and drops the
connection (the next request after the breaker's cooldown reconnects).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError

from limiter.backends.breaker import NodeBreakers
from limiter.backends.combiner import FULL_BATCH, Call, resolve
from limiter.backends.idle_loop import flusher_of
from limiter.backends.scripts import SCRIPTS, Script
from limiter.backends.sentinel import ask_master
from limiter.backends.transport import Command, Unavailable

# Round trips on the wire at once. One lets requests gather while a reply is on its way
# (fewer, larger script runs: Redis shares the host's CPUs with us).
MAX_IN_FLIGHT = 1


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect: TCP ``host``/``port`` (with ``tls`` if set), a Unix
    socket ``path``, or the master that the ``sentinels`` name for ``service``, asked on
    every connection."""

    host: str
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    sentinel_password: str | None = None

    def handshake(self) -> list[Command]:
        """What a new connection sends first: AUTH, SELECT, and every script."""
        first = []
        if self.password is not None:
            who = [self.username] if self.username else []
            first.append(_internal([b"AUTH", *who, self.password]))
        if self.db:
            first.append(_internal([b"SELECT", self.db]))
        return first + [_internal([b"SCRIPT", b"LOAD", s.source]) for s in SCRIPTS]


def _internal(args: list) -> Command:
    return Command(None, args, 0, [])


class Trip:
    """One write's commands (``wire``, in order) and whose calls complete with it."""

    __slots__ = ("calls", "commands", "deadline", "received", "retried", "wire")

    def __init__(self, wire: list[Command], commands: list[Command], calls: list[Call],
                 deadline: float, retried: bool = False) -> None:  # fmt: skip
        self.wire = wire
        self.commands = commands  # the requests' own commands, without internal ones
        self.calls = calls
        self.deadline = deadline
        self.received = 0
        self.retried = retried


class _Protocol(asyncio.Protocol):
    """One connection; its events reach the transport only while it is the current one."""

    def __init__(self, owner: LoopTransport) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        if self.owner.protocol is self:
            self.owner.received(self.reader, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner.protocol is self:
            self.owner.fail(Unavailable(f"connection lost: {exc or 'closed by the server'}"))


class LoopTransport:
    """Round trips of one backend on one event loop.

    ``commands_for(calls)`` builds the script runs of a batch and ``deliver(commands)``
    hands their replies to the calls: the backend's own, shared with the threaded path.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: Endpoint,
        timeout: float,
        breakers: NodeBreakers,
        commands_for: Callable[[list[Call]], list[Command]],
        deliver: Callable[[list[Command]], None],
        window: float = 0.0,
    ) -> None:
        self.loop = loop
        self.endpoint = endpoint
        self.timeout = timeout
        self.breakers = breakers
        self.commands_for = commands_for
        self.deliver = deliver
        self.protocol: _Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Task | None = None
        self.queue: list[Call] = []
        self.inflight: deque[Trip] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.trips = 0
        self.window = window
        self.waiting: asyncio.TimerHandle | None = None
        self.sentinels = list(endpoint.sentinels)  # the one that last answered first
        self.idle = flusher_of(loop)
        self.deferred = False  # a flush waits in ``idle``

    def submit(self, calls: list[Call]) -> asyncio.Future:
        """Queue ``calls``; the future completes when every one has a result or an error."""
        fut = self.loop.create_future()
        calls[-1].future = fut
        self.post(calls)
        return fut

    def post(self, calls: list[Call]) -> None:
        """Queue ``calls`` without waiting for them (lease releases)."""
        self.queue.extend(calls)
        if self.transport is None:
            if self.connecting is None:
                self.connecting = self.loop.create_task(self._connect())
        elif len(self.inflight) < MAX_IN_FLIGHT:
            if self.window > 0 and len(self.queue) < FULL_BATCH:
                if self.waiting is None:
                    self.waiting = self.loop.call_later(self.window, self._send_queue)
            else:
                self._send_soon()

    def _send_soon(self) -> None:
        """Send the queue now or, on an idle-flushing loop, when the loop is about to wait."""
        if self.idle is None or self.window > 0 or len(self.queue) >= FULL_BATCH:
            self._send_queue()
        elif not self.deferred:
            self.deferred = True
            self.idle.defer(self._flush)

    def _flush(self) -> None:
        self.deferred = False
        if self.queue and self.transport is not None and len(self.inflight) < MAX_IN_FLIGHT:
            self._send_queue()

    async def _connect(self) -> None:
        protocol = _Protocol(self)
        try:
            transport = await self._open(protocol)
        except (OSError, TimeoutError, RedisError) as exc:
            self.connecting = None
            self.fail(Unavailable(f"cannot connect to Redis: {type(exc).__name__}: {exc}"))
            return
        self.connecting = None
        self.protocol, self.transport = protocol, transport
        wire = self.endpoint.handshake()
        self._write(Trip(wire, [], [], self.loop.time() + self.timeout))
        if self.queue:
            self._send_queue()

    async def _open(self, protocol: _Protocol) -> asyncio.Transport:
        ep = self.endpoint
        if ep.path is not None:
            opening = self.loop.create_unix_connection(lambda: protocol, ep.path)
        else:
            host, port = ep.host, ep.port
            if ep.sentinels:  # the master now (after a failover, the new one)
                host, port = await ask_master(
                    self.sentinels, ep.service, ep.sentinel_password, self.timeout
                )
            opening = self.loop.create_connection(
                lambda: protocol, host, port, ssl=ep.tls,
                server_hostname=host if ep.tls is not None else None,
            )  # fmt: skip
        transport, _ = await asyncio.wait_for(opening, self.timeout)
        return transport

    def _send_queue(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
        calls, self.queue = self.queue, []
        try:
            commands = self.commands_for(calls)
        except Exception as exc:  # never strand the calls (nor raise into the idle selector)
            error = Unavailable(f"cannot encode for Redis: {type(exc).__name__}: {exc}")
            for call in calls:
                call.error = error
            resolve(calls)
            return
        self._write(Trip(commands, commands, calls, self.loop.time() + self.timeout))

    def _write(self, trip: Trip) -> None:
        self.inflight.append(trip)
        parts = [cmd.packed for cmd in trip.wire]
        self.transport.write(b"".join(parts) if len(parts) > 1 else parts[0])
        self.trips += 1
        if self.timer is None:
            self.timer = self.loop.call_at(self.inflight[0].deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        """One timer for the oldest round trip on the wire, not one per round trip."""
        self.timer = None
        if not self.inflight:
            return
        if self.inflight[0].deadline <= self.loop.time():
            self.fail(Unavailable(f"Redis did not answer within {self.timeout * 1000:g} ms"))
        else:
            self.timer = self.loop.call_at(self.inflight[0].deadline, self._check_deadline)

    def received(self, reader: Any, data: bytes) -> None:
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(Unavailable(f"bad reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if type(reply) is hiredis.ReplyError:
                reply = BaseParser.parse_error(str(reply))
            if not self.inflight:
                self.fail(Unavailable(f"unexpected reply from Redis: {reply!r:.80}"))
                return
            trip = self.inflight[0]
            trip.wire[trip.received].reply = reply
            trip.received += 1
            if trip.received == len(trip.wire):
                self.inflight.popleft()
                if not self._complete(trip):
                    return
                if self.queue and len(self.inflight) < MAX_IN_FLIGHT and self.waiting is None:
                    self._send_soon()

    def _complete(self, trip: Trip) -> bool:
        """Hand a finished round trip's replies out; False if it failed the connection."""
        for cmd in trip.wire:
            reply = cmd.reply
            if isinstance(reply, ReadOnlyError) or (not cmd.calls and isinstance(reply, Exception)):
                # A replica (after a failover), or a refused AUTH / SELECT / SCRIPT LOAD.
                self.fail(Unavailable(f"{type(reply).__name__}: {reply}"), trip)
                return False
        retry = [c for c in trip.commands if isinstance(c.reply, NoScriptError)]
        if retry and not trip.retried:  # scripts flushed since we connected: load, run again
            scripts: dict[int, Script] = {id(c.script): c.script for c in retry}
            loads = [_internal([b"SCRIPT", b"LOAD", s.source]) for s in scripts.values()]
            again = Trip(loads + retry, trip.commands, trip.calls, trip.deadline, retried=True)
            self._write(again)
            return True
        self.breakers.success()
        self.deliver(trip.commands)
        resolve(trip.calls)
        return True

    def fail(self, error: Unavailable, trip: Trip | None = None) -> None:
        """Fail every queued call and every round trip on the wire; drop the connection."""
        self._drop(error, trip)
        self.breakers.failure()

    def close(self) -> None:
        """Drop the connection (the backend is closing); calls still waiting get an error."""
        self._drop(Unavailable("the Redis backend was closed"))

    def _drop(self, error: Unavailable, trip: Trip | None = None) -> None:
        trips = list(self.inflight)
        if trip is not None:
            trips.append(trip)
        calls = [call for t in trips for call in t.calls] + self.queue
        self.inflight.clear()
        self.queue = []
        for handle in (self.waiting, self.timer):
            if handle is not None:
                handle.cancel()
        self.waiting = self.timer = None
        if self.transport is not None:
            self.transport.abort()  # reconnects on the next request
        self.transport = self.protocol = None
        for call in calls:
            call.error = error
        resolve(calls)
