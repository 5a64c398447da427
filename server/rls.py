"""Envoy RLS v3 (``RateLimitService/ShouldRateLimit``): a codec over the decider.

Reads a ``RateLimitRequest`` from wire bytes (``limiter._wire``; undecodable or
malformed → ``BadRequest`` → INVALID_ARGUMENT), has the decider match its descriptors
and decide them, and writes the ``RateLimitResponse`` with envoyproxy/ratelimit's
semantics: statuses in request order, ``overall_code`` OVER_LIMIT if any non-shadow
descriptor is, else OK (never UNKNOWN); an unknown domain is answered OK and counted.

Answers are immediate (Envoy's rate-limit timeout defaults to 20 ms), except for a rule
that opts into a short ``hold`` (at most ``limiter.config.MAX_HOLD``): a check it refuses
waits up to that long for admission, at its priority.

A check has its rule's priority unless its descriptor carries a ``limiter.priority``
entry (``PRIORITY_ENTRY``; Envoy: a ``request_headers`` action with that descriptor key),
which is taken out of the descriptor before it is matched. Likewise a ``limiter.tenant``
entry (``TENANT_ENTRY``) names the check's tenant: one of its rule's reserve tenants
(``reserved.tenants``) may use the reserve whatever the check's priority.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from limiter._wire import WireError, encode_rls_response, parse_rls_request
from limiter.server.decider import MAX_COST, Checks, Decider, Outcome, caller_of, vips_of
from limiter.server.metrics import Metrics
from limiter.server.rules import MAX_UINT32, BadRequest

from limiter import headers as rl_headers
from limiter.config import MAX_TENANT_CHARS, UNIT_BY_ENUM
from limiter.errors import InvalidParameter
from limiter.priority import Priority

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
# The descriptor entries that carry a check's priority and its tenant (not part of the
# rule's match or key).
PRIORITY_ENTRY = "limiter.priority"
TENANT_ENTRY = "limiter.tenant"
_ENTRIES = (PRIORITY_ENTRY, TENANT_ENTRY)
_ENTRY_BYTES = b"limiter."  # what both start with
# The header that carries the degradation level to the backend.
LEVEL_HEADER = "x-limiter-level"


@dataclass(frozen=True)
class HeaderOptions:
    """Which rate-limit headers responses carry."""

    ietf: bool = True
    legacy: bool = False

    @classmethod
    def parse(cls, mode: str) -> HeaderOptions:
        """A ``--headers`` mode, which ``Settings`` has checked is one of ``settings.HEADERS``."""
        return cls(ietf=mode in ("ietf", "both"), legacy=mode in ("legacy", "both"))


class RateLimitService:
    """The RLS v3 servicer (grpc.aio), answering from and to wire bytes.

    ``ShouldRateLimit`` is registered without protobuf (de)serialisers (``handler``);
    ``decide`` is the same answer for protobuf messages (``/json``, tests).
    """

    def __init__(self, decider: Decider, metrics: Metrics, options: HeaderOptions) -> None:
        self.decider = decider
        self.metrics = metrics
        self.options = options
        self._latency = metrics.latency.labels("rls")

    def handler(self) -> grpc.GenericRpcHandler:
        """``ShouldRateLimit`` on raw bytes, for ``server.add_generic_rpc_handlers``."""
        method = grpc.unary_unary_rpc_method_handler(self.ShouldRateLimit)
        return grpc.method_handlers_generic_handler(SERVICE, {"ShouldRateLimit": method})

    async def ShouldRateLimit(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        try:
            # Only held checks count per caller: the peer is read only when a rule holds.
            holds = self.decider.rulebook.snapshot.holds
            response = await self.answer(request, caller_of(context.peer()) if holds else "")
        except BadRequest as exc:
            self.metrics.invalid_requests.labels("rls").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._latency.observe(time.perf_counter() - start)
        return response

    async def decide(self, request: rls_pb2.RateLimitRequest) -> Response:
        """The RLS answer for ``request``; raises BadRequest naming the bad field."""
        return Response.FromString(await self.answer(request.SerializeToString()))

    async def answer(self, data: bytes, caller: str = "") -> bytes:
        """The encoded RateLimitResponse for an encoded RateLimitRequest (or BadRequest);
        ``caller`` (its address) counts toward the bound on checks held per caller."""
        try:
            domain, default_hits, descriptors = parse_rls_request(
                data, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_VALUE_CHARS
            )
        except WireError as exc:
            raise BadRequest(str(exc)) from None
        if default_hits > MAX_COST:
            raise BadRequest(f"hits_addend: must be at most {MAX_COST}, got {default_hits}")
        for i, descriptor in enumerate(descriptors):
            if descriptor.limit is not None and descriptor.limit[1] not in UNIT_BY_ENUM:
                unit = descriptor.limit[1]
                raise BadRequest(f"descriptors[{i}].limit.unit: {unit} is not a known unit")
            hits = descriptor.hits
            if hits is not None and hits > MAX_COST:
                raise BadRequest(
                    f"descriptors[{i}].hits_addend: must be at most {MAX_COST}, got {hits}"
                )
        priorities = tenants = None
        if _ENTRY_BYTES in data:  # a substring scan: most requests carry neither entry
            descriptors, priorities, tenants = _extensions(descriptors)
        decider = self.decider
        rules = decider.match(domain, descriptors)
        if rules is None:
            level_header = [(LEVEL_HEADER, str(decider.level()))]
            return encode_rls_response(OK, [UNMATCHED] * len(descriptors), [], level_header)
        default_hits = default_hits or 1
        snapshot = decider.rulebook.snapshot
        checks = Checks(
            rules,
            [d.values for d in descriptors],
            [default_hits if d.hits is None else d.hits or 1 for d in descriptors],
            priorities=priorities,
            vips=None if tenants is None else vips_of(rules, tenants),
            keep_permits=False,
            caller=caller,
        )
        if snapshot.holds:
            holds = [0.0 if s is None else s.rule.limit.hold for s in rules]
            checks.max_waits = holds if any(holds) else None
        if snapshot.detailed:
            checks.details = [_detail(d.entries) for d in descriptors]
        decided = await decider.decide(checks)
        return self._encode(decided.outcomes, decided.level)

    def _encode(self, outcomes: list[Outcome], level: int) -> bytes:
        overall = OK
        statuses = []
        quotas = []  # limiter.headers.Quota field order, as plain tuples
        for o in outcomes:
            state = o.rule
            if state is None:
                statuses.append(UNMATCHED)
                continue
            if state.unlimited:
                statuses.append(UNLIMITED)
                continue
            refused = o.retry_after > 0 or (not o.allowed)
            reset = o.retry_after if refused else o.reset_after
            # Clamped to what Duration holds (and NaN, never expected, to 0).
            reset = min(reset, MAX_RESET) if reset > 0 else 0.0
            whole = int(reset)
            code = OK if o.allowed else OVER_LIMIT
            if code == OVER_LIMIT:
                overall = OVER_LIMIT
            remaining = min(max(o.remaining, 0), MAX_UINT32)
            statuses.append((code, state.rls_limit, remaining, whole, int((reset - whole) * 1e9)))
            quotas.append(
                (state.label, o.limit, state.window, o.remaining, o.reset_after, o.allowed,
                 o.retry_after, "requests")
            )  # fmt: skip
        headers: list[tuple[str, str]] = []
        if quotas:
            options = self.options
            headers = rl_headers.build(quotas, ietf=options.ietf, legacy=options.legacy)
        return encode_rls_response(overall, statuses, headers, [(LEVEL_HEADER, str(level))])


class _Stripped(NamedTuple):
    """A descriptor without its priority and tenant entries (what matching and the key see)."""

    entries: tuple[tuple[str, str], ...]
    values: str
    limit: Any
    hits: int | None


def _extensions(
    descriptors: list[Any],
) -> tuple[list[Any], list[Priority | None] | None, list[str | None] | None]:
    """The descriptors without their ``PRIORITY_ENTRY`` and ``TENANT_ENTRY``, each one's
    priority (None: its rule's) and tenant (None: none); either list is None when no
    descriptor has that entry."""
    out: list[Any] = []
    priorities: list[Priority | None] = []
    tenants: list[str | None] = []
    for i, d in enumerate(descriptors):
        priority = tenant = None
        kept = []
        for j, (key, value) in enumerate(d.entries):
            if key not in _ENTRIES:
                kept.append((key, value))
                continue
            field = f"descriptors[{i}].entries[{j}].value"
            if key == TENANT_ENTRY:
                if not 0 < len(value) <= MAX_TENANT_CHARS:
                    raise BadRequest(
                        f"{field}: a {TENANT_ENTRY} must be 1 to {MAX_TENANT_CHARS} characters, "
                        f"got {len(value)}"
                    )
                tenant = value
                continue
            try:
                priority = Priority.parse(value, field)
            except InvalidParameter as exc:
                raise BadRequest(str(exc)) from None
        if len(kept) == len(d.entries):
            out.append(d)
        else:
            values = "\x1f".join(value for _, value in kept)
            out.append(_Stripped(tuple(kept), values, d.limit, d.hits))
        priorities.append(priority)
        tenants.append(tenant)
    return (
        out,
        priorities if any(p is not None for p in priorities) else None,
        tenants if any(t is not None for t in tenants) else None,
    )


def _detail(entries: tuple[tuple[str, str], ...]) -> str:
    """The per-value series name of a detailed_metric rule: ``key_value.key_value``."""
    return ".".join([f"{key}_{value}" for key, value in entries])
