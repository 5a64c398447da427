"""Alert webhooks: tell people and automation when throttling, breakers or levels change.

``Alerts.emit`` is safe on any path: it records the event in a bounded ring of
recent events (for operators) and, unless the same event for the same subject was
sent within the cool-down, puts it on each webhook's bounded queue without
blocking; a full queue drops the event and counts it. One worker thread per webhook
POSTs JSON signed with ``X-Limiter-Signature: sha256=<HMAC-SHA256(secret, body)>``,
with a timeout and retries (exponential backoff with jitter) on network errors, 5xx
and 429. A dead or slow receiver therefore never changes decision latency.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import queue
import random
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from limiter.errors import ConfigError, InvalidParameter

__all__ = ["Alerts", "AlertsConfig", "Dispatcher", "Webhook", "sign", "verify"]

log = logging.getLogger("limiter.alerts")

EVENTS = (
    "throttle_started",
    "throttle_stopped",
    "breaker_opened",
    "breaker_closed",
    "breaker_half_open",
    "level_changed",
    "client_blocked",
    "switch_changed",
)
SIGNATURE_HEADER = "X-Limiter-Signature"
# What an event is about, for the cool-down: the first of these present in it.
SUBJECT_KEYS = ("rule", "breaker", "client", "id", "service")


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Limiter-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str) -> bool:
    """Receiver side: does ``signature`` match ``body``? (constant-time)."""
    return hmac.compare_digest(sign(secret, body).encode(), signature.encode())


@dataclass(frozen=True)
class Webhook:
    """Where and how to POST: ``url``, HMAC ``secret``, timeout/retries/backoff in seconds."""

    url: str
    secret: bytes | None = None
    timeout: float = 2.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    slack: bool = False
    events: tuple[str, ...] = EVENTS

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidParameter(f"url must be an http(s) URL, got {self.url!r:.80}")
        if isinstance(self.secret, str):
            object.__setattr__(self, "secret", self.secret.encode())
        if self.secret is not None and not isinstance(self.secret, bytes):
            raise InvalidParameter("secret must be a string")
        for name, lo, hi in (
            ("timeout", 1e-3, 600),
            ("backoff", 0, 3600),
            ("max_backoff", 0, 86400),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise InvalidParameter(f"{name} must be seconds in [{lo:g}, {hi:g}], got {v!r}")
        r = self.retries
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 100:
            raise InvalidParameter(f"retries must be an integer in [0, 100], got {r!r}")
        if not isinstance(self.slack, bool):
            raise InvalidParameter(f"slack must be true or false, got {self.slack!r}")
        events = tuple(self.events) if isinstance(self.events, (list, tuple)) else None
        if not events or any(e not in EVENTS for e in events):
            raise InvalidParameter(
                f"events must be a list drawn from {list(EVENTS)}, got {self.events!r:.120}"
            )
        object.__setattr__(self, "events", events)


def slack_text(payload: Mapping[str, Any]) -> str:
    """A one-line human summary for Slack-compatible receivers."""
    subject = (
        payload.get("rule")
        or payload.get("breaker")
        or payload.get("client")
        or payload.get("service")
        or payload.get("id")
        or ""
    )
    extra = ""
    if "level" in payload:
        extra = f" level={payload['level']}"
    if payload.get("reason"):
        extra += f" ({payload['reason']})"
    if payload.get("who"):
        extra += f" by {payload['who']}: {payload.get('why', '')}"
    return f"[limiter] {payload['event']} {subject}{extra}".strip()


class Dispatcher:
    """One webhook's bounded queue and worker thread."""

    def __init__(
        self,
        webhook: Webhook,
        *,
        queue_size: int = 1000,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.webhook = webhook
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self.rng = rng
        self.stats = {"queued": 0, "sent": 0, "failed": 0, "dropped": 0, "retries": 0}
        self._stop = threading.Event()
        self._url = urllib.parse.urlsplit(webhook.url)
        self._thread = threading.Thread(target=self._run, name="limiter-webhook", daemon=True)
        self._thread.start()

    def submit(self, payload: Mapping[str, Any]) -> bool:
        """Queue without blocking; False (and counted) when the queue is full."""
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            self.stats["dropped"] += 1
            return False
        self.stats["queued"] += 1
        return True

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, capped."""
        cap = min(self.webhook.max_backoff, self.webhook.backoff * (2**attempt))
        return cap / 2 + self.rng() * cap / 2

    def _post(self, body: bytes) -> int:
        u = self._url
        conn_cls = (
            http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_cls(u.hostname, u.port, timeout=self.webhook.timeout)
        headers = {"Content-Type": "application/json", "User-Agent": "limiter-alerts"}
        if self.webhook.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.webhook.secret, body)
        try:
            path = u.path or "/"
            conn.request("POST", path + (f"?{u.query}" if u.query else ""), body, headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def _deliver(self, body: bytes) -> None:
        for attempt in range(self.webhook.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                if self._stop.wait(self.delay(attempt - 1)):
                    break
            try:
                status = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                log.warning("webhook %s: %s", self.webhook.url, type(exc).__name__)
                continue
            if 200 <= status < 300:
                self.stats["sent"] += 1
                return
            log.warning("webhook %s answered %d", self.webhook.url, status)
            if status < 500 and status != 429:
                break
        self.stats["failed"] += 1

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            if body is None:
                return
            self._deliver(body)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop."""
        deadline = time.monotonic() + timeout
        while not self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))


@dataclass(frozen=True)
class AlertsConfig:
    """The ``alerts:`` section."""

    webhooks: tuple[Webhook, ...] = ()
    cooldown: float = 60.0
    queue_size: int = 1000
    recent: int = 1000
    service: str = "limiter"

    WEBHOOK_KEYS = frozenset(
        {
            "url",
            "secret",
            "secret_env",
            "timeout",
            "retries",
            "backoff",
            "max_backoff",
            "slack",
            "events",
        }
    )

    @classmethod
    def parse(
        cls, section: object, where: str = "alerts", env: Mapping[str, str] | None = None
    ) -> AlertsConfig:
        """``webhooks: [{url, secret | secret_env, ...}]`` or a single ``url``/``secret``."""
        env = os.environ if env is None else env
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: must be a mapping, got {section!r:.80}")
        top = {"webhooks", "cooldown", "queue_size", "recent", "service"}
        hooks: list[Any] = []
        single = {k: v for k, v in section.items() if k in cls.WEBHOOK_KEYS}
        if single:
            hooks.append(single)
        for key in section:
            if key not in top and key not in cls.WEBHOOK_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r}")
        listed = section.get("webhooks") or []
        if not isinstance(listed, Sequence) or isinstance(listed, str):
            raise ConfigError(f"{where}.webhooks: must be a list, got {listed!r:.80}")
        hooks.extend(listed)
        built = []
        for i, hook in enumerate(hooks):
            path = f"{where}.webhooks[{i}]" if not single or i else where
            if not isinstance(hook, Mapping):
                raise ConfigError(f"{path}: must be a mapping, got {hook!r:.80}")
            unknown = set(hook) - cls.WEBHOOK_KEYS
            if unknown:
                raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}")
            kwargs = dict(hook)
            name = kwargs.pop("secret_env", None)
            if name is not None:
                if name not in env:
                    raise ConfigError(
                        f"{path}.secret_env: environment variable {name!r} is not set"
                    )
                kwargs["secret"] = env[name]
            if "url" not in kwargs:
                raise ConfigError(f"{path}: url is required")
            try:
                built.append(Webhook(**kwargs))
            except InvalidParameter as exc:
                raise ConfigError(f"{path}: {exc}") from None
        cooldown = section.get("cooldown", 60.0)
        if (
            isinstance(cooldown, bool)
            or not isinstance(cooldown, (int, float))
            or not 0 <= cooldown <= 86400
        ):
            raise ConfigError(f"{where}.cooldown: must be seconds in [0, 86400], got {cooldown!r}")
        for key, default in (("queue_size", 1000), ("recent", 1000)):
            v = section.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
                raise ConfigError(f"{where}.{key}: must be an integer in [1, 1000000], got {v!r}")
        service = section.get("service", "limiter")
        if not isinstance(service, str):
            raise ConfigError(f"{where}.service: must be a string, got {service!r:.80}")
        return cls(
            webhooks=tuple(built),
            cooldown=float(cooldown),
            queue_size=section.get("queue_size", 1000),
            recent=section.get("recent", 1000),
            service=service,
        )


@dataclass
class _Seen:
    at: int = 0
    suppressed: int = field(default=0)


class Alerts:
    """The events hub: recent-events ring, cool-down dedup, and webhook dispatch."""

    def __init__(
        self,
        config: AlertsConfig | None = None,
        *,
        clock: Callable[[], int] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config = config or AlertsConfig()
        self.clock = clock or time.time_ns
        self.dispatchers = [
            Dispatcher(w, queue_size=config.queue_size, rng=rng) for w in config.webhooks
        ]
        self._recent: deque[dict[str, Any]] = deque(maxlen=config.recent)
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._lock = threading.Lock()
        self.suppressed = 0
        self._seq = 0

    def emit(
        self, event: str, fields: Mapping[str, Any] | None = None, **more: Any
    ) -> dict[str, Any]:
        """Record ``event`` and send it to the webhooks unless within the cool-down.

        The cool-down is per event and subject (see ``SUBJECT_KEYS``).
        """
        if event not in EVENTS:
            raise InvalidParameter(f"event must be one of {list(EVENTS)}, got {event!r:.40}")
        now = self.clock()
        payload: dict[str, Any] = {"event": event, **(fields or {}), **more}
        payload.setdefault("service", self.config.service)
        payload["at"] = now / 1e9
        payload["at_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now / 1e9)) + (
            f".{now // 1_000_000 % 1000:03d}Z"
        )
        payload["uuid"] = str(uuid.uuid4())
        subject = str(
            next(
                (
                    payload[k]
                    for k in ("rule", "breaker", "client", "id", "service")
                    if k in payload
                ),
                "",
            )
        )
        with self._lock:
            self._seq += 1
            payload["seq"] = self._seq
            seen = self._seen.get((event, subject))
            send = seen is None or now - seen.at >= self.config.cooldown * 1e9
            if send:
                if seen is not None and seen.suppressed:
                    payload["suppressed_since_last"] = seen.suppressed
                self._seen[(event, subject)] = _Seen(now)
                if len(self._seen) > 10_000:
                    horizon = now - self.config.cooldown * 1e9
                    self._seen = {k: v for k, v in self._seen.items() if v.at > horizon}
            else:
                seen.suppressed += 1
                self.suppressed += 1
            payload["sent"] = send and bool(self.dispatchers)
            self._recent.append(payload)
        if send:
            for d in self.dispatchers:
                if event in d.webhook.events:
                    out = dict(payload)
                    del out["sent"]
                    if d.webhook.slack:
                        out["text"] = slack_text(out)
                    d.submit(out)
        return payload

    def listener(self, event: str, fields: dict[str, Any]) -> None:
        """Adapter for ``on_change``/``on_block`` callbacks of the other modules."""
        self.emit(event, fields)

    def recent(self, limit: int = 100, since: int = 0) -> list[dict[str, Any]]:
        """Events with ``seq > since``, newest last, at most ``limit``."""
        with self._lock:
            rows = [e for e in self._recent if e["seq"] > since]
        return rows[-limit:] if limit > 0 else []

    def stats(self) -> dict[str, Any]:
        return {
            "suppressed": self.suppressed,
            "webhooks": [{"url": _redact(d.webhook.url), **d.stats} for d in self.dispatchers],
        }

    def close(self, timeout: float = 5.0) -> None:
        for d in self.dispatchers:
            d.close(timeout)


def _redact(url: str) -> str:
    """Scheme, host and port only: webhook paths often embed a secret (Slack-style)."""
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "")
