"""The native ``limiter.v1.Limiter`` API: a codec over the decider (Decide), plus Release
and Observe.

Checks name a rule by ``domain`` + rule name (or descriptor path id) and carry the
caller's partition ``key``; over-limit is an answer (``allowed=false``), not an RPC
error. Only a malformed request (bad priority, oversized key, too many checks) is
INVALID_ARGUMENT. A check with ``max_wait`` > 0 that its rule refuses may be held for
admission (``limiter.server.admission``) until admitted or ``QUEUE_TIMEOUT``, and never
past a margin before the RPC's deadline. A check's ``key`` is also its tenant: where its
rule's reserve lists tenants (``reserved.tenants``), a check whose key is one of them may
use the reserve whatever its priority (limiter.v1 has no separate tenant field).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import grpc
from limiter._wire import WireError, encode_decide_response, parse_decide_request
from limiter.server import v1
from limiter.server.decider import MAX_COST, Checks, Decider, caller_of, vips_of
from limiter.server.metrics import Metrics
from limiter.server.outcomes import Outcomes
from limiter.server.rules import BadRequest

from limiter.priority import Priority

MAX_CHECKS = 4096
MAX_KEY_CHARS = 4096
MAX_WAIT_SECONDS = 3600.0  # the longest a check may ask to be held
MAX_STATUS = 999  # an observation's HTTP status
PRIORITIES = frozenset(v1.Priority.values())
FROM_PROTO = {value: Priority.from_proto(value) for value in PRIORITIES}
# limiter.v1 Observation.Outcome -> the adaptive kernel's outcome (an error counts as a drop).
OUTCOMES = {0: "ok", 1: "ok", 2: "dropped", 3: "dropped", 4: "ignored"}


class LimiterService:
    """The limiter.v1 servicer (grpc.aio)."""

    # Decide is registered on raw bytes (limiter.server.v1.add_limiter_servicer).
    raw_methods = frozenset({"Decide"})

    def __init__(
        self, decider: Decider, metrics: Metrics, outcomes: Outcomes | None = None
    ) -> None:
        self.decider = decider
        self.metrics = metrics
        self.outcomes = outcomes
        self._latency = metrics.latency.labels("native")

    async def Decide(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        try:
            response, held = await self.answer(
                request, context.time_remaining(), caller_of(context.peer())
            )
        except BadRequest as exc:
            self.metrics.invalid_requests.labels("native").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not held:  # time spent held is in the queue's wait histogram instead
            self._latency.observe(time.perf_counter() - start)
        return response

    async def decide(self, request: Any, budget: float | None = None) -> Any:
        """The DecideResponse to a DecideRequest; ``budget``: seconds until the deadline."""
        answer, _ = await self.answer(request.SerializeToString(), budget)
        return v1.DecideResponse.FromString(answer)

    async def answer(
        self, request: bytes, budget: float | None, caller: str = ""
    ) -> tuple[bytes, bool]:
        """The encoded DecideResponse, and whether any check was held for admission;
        ``caller`` (its address) counts toward the bounds per caller."""
        try:
            parsed = parse_decide_request(
                request, MAX_CHECKS, PRIORITIES, MAX_KEY_CHARS, MAX_WAIT_SECONDS
            )
        except WireError as exc:
            raise BadRequest(str(exc)) from None
        if parsed:
            domains, names, keys, costs, priorities, waits = zip(*parsed, strict=True)
            if max(costs) > MAX_COST:
                i = next(i for i, c in enumerate(costs) if c > MAX_COST)
                raise BadRequest(f"checks[{i}].cost: must be at most {MAX_COST}, got {costs[i]}")
        else:
            domains = names = keys = costs = priorities = waits = ()
        snapshot = self.decider.rulebook.snapshot
        by_name = snapshot.by_name
        n = len(names)
        if n > 1 and domains.count(domains[0]) == n and names.count(names[0]) == n:
            rules = [by_name.get((domains[0], names[0]))] * n  # one rule: the usual batch
        else:
            rules = [by_name.get(pair) for pair in zip(domains, names, strict=True)]
        checks = Checks(
            rules,
            list(keys),
            [c or 1 for c in costs],
            [FROM_PROTO[p] for p in priorities] if any(priorities) else None,
            list(waits) if any(waits) else None,
            vips=vips_of(rules, list(keys)) if snapshot.vips else None,
            caller=caller,
        )
        decided = await self.decider.decide(checks, budget)
        return encode_decide_response(decided.outcomes, decided.level), decided.held

    async def Release(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        released = 0
        loop = asyncio.get_running_loop()
        for token in request.permits:
            held = self.decider.rulebook.take(token)
            if held is None:
                continue
            if hasattr(held, "failed"):  # a shared lease: back in the store when answered
                await loop.run_in_executor(None, held.release, True)
            else:
                held.release()
            released += 1
        return v1.ReleaseResponse(released=released)

    async def Observe(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Deliver latency/outcome samples to rules whose kernel learns from them, to the
        rule's breaker and, with a key and a status, to abnormal-access blocking
        (``limiter.server.outcomes``)."""
        observations = request.observations
        for i, obs in enumerate(observations):  # all checked before any is delivered
            problem = _invalid(obs)
            if problem is not None:
                self.metrics.invalid_requests.labels("native").inc()
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"observations[{i}].{problem}"
                )
        by_name = self.decider.rulebook.snapshot.by_name
        accepted = 0
        for obs in observations:
            state = by_name.get((obs.domain, obs.rule))
            if state is None:
                continue
            outcome = OUTCOMES.get(obs.outcome, "ok")
            if self.outcomes is not None:
                accepted += self.outcomes.observe(state, obs.key, obs.latency, outcome, obs.status)
            elif (record := getattr(state.kernel, "record", None)) is not None:
                record(obs.latency, outcome=outcome)
                accepted += 1
        return v1.ObserveResponse(accepted=accepted)


def _invalid(obs: Any) -> str | None:
    """What is wrong with an observation (``field: problem``), or None."""
    if not (math.isfinite(obs.latency) and obs.latency >= 0):
        return f"latency: must be a finite number >= 0, got {obs.latency!r}"
    if len(obs.key) > MAX_KEY_CHARS:
        return f"key: must be at most {MAX_KEY_CHARS} characters, got {len(obs.key)}"
    if obs.status > MAX_STATUS:
        return f"status: must be an HTTP status (at most {MAX_STATUS}), got {obs.status}"
    return None
