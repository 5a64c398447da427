"""Pipelined round trips to one Redis server or to a Redis Cluster.

A ``Command`` is one script run (or a plain command); ``execute`` sends a list of
them and fills in each reply or the server's error. It raises ``Unavailable`` when
the server cannot be reached within the timeout. Every (re)connection loads all
scripts first, so that a batch runs in order even on a restarted server; a NOSCRIPT
all the same (SCRIPT FLUSH) is answered by loading the script and retrying. In a
cluster MOVED refreshes the slot map, ASK follows the migration with ASKING and
TRYAGAIN retries briefly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from redis.cluster import RedisCluster
from redis.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    ConnectionError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from limiter.backends.breaker import NodeBreakers
from limiter.backends.scripts import SCRIPTS, Script

MAX_REDIRECTS = 4


class Unavailable(Exception):
    """Redis did not answer in time (connection refused or lost, timeout, breaker open)."""


class Command:
    """One command: ``packed`` RESP bytes (made from ``args`` when not given) and its reply."""

    __slots__ = ("args", "ask", "calls", "packed", "reply", "script", "slot")

    def __init__(
        self, script: Script | None, args: list, slot: int, calls: list, packed: bytes = b""
    ) -> None:
        self.script = script
        self.args = args
        self.packed = packed or pack(args)
        self.slot = slot
        self.calls = calls
        self.reply: Any = None
        self.ask: tuple[str, int] | None = None


def bulk(args: list | tuple) -> bytes:
    """RESP bulk strings for ``args`` (bytes, str or int), without the array header."""
    out = []
    for a in args:
        if type(a) is int:
            a = b"%d" % a
        elif type(a) is str:
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def pack(args: list) -> bytes:
    """RESP encoding of one command (faster than the generic client for our arg types)."""
    return b"*%d\r\n" % len(args) + bulk(args)


class Connections:
    """Connections of a redis-py pool that load every script whenever they (re)connect."""

    def take(self, pool: Any) -> AbstractConnection:
        try:
            conn = pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name, later ones refuse it
            conn = pool.get_connection("EVALSHA")
        conn.register_connect_callback(self.load_scripts)
        if conn.is_connected:
            self.load_scripts(conn)  # the pool connected it before our callback was there
        return conn

    def load_scripts(self, conn: AbstractConnection) -> None:
        load = [pack([b"SCRIPT", b"LOAD", script.source]) for script in SCRIPTS]
        conn.send_packed_command([b"".join(load)], check_health=False)
        for _ in load:
            conn.read_response()


def _send(conn: AbstractConnection, commands: list[Command]) -> None:
    """Send all commands in one write."""
    if not conn.is_connected:
        # Through connect(), which a Sentinel-managed connection overrides to ask the
        # sentinels for the current master (a plain send would reconnect to the old one).
        conn.connect()
    data = []
    for cmd in commands:
        if cmd.ask is not None:
            data.append(b"*1\r\n$6\r\nASKING\r\n")
        data.append(cmd.packed)
    conn.send_packed_command([b"".join(data)], check_health=False)


def _receive(conn: AbstractConnection, commands: list[Command]) -> None:
    """Read the replies of ``commands`` in order."""
    for cmd in commands:
        if cmd.ask is not None:
            conn.read_response()
        try:
            cmd.reply = conn.read_response()
        except ReadOnlyError:
            raise  # a replica (e.g. after a failover): reconnect, as for a lost connection
        except ResponseError as exc:
            cmd.reply = exc


def _exchange(conn: AbstractConnection, commands: list[Command]) -> None:
    _send(conn, commands)
    _receive(conn, commands)


def _load_missing(conn: AbstractConnection, commands: list[Command]) -> list[Command]:
    """Load the scripts that got NOSCRIPT; return those commands to retry."""
    retry = [c for c in commands if isinstance(c.reply, NoScriptError)]
    for script in {id(c.script): c.script for c in retry}.values():
        conn.send_packed_command([pack([b"SCRIPT", b"LOAD", script.source])], check_health=False)
        conn.read_response()
    return retry


class SingleServer(Connections):
    """One Redis server (given directly or found through Sentinel).

    A connection per concurrent round trip, kept for reuse (taking one from the
    client's pool on every call would cost a health probe each time).
    """

    cluster = False

    def __init__(self, client: Any, breakers: NodeBreakers) -> None:
        self.client = client
        self.breakers = breakers
        self.free: list[AbstractConnection] = []

    def execute(self, commands: list[Command]) -> None:
        conn = None
        try:
            try:
                conn = self.free.pop()
            except IndexError:
                # Sentinel: asks the sentinels for the master first (no master: ConnectionError).
                conn = self.take(self.client.connection_pool)
            _exchange(conn, commands)
            retry = _load_missing(conn, commands)
            if retry:
                _exchange(conn, retry)
        except (ConnectionError, TimeoutError, ReadOnlyError, OSError) as exc:
            if conn is not None:
                conn.disconnect()  # reconnects on next use (through Sentinel: to the new master)
            self.breakers.failure()
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if conn is not None:
                self.free.append(conn)
        self.breakers.success()

    def close(self) -> None:
        for conn in self.free:
            conn.disconnect()
        self.client.close()


class ClusterServers(Connections):
    """A Redis Cluster: commands grouped per node by slot, one pipelined write per node.

    A node that cannot be reached fails only its own commands (their reply is
    ``Unavailable``) and opens only its own breaker; the other nodes' commands go on.
    """

    cluster = True

    def __init__(self, client: RedisCluster, breakers: NodeBreakers) -> None:
        self.client = client
        self.breakers = breakers
        self.free: dict[str, list[AbstractConnection]] = {}

    def node_name(self, slot: int) -> str:
        """The master serving ``slot`` now, as "host:port" (its breaker's name)."""
        try:
            return self.client.nodes_manager.slots_cache[slot][0].name
        except (KeyError, IndexError):
            return ""

    def _conn(self, node: Any, used: dict[str, AbstractConnection]) -> AbstractConnection:
        conn = used.get(node.name)
        if conn is None:
            try:
                conn = self.free.setdefault(node.name, []).pop()
            except IndexError:
                conn = self.take(node.redis_connection.connection_pool)
            used[node.name] = conn
        return conn

    def _node_for(self, cmd: Command) -> Any:
        manager = self.client.nodes_manager
        if cmd.ask is not None:
            node = self.client.get_node(host=cmd.ask[0], port=cmd.ask[1])
            if node is not None:
                return node
            manager.initialize()
            cmd.ask = None
        return manager.get_node_from_slot(cmd.slot)

    def execute(self, commands: list[Command]) -> None:
        used: dict[str, AbstractConnection] = {}
        try:
            self._execute(commands, used)
        finally:
            for name, conn in used.items():
                self.free.setdefault(name, []).append(conn)

    def _execute(self, commands: list[Command], used: dict[str, AbstractConnection]) -> None:
        pending = commands
        for _ in range(MAX_REDIRECTS):
            by_node: dict[str, tuple[Any, list[Command]]] = {}
            try:
                for cmd in pending:
                    node = self._node_for(cmd)
                    by_node.setdefault(node.name, (node, []))[1].append(cmd)
            except RedisError as exc:  # no slot map: no node can be told apart
                raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
            # Every node's request goes out before any reply is awaited: nodes work in
            # parallel, and a slow or dead one does not delay the others' sending.
            sent = [(n, cmds) for n, cmds in by_node.values() if self._try(n, cmds, used, _send)]
            for node, cmds in sent:
                if self._try(node, cmds, used, _receive):
                    self.breakers.success(node.name)
            pending = self._redirected(pending)
            if not pending:
                return
        # Still redirected after several tries: those commands keep the error as their reply.

    def _try(self, node: Any, cmds: list[Command], used: dict, step: Callable) -> bool:
        """One step of a node's round trip (after NOSCRIPT: the whole retry); False if the
        node failed: its commands then get ``Unavailable`` as reply and its breaker trips."""
        try:
            conn = self._conn(node, used)
            step(conn, cmds)
            if step is _receive:
                retry = _load_missing(conn, cmds)
                if retry:
                    _exchange(conn, retry)
            return True
        except (ConnectionError, TimeoutError, ReadOnlyError, OSError, RedisError) as exc:
            conn = used.pop(node.name, None)
            if conn is not None:
                conn.disconnect()  # replies may still be on the way: start clean
                self.free.setdefault(node.name, []).append(conn)
            self.breakers.failure(node.name)
            error = Unavailable(f"{node.name}: {type(exc).__name__}: {exc}")
            for cmd in cmds:
                cmd.reply = error
                cmd.ask = None
            self._refresh()
            return False

    def _refresh(self) -> None:
        """Re-read the slot map after a node failed (at most once per breaker cooldown, as
        an open breaker keeps requests away): if a replica took over the dead master's
        slots, their keys move to it and to its (closed) breaker."""
        with suppress(RedisError, RedisClusterException, OSError):  # none answers: breakers know
            self.client.nodes_manager.initialize()

    def _redirected(self, commands: list[Command]) -> list[Command]:
        retry = []
        refresh = False
        for cmd in commands:
            reply = cmd.reply
            if isinstance(reply, AskError):
                cmd.ask = (reply.host, reply.port)
                retry.append(cmd)
            elif isinstance(reply, MovedError):
                cmd.ask = None
                refresh = True
                retry.append(cmd)
            elif isinstance(reply, TryAgainError):
                retry.append(cmd)
            else:
                cmd.ask = None
        if refresh:
            try:
                self.client.nodes_manager.initialize()
            except RedisError as exc:
                raise Unavailable(f"cluster slot refresh failed: {exc}") from exc
        elif retry:
            time.sleep(0.001)  # TRYAGAIN/ASK: a migration is moving the key right now
        return retry

    def close(self) -> None:
        for conns in self.free.values():
            for conn in conns:
                conn.disconnect()
        self.client.close()
