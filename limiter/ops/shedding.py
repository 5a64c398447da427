"""Who gets cut: the heaviest clients of a throttling rule, abnormal clients, throttled rules.

A flood from one client must not starve the well-behaved ones, so while a rule is
under pressure a client whose share of the rule's recent traffic exceeds a cap is cut
down to its max-min fair share of the rule's capacity: it keeps what the lighter
clients leave, and loses more only as they need more. Clients with an abnormal burst
or 4xx ratio are blocked outright for a cool-down. Which rules throttle, and which
clients send most, is readable as a top-N for operators and autoscalers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limiter._core import HeavyHitters
from limiter.schema import Section, setting

__all__ = [
    "AbnormalAccess",
    "AbnormalConfig",
    "ClientShedder",
    "ClientsConfig",
    "SheddingConfig",
    "ThrottleConfig",
    "ThrottleWatch",
    "TopClients",
    "fair_level",
]

Clock = Callable[[], int]
# Where per-rule state goes once ``max_rules`` distinct names have been seen.
OTHER = "_other"
Listener = Callable[[str, dict[str, Any]], None]
# Largest count a sketch takes (the kernels' MAX_COUNT).
MAX_COUNT = 1 << 40


@dataclass(frozen=True)
class ClientsConfig(Section):
    """Top-client shedding (``shedding.clients``): while a rule throttles, a client whose
    share of the rule's recent requests is above ``max_share`` is cut to its max-min fair
    share of the rule's limit."""

    max_share: float = setting(
        1.0, "a client sending more than this share of a throttling rule's requests is cut "
        "to its fair share (1: count only, never cut)", low=0, high=1, open_low=True,
    )  # fmt: skip
    capacity: int = setting(64, "clients tracked per rule (heaviest kept)", low=1, high=1 << 20)
    window: float = setting(
        10.0, "the sliding window shares are measured over", low=0, high=86400, open_low=True,
        seconds=True,
    )  # fmt: skip
    buckets: int = setting(5, "buckets the window slides by", low=1, high=1024)
    min_requests: int = setting(
        20, "requests in the window before anyone is cut", low=0, high=MAX_COUNT
    )


@dataclass(frozen=True)
class AbnormalConfig(Section):
    """Abnormal-client blocks (``shedding.abnormal``; off unless given): a client is refused
    for ``cooldown`` after a burst or a high 4xx ratio."""

    burst: int = setting(
        1000, "more requests than this within burst_window block", low=1, high=MAX_COUNT
    )
    burst_window: float = setting(
        1.0, "the window of burst", low=0, high=86400, open_low=True, seconds=True
    )
    error_ratio: float = setting(
        0.5, "this share of 4xx among reported responses blocks", low=0, high=1, open_low=True
    )
    min_responses: int = setting(
        20, "responses in error_window before the ratio counts", low=1, high=MAX_COUNT
    )
    error_window: float = setting(
        60.0, "the window of error_ratio", low=0, high=86400, open_low=True, seconds=True
    )
    cooldown: float = setting(60.0, "how long a block lasts", low=1e-3, high=86400, seconds=True)
    capacity: int = setting(256, "clients tracked (heaviest kept)", low=1, high=1 << 20)
    max_blocked: int = setting(
        100_000, "clients blocked at once; beyond, no new client is blocked", low=1, high=MAX_COUNT
    )


@dataclass(frozen=True)
class ThrottleConfig(Section):
    """Which rules throttle (``shedding.throttle``): they start throttling at a share of
    over-limit answers and stop after a quiet spell; alerts follow."""

    window: float = setting(
        10.0, "the sliding window answers are counted over", low=1e-3, high=86400, seconds=True
    )
    start_ratio: float = setting(
        0.01, "this share of over-limit answers starts throttling", low=0, high=1
    )
    min_over: int = setting(1, "and at least this many over-limit answers", low=1, high=MAX_COUNT)
    stop_after: float = setting(
        30.0, "throttling stops after this long without an over-limit answer",
        low=0, high=86400, seconds=True,
    )  # fmt: skip


@dataclass(frozen=True)
class SheddingConfig(Section):
    """Who gets cut first (``shedding``): the heaviest clients of a throttling rule,
    abnormal clients, and which rules are throttling (for alerts and operators)."""

    clients: ClientsConfig = setting(ClientsConfig(), "top-client shedding")
    abnormal: AbnormalConfig | None = setting(None, "abnormal-client blocks (none: off)")
    throttle: ThrottleConfig = setting(ThrottleConfig(), "the throttled-rules watch")


def fair_level(capacity: float, demands: list[float], rest: float = 0.0) -> float:
    """The max-min fair level of ``capacity`` among ``demands`` (water-filling): each
    demand at or below it is met in full, each above it gets exactly it. ``rest`` is
    demand already served in full (lighter clients not listed). ``inf``: everyone fits."""
    left = capacity - rest
    if left <= 0:
        return 0.0
    ordered = sorted(demands)
    n = len(ordered)
    for i, d in enumerate(ordered):
        level = left / (n - i)
        if d > level:
            return level
        left -= d
    return math.inf


class ClientShedder:
    """One rule's top-client cut: while under pressure, a client above ``max_share`` of
    the rule's requests gets no more than its max-min fair share.

    Every request is counted in a Space-Saving sketch over ``window`` seconds, so the
    share reflects what a client asks for, not what it was granted: a flooding client
    stays cut for as long as it floods. ``min_requests`` avoids judging a near-empty
    window. ``max_share`` 1.0 (the default) only counts, for the top-N, and never cuts.

    The fair share is the water-filling level of ``capacity`` (the rule's limit per
    second) over the window's demands: the lighter clients are served in full and the
    heavy ones split what is left, so a heavy client is cut to what the others leave,
    not to nothing, and further only as their demand grows. A cut client passes that
    share of its requests, spread evenly (a credit per client), not in bursts. Without
    a capacity (a concurrency rule) the level is ``max_share`` of the window's requests.
    """

    def __init__(self, config: ClientsConfig | None = None, *, clock: Clock | None = None) -> None:
        config = config or ClientsConfig()
        self.max_share = config.max_share
        self.min_requests = config.min_requests
        self.sketch = HeavyHitters(config.capacity, config.window, config.buckets, clock=clock)
        # Per cut client, the units it has earned and not yet sent.
        self._credit: dict[str, float] = {}
        self.max_credits = 4 * config.capacity
        self.clock = clock or time.monotonic_ns
        self.sub_ns = max(round(config.window / config.buckets * 1e9), 1)
        self.window_ns = self.sub_ns * config.buckets
        # The level is recomputed at most this often: it needs the whole top-N.
        self.refresh_ns = max(self.sub_ns // 10, 1_000_000)
        self._level: tuple[int, float | None, float] = (-(1 << 62), None, 0.0)
        self.shed = 0

    def check(
        self, client: str, cost: int = 1, *, pressure: bool = False, capacity: float | None = None
    ) -> bool:
        """Count the request; False when it should be cut: under pressure, a share over
        the cap and the client's passed requests at its fair share. ``capacity``: the
        rule's limit per second (None: unknown)."""
        estimate = self.sketch.offer(client, cost)
        if not pressure:
            return True
        total = self.sketch.total()
        if total < self.min_requests or estimate <= self.max_share * total:
            return True
        share = self.level(capacity, total) / estimate
        if share >= 1:
            return True
        credits = self._credit
        credit = credits.get(client, 0.0) + share * cost
        if credit >= cost:
            credits[client] = credit - cost
            return True
        if client not in credits and len(credits) >= self.max_credits:
            credits.clear()  # cut clients come and go: forget the old ones
        credits[client] = credit
        self.shed += 1
        return False

    def level(self, capacity: float | None, total: int) -> float:
        """Requests one client may pass within the window now (its fair share), of the
        window's ``total``."""
        if capacity is None:
            return self.max_share * total
        now = self.clock()
        at, known, level = self._level
        if known == capacity and 0 <= now - at < self.refresh_ns:
            return level
        # The sketch counts the live sub-windows: all but the current one in full.
        span = (self.window_ns - self.sub_ns + now % self.sub_ns) / 1e9
        tracked = [float(c) for _, c, _ in self.sketch.top(self.sketch.capacity)]
        level = fair_level(capacity * span, tracked, max(total - sum(tracked), 0.0))
        self._level = (now, capacity, level)
        return level

    def top(self, n: int = 10) -> list[dict[str, Any]]:
        total = self.sketch.total()
        return [
            {"client": k, "count": c, "error": e, "share": c / total if total else 0.0}
            for k, c, e in self.sketch.top(n)
        ]


class TopClients:
    """A ``ClientShedder`` per rule, created on first use.

    Rule names come from config, but requests can name ad-hoc limits too, so past
    ``max_rules`` new names share one ``OTHER`` shedder instead of growing memory.
    """

    def __init__(
        self, factory: Callable[[], ClientShedder] | None = None, max_rules: int = 1000
    ) -> None:
        self.factory = factory or ClientShedder
        self.max_rules = max_rules
        self._rules: dict[str, ClientShedder] = {}
        self._lock = threading.Lock()

    def __getitem__(self, rule: str) -> ClientShedder:
        s = self._rules.get(rule)
        if s is None:
            with self._lock:
                if rule not in self._rules and len(self._rules) >= self.max_rules:
                    rule = OTHER
                s = self._rules.get(rule)
                if s is None:
                    s = self._rules[rule] = self.factory()
        return s

    def check(
        self,
        rule: str,
        client: str,
        cost: int = 1,
        *,
        pressure: bool = False,
        capacity: float | None = None,
    ) -> bool:
        """``ClientShedder.check`` for ``rule``'s shedder (hot path: one dict lookup)."""
        return self[rule].check(client, cost, pressure=pressure, capacity=capacity)

    def top(self, rule: str | None = None, n: int = 10) -> list[dict[str, Any]]:
        """Heaviest clients of ``rule``, or across all rules (merged by count) when None."""
        if rule is not None:
            s = self._rules.get(rule)
            return [] if s is None else [{"rule": rule, **row} for row in s.top(n)]
        rows = [{"rule": r, **row} for r, s in list(self._rules.items()) for row in s.top(n)]
        rows.sort(key=lambda row: (-row["count"], row["rule"], row["client"]))
        return rows[: max(0, n)]


class AbnormalAccess:
    """Blocks a client for ``cooldown`` seconds after an abnormal burst or 4xx ratio.

    Burst: more than ``burst`` requests within ``burst_window`` seconds. Errors: at
    least ``min_responses`` reported responses in ``error_window`` seconds of which a
    ratio of ``error_ratio`` or more were 4xx. ``on_block(event, fields)`` is called
    once per block (e.g. to raise an alert).
    """

    def __init__(
        self,
        config: AbnormalConfig | None = None,
        *,
        clock: Clock | None = None,
        on_block: Listener | None = None,
    ) -> None:
        c = config or AbnormalConfig()
        self.burst, self.error_ratio, self.min_responses = c.burst, c.error_ratio, c.min_responses
        self.cooldown_ns = int(c.cooldown * 1e9)
        self.max_blocked = c.max_blocked
        self.clock = clock or time.monotonic_ns
        self.requests = HeavyHitters(c.capacity, c.burst_window, 4, clock=self.clock)
        self.responses = HeavyHitters(c.capacity, c.error_window, 6, clock=self.clock)
        self.errors = HeavyHitters(c.capacity, c.error_window, 6, clock=self.clock)
        self.on_block = on_block
        self._blocked: dict[str, int] = {}
        self.blocks = 0

    def blocked_for(self, client: str) -> float:
        """Seconds of cool-down left for ``client`` (0.0 when not blocked)."""
        until = self._blocked.get(client)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            self._blocked.pop(client, None)
            return 0.0
        return left / 1e9

    def request(self, client: str, cost: int = 1) -> bool:
        """Count a request; False when ``client`` is (or just became) blocked."""
        if self.blocked_for(client) > 0:
            return False
        if self.requests.offer(client, cost) > self.burst:
            self._block(client, "burst", count=self.requests.estimate(client))
            return False
        return True

    def response(self, client: str, status: int) -> None:
        """Report a response status for ``client`` (4xx responses count toward blocking)."""
        seen = self.responses.offer(client)
        if 400 <= status < 500:
            errors = self.errors.offer(client)
            judged = seen >= self.min_responses and errors >= self.error_ratio * seen
            if judged and self.blocked_for(client) == 0:
                self._block(client, "4xx", count=errors, responses=seen)

    def _block(self, client: str, reason: str, **counts: int) -> None:
        if len(self._blocked) >= self.max_blocked:
            now = self.clock()
            self._blocked = {c: u for c, u in self._blocked.items() if u > now}
            if len(self._blocked) >= self.max_blocked:
                return
        self._blocked[client] = self.clock() + self.cooldown_ns
        self.blocks += 1
        if self.on_block is not None:
            self.on_block(
                "client_blocked",
                {
                    "client": client,
                    "reason": reason,
                    "counts": counts,
                    "cooldown": self.cooldown_ns / 1e9,
                },
            )

    def blocked(self) -> list[dict[str, Any]]:
        now = self.clock()
        return sorted(
            (
                {"client": c, "seconds_left": (u - now) / 1e9}
                for c, u in list(self._blocked.items())
                if u > now
            ),
            key=lambda b: -b["seconds_left"],
        )


class _RuleStats:
    __slots__ = ("over", "prev_over", "prev_total", "since", "start", "throttling", "total")

    def __init__(self) -> None:
        self.start = 0
        self.total = self.over = self.prev_total = self.prev_over = 0
        self.throttling = False
        self.since = 0


class ThrottleWatch:
    """Which rules are throttling, with hysteresis so an alert does not flap.

    A rule starts throttling when, over the sliding ``window``, at least
    ``min_over`` requests and a ratio of ``start_ratio`` were over the limit; it stops
    only after ``stop_after`` seconds with no over-limit answer. ``on_change(event,
    fields)`` gets ``throttle_started`` / ``throttle_stopped`` (or the two ``events``
    given). Past ``max_rules`` distinct names, new ones are counted together as ``OTHER``.
    """

    def __init__(
        self,
        config: ThrottleConfig | None = None,
        *,
        max_rules: int = 10_000,
        clock: Clock | None = None,
        on_change: Listener | None = None,
        events: tuple[str, str] = ("throttle_started", "throttle_stopped"),
    ) -> None:
        c = config or ThrottleConfig()
        self.events = events
        self.window_ns = int(c.window * 1e9)
        self.start_ratio, self.min_over = c.start_ratio, c.min_over
        self.stop_after_ns = int(c.stop_after * 1e9)
        self.clock = clock or time.monotonic_ns
        self.on_change = on_change
        self._rules: dict[str, _RuleStats] = {}
        self._last_over: dict[str, int] = {}
        self._lock = threading.Lock()
        self.max_rules = max_rules

    def _roll(self, s: _RuleStats, now: int) -> float:
        start = now - now % self.window_ns
        if start != s.start:
            adjacent = start - s.start == self.window_ns
            s.prev_total, s.prev_over = (s.total, s.over) if adjacent else (0, 0)
            s.total = s.over = 0
            s.start = start
        return 1.0 - (now - start) / self.window_ns

    def record(self, rule: str, allowed: bool, hits: int = 1) -> None:
        """Count one decision of ``rule`` (hot path: a few integer updates)."""
        s = self._rules.get(rule)
        if s is None:
            with self._lock:
                if rule not in self._rules and len(self._rules) >= self.max_rules:
                    rule = OTHER
                s = self._rules.setdefault(rule, _RuleStats())
        now = self.clock()
        if allowed and not s.throttling and 0 <= now - s.start < self.window_ns:
            s.total += hits  # the common case: same window, nothing to judge
            return
        weight = self._roll(s, now)
        s.total += hits
        if allowed:
            if s.throttling and now - self._last_over.get(rule, 0) >= self.stop_after_ns:
                self._stop(rule, s, now)
            return
        s.over += hits
        self._last_over[rule] = now
        if not s.throttling:
            over = s.over + s.prev_over * weight
            total = s.total + s.prev_total * weight
            if over >= self.min_over and over >= self.start_ratio * total:
                s.throttling = True
                s.since = now
                self._emit(self.events[0], rule, over=over, total=total)

    def _stop(self, rule: str, s: _RuleStats, now: int) -> None:
        s.throttling = False
        self._emit(self.events[1], rule, duration=(now - s.since) / 1e9)

    def _emit(self, event: str, rule: str, **fields: float) -> None:
        if self.on_change is not None:
            counts = {k: round(v, 3) for k, v in fields.items()}
            self.on_change(event, {"rule": rule, "counts": counts})

    def tick(self) -> None:
        """Stop rules that went quiet (no traffic means no ``record`` to notice it)."""
        now = self.clock()
        for rule, s in list(self._rules.items()):
            if s.throttling and now - self._last_over.get(rule, 0) >= self.stop_after_ns:
                self._stop(rule, s, now)

    def is_throttling(self, rule: str) -> bool:
        s = self._rules.get(rule)
        return s is not None and s.throttling

    def throttling(self) -> list[str]:
        return sorted(r for r, s in list(self._rules.items()) if s.throttling)

    def top(self, n: int = 10) -> list[dict[str, Any]]:
        """Rules with the most over-limit answers in the window, most first."""
        now = self.clock()
        rows = []
        for rule, s in list(self._rules.items()):
            weight = self._roll(s, now)
            over = s.over + s.prev_over * weight
            total = s.total + s.prev_total * weight
            if over > 0 or s.throttling:
                rows.append(
                    {
                        "rule": rule,
                        "over_limit": round(over, 3),
                        "total": round(total, 3),
                        "ratio": over / total if total else 0.0,
                        "throttling": s.throttling,
                    }
                )
        rows.sort(key=lambda r: (-r["over_limit"], r["rule"]))
        return rows[: max(0, n)]
