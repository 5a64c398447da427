"""Queued admission in the decision service: hold checks that may wait, by priority.

Why: a caller that can afford to wait (``Check.max_wait`` > 0, or an RLS rule with a
``hold``) would rather be admitted a moment later than refused now. Each rule gets one
``AdmissionQueue`` (limiter.admission) shared by every caller of the rule, with one
class per priority tier (``critical_plus`` first), weighted or strict as the rule's
``queue`` settings say. A held check is answered when the rule admits it, or when its
wait runs out ("busy": ``QUEUE_TIMEOUT``), never later; a full class answers at once.

All holding happens on the service's event loop: the queue's loop timer re-asks the
rule at its ``retry_after`` (or when a concurrency permit is released), head of the
line first. A rule on a shared backend is re-asked the same way, with a synchronous
backend round trip per re-check on the loop (one per admission attempt of a key's
head, not one per waiter).

Timing: the loop's timers are good to about a millisecond, so a queue keeps up with
its rule's rate when the rule's burst holds at least a couple of milliseconds of
tokens (a 2000/s token bucket with burst 1 admitted 870/s from a queue in one run;
with burst 10 or more it admits 2000/s). With ``--workers`` each worker process has
its own queues: priority order holds among the checks one worker holds.

Metrics (on the service's registry): ``limiter_queue_depth`` (gauge),
``limiter_queue_wait_seconds`` (histogram of admitted waits),
``limiter_queue_admitted`` / ``_expired`` / ``_rejected`` / ``_cancelled`` (counters),
labelled by ``domain``, ``rule`` and ``priority``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from limiter.server.engine import Engine, RuleState
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from limiter.admission import AdmissionQueue, DeadlineExceeded, QueueFull
from limiter.config import PRIORITIES, QueueSpec

__all__ = ["ServiceAdmission", "priority_class"]

# Keys of one rule that may have waiters at once (beyond: refused at once).
MAX_KEYS = 10_000
# Idle queues of rules that no longer exist are dropped once there are this many more
# queues than live rules (their counters are kept).
SPARE_QUEUES = 64
COUNTERS = ("admitted", "expired", "rejected", "cancelled")
HELP = {
    "admitted": "Held checks admitted (after waiting, or at once on entering the queue).",
    "expired": "Held checks answered busy (QUEUE_TIMEOUT): their wait ran out first.",
    "rejected": "Checks refused at once because their priority class was full.",
    "cancelled": "Held checks whose caller went away (RPC cancelled or past its deadline).",
}


def priority_class(priority: int, rule_priority: str) -> int:
    """Queue class of a limiter.v1 Priority (0 = unspecified: the rule's own tier)."""
    return priority - 1 if priority else PRIORITIES.index(rule_priority)


class _RuleLimiter:
    """What the queue asks: the rule's current state, holding permits it grants."""

    __slots__ = ("state",)

    def __init__(self, state: RuleState) -> None:
        self.state = state

    def acquire(self, key: str, cost: int) -> Any:
        return self.state.acquire(key, cost, True)


class _Entry:
    __slots__ = ("domain", "kernel", "label", "limiter", "queue", "spec")

    def __init__(self, state: RuleState, queue: AdmissionQueue, limiter: _RuleLimiter) -> None:
        self.kernel = state.kernel
        self.spec: QueueSpec = state.rule.limit.queue
        self.domain = state.domain
        self.label = state.label
        self.queue = queue
        self.limiter = limiter


class ServiceAdmission:
    """The ``admission`` hook of the native and RLS servicers: one queue per rule kernel.

    ``admit`` is awaited for a check the rule refused (or one that would otherwise
    overtake waiters, see ``waiting``) and returns ``(decision, seconds waited)``.
    """

    def __init__(
        self,
        engine: Engine,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], int] | None = None,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.engine = engine
        self.clock = clock or time.monotonic_ns
        self.max_keys = max_keys
        self.closed = False
        self._entries: dict[int, _Entry] = {}
        # Counters of queues dropped after their rule went away, so totals never drop.
        self._retired: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._holds: tuple[Any, bool] = (None, False)
        if registry is not None:
            registry.register(_QueueCollector(self))

    def holds(self, snapshot: Any) -> bool:
        """True if a rule of ``snapshot`` (the engine's current one) has an RLS ``hold``."""
        if snapshot is not self._holds[0]:
            self._holds = (snapshot, any(r.limit.hold for r in snapshot.config.rules))
        return self._holds[1]

    def waiting(self, state: RuleState, key: str) -> bool:
        """True if checks of ``state`` for ``key`` are queued: a newcomer lines up too."""
        entry = self._entries.get(id(state.kernel))
        return entry is not None and entry.kernel is state.kernel and entry.queue.waiting(key)

    async def admit(
        self,
        state: RuleState,
        key: str,
        cost: int,
        *,
        priority: int,
        tenant: str,
        max_wait: float,
    ) -> tuple[Any, float]:
        """Hold until ``state`` admits the check or ``max_wait`` (seconds) runs out.

        ``tenant`` is accepted for the hook's signature; classes are by priority only.
        """
        if self.closed or state.kernel is None or cost > state.max_cost:
            # Draining, or a check no wait can help (zero limit, cost above the quota).
            return state.acquire(key, cost, True), 0.0
        queue = self._queue(state)
        try:
            return await queue.admit_async(
                key, cost, priority=priority_class(priority, state.priority), timeout=max_wait
            )
        except QueueFull as exc:
            return exc.decision, 0.0
        except DeadlineExceeded as exc:
            return exc.decision, exc.waited

    def reloaded(self, config: Any = None) -> None:
        """After a reload: rules whose queue settings changed answer their held checks
        busy now; their next held checks line up in a queue built to the new settings."""
        specs = {id(s.kernel): s.rule.limit.queue for s in self.engine.all_states()}
        for ident, entry in list(self._entries.items()):
            spec = specs.get(ident)
            if spec is not None and spec != entry.spec:
                del self._entries[ident]
                entry.queue.close()
                self._retire(entry)

    def close(self) -> None:
        """Answer every held check busy now and hold no more (the service is stopping)."""
        self.closed = True
        for entry in list(self._entries.values()):
            entry.queue.close()

    def depth(self) -> int:
        """Checks held right now, over every rule."""
        return sum(len(e.queue) for e in self._entries.values())

    def _queue(self, state: RuleState) -> AdmissionQueue:
        kernel = state.kernel
        entry = self._entries.get(id(kernel))
        spec = state.rule.limit.queue
        if entry is not None and entry.kernel is kernel and entry.spec == spec:
            entry.limiter.state = state  # a reload may have changed e.g. the failure mode
            return entry.queue
        if entry is not None:
            # The rule's queue settings changed (a reload): its held checks are answered
            # busy now and new ones line up in a queue built to the new settings.
            entry.queue.close()
            self._retire(entry)
        limiter = _RuleLimiter(state)
        queue = AdmissionQueue(
            limiter,
            weights=spec.weights if spec.mode == "weighted" else None,
            classes=len(PRIORITIES),
            max_queue=spec.max_queue,
            lifo=spec.order == "lifo",
            max_wait=spec.max_wait,
            clock=self.clock,
            max_keys=self.max_keys,
        )
        self._entries[id(kernel)] = _Entry(state, queue, limiter)
        self._prune()
        return queue

    def _prune(self) -> None:
        """Drop idle queues of kernels no rule uses any more (after reloads)."""
        live_states = [*self.engine.all_states(), *self.engine.relimited.values()]
        if len(self._entries) <= len(live_states) + SPARE_QUEUES:
            return
        live = {id(s.kernel) for s in live_states}
        for ident, entry in list(self._entries.items()):
            if ident not in live and not len(entry.queue):
                del self._entries[ident]
                self._retire(entry)

    def _retire(self, entry: _Entry) -> None:
        stats = entry.queue.stats()
        for c in range(len(PRIORITIES)):
            kept = self._retired.setdefault((entry.domain, entry.label, c), _empty(entry))
            _add(kept, stats, c)

    def series(self) -> Iterator[tuple[tuple[str, str, int], dict[str, Any]]]:
        """Per (domain, rule, class): depth, counters and wait histogram, summed."""
        totals: dict[tuple[str, str, int], dict[str, Any]] = {}
        for key, kept in self._retired.items():
            totals[key] = {**kept, "wait_counts": list(kept["wait_counts"]), "depth": 0}
        for entry in list(self._entries.values()):
            stats = entry.queue.stats()
            for c in range(len(PRIORITIES)):
                key = (entry.domain, entry.label, c)
                if key not in totals:
                    totals[key] = _empty(entry)
                _add(totals[key], stats, c)
        yield from totals.items()


def _empty(entry: _Entry) -> dict[str, Any]:
    n = len(entry.queue.wait_buckets) + 1
    out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    out.update(depth=0, wait_counts=[0] * n, wait_sum=0.0, buckets=entry.queue.wait_buckets)
    return out


def _add(into: dict[str, Any], stats: dict[str, Any], c: int) -> None:
    for name in (*COUNTERS, "depth"):
        into[name] += stats[name][c]
    into["wait_sum"] += stats["wait_sum"][c]
    for i, count in enumerate(stats["wait_counts"][c]):
        into["wait_counts"][i] += count


class _QueueCollector(Collector):
    def __init__(self, admission: ServiceAdmission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[Any]:
        labels = ["domain", "rule", "priority"]
        depth = GaugeMetricFamily(
            "limiter_queue_depth", "Checks held for admission now, per priority.", labels=labels
        )
        waits = HistogramMetricFamily(
            "limiter_queue_wait_seconds",
            "Time held checks waited before admission (admitted checks only).",
            labels=labels,
        )
        counters = {
            name: CounterMetricFamily(f"limiter_queue_{name}", HELP[name], labels=labels)
            for name in COUNTERS
        }
        for (domain, rule, c), s in self.admission.series():
            values = [domain, rule, PRIORITIES[c]]
            depth.add_metric(values, s["depth"])
            for name in COUNTERS:
                counters[name].add_metric(values, s[name])
            running, buckets = 0, []
            for bound, count in zip(s["buckets"], s["wait_counts"], strict=False):
                running += count
                buckets.append((floatToGoString(bound), running))
            buckets.append(("+Inf", running + s["wait_counts"][-1]))
            waits.add_metric(values, buckets, s["wait_sum"])
        yield depth
        yield waits
        yield from counters.values()
