"""Envoy RLS v3 (``RateLimitService/ShouldRateLimit``) with envoyproxy/ratelimit semantics.

One ``decide`` serves both gRPC ``ShouldRateLimit`` and the HTTP ``/json`` endpoint:
validate the whole request first (malformed → ``BadRequest`` → INVALID_ARGUMENT),
match each descriptor to a rule (or a request-supplied ``limit`` override), drop
rules another matched rule ``replaces``, ask the kernels, then build statuses in
request order. ``overall_code`` is OVER_LIMIT if any non-shadow descriptor is, else
OK (never UNKNOWN); an unknown domain is answered OK and counted.

Answers are immediate (Envoy's rate-limit timeout defaults to 20 ms), except for a rule
that opts into a short ``hold`` (at most ``limiter.config.MAX_HOLD``): a check it refuses
waits up to that long in the rule's admission queue, at the rule's own priority.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from limiter.server.engine import BadRequest, Engine, RuleState
from limiter.server.metrics import Metrics

from limiter import Decision
from limiter import headers as rl_headers
from limiter.config import UNIT_BY_ENUM

Response = rls_pb2.RateLimitResponse
OK = Response.OK
OVER_LIMIT = Response.OVER_LIMIT
MAX_UINT32 = 2**32 - 1

# Bounds on what one request may carry; real Envoy sends a handful of short entries.
MAX_DESCRIPTORS = 1024
MAX_ENTRIES = 64
MAX_VALUE_CHARS = 4096


@dataclass(frozen=True)
class HeaderOptions:
    """Which rate-limit headers responses carry, and the level header for the backend."""

    ietf: bool = True
    legacy: bool = False
    level_header: str = "x-limiter-level"

    @classmethod
    def parse(cls, mode: str) -> HeaderOptions:
        """``ietf``, ``legacy``, ``both`` or ``none``."""
        choices = {"ietf": (True, False), "legacy": (False, True), "both": (True, True)}
        choices["none"] = (False, False)
        if mode not in choices:
            raise ValueError(f"headers mode must be one of {', '.join(choices)}, got {mode!r}")
        ietf, legacy = choices[mode]
        return cls(ietf, legacy)


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """The RLS v3 servicer (grpc.aio)."""

    def __init__(
        self, engine: Engine, metrics: Metrics, options: HeaderOptions, admission: Any = None
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.options = options
        # limiter.server.admission.ServiceAdmission: holds checks of rules with a ``hold``
        self.admission = admission
        self._latency = metrics.latency.labels("rls")

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> Response:
        start = time.perf_counter()
        try:
            response = await self.decide(request)
        except BadRequest as exc:
            self.metrics.invalid_requests.labels("rls").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._latency.observe(time.perf_counter() - start)
        return response

    async def decide(self, request: rls_pb2.RateLimitRequest) -> Response:
        """The RLS answer for ``request``; raises BadRequest naming the bad field."""
        name = request.domain
        if not name:
            raise BadRequest("domain: must not be empty")
        descriptors = request.descriptors
        n = len(descriptors)
        if n == 0:
            raise BadRequest("descriptors: must not be empty")
        if n > MAX_DESCRIPTORS:
            raise BadRequest(f"descriptors: {n} descriptors, at most {MAX_DESCRIPTORS} allowed")
        engine = self.engine
        snapshot = engine.snapshot
        domain = snapshot.config.domains.get(name)
        states: list[RuleState | None] = [None] * n
        replaced: set[str] = set()
        for i, descriptor in enumerate(descriptors):
            entries = descriptor.entries
            _check_entries(i, entries)
            if descriptor.HasField("limit"):
                override = descriptor.limit
                if override.unit not in UNIT_BY_ENUM:
                    raise BadRequest(
                        f"descriptors[{i}].limit.unit: {override.unit} is not a known unit"
                    )
                if domain is not None:
                    states[i] = engine.override(name, override.requests_per_unit, override.unit)
            elif domain is not None:
                rule = domain.match(entries)
                if rule is not None:
                    state = states[i] = snapshot.states[rule]
                    if state.replaces:
                        replaced.update(state.replaces)
        response = Response()
        level = engine.level()
        response.request_headers_to_add.add(key=self.options.level_header, value=str(level))
        if domain is None:
            engine.unknown_domain += 1
            response.overall_code = OK
            for _ in range(n):
                response.statuses.add(code=OK)
            return response
        default_hits = request.hits_addend or 1
        ops = engine.ops
        # (index, state, hits, key, forced decision, shadow)
        work: list[tuple[int, RuleState, int, str, Any, bool]] = []
        for i, descriptor in enumerate(descriptors):
            state = states[i]
            if state is None or state.unlimited or (replaced and state.name in replaced):
                continue
            if descriptor.HasField("hits_addend"):
                hits = descriptor.hits_addend.value or 1
            else:
                hits = default_hits
            values = "\x1f".join([e.value for e in descriptor.entries])
            if ops is None:
                work.append((i, state, hits, state.prefix + values, None, state.shadow))
            else:
                forced, state, shadow = engine.verdict(state, values, hits, state.priority)
                work.append((i, state, hits, state.prefix + values, forced, shadow))
        # Shared-backend rules are asked concurrently: one pipelined round trip.
        remote = [w for w in work if w[1].remote is not None and w[4] is None]
        decided: dict[int, Any] = {}
        if len(remote) == 1:  # the common case: no Task for gather to wrap
            w = remote[0]
            decided = {w[0]: await w[1].acquire_async(w[3], w[2])}
        elif remote:
            answers = await asyncio.gather(*(w[1].acquire_async(w[3], w[2]) for w in remote))
            decided = {w[0]: d for w, d in zip(remote, answers, strict=True)}
        if self.admission is not None and self.admission.holds(snapshot):
            await self._hold(work, decided)
        overall = OK
        quotas: list[rl_headers.Quota] = []
        statuses = response.statuses
        pending = iter(work)
        item = next(pending, None)
        for i, descriptor in enumerate(descriptors):
            status = statuses.add()
            if item is None or item[0] != i:
                state = states[i]
                status.code = OK
                if state is not None and state.unlimited and state.name not in replaced:
                    status.limit_remaining = MAX_UINT32
                continue
            _, state, hits, key, decision, shadow = item
            item = next(pending, None)
            if decision is None:
                decision = decided[i] if i in decided else state.acquire(key, hits)
            entries = descriptor.entries
            detail = _detail(entries) if state.detailed is not None else None
            state.count(decision, hits, detail, shadow)
            allowed = decision.allowed or shadow
            if ops is not None:
                ops.after(state.ops_name, allowed, hits)
            current = status.current_limit
            current.requests_per_unit = state.limit
            current.unit = state.unit_enum
            if state.name:
                current.name = state.name
            remaining = decision.remaining
            status.limit_remaining = remaining if remaining < MAX_UINT32 else MAX_UINT32
            reset = decision.reset_after if decision.allowed else decision.retry_after
            whole = int(reset)
            status.duration_until_reset.seconds = whole
            status.duration_until_reset.nanos = int((reset - whole) * 1e9)
            if allowed:
                status.code = OK
            else:
                status.code = OVER_LIMIT
                overall = OVER_LIMIT
            quotas.append(
                rl_headers.Quota(
                    state.label,
                    state.limit,
                    state.window,
                    remaining,
                    decision.reset_after,
                    allowed,
                    decision.retry_after,
                )
            )
        response.overall_code = overall
        if quotas:
            options = self.options
            add = response.response_headers_to_add.add
            for key, value in rl_headers.build(quotas, ietf=options.ietf, legacy=options.legacy):
                add(key=key, value=value)
        return response

    async def _hold(self, work: list[tuple[Any, ...]], decided: dict[int, Any]) -> None:
        """Checks of rules with a ``hold``: refused ones wait (together) for admission."""
        admission = self.admission
        held = []
        for i, state, hits, key, forced, shadow in work:
            if forced is not None or shadow or not state.rule.limit.hold:
                continue  # a shadow check is answered OK anyway: nothing to wait for
            decision = decided.get(i)  # a shared-backend rule's answer is in already
            if decision is None and not admission.waiting(state, key):
                decision = decided[i] = state.acquire(key, hits)
            if decision is None or not decision.allowed:
                held.append((i, state, hits, key))
        if not held:
            return
        outcomes = await asyncio.gather(
            *(
                admission.admit(
                    state, key, hits, priority=0, tenant="", max_wait=state.rule.limit.hold
                )
                for _, state, hits, key in held
            )
        )
        for (i, *_), (decision, _) in zip(held, outcomes, strict=True):
            if type(decision) is not Decision:
                _give_back(decision)  # RLS holds nothing past its answer
            decided[i] = decision


def _give_back(permit: Any) -> None:
    """Free a slot an admission granted (an adaptive permit records no sample)."""
    ignore = getattr(permit, "ignore", None)
    if ignore is not None:
        ignore()
    permit.release()


def _check_entries(i: int, entries: Any) -> None:
    if not entries:
        raise BadRequest(f"descriptors[{i}].entries: must not be empty")
    if len(entries) > MAX_ENTRIES:
        raise BadRequest(
            f"descriptors[{i}].entries: {len(entries)} entries, at most {MAX_ENTRIES} allowed"
        )
    for j, entry in enumerate(entries):
        if not entry.key:
            raise BadRequest(f"descriptors[{i}].entries[{j}].key: must not be empty")
        if len(entry.key) > MAX_VALUE_CHARS or len(entry.value) > MAX_VALUE_CHARS:
            raise BadRequest(
                f"descriptors[{i}].entries[{j}]: key and value must be at most "
                f"{MAX_VALUE_CHARS} characters (got {len(entry.key)} and {len(entry.value)})"
            )


def _detail(entries: Any) -> str:
    """The per-value series name of a detailed_metric rule: ``key_value.key_value``."""
    return ".".join([f"{e.key}_{e.value}" for e in entries])
