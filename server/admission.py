"""Held checks: a refused check that may wait lines up for its rule, by priority.

Why: a caller that can afford to wait (``Check.max_wait`` > 0, or an RLS rule with a
``hold``) would rather be admitted a moment later than refused now. Each rule gets a
queue shared by every caller of the rule, with a lane per key that has waiters and one
class per priority tier (``critical_plus`` first), weighted or strict, FIFO or LIFO,
as the rule's ``queue`` settings say (the ``PriorityQueue`` kernel). A held check is
answered when the rule admits it, or when its wait, the rule's cap or the caller's
deadline runs out ("busy": ``QUEUE_TIMEOUT``), never later; a full class answers at once,
as does a check beyond the checks held per caller (its address) or per rule
(``MAX_HELD_PER_CALLER``, ``MAX_HELD_PER_RULE`` unless the service sets others).

Everything runs on the decision loop and nothing here blocks it: a lane's task asks the
rule for its head of line (the in-process kernel, or an awaited round trip to the
shared store), then admits it, or sleeps until the refusal's ``retry_after``, the next
deadline or a newcomer, whichever comes first; a refusal without ``retry_after`` (a
concurrency limit waiting for a release, possibly on another replica) is asked again
every ``RECHECK`` seconds. A caller that goes away leaves its lane (a permit just
granted to it is given back). With ``--workers``, priority order holds among the checks
one worker holds.

Metrics (on the service's registry), labelled by ``domain``, ``rule`` and ``priority``:
``limiter_queue_depth`` (gauge), ``limiter_queue_wait_seconds`` (histogram of admitted
waits), ``limiter_queue_{admitted,expired,rejected,cancelled}_total``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from limiter.server.rules import Kind, Rulebook, RuleState, free
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from limiter import Decision, PriorityQueue
from limiter.admission import WAIT_BUCKETS
from limiter.config import PRIORITIES, QueueSpec
from limiter.priority import Priority

# Keys of one rule that may have waiters at once (beyond: refused at once).
MAX_KEYS = 10_000
# Checks held at once per caller (its address, over every rule) and per rule (over
# every caller): beyond, a check that may wait is answered at once instead.
MAX_HELD_PER_CALLER = 1_000
MAX_HELD_PER_RULE = 10_000
# Seconds between asks while the refusal says nothing of when to ask again.
RECHECK = 0.02
COUNTERS = ("admitted", "expired", "rejected", "cancelled")
HELP = {
    "admitted": "Held checks admitted (after waiting, or at once on entering the queue).",
    "expired": "Held checks answered busy (QUEUE_TIMEOUT): their wait ran out first.",
    "rejected": "Checks answered at once: their priority class was full, or the checks "
    "held for their caller or rule were at the bound.",
    "cancelled": "Held checks whose caller went away (RPC cancelled or past its deadline).",
}
# (decision or permit, seconds waited, answered by the failure mode)
Admitted = tuple[Any, float, bool]


@dataclass(slots=True, eq=False)
class _Waiter:
    cost: int
    rank: int
    enqueued: int  # time.monotonic_ns()
    future: asyncio.Future[Admitted]


class _Lane:
    """The checks held for one key of a rule."""

    __slots__ = ("key", "queue", "refusal", "task", "waiters", "wake")

    def __init__(self, key: str, spec: QueueSpec) -> None:
        self.key = key
        self.queue = PriorityQueue(
            list(spec.max_queue),
            weights=list(spec.weights) if spec.mode == "weighted" else None,
            classes=len(PRIORITIES),
            lifo=spec.order == "lifo",
        )
        self.waiters: dict[int, _Waiter] = {}
        self.wake = asyncio.Event()
        self.refusal: Decision | None = None
        self.task: asyncio.Task[None] | None = None


class _RuleQueue:
    """One rule's lanes, and the rule's counters (``ServiceAdmission._counts``)."""

    def __init__(self, state: RuleState, counts: dict[str, list[Any]]) -> None:
        self.state = state
        self.spec: QueueSpec = state.rule.limit.queue
        self.lanes: dict[str, _Lane] = {}
        self.held = 0  # checks held now
        self.counts = counts

    def depth(self) -> list[int]:
        out = [0] * len(PRIORITIES)
        # Read by a scrape on another thread while the decision loop adds and removes
        # waiters: iterate over copies (each taken in one step).
        for lane in list(self.lanes.values()):
            for w in list(lane.waiters.values()):
                out[w.rank] += 1
        return out


class ServiceAdmission:
    """The decider's admission hook: ``waiting`` and ``admit`` (see the module docstring)."""

    def __init__(
        self,
        rulebook: Rulebook,
        registry: CollectorRegistry | None = None,
        *,
        max_per_caller: int = MAX_HELD_PER_CALLER,
        max_per_rule: int = MAX_HELD_PER_RULE,
    ) -> None:
        self.rulebook = rulebook
        self.max_per_caller = max_per_caller
        self.max_per_rule = max_per_rule
        self.by_caller: dict[str, int] = {}  # checks held now, per caller
        self.closed = False
        self.queues: dict[int, _RuleQueue] = {}  # by id of the rule's kernel
        # Per rule (domain, label), shared by its queues: totals never drop when a queue
        # is replaced after a reload. Each counter is a list per class.
        self.counts: dict[tuple[str, str], dict[str, list[Any]]] = {}
        if registry is not None:
            registry.register(_QueueCollector(self))

    def waiting(self, state: RuleState, key: str) -> bool:
        """True if checks of ``state`` for ``key`` are held: a newcomer lines up too."""
        rq = self.queues.get(id(state.kernel))
        return rq is not None and rq.state.kernel is state.kernel and key in rq.lanes

    async def admit(
        self,
        state: RuleState,
        key: str,
        cost: int,
        priority: Priority,
        max_wait: float,
        caller: str = "",
    ) -> Admitted:
        """Hold until ``state`` admits the check or ``max_wait`` (seconds) runs out."""
        if self.closed or state.kernel is None or cost > state.max_cost:
            # Draining, or a check no wait can help (zero limit, cost above the quota).
            return await _ask(state, key, cost)
        rq = self._queue(state)
        rank = priority.rank
        lane = rq.lanes.get(key)
        held = self.by_caller.get(caller, 0)
        if (
            held >= self.max_per_caller
            or rq.held >= self.max_per_rule
            or (lane is None and len(rq.lanes) >= MAX_KEYS)
        ):
            # At a bound: this check is answered now, and those held keep their place.
            rq.counts["rejected"][rank] += 1
            return await _ask(state, key, cost)
        if lane is None:
            lane = rq.lanes[key] = _Lane(key, rq.spec)
        now = time.monotonic_ns()
        deadline = now + int(min(max_wait, rq.spec.max_wait) * 1e9)
        item = lane.queue.push(rank, deadline)
        if item < 0:  # the class is full
            rq.counts["rejected"][rank] += 1
            if not lane.waiters:
                del rq.lanes[key]
            return _busy(lane, state), 0.0, False
        future: asyncio.Future[Admitted] = asyncio.get_running_loop().create_future()
        waiter = lane.waiters[item] = _Waiter(cost, rank, now, future)
        if lane.task is None:
            lane.task = asyncio.create_task(self._serve(rq, lane))
        else:
            lane.wake.set()
        self.by_caller[caller] = held + 1
        rq.held += 1
        try:
            return await future
        except asyncio.CancelledError:
            if lane.waiters.pop(item, None) is waiter:
                lane.queue.remove(item)
                rq.counts["cancelled"][rank] += 1
                lane.wake.set()
            elif future.done() and not future.cancelled():
                free(future.result()[0])  # admitted as the caller went away: give it back
            raise
        finally:
            rq.held -= 1
            left = self.by_caller[caller] - 1
            if left:
                self.by_caller[caller] = left
            else:
                del self.by_caller[caller]

    async def _serve(self, rq: _RuleQueue, lane: _Lane) -> None:
        """Admit the lane's waiters in order, as the rule allows, until none is left."""
        q, waiters = lane.queue, lane.waiters
        try:
            while waiters:
                now = time.monotonic_ns()
                item = q.pop_expired(now)
                while item >= 0:
                    w = waiters.pop(item)
                    _resolve(w, (_busy(lane, rq.state), (now - w.enqueued) / 1e9, False))
                    rq.counts["expired"][w.rank] += 1
                    item = q.pop_expired(now)
                item = q.peek(now)
                if item < 0:
                    continue  # every waiter had expired (answered above), or the loop ends
                w = waiters[item]
                decision, _, failed = await _ask(rq.state, lane.key, w.cost)
                if waiters.get(item) is not w:  # the caller went away meanwhile
                    free(decision)
                    continue
                now = time.monotonic_ns()
                if decision.allowed:
                    if q.peek(now) == item:
                        q.pop(now)  # keeps the weighted classes' turns
                    else:
                        q.remove(item)
                    del waiters[item]
                    waited = (now - w.enqueued) / 1e9
                    rq.counts["admitted"][w.rank] += 1
                    rq.counts["wait_counts"][w.rank][bisect.bisect_left(WAIT_BUCKETS, waited)] += 1
                    rq.counts["wait_sum"][w.rank] += waited
                    _resolve(w, (decision, waited, failed))
                    continue
                lane.refusal = decision
                timeout = decision.retry_after if decision.retry_after > 0 else RECHECK
                first = q.next_deadline()
                if first >= 0:
                    timeout = min(timeout, max(first - now, 0) / 1e9)
                lane.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.wake.wait(), timeout)
        finally:
            if rq.lanes.get(lane.key) is lane:
                del rq.lanes[lane.key]

    def _queue(self, state: RuleState) -> _RuleQueue:
        rq = self.queues.get(id(state.kernel))
        if rq is not None and rq.state.kernel is state.kernel and rq.spec == state.rule.limit.queue:
            if rq.state is not state:
                # A reload may have changed e.g. the failure mode, or the rule's name.
                rq.state, rq.counts = state, self._counts(state)
            return rq
        if rq is not None:
            self._close(rq)  # settings changed: held checks are answered busy now
        rq = self.queues[id(state.kernel)] = _RuleQueue(state, self._counts(state))
        self._prune()
        return rq

    def _counts(self, state: RuleState) -> dict[str, list[Any]]:
        """The counters of ``state``'s rule, made on its first held check."""
        key = (state.domain, state.label)
        counts = self.counts.get(key)
        if counts is None:
            n = len(PRIORITIES)
            counts = {name: [0] * n for name in COUNTERS}
            counts["wait_counts"] = [[0] * (len(WAIT_BUCKETS) + 1) for _ in range(n)]
            counts["wait_sum"] = [0.0] * n
            self.counts[key] = counts  # complete before a scrape (another thread) sees it
        return counts

    def reloaded(self) -> None:
        """After a reload: rules whose queue settings changed answer their held checks
        busy now; their next held checks line up in a queue built to the new settings."""
        specs = {id(s.kernel): s.rule.limit.queue for s in self.rulebook.all_states()}
        for ident, rq in list(self.queues.items()):
            spec = specs.get(ident)
            if spec is not None and spec != rq.spec:
                del self.queues[ident]
                self._close(rq)

    def _prune(self) -> None:
        """Drop idle queues of kernels no rule uses any more (after reloads)."""
        book = self.rulebook
        states = [*book.all_states(), *book.relimited.values()]
        # A rule with a reserve also decides through its view (``RuleState.unreserved``).
        states += [s.unreserved for s in states if s.unreserved is not None]
        live = {id(s.kernel) for s in states}
        for ident, rq in list(self.queues.items()):
            if ident not in live and not rq.lanes:
                del self.queues[ident]

    def close(self) -> None:
        """Answer every held check busy now and hold no more (the service is stopping)."""
        self.closed = True
        for rq in self.queues.values():
            self._close(rq)

    @staticmethod
    def _close(rq: _RuleQueue) -> None:
        """Answer the queue's held checks busy now."""
        now = time.monotonic_ns()
        for lane in list(rq.lanes.values()):
            for w in lane.waiters.values():
                rq.counts["expired"][w.rank] += 1
                _resolve(w, (_busy(lane, rq.state), (now - w.enqueued) / 1e9, False))
            lane.waiters.clear()
            if lane.task is not None:
                lane.task.cancel()

    def series(self) -> Iterator[tuple[tuple[str, str, int], dict[str, Any]]]:
        """Per (domain, rule, class): depth, counters and wait histogram (read by a
        scrape on another thread: over copies, as ``_RuleQueue.depth``)."""
        depths: dict[tuple[str, str, int], int] = {}
        for rq in list(self.queues.values()):
            for c, depth in enumerate(rq.depth()):
                key = (rq.state.domain, rq.state.label, c)
                depths[key] = depths.get(key, 0) + depth
        for (domain, rule), counts in list(self.counts.items()):
            for c in range(len(PRIORITIES)):
                out: dict[str, Any] = {name: counts[name][c] for name in COUNTERS}
                out["wait_counts"] = list(counts["wait_counts"][c])
                out["wait_sum"] = counts["wait_sum"][c]
                out["depth"] = depths.get((domain, rule, c), 0)
                yield (domain, rule, c), out


async def _ask(state: RuleState, key: str, cost: int) -> Admitted:
    """The rule's answer for one check now (waited nothing), and whether its failure mode
    gave it."""
    if cost > state.max_cost or state.kernel is None:
        return state.refusal(), 0.0, False
    kind = state.kind
    if kind is Kind.SHARED:
        answers = await state.kernel.decide([key], [cost])
        return answers.decisions[0], 0.0, bool(answers.failed)
    if kind is Kind.SHARED_PERMITS:
        permit = await state.kernel.acquire_async(key, cost)
        return permit, 0.0, permit.failed
    return state.acquire(key, cost), 0.0, False


def _resolve(w: _Waiter, answer: Admitted) -> None:
    """Answer a held check; a permit granted to one already answered is given back."""
    if not w.future.done():
        w.future.set_result(answer)
    else:
        free(answer[0])


def _busy(lane: _Lane, state: RuleState) -> Decision:
    """The answer to a check that waited in vain: the lane's last refusal."""
    last = lane.refusal
    if last is None:
        return Decision(False, state.limit, 0, 0.0, RECHECK)
    return Decision(False, last.limit, last.remaining, last.reset_after, last.retry_after)


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
            for bound, count in zip(WAIT_BUCKETS, s["wait_counts"], strict=False):
                running += count
                buckets.append((floatToGoString(bound), running))
            buckets.append(("+Inf", running + s["wait_counts"][-1]))
            waits.add_metric(values, buckets, s["wait_sum"])
        yield depth
        yield waits
        yield from counters.values()
