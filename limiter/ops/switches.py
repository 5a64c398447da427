"""Manual switches: the operator's emergency lever, seen by every replica within a second.

A switch is addressed by an id naming what it acts on:

- ``rule:<name>``: ``action`` force_allow, force_deny, shadow, or override (with ``limit``);
- ``level:<service>``: a forced degradation ``level``;
- ``breaker:<dependency>[/<partition>]``: ``action`` force_open or force_closed;
- ``global``: the kill switch, ``action`` force_allow (limiting off) or force_deny (shed all).

Each carries who set it and why, and may expire (a forgotten switch reverts by
itself: an expired switch is ignored from that instant and swept from the store).
Every change is written to an audit log. ``MemorySwitches`` serves one process;
``RedisSwitches`` keeps switches in a Redis hash, publishes each change on a channel
that every replica subscribes to, and re-reads the hash periodically so a missed
message (Redis restart, network cut) heals by itself. Reads never touch Redis: the
hot path looks up an in-process snapshot that is swapped whole on change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from limiter.errors import ConfigError, InvalidParameter, brief, is_number
from limiter.schema import Section, setting

__all__ = [
    "MemorySwitches",
    "RedisSwitches",
    "StoreUnavailable",
    "Switch",
    "Switches",
    "SwitchesConfig",
    "open_switches",
]

log = logging.getLogger("limiter.ops.switches")

Clock = Callable[[], int]
Listener = Callable[[str, "Switch | None"], None]

ACTIONS = {
    "rule": ("force_allow", "force_deny", "shadow", "override"),
    "breaker": ("force_open", "force_closed"),
    "global": ("force_allow", "force_deny"),
}
ID_PATTERN = re.compile(r"^(?:global|(rule|level|breaker):([^\s\x00-\x1f\x7f]{1,256}))$")
MAX_LEVEL = 100
PLAIN_REDIS = ("redis://", "rediss://", "unix://")
MAX_TTL = 366 * 86400
# The shortest life a switch may be given: one that expires before it reaches every
# replica (or as it is made: expiry is kept to the millisecond) would do nothing.
MIN_TTL = 1.0
# Audit entries a store keeps, newest first.
AUDIT_MAX = 10_000
# Timeout of the switch store's Redis connection and of each command on it.
REDIS_TIMEOUT = 1.0


class StoreUnavailable(Exception):
    """The shared switch store (Redis) could not be reached; the change was not made."""


def _text(body: Mapping[str, Any], key: str, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameter(f"{key} is required: a non-empty string saying {key} set this")
    if len(value) > limit:
        raise InvalidParameter(f"{key} is longer than {limit} characters")
    return value.strip()


@dataclass(frozen=True)
class Switch:
    """One manual switch (times are unix seconds; ``expires_at`` None means never)."""

    id: str
    who: str
    why: str
    created_at: float
    expires_at: float | None = None
    action: str | None = None
    limit: int | None = None
    level: int | None = None

    @property
    def kind(self) -> str:
        return "global" if self.id == "global" else self.id.split(":", 1)[0]

    @property
    def target(self) -> str:
        return "" if self.id == "global" else self.id.split(":", 1)[1]

    def expired(self, now_ns: int) -> bool:
        # Expiry is kept to the millisecond so float seconds compare exactly.
        return self.expires_at is not None and now_ns >= round(self.expires_at * 1000) * 1_000_000

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @staticmethod
    def check_id(switch_id: object) -> str:
        if not isinstance(switch_id, str) or not ID_PATTERN.match(switch_id):
            raise InvalidParameter(
                "switch id must be 'global', 'rule:<name>', 'level:<service>' or "
                f"'breaker:<name>', got {brief(switch_id)}"
            )
        return switch_id

    @classmethod
    def from_request(cls, switch_id: str, body: object, now_ns: int) -> Switch:
        """Validate an admin PUT body: action/limit/level, ttl or expires_at, who, why."""
        cls.check_id(switch_id)
        if not isinstance(body, Mapping):
            raise InvalidParameter(f"body must be a JSON object, got {type(body).__name__}")
        known = {"action", "limit", "level", "ttl", "expires_at", "who", "why"}
        for key in body:
            if key not in known:
                raise InvalidParameter(f"unknown field {brief(key, 40)} (known: {sorted(known)})")
        kind = "global" if switch_id == "global" else switch_id.split(":", 1)[0]
        now = now_ns / 1e9
        action = body.get("action")
        limit = body.get("limit")
        level = body.get("level")
        if kind == "level":
            if action is not None:
                raise InvalidParameter("action does not apply to a level switch; set level")
            if not is_number(level, int, 0, MAX_LEVEL):
                raise InvalidParameter(
                    f"level must be an integer in [0, {MAX_LEVEL}], got {brief(level, 40)}"
                )
        else:
            if action not in ACTIONS[kind]:
                raise InvalidParameter(
                    f"action for a {kind} switch must be one of {list(ACTIONS[kind])}, "
                    f"got {brief(action, 40)}"
                )
            if level is not None:
                raise InvalidParameter(f"level does not apply to a {kind} switch")
        if action == "override":
            if not is_number(limit, int, 0, (1 << 40) - 1):
                raise InvalidParameter(
                    f"limit must be an integer >= 0 for override, got {brief(limit, 40)}"
                )
        elif limit is not None:
            raise InvalidParameter("limit applies only to action 'override'")
        ttl, expires_at = body.get("ttl"), body.get("expires_at")
        if ttl is not None and expires_at is not None:
            raise InvalidParameter("give ttl or expires_at, not both")
        if ttl is not None:
            if not is_number(ttl, low=MIN_TTL, high=MAX_TTL):
                raise InvalidParameter(
                    f"ttl must be seconds in [{MIN_TTL:g}, {MAX_TTL}], got {brief(ttl, 40)}"
                )
            expires_at = (now_ns + int(ttl * 1e9)) // 1_000_000 / 1000
        elif expires_at is not None and not is_number(
            expires_at, low=now + MIN_TTL, high=now + MAX_TTL
        ):
            raise InvalidParameter(
                f"expires_at must be a unix time at least {MIN_TTL:g} s ahead, "
                f"got {brief(expires_at, 40)}"
            )
        return cls(
            id=switch_id,
            who=_text(body, "who", 200),
            why=_text(body, "why", 1000),
            created_at=now,
            expires_at=None if expires_at is None else float(expires_at),
            action=action,
            limit=limit,
            level=level,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Switch:
        data = json.loads(raw)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))


class Switches:
    """Read side shared by every store: the hot-path questions the service asks."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or time.time_ns
        self._all: dict[str, Switch] = {}
        self._by_kind: dict[str, dict[str, Switch]] = {}
        self._listeners: list[Listener] = []

    # -- hot path: dict lookups on an immutable snapshot ----------------------------

    def _live(self, kind: str, target: str) -> Switch | None:
        sw = self._by_kind.get(kind, {}).get(target)
        if sw is not None and sw.expires_at is not None and sw.expired(self.clock()):
            return None
        return sw

    def rule(self, rule: str) -> Switch | None:
        """The switch acting on ``rule``: the global kill switch first, then ``rule:<rule>``."""
        if not self._by_kind:
            return None
        return self._live("global", "") or self._live("rule", rule)

    def level(self, service: str) -> int | None:
        """A forced degradation level for ``service``, or None."""
        sw = self._live("level", service) if self._by_kind else None
        return None if sw is None else sw.level

    def breaker(self, name: str) -> str | None:
        """ "force_open" / "force_closed" for breaker ``name``, or None."""
        sw = self._live("breaker", name) if self._by_kind else None
        return None if sw is None else sw.action

    def killed(self) -> Switch | None:
        return self._live("global", "") if self._by_kind else None

    # -- read side for operators ------------------------------------------------------

    def list(self) -> list[Switch]:
        now = self.clock()
        return sorted((s for s in self._all.values() if not s.expired(now)), key=lambda s: s.id)

    def get(self, switch_id: str) -> Switch | None:
        sw = self._all.get(switch_id)
        return None if sw is None or sw.expired(self.clock()) else sw

    def subscribe(self, listener: Listener) -> None:
        """``listener(id, switch_or_None)`` on every change this process learns of."""
        self._listeners.append(listener)

    def _install(self, switches: dict[str, Switch]) -> None:
        """Swap in a new snapshot and tell listeners what changed."""
        before = self._all
        by_kind: dict[str, dict[str, Switch]] = {}
        for sw in switches.values():
            by_kind.setdefault(sw.kind, {})[sw.target] = sw
        self._all, self._by_kind = switches, by_kind
        for sid in sorted(set(before) | set(switches)):
            if before.get(sid) != switches.get(sid):
                for listener in list(self._listeners):
                    try:
                        listener(sid, switches.get(sid))
                    except Exception:
                        log.exception("switch listener failed for %s", sid)

    @staticmethod
    def _audit_entry(
        op: str,
        sid: str,
        before: Switch | None,
        after: Switch | None,
        who: str,
        why: str,
        now_ns: int,
    ) -> dict[str, Any]:
        return {
            "at": now_ns / 1e9,
            "op": op,
            "id": sid,
            "who": who,
            "why": why,
            "before": None if before is None else before.as_dict(),
            "after": None if after is None else after.as_dict(),
        }

    # -- write side: every change goes through the store's ``_change`` ----------------

    def put(self, switch: Switch) -> Switch:
        self._change("put", switch.id, switch, switch.who, switch.why)
        return switch

    def delete(self, switch_id: str, who: str, why: str) -> Switch | None:
        """Remove a switch; returns it, or None when there was none or it had expired."""
        before = self._change("delete", switch_id, None, who, why)
        return None if before is None or before.expired(self.clock()) else before

    def _change(self, op: str, sid: str, after: Switch | None, who: str, why: str) -> Switch | None:
        """Store ``after`` as ``sid`` (None: remove it; removing no switch changes nothing)
        and audit the change; returns the switch it replaced."""
        raise NotImplementedError

    def sweep(self) -> list[Switch]:
        """Remove expired switches (audited as ``expire`` by ``system``)."""
        raise NotImplementedError

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work (nothing to do for an in-memory store)."""


class MemorySwitches(Switches):
    """Switches of one process (no replication)."""

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_MAX)
        self._lock = threading.Lock()

    def _change(self, op: str, sid: str, after: Switch | None, who: str, why: str) -> Switch | None:
        with self._lock:
            if after is None:
                before = self._all.get(sid)
                if before is None:
                    return None
                switches = {k: v for k, v in self._all.items() if k != sid}
            else:
                before = self.get(sid)  # a put replaces the live switch: an expired one is gone
                switches = {**self._all, sid: after}
            self._audit.appendleft(
                self._audit_entry(op, sid, before, after, who, why, self.clock())
            )
            self._install(switches)
        return before

    def sweep(self) -> list[Switch]:
        now = self.clock()
        with self._lock:
            gone = [s for s in self._all.values() if s.expired(now)]
            for sw in gone:
                self._audit.appendleft(
                    self._audit_entry("expire", sw.id, sw, None, "system", "expired", now)
                )
            if gone:
                self._install({k: v for k, v in self._all.items() if not v.expired(now)})
        return gone

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._audit)[: max(0, limit)]


class RedisSwitches(Switches):
    """Switches in Redis, pushed to every replica by pub/sub.

    Keys: ``<prefix>switches`` (hash id -> JSON), ``<prefix>switches:audit`` (list,
    newest first, trimmed to ``AUDIT_MAX``), channel ``<prefix>switches:changed``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "limiter:",
        clock: Clock | None = None,
        resync: float = 5.0,
    ) -> None:
        import redis

        super().__init__(clock)
        self._redis_errors = (redis.RedisError, OSError)
        self._watch_error = redis.WatchError
        self.client = redis.Redis.from_url(
            _client_url(url), socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.hash = f"{prefix}switches"
        self.audit_key = f"{prefix}switches:audit"
        self.channel = f"{prefix}switches:changed"
        self.resync = resync
        self.healthy = False
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        try:
            self.reload()
        except self._redis_errors as exc:
            log.warning("switch store unavailable at start (%s); retrying in background", exc)
        except (TypeError, ValueError) as exc:  # redis-py refuses an option in the URL
            from limiter.backends.redis import masked

            self.client.close()
            raise ConfigError(f"switches: bad Redis URL {masked(url)}: {exc}") from None
        self._thread = threading.Thread(target=self._listen, name="limiter-switches", daemon=True)
        self._thread.start()

    def reload(self) -> None:
        """Re-read the whole hash (small) and install it."""
        raw = self.client.hgetall(self.hash)
        switches = {}
        for key, value in raw.items():
            try:
                sw = Switch.from_json(value)
                switches[sw.id] = sw
            except (ValueError, TypeError) as exc:
                log.error("ignoring malformed switch %r in Redis: %s", key, exc)
        with self._reload_lock:
            self._install(switches)
        self.healthy = True

    def _listen(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.reload()
                backoff = 0.05
                last = time.monotonic()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg is not None or time.monotonic() - last >= self.resync:
                        self.reload()
                        last = time.monotonic()
            except self._redis_errors as exc:
                self.healthy = False
                log.warning("switch subscription lost (%s); reconnecting", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(self._redis_errors):
                    pubsub.close()

    def _commit(
        self, op: str, sid: str, expect: bytes | None, after: Switch | None, who: str, why: str
    ) -> Switch | None:
        """Apply one change atomically if the stored value is still ``expect`` (bytes or None
        to skip the check); returns the previous switch or None. Raises WatchError on a race.
        """
        with self.client.pipeline() as pipe:
            pipe.watch(self.hash)
            raw = pipe.hget(self.hash, sid)
            if expect is not None and raw != expect:
                pipe.unwatch()
                raise self._watch_error("changed meanwhile")
            before = Switch.from_json(raw) if raw else None
            if op == "delete" and before is None:
                pipe.unwatch()
                return None
            entry = self._audit_entry(op, sid, before, after, who, why, self.clock())
            pipe.multi()
            if after is None:
                pipe.hdel(self.hash, sid)
            else:
                pipe.hset(self.hash, sid, after.to_json())
            pipe.lpush(self.audit_key, json.dumps(entry, separators=(",", ":")))
            pipe.ltrim(self.audit_key, 0, AUDIT_MAX - 1)
            pipe.publish(self.channel, sid)
            pipe.execute()
            return before

    def _change(self, op: str, sid: str, after: Switch | None, who: str, why: str) -> Switch | None:
        try:
            for _ in range(5):
                try:
                    before = self._commit(op, sid, None, after, who, why)
                    break
                except self._watch_error:
                    continue
            else:
                raise StoreUnavailable("switch store is busy; try again")
            self.reload()
            return before
        except self._redis_errors as exc:
            raise StoreUnavailable(f"switch store unavailable: {type(exc).__name__}") from None

    def sweep(self) -> list[Switch]:
        """Expired switches removed by this replica (one replica wins each, via WATCH)."""
        now = self.clock()
        gone = []
        for sw in list(self._all.values()):
            if not sw.expired(now):
                continue
            try:
                self._commit("expire", sw.id, sw.to_json().encode(), None, "system", "expired")
                gone.append(sw)
            except self._watch_error:
                continue
            except self._redis_errors as exc:
                log.warning("could not sweep expired switches: %s", exc)
                break
        if gone:
            with contextlib.suppress(self._redis_errors):
                self.reload()
        return gone

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        try:
            rows = self.client.lrange(self.audit_key, 0, max(0, limit) - 1) if limit > 0 else []
        except self._redis_errors as exc:
            raise StoreUnavailable(f"switch store unavailable: {type(exc).__name__}") from None
        return [json.loads(r) for r in rows]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.client.close()


def _client_url(url: str) -> str:
    """``url`` without the limiter backend's own query options (``?timeout=``, ``?prefix=``
    ...), which the service's ``--redis`` URL may carry and redis-py would refuse."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    from limiter.backends.redis import OPTION_NAMES

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k not in OPTION_NAMES]
    return url if kept == query else parts._replace(query=urlencode(kept)).geturl()


@dataclass(frozen=True)
class SwitchesConfig(Section):
    """Where manual switches live (``switches``): the operator's overrides of rules,
    levels and breakers, set through the admin API or ``limiter switch``."""

    store: str = setting(
        "auto", "memory: this process only; redis: shared by every replica; auto: redis "
        "when the service has a plain Redis URL (--redis or url)",
        choices=("auto", "memory", "redis"),
    )  # fmt: skip
    url: str | None = setting(
        None, "the Redis to keep switches in (default: --redis)", prefixes=PLAIN_REDIS
    )
    prefix: str = setting("limiter:", "prefix of the switches' Redis keys and channel")
    resync: float = setting(
        5.0, "time between full re-reads, which heal a missed change message",
        low=0.1, high=3600, seconds=True,
    )  # fmt: skip


def open_switches(
    config: SwitchesConfig | None = None, redis_url: str | None = None, clock: Clock | None = None
) -> Switches:
    """The store the config asks for; ``auto`` uses Redis when the service has one."""
    config = config or SwitchesConfig()
    url = config.url or redis_url
    if config.store == "auto" and url and not url.startswith(PLAIN_REDIS):
        log.warning(
            "switches: %s is not a plain Redis URL; switches stay in this process "
            "(set switches.url to a redis:// URL to share them)",
            url.split("://", 1)[0] + "://",
        )
        url = None
    if config.store == "memory" or (config.store == "auto" and not url):
        return MemorySwitches(clock)
    if not url:
        raise ConfigError("switches: store redis needs switches.url or the service's --redis")
    return RedisSwitches(url, prefix=config.prefix, clock=clock, resync=config.resync)
