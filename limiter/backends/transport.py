"""Pipelined round trips to one Redis server or to a Redis Cluster.

A ``Command`` is one script run (or a plain command); ``execute`` sends a list of
them and fills in each reply or the server's error. It raises ``Unavailable`` when
the server cannot be reached within the timeout. NOSCRIPT is answered by loading the
script and retrying; in a cluster MOVED refreshes the slot map, ASK follows the
migration with ASKING and TRYAGAIN retries briefly.
"""

from __future__ import annotations

import time
from typing import Any

from redis.cluster import RedisCluster
from redis.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    ConnectionError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from limiter.backends.scripts import Script

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


def new_connection(pool: Any) -> AbstractConnection:
    """A connection of ``pool`` (redis-py < 5.3 wants a command name, later ones refuse it)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("EVALSHA")


def _exchange(conn: AbstractConnection, commands: list[Command]) -> None:
    """Send all commands in one write, then read their replies in order."""
    data = []
    for cmd in commands:
        if cmd.ask is not None:
            data.append(b"*1\r\n$6\r\nASKING\r\n")
        data.append(cmd.packed)
    conn.send_packed_command([b"".join(data)], check_health=False)
    for cmd in commands:
        if cmd.ask is not None:
            conn.read_response()
        try:
            cmd.reply = conn.read_response()
        except ReadOnlyError:
            raise  # a replica (e.g. after a failover): reconnect, as for a lost connection
        except ResponseError as exc:
            cmd.reply = exc


def _load_missing(conn: AbstractConnection, commands: list[Command]) -> list[Command]:
    """Load the scripts that got NOSCRIPT; return those commands to retry."""
    retry = [c for c in commands if isinstance(c.reply, NoScriptError)]
    for script in {id(c.script): c.script for c in retry}.values():
        conn.send_packed_command([pack([b"SCRIPT", b"LOAD", script.source])], check_health=False)
        conn.read_response()
    return retry


class SingleServer:
    """One Redis server (given directly or found through Sentinel).

    A connection per concurrent round trip, kept for reuse (taking one from the
    client's pool on every call would cost a health probe each time).
    """

    cluster = False

    def __init__(self, client: Any) -> None:
        self.client = client
        self.free: list[AbstractConnection] = []

    def execute(self, commands: list[Command]) -> None:
        try:
            conn = self.free.pop()
        except IndexError:
            conn = new_connection(self.client.connection_pool)
        try:
            _exchange(conn, commands)
            retry = _load_missing(conn, commands)
            if retry:
                _exchange(conn, retry)
        except (ConnectionError, TimeoutError, ReadOnlyError, OSError) as exc:
            conn.disconnect()  # reconnects on next use
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.free.append(conn)

    def close(self) -> None:
        for conn in self.free:
            conn.disconnect()
        self.client.close()


class ClusterServers:
    """A Redis Cluster: commands grouped per node by slot, one pipelined write per node."""

    cluster = True

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self.free: dict[str, list[AbstractConnection]] = {}

    def _conn(self, node: Any, used: dict[str, AbstractConnection]) -> AbstractConnection:
        conn = used.get(node.name)
        if conn is None:
            try:
                conn = self.free.setdefault(node.name, []).pop()
            except IndexError:
                conn = new_connection(node.redis_connection.connection_pool)
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
                for node, cmds in by_node.values():
                    conn = self._conn(node, used)
                    _exchange(conn, cmds)
                    retry = _load_missing(conn, cmds)
                    if retry:
                        _exchange(conn, retry)
            except (ConnectionError, TimeoutError, ReadOnlyError, OSError, RedisError) as exc:
                for conn in used.values():
                    conn.disconnect()  # replies may still be on the way: start clean
                raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
            pending = self._redirected(pending)
            if not pending:
                return
        # Still redirected after several tries: those commands keep the error as their reply.

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
