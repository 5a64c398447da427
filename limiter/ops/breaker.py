"""Circuit breakers per dependency and per partition.

Closed: calls pass and outcomes are counted in a time-based sliding window of
buckets. The breaker opens when, with at least ``minimum_calls`` in the window, the
failure ratio or the slow-call ratio reaches its threshold, or after
``consecutive_failures`` failures in a row. Open: calls fail fast for ``open_for``
seconds, then Half-Open lets ``half_open_probes`` calls through: all succeeding closes
it, one failing re-opens it; probes with no outcome after another ``open_for`` count as
lost and new ones are let through. With a health probe configured (HTTP or gRPC health) an
open breaker closes only when the probe passes, so no user call is risked.

Modes an operator can set: NORMAL, DISABLED (always allow, count nothing),
METRICS_ONLY (count and report, always allow), FORCED_OPEN, FORCED_CLOSED.

The hot path takes no lock that makes a caller wait: counters are plain integer
updates under the GIL (a thread switch between read and write can lose one count,
which only blurs a ratio), half-open probe slots are handed out by an atomic
``itertools.count``, and state changes use a non-blocking try-lock, so a caller that
finds another thread mid-transition simply goes on.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from limiter.errors import InvalidParameter, brief
from limiter.schema import Section, setting

__all__ = [
    "BreakerConfig",
    "BreakerGroup",
    "Breakers",
    "CircuitBreaker",
    "Mode",
    "State",
    "grpc_health_probe",
    "http_health_probe",
]

Clock = Callable[[], int]
Listener = Callable[[str, dict[str, Any]], None]
Override = Callable[[str], str | None]


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Mode(StrEnum):
    NORMAL = "normal"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"


@dataclass(frozen=True)
class BreakerConfig(Section):
    """One dependency's circuit breakers (``breakers.<name>``). Closed, calls pass and
    outcomes are counted; the breaker opens on a failure or slow-call ratio (0 turns a
    trigger off), or on consecutive failures. Open, calls fail fast for ``open_for``;
    then probes are let through: all succeeding close it, one failing re-opens it."""

    window: float = setting(
        10.0, "the sliding window of outcomes", low=1e-3, high=86400, seconds=True
    )
    buckets: int = setting(10, "buckets the window slides by", low=1, high=1000)
    minimum_calls: int = setting(
        20, "calls in the window before a ratio may open the breaker", low=1, high=1e9
    )
    failure_ratio: float = setting(0.5, "open at this share of failures", low=0, high=1)
    slow_call_ratio: float = setting(0.0, "open at this share of slow calls", low=0, high=1)
    slow_call_duration: float = setting(
        1.0, "a call this long is slow", low=0, high=86400, seconds=True
    )
    consecutive_failures: int = setting(
        0, "open after this many failures in a row", low=0, high=1e9
    )
    open_for: float = setting(
        5.0, "how long calls fail fast before probes are let through",
        low=0, high=86400, seconds=True,
    )  # fmt: skip
    half_open_probes: int = setting(
        1, "calls let through to probe; all must succeed to close", low=1, high=10_000
    )
    failure_status: tuple[int, ...] = setting(
        (500, 502, 503, 504), "status codes that count as failures", low=0, high=999
    )
    ignore_status: tuple[int, ...] = setting(
        (), "status codes that count as nothing", low=0, high=999
    )
    health: str | None = setting(
        None, "a health probe: an open breaker closes only once it passes "
        "(grpc://host:port/service asks grpc.health.v1)",
        prefixes=("http://", "https://", "grpc://"),
    )  # fmt: skip
    health_interval: float = setting(
        1.0, "time between health probes", low=1e-3, high=86400, seconds=True
    )
    health_timeout: float = setting(1.0, "timeout of one probe", low=1e-3, high=600, seconds=True)
    max_partitions: int = setting(
        10_000, "breakers per dependency (one per partition); beyond, a closed one is dropped",
        low=1, high=10_000_000,
    )  # fmt: skip
    mode: Mode = setting(
        Mode.NORMAL, "metrics_only: count but never refuse; disabled: always allow, count "
        "nothing; forced_open, forced_closed",
    )  # fmt: skip


def http_health_probe(url: str, timeout: float = 1.0) -> Callable[[], bool]:
    """Healthy when a GET of ``url`` answers 2xx within ``timeout``."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return 200 <= resp.status < 300
        except (OSError, urllib.error.URLError, ValueError):
            return False

    return probe


def grpc_health_probe(target: str, service: str = "", timeout: float = 1.0) -> Callable[[], bool]:
    """Healthy when grpc.health.v1 ``Check(service)`` answers SERVING within ``timeout``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def probe() -> bool:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    return probe


def probe_for(url: str, timeout: float) -> Callable[[], bool]:
    if url.startswith("grpc://"):
        target, _, service = url[len("grpc://") :].partition("/")
        return grpc_health_probe(target, service, timeout)
    return http_health_probe(url, timeout)


class CircuitBreaker:
    """One breaker: ask ``allow()`` before a call, then ``record(...)`` its outcome."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        on_change: Listener | None = None,
        override: Override | None = None,
        probe: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.config = cfg = config or BreakerConfig()
        self.clock = clock or time.monotonic_ns
        self.on_change = on_change
        self.override = override
        self.mode = cfg.mode
        self.probe_fn = probe or (probe_for(cfg.health, cfg.health_timeout) if cfg.health else None)
        self.state = State.CLOSED
        self.opened_at = 0
        self.half_opened_at = 0
        self.last_probe = 0
        self.trips = 0  # closed -> open transitions
        self._width = max(1, int(cfg.window * 1e9 / cfg.buckets))
        n = cfg.buckets
        self._epoch = [-1] * n
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._consecutive = 0
        self._tickets = itertools.count()
        self._passed = itertools.count(1)
        self._transition = threading.Lock()
        self.rejected = 0
        self._undecided = False

    # -- hot path -------------------------------------------------------------------

    def effective_mode(self) -> Mode:
        if self.override is not None:
            forced = self.override(self.name)
            if forced == "force_open":
                return Mode.FORCED_OPEN
            if forced == "force_closed":
                return Mode.FORCED_CLOSED
        return self.mode

    def allow(self) -> bool:
        """May a call go to the dependency now?"""
        if self.state is State.CLOSED and self.mode is Mode.NORMAL and self.override is None:
            return True  # the common case, in three attribute reads
        mode = self.effective_mode()
        if mode is not Mode.NORMAL:
            if mode is Mode.FORCED_OPEN:
                self.rejected += 1
                return False
            if mode is not Mode.METRICS_ONLY:
                return True
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            if (
                self.probe_fn is None
                and self.clock() - self.opened_at >= self.config.open_for * 1e9
            ):
                moved = self._move(State.OPEN, State.HALF_OPEN, "open_for elapsed")
                if moved or self.state is not State.OPEN:
                    return self.allow()  # half-open now: ask for a probe ticket
                # Another thread is moving it right now: refused, as while open.
            return mode is Mode.METRICS_ONLY or self._reject()
        if next(self._tickets) < self.config.half_open_probes:
            return True
        wait = self.config.open_for * 1e9
        if wait and self.clock() - self.half_opened_at >= wait:
            # No outcome for a whole open_for: the probes were lost; hand out new ones.
            self.half_opened_at = self.clock()
            self._tickets = itertools.count(1)
            self._passed = itertools.count(1)
            return True
        return mode is Mode.METRICS_ONLY or self._reject()

    def _reject(self) -> bool:
        self.rejected += 1
        return False

    def classify(self, status: int | None = None) -> str:
        """ "failure", "ignore" or "success" for a status code (none: a success)."""
        cfg = self.config
        if status is None:
            return "success"
        if status in cfg.ignore_status:
            return "ignore"
        return "failure" if status in cfg.failure_status else "success"

    def record(
        self, duration: float = 0.0, *, failed: bool | None = None, status: int | None = None
    ) -> None:
        """Report one call's outcome (``failed`` wins over classifying ``status``)."""
        mode = self.effective_mode()
        if mode is Mode.DISABLED:
            return
        outcome = (
            ("failure" if failed else "success") if failed is not None else self.classify(status)
        )
        if outcome == "ignore":
            return
        cfg = self.config
        now = self.clock()
        e = now // self._width
        b = e % cfg.buckets
        if self._epoch[b] != e:
            self._epoch[b] = e
            self._calls[b] = self._failures[b] = self._slow[b] = 0
        self._calls[b] += 1
        slow = cfg.slow_call_ratio > 0 and duration >= cfg.slow_call_duration
        if slow:
            self._slow[b] += 1
        if outcome == "failure":
            self._failures[b] += 1
            self._consecutive += 1
        else:
            self._consecutive = 0
        if mode is Mode.FORCED_CLOSED or mode is Mode.FORCED_OPEN:
            return
        state = self.state
        if state is State.HALF_OPEN:
            if outcome == "failure" or slow:
                self._move(State.HALF_OPEN, State.OPEN, "probe failed")
            elif next(self._passed) >= cfg.half_open_probes:
                self._move(State.HALF_OPEN, State.CLOSED, "probes passed")
        elif state is State.CLOSED and (outcome == "failure" or slow or self._undecided):
            # A fast success can only lower both ratios, so it is evaluated only while
            # earlier failures wait for the minimum volume.
            reason = self._trip_reason(e)
            if reason:
                self._move(State.CLOSED, State.OPEN, reason)

    def _trip_reason(self, e: int) -> str | None:
        cfg = self.config
        if cfg.consecutive_failures and self._consecutive >= cfg.consecutive_failures:
            return f"{self._consecutive} consecutive failures"
        calls, failures, slow = self._totals(e)
        self._undecided = calls < cfg.minimum_calls and (failures > 0 or slow > 0)
        if self._undecided:
            return None
        if cfg.failure_ratio and failures >= cfg.failure_ratio * calls:
            return f"failure ratio {failures}/{calls}"
        if cfg.slow_call_ratio and slow >= cfg.slow_call_ratio * calls:
            return f"slow-call ratio {slow}/{calls}"
        return None

    def _totals(self, e: int) -> tuple[int, int, int]:
        calls = failures = slow = 0
        oldest = e - self.config.buckets
        for b, epoch in enumerate(self._epoch):
            if oldest < epoch <= e:
                calls += self._calls[b]
                failures += self._failures[b]
                slow += self._slow[b]
        return calls, failures, slow

    # -- transitions ----------------------------------------------------------------

    def _move(self, source: State, target: State, reason: str) -> bool:
        if not self._transition.acquire(blocking=False):
            return False
        try:
            if self.state is not source:
                return False
            self._enter(target)
            if source is State.CLOSED and target is State.OPEN:
                self.trips += 1
        finally:
            self._transition.release()
        self._announce(source, target, reason)
        return True

    def _enter(self, target: State) -> None:
        if target is State.OPEN:
            self.opened_at = self.clock()
        elif target is State.HALF_OPEN:
            self.half_opened_at = self.clock()
            self._tickets = itertools.count()
            self._passed = itertools.count(1)
        else:
            self._epoch = [-1] * self.config.buckets
            self._consecutive = 0
        self.state = target

    def _announce(self, source: State, target: State, reason: str) -> None:
        if self.on_change is None:
            return
        event = {
            State.OPEN: "breaker_opened",
            State.CLOSED: "breaker_closed",
            State.HALF_OPEN: "breaker_half_open",
        }[target]
        calls, failures, slow = self._totals(self.clock() // self._width)
        self.on_change(
            event,
            {
                "breaker": self.name,
                "from": source.value,
                "to": target.value,
                "reason": reason,
                "counts": {"calls": calls, "failures": failures, "slow": slow},
            },
        )

    def probe(self) -> bool | None:
        """Run the health probe if open and due; closes the breaker when healthy.

        Returns the probe result, or None when no probe ran. Never call on the hot path.
        """
        fn = self.probe_fn
        if fn is None or self.state is not State.OPEN:
            return None
        now = self.clock()
        if now - self.last_probe < self.config.health_interval * 1e9:
            return None
        if now - self.opened_at < self.config.open_for * 1e9:
            return None
        self.last_probe = now
        try:
            healthy = bool(fn())
        except Exception:
            healthy = False
        if healthy:
            self._move(State.OPEN, State.CLOSED, "health probe passed")
        return healthy

    def reset(self) -> None:
        """Manual reset: back to Closed with an empty window."""
        with self._transition:
            source = self.state
            self._enter(State.CLOSED)
        if source is not State.CLOSED:
            self._announce(source, State.CLOSED, "manual reset")

    # -- conveniences ---------------------------------------------------------------

    def retry_after(self) -> float:
        if self.state is State.OPEN:
            left = self.config.open_for - (self.clock() - self.opened_at) / 1e9
            return max(left, 0.0)
        return 0.0

    def snapshot(self) -> dict[str, Any]:
        calls, failures, slow = self._totals(self.clock() // self._width)
        return {
            "name": self.name,
            "state": self.state.value,
            "mode": self.effective_mode().value,
            "calls": calls,
            "failures": failures,
            "slow": slow,
            "consecutive_failures": self._consecutive,
            "rejected": self.rejected,
            "retry_after": self.retry_after(),
        }


class BreakerGroup:
    """One breaker per partition of a dependency, so one bad shard does not trip the rest.

    Named ``dependency`` (partition "") or ``dependency/partition``. Past
    ``max_partitions`` the oldest closed partition is dropped (it starts fresh).
    """

    def __init__(self, dependency: str, config: BreakerConfig, **kwargs: Any) -> None:
        self.dependency = dependency
        self.config = config
        self._kwargs = kwargs
        self._parts: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, partition: str) -> CircuitBreaker:
        b = self._parts.get(partition)
        if b is not None:
            return b
        with self._lock:
            b = self._parts.get(partition)
            if b is None:
                if len(self._parts) >= self.config.max_partitions:
                    for key, old in list(self._parts.items()):
                        if old.state is State.CLOSED:
                            del self._parts[key]
                            break
                name = f"{self.dependency}/{partition}" if partition else self.dependency
                b = self._parts[partition] = CircuitBreaker(name, self.config, **self._kwargs)
        return b

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._parts.values()))


class Breakers:
    """Every dependency's breakers, configured by the ``breakers:`` section.

    The section maps dependency names to settings; ``default`` applies to every
    dependency (and fills the keys a named one leaves out). A forced switch named
    ``dep`` covers all of dep's partitions; ``dep/part`` covers one.
    """

    def __init__(
        self,
        configs: Mapping[str, BreakerConfig] | None = None,
        *,
        clock: Clock | None = None,
        on_change: Listener | None = None,
        override: Override | None = None,
    ) -> None:
        self.configs = dict(configs or {})
        self.default = self.configs.pop("default", BreakerConfig())
        self._override = override
        self._kwargs: dict[str, Any] = {"clock": clock, "on_change": on_change}
        self._groups: dict[str, BreakerGroup] = {}
        self._lock = threading.Lock()

    def _forced(self, name: str) -> str | None:
        if self._override is None:
            return None
        forced = self._override(name)
        if forced is None and "/" in name:
            forced = self._override(name.split("/", 1)[0])
        return forced

    def get(self, dependency: str, partition: str = "") -> CircuitBreaker:
        if not isinstance(dependency, str) or not dependency or "/" in dependency:
            raise InvalidParameter(
                f"dependency must be a non-empty str without '/', got {brief(dependency)}"
            )
        g = self._groups.get(dependency)
        if g is None:
            with self._lock:
                g = self._groups.get(dependency)
                if g is None:
                    config = self.configs.get(dependency, self.default)
                    override = self._forced if self._override is not None else None
                    g = self._groups[dependency] = BreakerGroup(
                        dependency, config, override=override, **self._kwargs
                    )
        return g[partition]

    def peek(self, dependency: str, partition: str = "") -> CircuitBreaker | None:
        """The breaker of ``dependency`` and ``partition`` if one has counted a call or a
        switch forces it open, else None (closed, and nothing to keep): asking on every
        check does not fill the table with breakers that never saw a call."""
        g = self._groups.get(dependency)
        b = None if g is None else g._parts.get(partition)
        if b is not None or self._override is None:
            return b
        name = f"{dependency}/{partition}" if partition else dependency
        return self.get(dependency, partition) if self._forced(name) == "force_open" else None

    def all(self) -> list[CircuitBreaker]:
        return [b for g in list(self._groups.values()) for b in g]

    def run_probes(self) -> int:
        """Probe every open breaker that is due (housekeeping thread); returns probes run."""
        return sum(1 for b in self.all() if b.probe() is not None)

    def snapshot(self) -> list[dict[str, Any]]:
        return sorted((b.snapshot() for b in self.all()), key=lambda s: s["name"])
