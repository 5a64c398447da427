"""Envoy RLS v3 (``RateLimitService/ShouldRateLimit``) with envoyproxy/ratelimit semantics.

One ``answer`` (encoded request in, encoded response out) serves both gRPC
``ShouldRateLimit`` and the HTTP ``/json`` endpoint: read and validate the whole request
first (undecodable or malformed → ``BadRequest`` → INVALID_ARGUMENT),
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
from envoy.service.ratelimit.v3 import rls_pb2
from limiter._wire import WireError, encode_rls_response, parse_rls_request
from limiter.server.engine import MAX_UINT32, BadRequest, Engine, RuleState
from limiter.server.metrics import Metrics

from limiter import Decision
from limiter import headers as rl_headers
from limiter.config import UNIT_BY_ENUM

Response = rls_pb2.RateLimitResponse
SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
OK = Response.OK
OVER_LIMIT = Response.OVER_LIMIT
# Status tuples for encode_rls_response: (code, current_limit, limit_remaining, seconds, nanos).
UNMATCHED = (OK, None, 0, 0, 0)  # no rule limits the descriptor
UNLIMITED = (OK, None, MAX_UINT32, 0, 0)  # an ``unlimited`` rule matched
MAX_RESET = 1e12  # seconds: a Duration holds far more; no real window comes near

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


class RateLimitService:
    """The RLS v3 servicer (grpc.aio), answering from and to wire bytes.

    ``ShouldRateLimit`` is registered without protobuf (de)serialisers (``handler``):
    ``limiter._wire`` reads the request and writes the response, and the constant part
    of each status is encoded once per rule (``RuleState.rls_limit``). ``decide`` is the
    same answer for protobuf messages (the ``/json`` endpoint, tests).
    """

    def __init__(
        self, engine: Engine, metrics: Metrics, options: HeaderOptions, admission: Any = None
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.options = options
        # limiter.server.admission.ServiceAdmission: holds checks of rules with a ``hold``
        self.admission = admission
        self._latency = metrics.latency.labels("rls")

    def handler(self) -> grpc.GenericRpcHandler:
        """``ShouldRateLimit`` on raw bytes, for ``server.add_generic_rpc_handlers``."""
        method = grpc.unary_unary_rpc_method_handler(self.ShouldRateLimit)
        return grpc.method_handlers_generic_handler(SERVICE, {"ShouldRateLimit": method})

    async def ShouldRateLimit(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        try:
            response = await self.answer(request)
        except BadRequest as exc:
            self.metrics.invalid_requests.labels("rls").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._latency.observe(time.perf_counter() - start)
        return response

    async def decide(self, request: rls_pb2.RateLimitRequest) -> Response:
        """The RLS answer for ``request``; raises BadRequest naming the bad field."""
        return Response.FromString(await self.answer(request.SerializeToString()))

    async def answer(self, data: bytes) -> bytes:
        """The encoded RateLimitResponse for an encoded RateLimitRequest (or BadRequest)."""
        try:
            name, default_hits, descriptors = parse_rls_request(
                data, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_VALUE_CHARS
            )
        except WireError as exc:
            raise BadRequest(str(exc)) from None
        n = len(descriptors)
        engine = self.engine
        snapshot = engine.snapshot
        domain = snapshot.config.domains.get(name)
        states: list[RuleState | None] = [None] * n
        replaced: set[str] = set()
        for i, descriptor in enumerate(descriptors):
            override = descriptor.limit
            if override is not None:
                requests_per_unit, unit = override
                if unit not in UNIT_BY_ENUM:
                    raise BadRequest(f"descriptors[{i}].limit.unit: {unit} is not a known unit")
                if domain is not None:
                    states[i] = engine.override(name, requests_per_unit, unit)
            elif domain is not None:
                rule = domain.match(descriptor.entries)
                if rule is not None:
                    state = states[i] = snapshot.states[rule]
                    if state.replaces:
                        replaced.update(state.replaces)
        level = engine.level()
        level_header = [(self.options.level_header, str(level))]
        if domain is None:
            engine.unknown_domain += 1
            return encode_rls_response(OK, [UNMATCHED] * n, [], level_header)
        default_hits = default_hits or 1
        ops = engine.ops
        statuses: list[tuple[int, bytes | None, int, int, int]] = [UNMATCHED] * n
        # (index, state, hits, key, forced decision, shadow)
        work: list[tuple[int, RuleState, int, str, Any, bool]] = []
        remote: list[tuple[int, RuleState, int, str, Any, bool]] = []  # shared-backend checks
        for i, state in enumerate(states):
            if state is None or (replaced and state.name in replaced):
                continue
            if state.unlimited:
                statuses[i] = UNLIMITED
                continue
            descriptor = descriptors[i]
            hits = descriptor.hits
            hits = default_hits if hits is None else hits or 1
            values = descriptor.values
            if ops is None:
                forced, shadow = None, state.shadow
            else:
                forced, state, shadow = engine.verdict(state, values, hits, state.priority, level)
            item = (i, state, hits, state.prefix + values, forced, shadow)
            work.append(item)
            if state.remote is not None and forced is None:
                remote.append(item)
        # Shared-backend rules are asked concurrently: one pipelined round trip.
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
        quotas: list[tuple[str, int, float, int, float, bool, float, str]] = []  # Quota order
        for i, state, hits, key, decision, shadow in work:
            if decision is None:
                decision = decided[i] if i in decided else state.acquire(key, hits)
            detail = _detail(descriptors[i].entries) if state.detailed is not None else None
            state.count(decision, hits, detail, shadow)
            allowed = decision.allowed or shadow
            if ops is not None:
                ops.after(state.ops_name, allowed, hits)
            remaining = decision.remaining
            reset = decision.reset_after if decision.allowed else decision.retry_after
            # Clamped to what Duration holds (and NaN, never expected, to 0).
            reset = min(reset, MAX_RESET) if reset > 0 else 0.0
            whole = int(reset)
            if not allowed:
                overall = OVER_LIMIT
            statuses[i] = (
                OK if allowed else OVER_LIMIT,
                state.rls_limit,
                min(max(remaining, 0), MAX_UINT32),
                whole,
                int((reset - whole) * 1e9),
            )
            quotas.append(
                (
                    state.label,
                    state.limit,
                    state.window,
                    remaining,
                    decision.reset_after,
                    allowed,
                    decision.retry_after,
                    "requests",
                )
            )
        headers: list[tuple[str, str]] = []
        if quotas:
            options = self.options
            headers = rl_headers.build(quotas, ietf=options.ietf, legacy=options.legacy)
        return encode_rls_response(overall, statuses, headers, level_header)

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


def _detail(entries: tuple[tuple[str, str], ...]) -> str:
    """The per-value series name of a detailed_metric rule: ``key_value.key_value``."""
    return ".".join([f"{key}_{value}" for key, value in entries])
