"""SDK for the Envoy RLS v3 API (``ShouldRateLimit``): what a gateway asks.

One request carries many descriptors and gets one status per descriptor, so a
request is already a batch. ``RlsClient`` (blocking) and ``AsyncRlsClient``
(asyncio) share the request builder and answer parser below; both keep one channel
for their lifetime, bound every call by the deadline, and answer from the failure
mode when the service does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from limiter.clients.connection import AioConnection, Connection
from limiter.clients.fallback import ClientDecision
from limiter.clients.policy import Call, CallPolicy
from limiter.clients.throttle import AdaptiveThrottle

from limiter.errors import InvalidParameter

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
UNIT_SECONDS = {1: 1, 2: 60, 3: 3600, 4: 86400, 5: 30 * 86400, 6: 365 * 86400, 7: 7 * 86400}
UINT32_MAX = 2**32 - 1

Descriptor = Mapping[str, str] | Sequence[tuple[str, str]] | ratelimit_pb2.RateLimitDescriptor


@dataclass(frozen=True)
class Status:
    """One descriptor's answer."""

    allowed: bool
    limit: int  # requests per unit; 0 when no rule matched
    unit_seconds: int
    name: str
    remaining: int
    reset_after: float


@dataclass(frozen=True)
class RlsAnswer:
    """The whole answer: over limit if any descriptor is.

    ``source`` is ``"service"``, ``"fallback"`` or ``"throttled"`` (see
    ``ClientDecision``); ``statuses`` is empty unless the service answered.
    """

    allowed: bool
    statuses: tuple[Status, ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    request_headers: tuple[tuple[str, str], ...] = ()
    level: int = 0
    source: str = "service"
    decision: ClientDecision = field(default=None, repr=False)  # type: ignore[assignment]


def descriptor(
    value: Descriptor, hits_addend: int | None = None
) -> ratelimit_pb2.RateLimitDescriptor:
    """Build one descriptor from ``{"key": "value"}`` or ``[("key", "value"), ...]``."""
    if isinstance(value, ratelimit_pb2.RateLimitDescriptor):
        return value
    pairs = value.items() if isinstance(value, Mapping) else value
    d = ratelimit_pb2.RateLimitDescriptor()
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise InvalidParameter(
                f"descriptor entry must be a (key, value) pair, got {pair!r:.80}"
            )
        k, v = pair
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise InvalidParameter(
                f"descriptor entry needs a non-empty str key and a str value, got {pair!r:.80}"
            )
        d.entries.add(key=k, value=v)
    if not d.entries:
        raise InvalidParameter(f"descriptor has no entries: {value!r:.80}")
    if hits_addend is not None:
        d.hits_addend.value = hits_addend
    return d


def build_request(
    domain: str, descriptors: Iterable[Descriptor], hits_addend: int
) -> rls_pb2.RateLimitRequest:
    if not isinstance(domain, str) or not domain:
        raise InvalidParameter(f"domain must be a non-empty str, got {domain!r}")
    if isinstance(hits_addend, bool) or not isinstance(hits_addend, int):
        raise InvalidParameter(f"hits_addend must be an integer, got {hits_addend!r}")
    if not 0 <= hits_addend <= UINT32_MAX:
        raise InvalidParameter(f"hits_addend must be in [0, {UINT32_MAX}], got {hits_addend!r}")
    if isinstance(descriptors, Mapping):
        descriptors = [descriptors]
    request = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits_addend)
    request.descriptors.extend(descriptor(d) for d in descriptors)
    if not request.descriptors:
        raise InvalidParameter("descriptors must hold at least one descriptor")
    return request


def fallback_key(request: rls_pb2.RateLimitRequest, index: int) -> str:
    """The local limiter's key for descriptor ``index`` when the service is away."""
    entries = request.descriptors[index].entries
    return request.domain + "|" + "|".join(f"{e.key}={e.value}" for e in entries)


def parse(response: rls_pb2.RateLimitResponse, level_header: str) -> RlsAnswer:
    statuses = tuple(
        Status(
            allowed=s.code != OVER_LIMIT,
            limit=s.current_limit.requests_per_unit,
            unit_seconds=UNIT_SECONDS.get(s.current_limit.unit, 0),
            name=s.current_limit.name,
            remaining=s.limit_remaining,
            reset_after=s.duration_until_reset.ToTimedelta().total_seconds(),
        )
        for s in response.statuses
    )
    request_headers = tuple((h.key, h.value) for h in response.request_headers_to_add)
    level = 0
    for name, value in request_headers:
        value = value.strip()
        # Only ASCII digits: str.isdigit also takes e.g. "²", which int() refuses.
        if name.lower() == level_header and value.isascii() and value.isdigit():
            level = int(value)
    allowed = response.overall_code != OVER_LIMIT
    response_headers = tuple((h.key, h.value) for h in response.response_headers_to_add)
    decision = summarize(allowed, statuses, level)
    decision.headers = response_headers
    return RlsAnswer(
        allowed=allowed,
        statuses=statuses,
        response_headers=response_headers,
        request_headers=request_headers,
        level=level,
        decision=decision,
    )


def summarize(allowed: bool, statuses: Sequence[Status], level: int) -> ClientDecision:
    """One Decision for the request: the refusing (or tightest) limited descriptor."""
    limited = [s for s in statuses if s.limit > 0]
    if not limited:
        return ClientDecision(allowed, 0, 0, 0.0, 0.0 if allowed else 1.0, level=level)
    over = [s for s in limited if not s.allowed]
    if over:
        worst = max(over, key=lambda s: s.reset_after)
        retry = worst.reset_after
    else:
        worst = min(limited, key=lambda s: s.remaining)
        retry = 0.0
    return ClientDecision(
        allowed, worst.limit, worst.remaining, worst.reset_after, retry, level=level
    )


class _RlsBase:
    """The sans-I/O part of both clients: options, requests and their answers.

    ``target`` is ``host:port`` or an existing channel (which the client does not
    close). ``acquire(key, cost)`` makes a client usable wherever a limiter is
    (decorators, middleware): it asks for the descriptor ``(descriptor_key, key)``.
    """

    def __init__(
        self,
        target: str | grpc.Channel | grpc.aio.Channel,
        domain: str,
        *,
        timeout: float = 0.020,
        failure_mode: object = "allow",
        throttle: AdaptiveThrottle | bool | None = True,
        descriptor_key: str = "key",
        level_header: str = "x-limiter-level",
    ) -> None:
        if not isinstance(domain, str) or not domain:
            raise InvalidParameter(f"domain must be a non-empty str, got {domain!r}")
        if not isinstance(descriptor_key, str) or not descriptor_key:
            raise InvalidParameter(
                f"descriptor_key must be a non-empty str, got {descriptor_key!r}"
            )
        self.domain = domain
        self.descriptor_key = descriptor_key
        self.level_header = level_header.lower()
        self.policy = CallPolicy(timeout, failure_mode, throttle)
        self._open(target)  # the I/O shell's
        self._should_rate_limit = rls_pb2_grpc.RateLimitServiceStub(self.channel).ShouldRateLimit

    def _call(
        self, descriptors: Iterable[Descriptor], hits_addend: int, domain: str | None
    ) -> Call:
        return self._request_call(build_request(domain or self.domain, descriptors, hits_addend))

    def _key_call(self, key: str, cost: int) -> Call:
        if not isinstance(key, str):
            raise InvalidParameter(f"key must be a str, got {type(key).__name__}: {key!r:.80}")
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise InvalidParameter(f"cost must be an integer >= 1, got {cost!r}")
        return self._request_call(build_request(self.domain, [((self.descriptor_key, key),)], cost))

    def _request_call(self, request: rls_pb2.RateLimitRequest) -> Call:
        return Call(
            self.policy,
            "ShouldRateLimit",
            self._should_rate_limit,
            request,
            self.policy.timeout,
            lambda response: parse(response, self.level_header),
            lambda throttled: self._fallback(request, throttled),
        )

    def _fallback(self, request: rls_pb2.RateLimitRequest, throttled: bool) -> RlsAnswer:
        cost = request.hits_addend or 1
        decisions = [
            self.policy.fallback_for(fallback_key(request, i), cost, throttled)
            for i in range(len(request.descriptors))
        ]
        refused = [d for d in decisions if not d.allowed]
        decision = refused[0] if refused else decisions[0]
        return RlsAnswer(allowed=not refused, source=decision.source, decision=decision)


class RlsClient(_RlsBase, Connection):
    """Blocking Envoy RLS client; thread-safe, one channel reused for every call."""

    def should_rate_limit(
        self, descriptors: Iterable[Descriptor], *, hits_addend: int = 0, domain: str | None = None
    ) -> RlsAnswer:
        return self.call(self._call(descriptors, hits_addend, domain))

    def acquire(self, key: str = "", cost: int = 1) -> ClientDecision:
        return self.call(self._key_call(key, cost)).decision


class AsyncRlsClient(_RlsBase, AioConnection):
    """asyncio Envoy RLS client; same behaviour as ``RlsClient``, awaitable calls.

    Create it inside the event loop that uses it (grpc.aio channels are bound to one).
    """

    async def should_rate_limit(
        self, descriptors: Iterable[Descriptor], *, hits_addend: int = 0, domain: str | None = None
    ) -> RlsAnswer:
        return await self.call(self._call(descriptors, hits_addend, domain))

    async def acquire(self, key: str = "", cost: int = 1) -> ClientDecision:
        return (await self.call(self._key_call(key, cost))).decision
