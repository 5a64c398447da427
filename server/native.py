"""The native ``limiter.v1.Limiter`` API: batched Decide, Release, Observe.

Checks name a rule by ``domain`` + rule name (or descriptor path id) and carry the
caller's partition ``key``; over-limit is an answer (``allowed=false``), not an RPC
error. Only a malformed request (bad priority, oversized key, too many checks) is
INVALID_ARGUMENT.

Queued admission (issue 9; ``limiter.server.admission``): pass ``admission=`` an
object with::

    async def admit(state: RuleState, key: str, cost: int, *, priority: int,
                    tenant: str, max_wait: float) -> tuple[Decision, float]

and optionally ``waiting(state, key) -> bool``. ``admit`` is called for a refused check
whose ``max_wait`` > 0, and for one that ``waiting`` says would overtake checks already
held for that key (those are not asked first). It holds the caller until the rule
admits it or the wait runs out, and returns the final decision and the seconds waited
(a wait that expires is answered ``QUEUE_TIMEOUT``). The wait is capped so the answer
leaves a margin before the RPC's deadline (``ANSWER_MARGIN``, ``ANSWER_SHARE``). The
checks of one request are held together. Without a hook, every check is answered at
once (``waited`` = 0).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import grpc
from limiter._wire import WireError, encode_decide_response, parse_decide_request
from limiter.server import v1
from limiter.server.engine import MAX_UINT32, BadRequest, Engine, RuleState
from limiter.server.metrics import Metrics

from limiter import Decision

Result = v1.Result
MAX_CHECKS = 4096
MAX_KEY_CHARS = 4096
MAX_WAIT_SECONDS = 3600.0  # the longest a check may ask to be held
PRIORITIES = frozenset(v1.Priority.values())
# limiter.v1 Observation.Outcome -> the adaptive kernel's outcome (an error counts as a drop).
OUTCOMES = {0: "ok", 1: "ok", 2: "dropped", 3: "dropped", 4: "ignored"}
# limiter.v1 Priority -> criticality tier name (0, unspecified: the rule's own priority)
PRIORITY_NAMES = {1: "critical_plus", 2: "critical", 3: "sheddable_plus", 4: "sheddable"}
# A held check is answered at the latest ANSWER_MARGIN seconds + ANSWER_SHARE of the time
# left before the RPC's deadline: room for the answer's trip and for the event loop
# running late under load (better "busy" a little early than DEADLINE_EXCEEDED).
ANSWER_MARGIN = 0.02
ANSWER_SHARE = 0.05


# A check waiting for I/O: (index, check, state, key, cost, shadow); a check is the tuple
# limiter._wire.parse_decide_request gives: (domain, rule, key, cost, priority, tenant,
# max_wait).
Work = tuple[int, tuple[Any, ...], RuleState, str, int, bool]
# A Result as limiter._wire.encode_decide_response takes it: (allowed, code, limit,
# remaining, reset_after, retry_after, waited, permit).
Answer = tuple[bool, int, int, int, float, float, float, str | None]
UNKNOWN: Answer = (True, Result.UNKNOWN_RULE, 0, 0, 0.0, 0.0, 0.0, None)
UNLIMITED: Answer = (True, Result.OK, 0, MAX_UINT32, 0.0, 0.0, 0.0, None)
# Check tuple fields.
DOMAIN, RULE, KEY, COST, PRIORITY, TENANT, MAX_WAIT = range(7)
# Per rule and priority within one request (``LimiterService._gate``): (state or None,
# forced decision or None, shadow, top-client pressure or None when clients are not asked,
# the bulk client counter (``Ops.client_counter``) or None, whether the rule's checks go
# in runs to its kernel (``_decide_run``)).
Gate = tuple[RuleState | None, Decision | None, bool, bool | None, Any, bool]
BATCH = 5  # Gate field: runs of checks are decided together
# A run of a shared rule's checks waiting for the backend: (state, shadow, index of its
# first answer, keys, costs, checks).
Pending = tuple[RuleState, bool, int, list[str], list[int], list[tuple[Any, ...]]]


def _answer(
    engine: Engine,
    state: RuleState,
    decision: Any,
    waited: float = 0.0,
    failed: bool = False,
    shadow: bool = False,
) -> Answer:
    """The Result for one decided check (a held permit gets its token here)."""
    allowed = decision.allowed
    shadow = shadow or state.shadow
    if failed:
        code = Result.BACKEND_ERROR  # answered per the rule's failure_mode
    elif allowed or shadow:
        code = Result.OK
    elif waited > 0:
        code = Result.QUEUE_TIMEOUT
    else:
        code = Result.OVER_LIMIT
    permit = None
    if allowed and type(decision) is not Decision:
        permit = engine.hold(decision)
    return (
        allowed or shadow,
        code,
        getattr(decision, "limit", state.limit),
        decision.remaining,
        decision.reset_after,
        0.0 if allowed else decision.retry_after,
        waited,
        permit,
    )


def _answers(decisions: list[Decision], shadow: bool) -> list[Answer]:
    """``_answer`` for a run's Decisions (a rate rule: no permits; no backend failure)."""
    ok, over = Result.OK, Result.OVER_LIMIT
    if shadow:
        return [
            (True, ok, d.limit, d.remaining, d.reset_after, 0.0 if d.allowed else d.retry_after,
             0.0, None)
            for d in decisions
        ]  # fmt: skip
    return [
        (True, ok, d.limit, d.remaining, d.reset_after, 0.0, 0.0, None)
        if d.allowed
        else (False, over, d.limit, d.remaining, d.reset_after, d.retry_after, 0.0, None)
        for d in decisions
    ]


# Checks of one shared-backend rule in one call from which on they go as one batch (fewer
# go one by one: cheaper, and the backend still shares round trips between requests).
BATCH_MIN = 8


async def _decide_remote(
    work: list[Work], runs: list[Pending]
) -> tuple[dict[int, Any], list[list[Decision]]]:
    """Decide shared-backend checks together: the backend pipelines them into one trip.

    Each run, and many checks of one rate rule, go as one ``acquire_batch`` (cheapest
    per check); the rest concurrently through ``acquire_async``. Returns the checks'
    decisions keyed by index, and each run's decisions.
    """
    groups: dict[int, list[Work]] = {}
    single = []
    for w in work:
        state, cost = w[2], w[4]
        if state.concurrency or cost > state.max_cost:
            single.append(w)
        else:
            groups.setdefault(id(state), []).append(w)
    batches = []
    for members in groups.values():
        if len(members) >= BATCH_MIN:
            batches.append(members)
        else:
            single.extend(members)
    jobs = [run[0].acquire_many(run[3], run[4]) for run in runs]
    jobs += [m[0][2].acquire_many([x[3] for x in m], [x[4] for x in m]) for m in batches]
    jobs += [w[2].acquire_async(w[3], w[4], True) for w in single]
    # One job (one batch or one check) is awaited directly: no Task for gather to wrap.
    answers = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)
    decided: dict[int, Any] = {}
    first = len(runs)
    for members, batch in zip(batches, answers[first:], strict=False):
        for w, d in zip(members, batch, strict=True):
            decided[w[0]] = d
    for w, d in zip(single, answers[first + len(batches) :], strict=True):
        decided[w[0]] = d
    return decided, answers[:first]


def _as_work(run: Pending) -> list[Work]:
    """A shared rule's run as single checks (each its own ``Work``)."""
    state, shadow, at, keys, costs, checks = run
    return [(at + i, check, state, keys[i], costs[i], shadow) for i, check in enumerate(checks)]


def _failed(errors: dict[int, tuple[RuleState, int]]) -> set[int]:
    """The rules (by id) whose backend failed since ``errors`` counted their failures."""
    return {sid for sid, (state, before) in errors.items() if state.backend_errors != before}


class LimiterService:
    """The limiter.v1 servicer (grpc.aio)."""

    def __init__(self, engine: Engine, metrics: Metrics, admission: Any = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.admission = admission
        self._latency = metrics.latency.labels("native")

    # Decide is registered on raw bytes (limiter.server.v1.add_limiter_servicer).
    raw_methods = frozenset({"Decide"})

    async def Decide(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        try:
            response, held = await self._decide(request, context.time_remaining())
        except BadRequest as exc:
            self.metrics.invalid_requests.labels("native").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not held:  # time spent held is in the queue's wait histogram instead
            self._latency.observe(time.perf_counter() - start)
        return response

    async def decide(self, request: Any, budget: float | None = None) -> Any:
        """The DecideResponse to a DecideRequest; ``budget``: seconds until the deadline."""
        answer, _ = await self._decide(request.SerializeToString(), budget)
        return v1.DecideResponse.FromString(answer)

    async def _decide(self, request: bytes, budget: float | None) -> tuple[bytes, bool]:
        """The encoded DecideResponse, and whether any check was held for admission."""
        try:
            checks = parse_decide_request(
                request, MAX_CHECKS, PRIORITIES, MAX_KEY_CHARS, MAX_WAIT_SECONDS
            )
        except WireError as exc:
            raise BadRequest(str(exc)) from None
        engine = self.engine
        level = engine.level()
        admission = self.admission
        ops = engine.ops
        answers: list[Answer] = []
        work: list[Work] = []  # checks that must wait for I/O
        tallies: dict[tuple[str, bool], int] = {}  # (rule, allowed) -> hits, for ops.after
        gates: dict[tuple[str, str, int], Gate] = {}
        # Consecutive checks of one batchable gate, decided together when the run ends
        # (before any other check: each kernel still sees its checks in request order).
        run: list[tuple[Any, ...]] = []
        run_gate: Gate | None = None
        pending: list[Pending] = []  # runs of shared rules, decided with ``work``
        for check in checks:
            gate_key = (check[DOMAIN], check[RULE], check[PRIORITY])
            gate = gates.get(gate_key)
            if gate is None:
                gate = gates[gate_key] = self._gate(gate_key, level)
            if (
                gate[BATCH]
                and check[COST] <= gate[0].max_cost
                and not (admission is not None and check[MAX_WAIT])
            ):
                if gate is not run_gate:
                    if run:
                        self._decide_run(run_gate, run, answers, tallies, pending, work)
                    run, run_gate = [], gate
                run.append(check)
                continue
            if run:
                self._decide_run(run_gate, run, answers, tallies, pending, work)
                run, run_gate = [], None
            state, decision, shadow, pressure, _, _ = gate
            if state is None:
                answers.append(UNKNOWN)
                continue
            if state.unlimited:
                answers.append(UNLIMITED)
                continue
            cost = check[COST] or 1
            if pressure is not None:  # the operations side asks about each client
                verdict = ops.before_client(state.ops_name, check[KEY], cost, state.limit, pressure)
                if verdict is not None:
                    decision = verdict.decision
            if decision is not None:  # forced: a switch, a tier cut or a client cut
                state.count(decision, cost)
                tally = (state.ops_name, decision.allowed)
                tallies[tally] = tallies.get(tally, 0) + cost
                answers.append(_answer(engine, state, decision))
                continue
            if state.remote is None and (admission is None or not check[MAX_WAIT]):
                decided = state.acquire(state.prefix + check[KEY], cost, True)
                state.count(decided, cost, None, shadow)
                if ops is not None:
                    tally = (state.ops_name, decided.allowed or shadow)
                    tallies[tally] = tallies.get(tally, 0) + cost
                answers.append(_answer(engine, state, decided, shadow=shadow))
            else:
                answers.append(UNKNOWN)  # replaced below
                key = state.prefix + check[KEY]
                work.append((len(answers) - 1, check, state, key, cost, shadow))
        if run:
            self._decide_run(run_gate, run, answers, tallies, pending, work)
        if pending and work:
            # A shared rule with checks in ``work`` too sends them all from there: its
            # batch then holds its checks in request order.
            mixed = {id(w[2]) for w in work}
            moved = [waiting for waiting in pending if id(waiting[0]) in mixed]
            if moved:
                pending = [waiting for waiting in pending if id(waiting[0]) not in mixed]
                for waiting in moved:
                    work.extend(_as_work(waiting))
                work.sort(key=lambda w: w[0])
        # The operations side counts each rule's answers once per request, not per check.
        for (name, allowed), hits in tallies.items():
            ops.after(name, allowed, hits)
        held = False
        if work or pending:
            held = await self._decide_waiting(work, pending, answers, budget)
        return encode_decide_response(answers, level), held

    def _gate(self, gate_key: tuple[str, str, int], level: int) -> Gate:
        """What every check of one rule at one priority shares within a request: the
        rule's state, the operations side's per-rule verdict, and whether (with what
        pressure) to ask it about each client."""
        engine = self.engine
        state = engine.snapshot.by_name.get(gate_key[:2])
        ops = engine.ops
        if state is None or state.unlimited:
            return state, None, state is not None and state.shadow, None, None, False
        if ops is None:
            return state, None, state.shadow, None, None, state.batchable
        tier = PRIORITY_NAMES.get(gate_key[2]) or state.priority
        verdict = ops.before_rule(state.ops_name, state.limit, tier, level)
        if verdict is None:
            pressure = ops.throttle.is_throttling(state.ops_name)
            counter = ops.client_counter(state.ops_name, pressure)
            batch = state.batchable and counter is not None
            return state, None, state.shadow, pressure, counter, batch
        decision, state, shadow = engine.apply(state, verdict)
        return state, decision, shadow, None, None, decision is None and state.batchable

    def _decide_run(
        self,
        gate: Gate,
        run: list[tuple[Any, ...]],
        answers: list[Answer],
        tallies: dict[tuple[str, bool], int],
        pending: list[Pending],
        work: list[Work],
    ) -> None:
        """A run of checks of one rate rule: the client sketch, the kernel (or one
        backend batch) and the counters each take the whole run in one call. A shared
        rule's run is left in ``pending`` (under ``BATCH_MIN`` checks, each in ``work``),
        its answers to be filled in."""
        state, _, shadow, _, counter, _ = gate
        assert state is not None
        costs = [check[COST] or 1 for check in run]
        if counter is not None:
            counter([check[KEY] for check in run], costs)
        prefix = state.prefix
        keys = [prefix + check[KEY] for check in run]
        shadow = shadow or state.shadow
        if state.remote is not None:
            waiting = (state, shadow, len(answers), keys, costs, run)
            answers.extend([UNKNOWN] * len(run))
            if len(run) >= BATCH_MIN:
                pending.append(waiting)
            else:
                work.extend(_as_work(waiting))
            return
        decisions = state.acquire_batch(keys, costs)
        self._finish_run(state, shadow, decisions, costs, len(answers), answers, tallies)

    def _finish_run(
        self,
        state: RuleState,
        shadow: bool,
        decisions: list[Decision],
        costs: list[int],
        at: int,
        answers: list[Answer],
        tallies: dict[tuple[str, bool], int],
        failed: bool = False,
    ) -> None:
        """Count a decided run, tally it for the operations side, store its answers from
        ``answers[at]`` on."""
        refused = state.count_batch(decisions, costs, shadow)
        if self.engine.ops is not None:
            name = state.ops_name
            hits = sum(costs)
            if shadow or not refused:
                tallies[(name, True)] = tallies.get((name, True), 0) + hits
            else:
                tallies[(name, False)] = tallies.get((name, False), 0) + refused
                if hits > refused:
                    tallies[(name, True)] = tallies.get((name, True), 0) + hits - refused
        if failed:  # answered per the rule's failure_mode
            results = [_answer(self.engine, state, d, 0.0, True, shadow) for d in decisions]
        else:
            results = _answers(decisions, shadow)
        answers[at : at + len(results)] = results

    async def _decide_waiting(
        self, work: list[Work], pending: list[Pending], answers: list[Answer], budget: float | None
    ) -> bool:
        """Shared-backend checks and runs (together) and checks that may be held for
        admission.

        Returns True if any check was handed to the admission hook.
        """
        admission = self.admission
        cap = math.inf if budget is None else budget * (1 - ANSWER_SHARE) - ANSWER_MARGIN
        may_hold = admission is not None and cap > 0
        waiting = getattr(admission, "waiting", None) if may_hold else None
        # Checks that line up behind checks already held for their key (fairness).
        queued = set()
        if waiting is not None:
            queued = {w[0] for w in work if w[1][MAX_WAIT] > 0 and not w[5] and waiting(w[2], w[3])}
        remote = [w for w in work if w[2].remote is not None and w[0] not in queued]
        states = {id(w[2]): w[2] for w in remote}
        states.update((id(run[0]), run[0]) for run in pending)
        errors = {sid: (state, state.backend_errors) for sid, state in states.items()}
        decided, runs = await _decide_remote(remote, pending) if states else ({}, [])
        failed = _failed(errors)
        tallies: dict[tuple[str, bool], int] = {}
        for (state, shadow, at, _, costs, _), decisions in zip(pending, runs, strict=True):
            self._finish_run(
                state, shadow, decisions, costs, at, answers, tallies, id(state) in failed
            )
        hold: list[Work] = []
        for w in work:
            index, check, state, key, cost, shadow = w
            if index not in queued:
                decision = decided.get(index)
                if decision is None:
                    decision = state.acquire(key, cost, True)
                # A shadow check is answered allowed anyway: nothing to wait for.
                if decision.allowed or shadow or not (check[MAX_WAIT] and may_hold):
                    self._finish(w, decision, 0.0, failed, answers, tallies)
                    continue
            hold.append(w)
        if hold:
            assert admission is not None
            outcomes = await asyncio.gather(
                *(
                    admission.admit(
                        w[2],
                        w[3],
                        w[4],
                        priority=w[1][PRIORITY],
                        tenant=w[1][TENANT],
                        max_wait=min(w[1][MAX_WAIT], cap),
                    )
                    for w in hold
                )
            )
            failed = _failed(errors)
            for w, (decision, waited) in zip(hold, outcomes, strict=True):
                self._finish(w, decision, waited, failed, answers, tallies)
        ops = self.engine.ops
        if ops is not None:
            for (name, allowed), hits in tallies.items():
                ops.after(name, allowed, hits)
        return bool(hold)

    def _finish(
        self,
        w: Work,
        decision: Any,
        waited: float,
        failed: set[int],
        answers: list[Answer],
        tallies: dict[tuple[str, bool], int],
    ) -> None:
        """Count one decided check, tally it for the operations side, store its answer."""
        index, _, state, _, cost, shadow = w
        state.count(decision, cost, None, shadow)
        tally = (state.ops_name, decision.allowed or shadow)
        tallies[tally] = tallies.get(tally, 0) + cost
        answers[index] = _answer(self.engine, state, decision, waited, id(state) in failed, shadow)

    async def Release(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        released = 0
        loop = asyncio.get_running_loop()
        for token in request.permits:
            held = self.engine.take(token)
            if held is None:
                continue
            if getattr(held, "remote_release", False):
                await loop.run_in_executor(None, held.release)  # a backend round trip
            else:
                held.release()
            released += 1
        return v1.ReleaseResponse(released=released)

    async def Observe(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Deliver latency/outcome samples to rules whose kernel learns from them."""
        by_name = self.engine.snapshot.by_name
        accepted = 0
        for i, obs in enumerate(request.observations):
            latency = obs.latency
            if not (math.isfinite(latency) and latency >= 0):
                self.metrics.invalid_requests.labels("native").inc()
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"observations[{i}].latency: must be a finite number >= 0, got {latency!r}",
                )
            state = by_name.get((obs.domain, obs.rule))
            record = getattr(state.kernel, "record", None) if state is not None else None
            if record is not None:
                record(latency, outcome=OUTCOMES.get(obs.outcome, "ok"))
                accepted += 1
        return v1.ObserveResponse(accepted=accepted)
