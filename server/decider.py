"""The decision pipeline: every protocol's checks take this one path to the kernels and back.

Codecs (Envoy RLS, native Decide, ``/json``) read their request into ``Checks`` (one
column per field, one entry per check) and write their answer from the ``Outcome`` of
each check; nothing else happens in them. The ``Decider`` owns what lies between:

1. matching: a native check names its rule; an RLS descriptor is matched to one
   (``match``: request-supplied limits, ``replaces``);
2. the operations policy (``limiter.ops``), once per rule and priority in a request
   (switches, the tiers a degradation level sheds) and once per check when the rule
   follows a breaker (refused at once while it is open for the check's partition) or,
   while a rule is under pressure or blocks are on, blocked and top clients;
3. routing and batching: the checks of one rule go to its kernel in one call, or to the
   shared store in one awaited round trip, in request order; rules are asked together;
4. admission holds: a refused check that may wait (``max_wait``, an RLS rule's
   ``hold``) waits in the rule's queue, never past its caller's deadline;
5. counting: the rule's counters, and one ``record`` per rule for the policy.

A failure of the shared store is part of the outcome (``Code.BACKEND_ERROR``, answered
per the rule's failure mode), never a side channel.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

from limiter.server.rules import MAX_UINT32, Kind, Rulebook, RuleState, free, partition_of

from limiter import Decision
from limiter._core import answers_of
from limiter.priority import Priority

# A held check is answered at the latest ANSWER_MARGIN seconds + ANSWER_SHARE of the time
# left before the caller's deadline: room for the answer's trip and for the event loop
# running late under load (better "busy" a little early than DEADLINE_EXCEEDED).
ANSWER_MARGIN = 0.02
ANSWER_SHARE = 0.05
# Largest cost (hits) one check may carry: the kernels' own bound. A larger one is a
# malformed request, refused before anything is counted.
MAX_COST = 1 << 40


class Code(IntEnum):
    """What happened to a check (the values of limiter.v1 ``Result.Code``)."""

    OK = 1
    OVER_LIMIT = 2
    UNKNOWN_RULE = 3  # no rule limits it: allowed
    BACKEND_ERROR = 4  # the shared store failed: answered per the rule's failure mode
    QUEUE_TIMEOUT = 5  # held for admission and the wait ran out: busy
    BREAKER_OPEN = 6  # refused at once: the rule's dependency fails fast for this partition


class Outcome(NamedTuple):
    """One check's answer. ``allowed`` includes shadow mode (a would-be refusal of a
    shadow rule is allowed, with its ``retry_after``); ``permit`` is the id of a held
    concurrency permit; ``rule`` is the state that decided (None: no rule)."""

    allowed: bool
    code: int
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    waited: float
    permit: str | None
    rule: RuleState | None


UNKNOWN = Outcome(True, Code.UNKNOWN_RULE, 0, 0, 0.0, 0.0, 0.0, None, None)
# An enum member costs a descriptor call each time it is looked up on its class: the
# decision path reads these instead.
_LOCAL, _SHARED, _SHARED_PERMITS = Kind.LOCAL, Kind.SHARED, Kind.SHARED_PERMITS
_OK, _OVER_LIMIT, _BACKEND_ERROR = Code.OK, Code.OVER_LIMIT, Code.BACKEND_ERROR
_QUEUE_TIMEOUT, _BREAKER_OPEN = Code.QUEUE_TIMEOUT, Code.BREAKER_OPEN
_new = tuple.__new__  # builds an Outcome without NamedTuple's keyword handling (hot path)


@dataclass(slots=True)
class Checks:
    """A request's checks, one column per field (``priorities``, ``vips``, ``max_waits``
    and ``details`` may be None: every check at its rule's priority, none from a VIP
    tenant, none waits, no detailed series). ``vips``: the check comes from one of its
    rule's reserve tenants (``vips_of``), so it may use the reserve whatever its tier.
    ``keep_permits``: a concurrency permit is held for the caller
    (native API) instead of freed at once (a stateless RLS check); ``caller`` counts
    toward the bounds on permits and held checks per caller."""

    rules: list[RuleState | None]
    keys: list[str]
    costs: list[int]
    priorities: list[Priority | None] | None = None
    max_waits: list[float] | None = None
    details: list[str | None] | None = None
    vips: list[bool] | None = None
    keep_permits: bool = True
    caller: str = ""  # who asks (its address): what per-caller bounds count


def vips_of(rules: list[RuleState | None], tenants: list[str | None]) -> list[bool] | None:
    """Whether each check's tenant (None: it names none) is one of its rule's reserve
    tenants; None when none is."""
    vips = [
        t is not None and s is not None and t in s.vips for s, t in zip(rules, tenants, strict=True)
    ]
    return vips if any(vips) else None


def caller_of(peer: str) -> str:
    """The caller a gRPC peer string names: its host, without the port
    (``ipv4:10.0.0.1:5000`` -> ``10.0.0.1``, ``ipv6:[::1]:5000`` -> ``::1``)."""
    kind, _, address = peer.partition(":")
    if kind == "ipv6" and address.startswith("["):
        return address[1:].partition("]")[0]
    if kind == "ipv4":
        return address.rpartition(":")[0]
    return peer


class Decided(NamedTuple):
    outcomes: list[Outcome]
    level: int
    held: bool  # some check waited for admission


class _Gate:
    """What every check of one rule at one priority shares within a request.

    The first gate of each rule state is also its group: it collects, in request order,
    the checks that state's kernel or store decides (``at``, ``keys``, ``costs``)."""

    __slots__ = (
        "at", "breaker", "costs", "counter", "forced", "keys", "pressure", "shadow", "state",
    )  # fmt: skip

    def __init__(
        self, state: RuleState, forced: Decision | None, shadow: bool, pressure: bool, counter: Any
    ) -> None:
        self.state = state
        self.forced = forced
        self.shadow = shadow
        self.pressure = pressure  # the policy is asked about each client (throttling, blocks)
        self.counter = counter  # counts clients in bulk (``Operations.client_counter``) or None
        # The breaker each check asks first (``RuleState.breaker``), None for none.
        self.breaker: tuple[str, int] | None = None
        self.at: list[int] = []
        self.keys: list[str] = []
        self.costs: list[int] = []

    def add(self, at: int, key: str, cost: int) -> None:
        self.at.append(at)
        self.keys.append(key)
        self.costs.append(cost)


class Decider:
    """Checks in, one ``Outcome`` per check out (see the module docstring).

    ``policy`` is the operations side (``limiter.ops.Operations``) or None;
    ``admission`` holds checks that may wait (``limiter.server.admission``) or None.
    """

    def __init__(self, rulebook: Rulebook, policy: Any = None, admission: Any = None) -> None:
        self.rulebook = rulebook
        self.policy = policy
        self.admission = admission

    def level(self) -> int:
        """The degradation level (0 = normal) every answer reports."""
        return 0 if self.policy is None else int(self.policy.level())

    def match(self, domain: str, descriptors: list[Any]) -> list[RuleState | None] | None:
        """The rule of each RLS descriptor (None: not limited), or None for an unknown
        domain. A descriptor's own ``limit`` makes a fixed-window rule of that limit;
        a matched rule that ``replaces`` others by name drops them."""
        book = self.rulebook
        found = book.snapshot.config.domains.get(domain)
        if found is None:
            book.unknown_domain += 1
            return None
        states = book.snapshot.states
        rules: list[RuleState | None] = []
        replaced: set[str] = set()
        for descriptor in descriptors:
            override = descriptor.limit
            if override is not None:
                state: RuleState | None = book.override(domain, override[0], override[1])
            else:
                rule = found.match(descriptor.entries)
                state = None if rule is None else states[rule]
                if state is not None and state.replaces:
                    replaced.update(state.replaces)
            rules.append(state)
        if replaced:
            rules = [None if s is not None and s.name in replaced else s for s in rules]
        return rules

    async def decide(self, checks: Checks, budget: float | None = None) -> Decided:
        """Decide every check; ``budget``: seconds until the caller's deadline (caps holds).

        A request of one check whose rule's kernel or store alone decides it (no switch,
        cut, breaker, client verdict, hold, permit or detailed series: the usual RLS call)
        takes the short path below; everything else, ``_decide``. Both count and answer
        alike (tests/service/test_native_gates.py holds single checks to batches).
        """
        policy = self.policy
        level = 0 if policy is None else policy.level()
        rules = checks.rules
        if len(rules) != 1 or checks.details is not None:
            return await self._decide(checks, budget, level, {})
        rule = rules[0]
        if rule is None or rule.unlimited:
            return _new(Decided, ([UNKNOWN if rule is None else _unlimited(rule)], level, False))
        priority = None if checks.priorities is None else checks.priorities[0]
        vip = checks.vips is not None and checks.vips[0]
        gate = self._gate(rule, priority, vip, level)
        state, waits = gate.state, checks.max_waits
        kind = state.kind
        if (
            gate.forced is not None
            or gate.pressure
            or gate.breaker is not None
            or (kind is not _LOCAL and kind is not _SHARED)
            or (waits is not None and waits[0] > 0 and self.admission is not None)
        ):
            return await self._decide(checks, budget, level, {_gate_key(rule, priority, vip): gate})
        keys, costs = checks.keys, checks.costs
        if gate.counter is not None:
            gate.counter(keys, costs)
        key, cost = state.prefix + keys[0], costs[0]
        if kind is _LOCAL:
            decisions, failed = [state.acquire(key, cost)], ()
        else:
            decisions, failed = await state.kernel.decide([key], [cost])
        d, shadow = decisions[0], gate.shadow
        allowed = d.allowed
        hits = state.counted(allowed, cost)
        state.count(allowed, d.remaining, hits, shadow)
        if policy is not None:
            policy.record(state.ops_name, allowed or shadow, hits)
        if failed:
            state.stats.backend_errors += 1
            out = [_outcome(d, state, shadow, _BACKEND_ERROR, 0.0, None)]
        else:
            out = answers_of(Outcome, decisions, state, shadow, _OK, _OVER_LIMIT)
        return _new(Decided, (out, level, False))

    async def _decide(
        self, checks: Checks, budget: float | None, level: int, gates: dict[Any, _Gate]
    ) -> Decided:
        """Any request (``decide``). Checks are taken a run at a time (consecutive checks
        of one rule at one priority, often the whole request), so what they share is
        worked out once per run; ``gates`` holds those already worked out."""
        rules, keys, costs = checks.rules, checks.keys, checks.costs
        priorities, waits, vips = checks.priorities, checks.max_waits, checks.vips
        policy = self.policy
        n = len(rules)
        out: list[Any] = [None] * n
        groups: dict[RuleState, _Gate] = {}  # the gate collecting each state's checks
        tallies: dict[str, list[int]] = {}  # rule -> [hits allowed, hits refused]
        held: list[tuple[int, RuleState, str]] = []
        admission = self.admission
        cap = math.inf if budget is None else budget * (1 - ANSWER_SHARE) - ANSWER_MARGIN
        may_hold = waits is not None and admission is not None and cap > 0
        # Often every check names one rule at one priority: one run, found in C.
        uniform = n > 1 and rules.count(rules[0]) == n
        if uniform and priorities is not None:
            uniform = priorities.count(priorities[0]) == n
        if uniform and vips is not None:
            uniform = vips.count(vips[0]) == n
        i = 0
        while i < n:
            rule = rules[i]
            priority = priorities[i] if priorities is not None else None
            vip = vips is not None and vips[i]
            j = n if uniform else i + 1
            while (
                j < n
                and rules[j] is rule
                and (priorities is None or priorities[j] is priority)
                and (vips is None or vips[j] is vip)
            ):
                j += 1
            if rule is None or rule.unlimited:
                answer = UNKNOWN if rule is None else _unlimited(rule)
                out[i:j] = [answer] * (j - i)
                i = j
                continue
            gate_key = _gate_key(rule, priority, vip)
            gate = gates.get(gate_key)
            if gate is None:
                gate = gates[gate_key] = self._gate(rule, priority, vip, level)
            state = gate.state
            if gate.forced is not None or gate.pressure or gate.breaker is not None:
                run: Any = self._forced(gate, i, j, checks, out, tallies)
            else:
                if gate.counter is not None:
                    gate.counter(keys[i:j], costs[i:j])
                run = range(i, j)
            group = groups.get(state)
            if group is None:
                group = groups[state] = gate
            prefix = state.prefix
            if may_hold and not gate.shadow:
                for k in run:  # checks wait for this key: a newcomer lines up behind them
                    key = prefix + keys[k]
                    if waits[k] > 0 and admission.waiting(state, key):
                        held.append((k, state, key))
                    else:
                        group.add(k, key, costs[k])
            elif j - i == 1 and type(run) is range:
                group.add(i, prefix + keys[i], costs[i])
            elif type(run) is range:
                group.at.extend(run)
                group.keys.extend([prefix + key for key in keys[i:j]])
                group.costs.extend(costs[i:j])
            else:
                for k in run:
                    group.add(k, prefix + keys[k], costs[k])
            i = j
        waiting = []  # (group, awaitable): shared stores, asked together
        for group in groups.values():
            if not group.at:
                continue
            state = group.state
            kind = state.kind
            if kind is _LOCAL:
                decisions = _local_batch(state, group)
                self._finish(group, decisions, (), checks, out, tallies, held if may_hold else None)
            elif kind is _SHARED:
                waiting.append((group, state.kernel.decide(group.keys, group.costs)))
            elif kind is _SHARED_PERMITS:
                pairs = zip(group.keys, group.costs, strict=True)
                calls = [state.kernel.acquire_async(k, c) for k, c in pairs]
                waiting.append((group, asyncio.gather(*calls)))
            else:
                pairs = zip(group.keys, group.costs, strict=True)
                answers = [state.acquire(k, c) for k, c in pairs]
                self._finish(group, answers, (), checks, out, tallies, held if may_hold else None)
        if waiting:
            await self._finish_shared(waiting, checks, out, tallies, held if may_hold else None)
        if held:
            await self._hold(held, checks, out, tallies, cap)
        if policy is not None:
            for name, (allowed, refused) in tallies.items():
                if allowed:
                    policy.record(name, True, allowed)
                if refused:
                    policy.record(name, False, refused)
        return _new(Decided, (out, level, bool(held)))

    def _forced(
        self,
        gate: _Gate,
        i: int,
        j: int,
        checks: Checks,
        out: list[Any],
        tallies: dict[str, list[int]],
    ) -> list[int]:
        """Answer the checks of a run that the policy decides (a switch, a tier cut; an
        open breaker; under pressure, a blocked or shed client); returns the others, for
        the kernel."""
        state, keys, costs, details = gate.state, checks.keys, checks.costs, checks.details
        breaker, policy = gate.breaker, self.policy
        if gate.counter is not None:
            gate.counter(keys[i:j], costs[i:j])
        rest = []
        for k in range(i, j):
            forced = gate.forced
            code = _OK
            if forced is None:
                verdict = None
                if breaker is not None:
                    dependency, at = breaker
                    verdict = policy.breaker_verdict(
                        dependency, partition_of(keys[k], at), state.limit
                    )
                    code = _BREAKER_OPEN
                if verdict is None and gate.pressure:
                    code = _OK
                    verdict = policy.client_verdict(
                        state.ops_name, keys[k], costs[k], state.limit, state.capacity
                    )
                if verdict is None:
                    rest.append(k)
                    continue
                forced = verdict.decision
            detail = details[k] if details is not None else None
            self._count(state, forced, costs[k], False, detail, tallies)
            if not forced.allowed:
                state.stats.policy_refused += state.counted(False, costs[k])
            out[k] = _outcome(forced, state, False, code, 0.0, None)
        return rest

    def _gate(self, rule: RuleState, priority: Priority | None, vip: bool, level: int) -> _Gate:
        tier = rule.priority if priority is None else priority
        # The policy sees a check's own tier; only the reserve treats a VIP's as its own.
        reserve_tier = tier if not vip or rule.reserve_for is None else max(tier, rule.reserve_for)
        policy = self.policy
        if policy is None:
            return _Gate(_tiered(rule, reserve_tier), None, rule.shadow, False, None)
        verdict = policy.rule_verdict(rule.ops_name, rule.limit, tier, level)
        if verdict is None:
            counter = policy.client_counter(rule.ops_name)
            gate = _Gate(_tiered(rule, reserve_tier), None, rule.shadow, counter is None, counter)
            gate.breaker = rule.breaker
            return gate
        if verdict.decision is not None:
            return _Gate(rule, verdict.decision, False, False, None)
        state = rule
        if verdict.limit is not None and verdict.limit != rule.limit:
            state = self.rulebook.with_limit(rule, verdict.limit)
        gate = _Gate(_tiered(state, reserve_tier), None, rule.shadow or verdict.shadow, False, None)
        gate.breaker = rule.breaker
        return gate

    async def _finish_shared(
        self,
        waiting: list[tuple[_Gate, Any]],
        checks: Checks,
        out: list[Any],
        tallies: dict[str, list[int]],
        held: list[tuple[int, RuleState, str]] | None,
    ) -> None:
        """Await every shared store's answers together, then finish each group."""
        if len(waiting) == 1:  # the common case: no Task for gather to wrap
            results = [await waiting[0][1]]
        else:
            results = await asyncio.gather(*(job for _, job in waiting))
        for (group, _), result in zip(waiting, results, strict=True):
            if group.state.kind is _SHARED:
                decisions, failed = result
            else:
                decisions, failed = result, tuple(i for i, p in enumerate(result) if p.failed)
            self._finish(group, decisions, failed, checks, out, tallies, held)

    def _finish(
        self,
        group: _Gate,
        decisions: list[Any],
        failed: tuple[int, ...],
        checks: Checks,
        out: list[Any],
        tallies: dict[str, list[int]],
        held: list[tuple[int, RuleState, str]] | None,
    ) -> None:
        """Count a group's decisions and store their outcomes (or hold refused ones)."""
        state, shadow, at = group.state, group.shadow, group.at
        details = checks.details if state.detailed is not None else None
        if failed:
            state.stats.backend_errors += len(failed)
        kind = state.kind
        if held is None and details is None and not failed and (kind is _LOCAL or kind is _SHARED):
            # The bulk path (rate decisions, no permits): one pass to count, one to answer.
            hits, refused = state.count_batch(decisions, group.costs, shadow)
            tally = tallies.get(state.ops_name)
            if tally is None:
                tally = tallies[state.ops_name] = [0, 0]
            shadow = shadow or state.shadow
            if shadow:
                tally[0] += hits
            else:
                tally[0] += hits - refused
                tally[1] += refused
            answers = answers_of(Outcome, decisions, state, shadow, _OK, _OVER_LIMIT)
            if at[-1] - at[0] == len(at) - 1:  # consecutive checks: the usual request
                out[at[0] : at[-1] + 1] = answers
            else:
                for i, answer in zip(at, answers, strict=True):
                    out[i] = answer
            return
        waits = checks.max_waits
        for n, (i, d) in enumerate(zip(at, decisions, strict=True)):
            if held is not None and not d.allowed and not shadow and waits[i] > 0:
                held.append((i, state, group.keys[n]))
                continue
            permit = None
            if type(d) is not Decision:  # a permit
                d, permit = self._permit(state, d, checks)
            cost = group.costs[n]
            detail = details[i] if details is not None else None
            self._count(state, d, cost, shadow, detail, tallies)
            code = _BACKEND_ERROR if failed and n in failed else _OK
            out[i] = _outcome(d, state, shadow, code, 0.0, permit)

    async def _hold(
        self,
        held: list[tuple[int, RuleState, str]],
        checks: Checks,
        out: list[Any],
        tallies: dict[str, list[int]],
        cap: float,
    ) -> None:
        """Refused checks that may wait: held together until admitted or out of time."""
        admission = self.admission
        priorities, waits = checks.priorities, checks.max_waits
        assert admission is not None and waits is not None

        def priority(i: int, state: RuleState) -> Priority:
            own = priorities[i] if priorities is not None else None
            return state.priority if own is None else own

        caller = checks.caller
        outcomes = await asyncio.gather(
            *(
                admission.admit(
                    state, key, checks.costs[i], priority(i, state), min(waits[i], cap), caller
                )
                for i, state, key in held
            )
        )
        details = checks.details
        for (i, state, _), (d, waited, failed) in zip(held, outcomes, strict=True):
            permit = None
            if type(d) is not Decision:
                d, permit = self._permit(state, d, checks)
            detail = details[i] if details is not None and state.detailed is not None else None
            self._count(state, d, checks.costs[i], False, detail, tallies)
            if failed:
                state.stats.backend_errors += 1
            code = _BACKEND_ERROR if failed else _OK
            out[i] = _outcome(d, state, False, code, waited, permit)

    def _permit(self, state: RuleState, d: Any, checks: Checks) -> tuple[Any, str | None]:
        """A permit check's answer and the id of the permit held for the caller: given
        back at once for a stateless check (RLS); refused, with when to retry, when the
        caller or the rule holds its bound of permits or the kernel has no slot."""
        book = self.rulebook
        if d.allowed:
            if not checks.keep_permits:
                free(d)
                return d, None
            token = book.hold(d, state.ops_name, checks.caller)
            if token is not None:
                return d, token
        elif d.retry_after > 0:
            return d, None
        # A concurrency slot frees when a holder releases, which no one can foresee, or
        # at the latest when a held permit expires: that is the retry to promise.
        wait = book.retry_after(state.ops_name, checks.caller)
        return Decision(False, d.limit, 0 if d.allowed else d.remaining, wait, wait), None

    @staticmethod
    def _count(
        state: RuleState,
        d: Any,
        cost: int,
        shadow: bool,
        detail: str | None,
        tallies: dict[str, list[int]],
    ) -> None:
        allowed = d.allowed
        cost = state.counted(allowed, cost)
        state.count(allowed, d.remaining, cost, shadow)
        if detail is not None and state.detailed is not None:
            state.count_detail(detail, allowed, d.remaining, cost, shadow)
        tally = tallies.get(state.ops_name)
        if tally is None:
            tally = tallies[state.ops_name] = [0, 0]
        tally[0 if allowed or shadow or state.shadow else 1] += cost


def _gate_key(rule: RuleState, priority: Priority | None, vip: bool) -> Any:
    """What a request's gates are found by: the rule, or the rule at a check's own tier."""
    return rule if priority is None and not vip else (rule, priority, vip)


def _tiered(state: RuleState, tier: Priority) -> RuleState:
    """What decides a check of ``tier``: a tier below the rule's reserve decides without it."""
    view = state.unreserved
    return state if view is None or tier >= state.reserve_for else view


def _unlimited(rule: RuleState) -> Outcome:
    return _new(Outcome, (True, _OK, 0, MAX_UINT32, 0.0, 0.0, 0.0, None, rule))


def _local_batch(state: RuleState, group: _Gate) -> list[Decision]:
    """A rate kernel's decisions for a group; costs above what its quota can ever hold
    are refused without asking it (the kernel refuses a batch holding one)."""
    costs = group.costs
    if len(costs) == 1:
        return [state.acquire(group.keys[0], costs[0])]
    if max(costs) <= state.max_cost:
        return state.kernel.acquire_batch(group.keys, costs)
    return [state.acquire(k, c) for k, c in zip(group.keys, costs, strict=True)]


def _outcome(
    d: Any, state: RuleState, shadow: bool, code: int, waited: float, permit: str | None
) -> Outcome:
    allowed = d.allowed
    shadow = shadow or state.shadow
    if code == _OK and not allowed and not shadow:
        code = _QUEUE_TIMEOUT if waited > 0 else _OVER_LIMIT
    return _new(
        Outcome,
        (
            allowed or shadow,
            code,
            d.limit,
            d.remaining,
            d.reset_after,
            0.0 if allowed else d.retry_after,
            waited,
            permit,
            state,
        ),
    )
