"""Alert webhooks: tell people and automation when throttling, breakers or levels change.

``Alerts.emit`` is safe on any path: it records the event in a bounded ring of
recent events (for operators; switch changes in a ring of their own) and, unless the
same event for the same subject was sent within the cool-down, puts it on each
webhook's bounded queue without blocking; a full queue drops the event and counts it.
One worker thread per webhook POSTs JSON signed with
``X-Limiter-Signature: sha256=<HMAC-SHA256(secret, body)>``, with a timeout and retries
(exponential backoff with jitter) on network errors, 5xx and 429. A dead or slow
receiver therefore never changes decision latency.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from limiter.errors import InvalidParameter, brief
from limiter.schema import FieldError, Section, setting

__all__ = ["Alerts", "AlertsConfig", "Dispatcher", "Webhook", "sign", "verify"]

log = logging.getLogger("limiter.ops.alerts")

EVENTS = (
    "throttle_started",
    "throttle_stopped",
    "breaker_opened",
    "breaker_closed",
    "breaker_half_open",
    "level_changed",
    "client_blocked",
    "switch_changed",
    "fallback_started",
    "fallback_stopped",
)
SIGNATURE_HEADER = "X-Limiter-Signature"
# What an event is about, for the cool-down: the first of these present in it.
SUBJECT_KEYS = ("rule", "breaker", "client", "id", "service")
# What the Slack text names: the first of these set; unlike SUBJECT_KEYS, the service
# comes before a switch's id.
SLACK_SUBJECT_KEYS = ("rule", "breaker", "client", "service", "id")
# Events an operator caused: kept in a list of their own, so that a flood of automatic
# events (throttling, blocks) cannot push them out of the recent events.
OPERATOR_EVENTS = frozenset({"switch_changed"})
# Events every one of which is sent: a level's own hysteresis already keeps it from
# flapping, and a receiver acting on the level must see each change.
UNDAMPED_EVENTS = frozenset({"level_changed"})


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Limiter-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str) -> bool:
    """Receiver side: does ``signature`` match ``body``? (constant-time)."""
    return hmac.compare_digest(sign(secret, body).encode(), signature.encode())


@dataclass(frozen=True)
class Webhook(Section):
    """One webhook (``alerts.webhooks``): where and how to POST events."""

    url: str = setting(doc="where events are POSTed", prefixes=("http://", "https://"))
    secret: bytes | None = setting(
        None, f"HMAC-SHA256 key: each POST carries {SIGNATURE_HEADER}: sha256=<hex digest>"
    )
    secret_env: str | None = setting(None, "an environment variable holding the secret")
    timeout: float = setting(2.0, "timeout of one POST", low=1e-3, high=600, seconds=True)
    retries: int = setting(3, "retries after network errors, 5xx and 429", low=0, high=100)
    backoff: float = setting(
        0.5, "backoff before the first retry, doubled each retry (with jitter)",
        low=0, high=3600, seconds=True,
    )  # fmt: skip
    max_backoff: float = setting(30.0, "the longest backoff", low=0, high=86400, seconds=True)
    slack: bool = setting(False, "add a one-line `text` for Slack-compatible receivers")
    events: tuple[str, ...] = setting(EVENTS, "the events this webhook gets", choices=EVENTS)

    def check(self, given: frozenset[str] | None) -> None:
        try:
            host = urllib.parse.urlsplit(self.url).hostname
        except ValueError:
            host = None
        if not host:
            raise FieldError("url", "has no host")  # the rest of it may be a secret
        name = self.secret_env
        if name is not None:
            if given is not None and "secret" in given:
                raise FieldError("secret_env", "give secret or secret_env, not both")
            if name not in os.environ:
                raise FieldError("secret_env", f"environment variable {name!r} is not set")
            object.__setattr__(self, "secret", os.environ[name].encode())


def slack_text(payload: Mapping[str, Any]) -> str:
    """A one-line human summary for Slack-compatible receivers."""
    subject = next((payload[k] for k in SLACK_SUBJECT_KEYS if payload.get(k)), "")
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

    def __init__(self, webhook: Webhook, *, queue_size: int = 1000) -> None:
        self.webhook = webhook
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
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
        return cap / 2 + random.random() * cap / 2

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
                log.warning("webhook %s: %s", _redact(self.webhook.url), type(exc).__name__)
                continue
            if 200 <= status < 300:
                self.stats["sent"] += 1
                return
            log.warning("webhook %s answered %d", _redact(self.webhook.url), status)
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
class AlertsConfig(Section):
    """Alert webhooks (``alerts``): each event (throttle_started, throttle_stopped,
    breaker_opened, breaker_closed, breaker_half_open, level_changed, client_blocked,
    switch_changed, fallback_started, fallback_stopped) is kept in a list of recent events
    and POSTed as JSON to every webhook that wants it, from a queue per webhook, so a
    slow receiver never slows decisions."""

    webhooks: tuple[Webhook, ...] = setting((), "where events are POSTed")
    cooldown: float = setting(
        60.0, "an event about the same subject is sent at most once per cooldown (the "
        "next one counts those suppressed; every level change is sent)",
        low=0, high=86400, seconds=True,
    )  # fmt: skip
    queue_size: int = setting(
        1000, "events waiting per webhook; beyond, new ones are dropped (and counted)",
        low=1, high=1_000_000,
    )  # fmt: skip
    recent: int = setting(
        1000, "recent events kept for the admin API: this many of operators' (switch "
        "changes) and as many of the others", low=1, high=1_000_000,
    )  # fmt: skip
    service: str = setting("limiter", "the `service` of events that name none")


@dataclass
class _Seen:
    at: int = 0
    suppressed: int = 0


class Alerts:
    """The events hub: recent-events ring, cool-down dedup, and webhook dispatch."""

    def __init__(
        self, config: AlertsConfig | None = None, *, clock: Callable[[], int] | None = None
    ) -> None:
        self.config = config = config or AlertsConfig()
        self.clock = clock or time.time_ns
        self.dispatchers = [Dispatcher(w, queue_size=config.queue_size) for w in config.webhooks]
        self._recent: deque[dict[str, Any]] = deque(maxlen=config.recent)
        self._operator: deque[dict[str, Any]] = deque(maxlen=config.recent)
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
            raise InvalidParameter(f"event must be one of {list(EVENTS)}, got {brief(event, 40)}")
        now = self.clock()
        payload: dict[str, Any] = {"event": event, **(fields or {}), **more}
        payload.setdefault("service", self.config.service)
        payload["at"] = now / 1e9
        payload["at_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now / 1e9)) + (
            f".{now // 1_000_000 % 1000:03d}Z"
        )
        payload["uuid"] = str(uuid.uuid4())
        subject = str(next((payload[k] for k in SUBJECT_KEYS if k in payload), ""))
        with self._lock:
            self._seq += 1
            payload["seq"] = self._seq
            seen = self._seen.get((event, subject))
            send = (
                seen is None
                or now - seen.at >= self.config.cooldown * 1e9
                or event in UNDAMPED_EVENTS
            )
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
            (self._operator if event in OPERATOR_EVENTS else self._recent).append(payload)
        if send:
            for d in self.dispatchers:
                if event in d.webhook.events:
                    out = {k: v for k, v in payload.items() if k != "sent"}
                    if d.webhook.slack:
                        out["text"] = slack_text(out)
                    d.submit(out)
        return payload

    def recent(self, limit: int = 100, since: int = 0) -> list[dict[str, Any]]:
        """Events with ``seq > since``, newest last, at most ``limit``."""
        with self._lock:
            rows = [e for e in (*self._recent, *self._operator) if e["seq"] > since]
        rows.sort(key=lambda e: e["seq"])
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
    """Scheme, host and port only: webhook paths and queries often embed a secret
    (Slack-style URLs), so logs and the status API show no more than this."""
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "")
