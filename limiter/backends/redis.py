"""Redis backend: limiter state shared by every process that names the same Redis.

Each decision is one atomic Lua script run on the Redis server, timed by the server's
clock. Concurrent decisions are batched into one pipelined round trip (``combiner``),
refusals are remembered locally until they expire (``overlimit``), and a breaker per
Redis node fails the keys that node serves within microseconds while it is down.
A store never decides what a failure means: it answers the exception in place of the
Decision, and the caller applies its failure mode (``limiter.failure``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import ssl
import threading
from dataclasses import dataclass, replace
from time import monotonic_ns
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from weakref import WeakKeyDictionary

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry
from redis.sentinel import SentinelManagedConnection

from limiter._core import Decision
from limiter.backends import REDIS_SCHEMES
from limiter.backends.algorithms import Codec, codec_for
from limiter.backends.base import Spec
from limiter.backends.breaker import NodeBreakers
from limiter.backends.combiner import Call, Combiner
from limiter.backends.keys import hash_tag
from limiter.backends.loop_transport import Endpoint, LoopTransport
from limiter.backends.overlimit import OverLimitCache
from limiter.backends.scripts import LEASE_RELEASE
from limiter.backends.sentinel import SpecSentinel
from limiter.backends.transport import ClusterServers, Command, SingleServer, Unavailable, bulk
from limiter.errors import ConfigError, InvalidParameter

log = logging.getLogger("limiter.backends.redis")

MAX_KEYS_PER_SCRIPT = 256
KEY_CACHE_SIZE = 10_000
# Failed requests are logged at most once per this many seconds, with how many failed
# since the last line: a stalled Redis (a timeout per check) costs a line, not a flood.
FAILURE_LOG_INTERVAL = 5.0
# Failures we turn into the rule's failure mode; anything else is a bug and propagates.
REDIS_FAULTS = (Unavailable, RedisError, RedisClusterException, OSError)
BREAKER_OPEN = Unavailable("circuit breaker open")


@dataclass(frozen=True)
class RuleOptions:
    """Per-rule behaviour; the connection is shared by all rules of a backend."""

    local_cache: bool = True  # answer known refusals locally until they expire
    lease_ttl: float = 60.0  # seconds a concurrency lease lives unless released

    def __post_init__(self) -> None:
        if not isinstance(self.local_cache, bool):
            raise InvalidParameter(f"local_cache must be a bool, got {self.local_cache!r}")
        lease_ok = isinstance(self.lease_ttl, (int, float)) and not isinstance(self.lease_ttl, bool)
        if not lease_ok or not 0.001 <= self.lease_ttl <= 86400 * 366:
            raise InvalidParameter(
                f"lease_ttl must be seconds in [0.001, 31622400], got {self.lease_ttl!r}"
            )


def masked(url: str) -> str:
    """The URL with any password hidden, for error messages and logs."""
    return re.sub(r"//([^@/]*)@", lambda m: "//" + m.group(1).split(":")[0] + ":***@", url)


def _bool(name: str, text: str, url: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {text!r} in {masked(url)}")


def _float(name: str, text: str, url: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r} in {masked(url)}") from None


# Connection settings the event-loop connection honours; any other (RESP3, client name,
# keep-alive, OCSP...) keeps asyncio callers on redis-py's connections.
LOOP_SETTINGS = {"host", "port", "path", "db", "username", "password", "socket_timeout",
                 "socket_connect_timeout", "retry", "health_check_interval", "ssl_keyfile",
                 "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data",
                 "ssl_check_hostname", "ssl_password", "ssl_min_version", "ssl_ciphers",
                 "ssl_include_verify_flags", "ssl_exclude_verify_flags"}  # fmt: skip
LOOP_CONNECTIONS = (
    Connection,
    UnixDomainSocketConnection,
    SSLConnection,
    SentinelManagedConnection,
)


def _endpoint(client: redis.Redis, sentinels: dict[str, Any] | None = None) -> Endpoint | None:
    """Where the event-loop connection of a plain, TLS, Unix-socket or (with ``sentinels``:
    their addresses, the service and their password) Sentinel-managed client goes."""
    pool = client.connection_pool
    if pool.connection_class not in LOOP_CONNECTIONS:
        return None
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if v is not None}
    ignored = {"connection_pool"}  # a Sentinel-managed connection's way back to its pool
    ignored.update(k for k in kwargs if k.startswith(("orig_", "maint_notifications", "himport")))
    if set(kwargs) - ignored - LOOP_SETTINGS:
        return None
    if "path" not in kwargs and "host" not in kwargs and not sentinels:
        return None
    tls = None
    if pool.connection_class is SSLConnection:
        tls = _tls_context(pool.connection_class(**pool.connection_kwargs))
    return Endpoint(host=kwargs.get("host", ""), port=int(kwargs.get("port", 6379)),
                    path=kwargs.get("path"), db=int(kwargs.get("db", 0)),
                    username=kwargs.get("username"), password=kwargs.get("password"),
                    tls=tls, **(sentinels or {}))  # fmt: skip


def _tls_context(conn: SSLConnection) -> ssl.SSLContext:
    """The context redis-py would wrap its socket with, from the same settings."""
    context = ssl.create_default_context()
    context.check_hostname = conn.check_hostname
    context.verify_mode = conn.cert_reqs
    for flag in conn.ssl_include_verify_flags or ():
        context.verify_flags |= flag
    for flag in conn.ssl_exclude_verify_flags or ():
        context.verify_flags &= ~flag
    if conn.certfile or conn.keyfile:
        context.load_cert_chain(conn.certfile, conn.keyfile, conn.certificate_password)
    if conn.ca_certs is not None or conn.ca_path is not None or conn.ca_data is not None:
        context.load_verify_locations(conn.ca_certs, conn.ca_path, conn.ca_data)
    if conn.ssl_min_version is not None:
        context.minimum_version = conn.ssl_min_version
    if conn.ssl_ciphers:
        context.set_ciphers(conn.ssl_ciphers)
    return context


def _hosts(netloc: str, url: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", str(default_port))
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ConfigError(f"bad host:port {part!r} in Redis URL {masked(url)}")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


class RedisBackend:
    """Shared state in Redis (standalone, Sentinel or Cluster), selected by URL.

    ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS; ``ssl_*`` query
    options as in redis-py), ``unix:///path.sock``, ``redis+cluster://h1:p1,h2:p2``,
    ``redis+sentinel://h1:p1,h2:p2/service[/db]`` (``rediss+`` for TLS). Query
    options: ``timeout`` (s, default 0.02), ``prefix``, ``breaker_cooldown`` (s),
    ``batch_window`` (s), ``require_at_start``, and the per-rule defaults
    ``local_cache``, ``lease_ttl``; keyword arguments override them.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        timeout: float | None = None,
        prefix: str | None = None,
        breaker_cooldown: float | None = None,
        batch_window: float | None = None,
        require_at_start: bool | None = None,
        local_cache: bool | None = None,
        lease_ttl: float | None = None,
        **redis_options: Any,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise InvalidParameter(f"backend URL must look like redis://host:port/db: {url!r:.80}")
        self.url = url
        scheme = url.partition("://")[0]
        if scheme not in REDIS_SCHEMES:
            raise InvalidParameter(f"backend URL scheme {scheme!r} is not supported: {masked(url)}")
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        own = {k: query.pop(k) for k in list(query) if k in OPTION_NAMES}
        given = {
            "timeout": timeout, "prefix": prefix, "breaker_cooldown": breaker_cooldown,
            "batch_window": batch_window, "require_at_start": require_at_start,
            "local_cache": local_cache, "lease_ttl": lease_ttl,
        }  # fmt: skip
        opts = {k: v for k, v in given.items() if v is not None}
        for name, text in own.items():
            opts.setdefault(name, OPTION_NAMES[name](name, text, url))
        self.timeout = float(opts.get("timeout", 0.02))
        if not 0 < self.timeout <= 60:
            raise InvalidParameter(f"timeout must be seconds in (0, 60], got {self.timeout!r}")
        self.prefix = str(opts.get("prefix", "limiter:")).encode()
        if b"{" in self.prefix or b"}" in self.prefix:
            raise InvalidParameter(f"prefix must not contain braces, got {self.prefix!r}")
        self.defaults = RuleOptions(
            local_cache=opts.get("local_cache", True),
            lease_ttl=opts.get("lease_ttl", 60.0),
        )
        self.breaker = NodeBreakers("redis", float(opts.get("breaker_cooldown", 0.2)))
        self.unlogged = 0  # failures since the last line about them
        self.logged_at = -(10**18)
        self.combiner = Combiner(self._flush, float(opts.get("batch_window", 0.0)))
        self.lease_ids = itertools.count()
        self.lease_prefix = os.urandom(6).hex().encode() + b"-"
        self.cluster = scheme.endswith("+cluster")
        # Only the query changes (geturl() would drop the empty host of unix:///path).
        base = url.partition("?")[0].partition("#")[0]
        rebuilt = f"{base}?{urlencode(query)}" if query else base
        self.connect_args = (scheme, rebuilt, redis_options)
        self.transport: Any = None  # connected on first use when Redis was away at start
        # Set for one server (TCP, TLS, Unix socket, or Sentinel's master; not Cluster): asyncio
        # callers then get a connection on their own event loop (``loop_transport``).
        self.endpoint: Endpoint | None = None
        self.loop_transports: WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTransport] = (
            WeakKeyDictionary()
        )
        try:
            self.transport = self._connect(*self.connect_args)
            if opts.get("require_at_start", True):
                self._ping_at_start()
        except (RedisError, RedisClusterException, OSError, Unavailable) as exc:
            if opts.get("require_at_start", True):
                raise ConfigError(f"Redis backend {masked(url)} is unreachable: {exc}") from exc
            self.breaker.failure()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad Redis URL {masked(url)}: {exc}") from exc

    def _connect(self, scheme: str, url: str, options: dict) -> Any:
        common = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            **options,
        }
        parts = urlsplit(url)
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        query = dict(parse_qsl(parts.query))
        tls = scheme.startswith("rediss") or _bool("ssl", query.pop("ssl", "false"), url)
        if scheme.endswith("+cluster"):
            nodes = [ClusterNode(h, p) for h, p in _hosts(parts.netloc, url, 6379)]
            client = RedisCluster(
                startup_nodes=nodes, username=user, password=password, ssl=tls, **query, **common
            )
            return ClusterServers(client, self.breaker)
        if scheme.endswith("+sentinel"):
            path = [p for p in parts.path.split("/") if p]
            if not path:
                raise ConfigError(f"Sentinel URL needs a service name: {masked(url)}")
            db = int(path[1]) if len(path) > 1 else 0
            sentinel_kwargs = {"socket_timeout": self.timeout}
            if "sentinel_password" in query:
                sentinel_kwargs["password"] = query.pop("sentinel_password")
            sentinel = SpecSentinel(
                _hosts(parts.netloc, url, 26379), sentinel_kwargs=sentinel_kwargs, **common
            )
            master = sentinel.master_for(
                path[0], username=user, password=password, db=db, ssl=tls, **query, **common
            )
            if not tls:
                self.endpoint = _endpoint(master, {
                    "sentinels": tuple(_hosts(parts.netloc, url, 26379)), "service": path[0],
                    "sentinel_password": sentinel_kwargs.get("password"),
                })  # fmt: skip
            return SingleServer(master, self.breaker)
        client = redis.Redis.from_url(url, **common)
        self.endpoint = _endpoint(client)
        return SingleServer(client, self.breaker)

    def _transport(self) -> Any:
        if self.transport is None:
            try:
                self.transport = self._connect(*self.connect_args)
            except (RedisError, RedisClusterException, OSError) as exc:
                raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
            self.breaker.success()  # the breaker of a Redis away at start
        return self.transport

    def failed(self, exc: BaseException) -> None:
        """Note a failed request: logged now if no failure was for a while, else counted
        into the next line (see ``FAILURE_LOG_INTERVAL``)."""
        self.unlogged += 1
        now = monotonic_ns()
        if now - self.logged_at < FAILURE_LOG_INTERVAL * 1e9:
            return
        self.logged_at = now
        failures, self.unlogged = self.unlogged, 0
        log.warning(
            "Redis requests failing; answered per each rule's failure_mode",
            extra={"fields": {"redis": masked(self.url), "failures": failures,
                              "error": f"{type(exc).__name__}: {exc}"[:200]}},
        )  # fmt: skip

    def run_ids(self) -> dict[str, str]:
        """Each Redis server's run id (``INFO server``), by node: a new one means the
        server restarted (raises a Redis fault when it cannot be asked)."""
        transport = self._transport()
        client = transport.client
        if isinstance(transport, ClusterServers):
            return {
                node.name: client.info("server", target_nodes=node)["run_id"]
                for node in client.get_primaries()
            }
        return {"": client.info("server")["run_id"]}

    def allow(self, slot: int) -> bool:
        """May a request for ``slot`` go to Redis now? Asks the breaker of the slot's node."""
        if self.cluster and self.transport is not None:
            return self.breaker.node(self.transport.node_name(slot)).allow()
        return self.breaker.main.allow()

    def ping(self) -> None:
        """Raise ``Unavailable`` unless every Redis node answers (one round trip)."""
        if isinstance(self._transport(), ClusterServers):
            self.transport.client.ping(target_nodes=RedisCluster.PRIMARIES)
            return
        cmd = Command(None, [b"PING"], 0, [])
        self._transport().execute([cmd])
        if isinstance(cmd.reply, Exception):
            raise Unavailable(str(cmd.reply))

    def _ping_at_start(self) -> None:
        """A few tries: a busy machine may miss one short timeout; a dead server fails fast."""
        for attempt in range(3):
            try:
                self.ping()
                return
            except (Unavailable, RedisError) as exc:
                if attempt == 2 or "refused" in str(exc).lower():
                    raise

    def bind(self, spec: Spec, **options: Any) -> RedisBound:
        """The store deciding ``spec`` for any key; ``options`` override the ``RuleOptions``
        defaults (``local_cache``, ``lease_ttl``) for this binding."""
        unknown = set(options) - set(RuleOptions.__dataclass_fields__)
        if unknown:
            raise InvalidParameter(f"unknown rule option(s) {sorted(unknown)}; known: "
                                   f"{sorted(RuleOptions.__dataclass_fields__)}")  # fmt: skip
        return RedisBound(self, spec, replace(self.defaults, **options))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for loop, transport in list(self.loop_transports.items()):
            if not loop.is_closed():  # a closed loop's sockets close when it is collected
                loop.call_soon_threadsafe(transport.close)
        self.loop_transports.clear()

    def _commands(self, calls: list[Call]) -> list[Command]:
        """One script run per (algorithm, slot) for up to MAX_KEYS_PER_SCRIPT requests."""
        groups: dict[tuple[Any, int], list[Call]] = {}
        for call in calls:
            groups.setdefault((call.group, call.slot), []).append(call)
        commands = []
        for (group, slot), members in groups.items():
            if not isinstance(group, Codec):
                commands.extend(Command(c.group, list(c.args), slot, [c]) for c in members)
                continue
            for i in range(0, len(members), MAX_KEYS_PER_SCRIPT):
                commands.append(_script_run(group, members[i : i + MAX_KEYS_PER_SCRIPT]))
        return commands

    def _commands_for(self, calls: list[Call]) -> list[Command]:
        group, slot = calls[0].group, calls[0].slot
        for call in calls:  # usually one algorithm and one slot: no grouping needed
            if call.group is not group or call.slot != slot:
                return self._commands(calls)
        if isinstance(group, Codec) and len(calls) <= MAX_KEYS_PER_SCRIPT:
            return [_script_run(group, calls)]
        return self._commands(calls)

    def _flush(self, calls: list[Call]) -> None:
        commands = self._commands_for(calls)
        try:
            transport = self._transport()
        except Unavailable as exc:
            self.breaker.failure()
            for call in calls:
                call.error = exc
            return
        try:
            transport.execute(commands)  # tells each node's breaker how its round trip went
        except Unavailable as exc:
            for call in calls:
                call.error = exc
            return
        _deliver(commands)

    def run(self, calls: list[Call]) -> None:
        """Decide ``calls`` in one (shared) round trip; errors are left on the calls."""
        self.combiner.run(calls)

    async def run_async(self, calls: list[Call]) -> None:
        loop = asyncio.get_running_loop()
        if self.endpoint is None:
            await self.combiner.submit(calls, loop)
        else:
            await self._on_loop(loop).submit(calls)

    def post(self, calls: list[Call]) -> None:
        """Send ``calls`` without waiting: on the running event loop's connection if
        there is one (after that loop's earlier requests), else through the combiner."""
        if self.endpoint is not None:
            loop = asyncio._get_running_loop()
            if loop is not None:
                self._on_loop(loop).post(calls)
                return
        self.combiner.post(calls)

    def _on_loop(self, loop: asyncio.AbstractEventLoop) -> LoopTransport:
        """This event loop's own connection (one per loop, made on first use)."""
        found = self.loop_transports.get(loop)
        if found is None:
            found = self.loop_transports[loop] = LoopTransport(
                loop,
                self.endpoint,
                self.timeout,
                self.breaker,
                self._commands_for,
                _deliver,
                self.combiner.window,
            )
        return found


def _deliver(commands: list[Command]) -> None:
    """Hand each command's reply (or error) to the calls it decided."""
    for cmd in commands:
        reply = cmd.reply
        if isinstance(reply, Exception):
            for call in cmd.calls:
                call.error = reply
        elif cmd.script is None or not isinstance(cmd.calls[0].group, Codec):
            cmd.calls[0].result = reply
        else:
            offset = 1
            for call in cmd.calls:
                call.result = reply
                call.offset = offset
                offset += call.width


def _script_run(codec: Codec, calls: list[Call]) -> Command:
    """One EVALSHA deciding every call in ``calls`` (same algorithm, same slot)."""
    nkeys = codec.keys_per_request * len(calls)
    count, head = codec.packed_head(nkeys)
    n = count + nkeys + codec.args_per_request * len(calls)
    keys = b"".join([c.keys for c in calls])
    args = b"".join([c.args for c in calls])
    packed = b"*%d\r\n%s%s%s%s" % (n, head, keys, codec.packed_shared, args)
    return Command(codec.script, [], calls[0].slot, calls, packed)


class RedisBound:
    """One algorithm with fixed parameters, deciding for any key through Redis.

    Rate algorithms: ``decide``/``decide_async`` -> Decision, ``decide_batch``/
    ``decide_batch_async`` -> list, ``reset``; concurrency: ``lease``/``lease_async`` ->
    (Decision, lease id or None), ``release(key, cost, lease)`` and ``in_flight``. Keys
    and costs arrive validated. A Redis fault is answered as the exception itself in
    place of the Decision (counted in ``failures``, kept in ``last_error``); anything
    else is a bug and propagates.
    """

    def __init__(self, backend: RedisBackend, spec: Spec, options: RuleOptions) -> None:
        self.backend = backend
        self.spec = spec
        self.options = options
        self.codec = codec_for(spec, backend.prefix, int(options.lease_ttl * 1e6))
        self.limit = spec.limit
        self.cluster = backend.cluster
        rate = spec.algorithm != "concurrency"
        self.cache = OverLimitCache() if options.local_cache and rate else None
        self.key_cache: dict[str, tuple[tuple[bytes, ...], int, bytes]] = {}
        self.failures = 0
        self.last_error: BaseException | None = None
        self.last_server_time_ns = 0  # server clock at the last decision (for tests and logs)

    @property
    def retry_after(self) -> float:
        """Seconds until a failed node is tried again (what a refusal on failure says)."""
        return self.backend.breaker.cooldown

    def reserving(self, reserve: int) -> RedisBound:
        """The same algorithm on the same keys, leaving ``reserve`` units of the limit
        untouched (see ``Spec.reserve``)."""
        return RedisBound(self.backend, replace(self.spec, reserve=reserve), self.options)

    def _keys(self, key: str) -> tuple[tuple[bytes, ...], int, bytes]:
        """Redis keys, cluster slot and RESP-encoded keys of a user key (memoised)."""
        found = self.key_cache.get(key)
        if found is None:
            if len(self.key_cache) >= KEY_CACHE_SIZE:
                self.key_cache.clear()
            keys = self.codec.keys(hash_tag(key))
            slot = key_slot(keys[0]) if self.cluster else 0
            found = self.key_cache[key] = (keys, slot, bulk(keys))
        return found

    def _call(self, key: str, cost: int, lease: bytes = b"") -> Call:
        """A script request; ``keys``/``args`` travel RESP-encoded, ready to concatenate."""
        codec = self.codec
        _, slot, packed_keys = self._keys(key)
        return Call(codec, packed_keys, codec.packed_args(cost, lease), codec.reply_width, slot)

    def _failed(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, REDIS_FAULTS):
            raise exc
        self.failures += 1
        self.last_error = exc
        self.backend.failed(exc)
        return exc

    def _decode(self, key: str, cost: int, call: Call, sent_ns: int) -> Decision | BaseException:
        if call.error is not None:
            return self._failed(call.error)
        reply = call.result
        self.last_server_time_ns = reply[0] * 1000
        d = self.codec.decode(reply[0], reply, call.offset, cost)
        if not d.allowed and self.cache is not None:
            self.cache.put(key, cost, sent_ns, d)
        return d

    def decide(self, key: str, cost: int) -> Decision | BaseException:
        """One decision (blocks the calling thread for the round trip)."""
        if self.cache is not None:
            hit = self.cache.get(key, cost)
            if hit is not None:
                return hit
        call = self._call(key, cost)
        if not self.backend.allow(call.slot):
            return self._failed(BREAKER_OPEN)
        sent = monotonic_ns()
        self.backend.combiner.run([call])
        return self._decode(key, cost, call, sent)

    async def decide_async(self, key: str, cost: int) -> Decision | BaseException:
        """One decision, awaited (asyncio callers)."""
        if self.cache is not None:
            hit = self.cache.get(key, cost)
            if hit is not None:
                return hit
        call = self._call(key, cost)
        if not self.backend.allow(call.slot):
            return self._failed(BREAKER_OPEN)
        sent = monotonic_ns()
        await self.backend.run_async([call])
        return self._decode(key, cost, call, sent)

    def decide_batch(self, keys: Any, costs: Any) -> list[Decision | BaseException]:
        """Many decisions in order, in one round trip (blocking)."""
        out, calls = self._batch(keys, costs)
        if calls:
            sent = monotonic_ns()
            self.backend.run([call for _, call in calls])
            for i, call in calls:
                out[i] = self._decode(keys[i], costs[i], call, sent)
        return out

    async def decide_batch_async(self, keys: Any, costs: Any) -> list[Decision | BaseException]:
        """``decide_batch`` for asyncio callers: one round trip, awaited."""
        out, calls = self._batch(keys, costs)
        if calls:
            sent = monotonic_ns()
            await self.backend.run_async([call for _, call in calls])
            for i, call in calls:
                out[i] = self._decode(keys[i], costs[i], call, sent)
        return out

    def _batch(self, keys: Any, costs: Any) -> tuple[list[Any], list[tuple[int, Call]]]:
        """Answers known without Redis (cached refusals, open breaker) and the calls to send.

        Each node's breaker is asked once per batch: the batch is one round trip to it (so,
        half-open, one probe carries all of the batch's checks for that node)."""
        n = len(keys)
        out: list[Any] = [None] * n
        allow = self.backend.allow
        allowed: dict[int, bool] = {}
        cache = self.cache
        calls = []
        for i in range(n):
            hit = cache.get(keys[i], costs[i]) if cache is not None else None
            if hit is not None:
                out[i] = hit
                continue
            call = self._call(keys[i], costs[i])
            ok = allowed.get(call.slot)
            if ok is None:
                ok = allowed[call.slot] = allow(call.slot)
            if ok:
                calls.append((i, call))
            else:
                out[i] = self._failed(BREAKER_OPEN)
        return out, calls

    def reset(self, key: str) -> None:
        """Forget ``key``'s shared state (best effort when Redis is down)."""
        if self.cache is not None:
            self.cache.discard(key)
        keys, slot, _ = self._keys(key)
        call = Call(None, (), (b"DEL", *keys), 0, slot)
        if self.backend.allow(slot):
            self.backend.run([call])

    # Concurrency: leases live in Redis until released or expired.

    def _lease_id(self) -> bytes:
        return self.backend.lease_prefix + b"%d" % next(self.backend.lease_ids)

    def _lease_result(
        self, key: str, cost: int, call: Call, lease: bytes
    ) -> tuple[Decision, bytes | None] | BaseException:
        d = self._decode(key, cost, call, 0)
        if not isinstance(d, Decision):
            return d
        return d, (lease if d.allowed else None)

    def lease(self, key: str, cost: int) -> tuple[Decision, bytes | None] | BaseException:
        """Take ``cost`` slots under a new lease (blocking): (Decision, lease id if allowed)."""
        lease = self._lease_id()
        call = self._call(key, cost, lease)
        if not self.backend.allow(call.slot):
            return self._failed(BREAKER_OPEN)
        self.backend.run([call])
        return self._lease_result(key, cost, call, lease)

    async def lease_async(
        self, key: str, cost: int
    ) -> tuple[Decision, bytes | None] | BaseException:
        """``lease`` for asyncio callers."""
        lease = self._lease_id()
        call = self._call(key, cost, lease)
        if not self.backend.allow(call.slot):
            return self._failed(BREAKER_OPEN)
        await self.backend.run_async([call])
        return self._lease_result(key, cost, call, lease)

    def release(self, key: str, cost: int, lease: bytes) -> None:
        """Give a lease back (without waiting); a lost release only means the lease expires."""
        keys, slot, _ = self._keys(key)
        args = (b"EVALSHA", LEASE_RELEASE.sha, 2, *keys, cost, lease)
        if self.backend.allow(slot):
            # Posted, not awaited: it precedes this thread's next request in the queue, and a
            # permit's finaliser may run anywhere, even inside a round trip of this thread.
            self.backend.post([Call(LEASE_RELEASE, (), args, 0, slot)])

    def in_flight(self, key: str) -> int:
        """Units held under ``key`` by live leases (0 when Redis cannot be asked)."""
        call = self._call(key, 0, b"")
        if not self.backend.allow(call.slot):
            return 0
        self.backend.run([call])
        if call.error is not None:
            return 0
        return call.result[call.offset + 1]


OPTION_NAMES = {
    "timeout": _float,
    "prefix": lambda name, text, url: text,
    "breaker_cooldown": _float,
    "batch_window": _float,
    "require_at_start": _bool,
    "local_cache": _bool,
    "lease_ttl": _float,
}

_registry: dict[str, RedisBackend] = {}
_registry_lock = threading.Lock()


def shared_backend(url: str) -> RedisBackend:
    """One backend (connection, batching, breaker) per distinct URL in this process."""
    backend = _registry.get(url)
    if backend is None:
        with _registry_lock:
            backend = _registry.get(url)
            if backend is None:
                backend = _registry[url] = RedisBackend(url)
    return backend
