"""Envoy's Rate Limit Quota Service (RLQS): Envoy enforces limiter's limits itself.

With the quota filter (``envoy.filters.http.rate_limit_quota``) no request waits for the
service: each Envoy opens one stream (``StreamRateLimitQuotas``), reports per bucket the
requests it allowed and denied (every 5 s with Envoy 1.40), and enforces the assignment it
receives until that assignment's time to live. A bucket is an unordered map of strings;
with the report's ``domain`` it names a rule as an RLS descriptor does: the pairs, in the
order the rule's descriptor nests their keys (``Domain.match_unordered``), so one rules
file serves both filters, and each distinct bucket (e.g. each API key) has its own limit.

Assignments:
- a rule's limit is global: each Envoy gets its share (``limiter.quota.QuotaPool``: max-min
  fair on reported demand, a reserve for newcomers; the shares never sum above the
  limit), enforced as a token bucket; an adaptive rule shares its current limit;
- the operations policy acts on assignments: a ``force_deny`` switch or a degradation
  level that sheds the rule's tier sends DENY_ALL, ``force_allow`` and shadow mode
  ALLOW_ALL, an ``override`` switch a new limit;
- a rule whose tier is below its ``reserved`` priority assigns its buckets only the
  unreserved part of the limit (a bucket's requests have the rule's tier), except a bucket
  whose ``limiter.tenant`` pair (``TENANT_ENTRY``, not part of the match) names one of the
  reserve's tenants;
- a bucket no rule limits (unknown domain or descriptor, an ``unlimited`` rule) gets
  ALLOW_ALL, as RLS answers OK; so does a concurrency rule (Envoy counts requests, not
  requests in flight, so no quota can hold one);
- a share under one token per fill interval is DENY_ALL.
Assignments are sent on every report and, when a rule's limit or the policy's verdict
changes, within ``REFRESH`` seconds. The reports feed the rule's counters and the
policy's throttling watch as RLS checks do.

Across replicas (``--redis``): every ``REFRESH`` seconds each replica writes its own
instances of every shared bucket to Redis and reads the other replicas' back
(``limiter.backends.quota_store``, on a worker thread, at most ``SYNC_BATCH`` buckets per
round, the others in later rounds), and splits each limit over all of them, so Envoys
connected to different replicas share one limit. While Redis is away a replica keeps what
the others' instances were last given and splits the rest among its own (a replica that
never reached Redis splits the whole limit among its own Envoys).

Bounds: at most ``MAX_BUCKETS`` buckets are tracked (a new bucket beyond gets DENY_ALL and
is counted in ``limiter_rlqs_refused_total``: a full table refuses the newcomer, not
everyone); a bucket with more than ``MAX_BUCKET_KEYS`` pairs matches no rule; a bucket idle
for ``IDLE`` seconds (every report zero) is abandoned (Envoy forgets it; its next request
starts it afresh); so is every bucket of a rule a reload removed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2, rlqs_pb2_grpc
from envoy.type.v3 import ratelimit_strategy_pb2
from limiter.server.decider import Decider
from limiter.server.rls import TENANT_ENTRY
from limiter.server.rules import Kind, RuleState

from limiter.quota import QuotaPool, token_bucket

if TYPE_CHECKING:
    from limiter.server.metrics import Metrics

    from limiter.backends.quota_store import QuotaStore

log = logging.getLogger("limiter.server")

SERVICE = rlqs_pb2.DESCRIPTOR.services_by_name["RateLimitQuotaService"].full_name
Response = rlqs_pb2.RateLimitQuotaResponse
ALLOW_ALL = ratelimit_strategy_pb2.RateLimitStrategy.ALLOW_ALL
DENY_ALL = ratelimit_strategy_pb2.RateLimitStrategy.DENY_ALL
MAX_BUCKETS = 100_000
MAX_BUCKET_KEYS = 8
# Seconds between checks of every bucket's limit and verdict (an adaptive rule moves, an
# operator flips a switch); a report gets its bucket's assignment at once.
REFRESH = 1.0
# Seconds a bucket may stay idle (every instance reports zero) before it is abandoned.
IDLE = 300.0
# Buckets exchanged with the shared store per round (one script run each), and how many
# of their splits run on the loop before it serves other work.
SYNC_BATCH = 1000
APPLY_SLICE = 50


@dataclass(eq=False)
class _Stream:
    """One Envoy's stream: what it is sent goes through ``outbox``."""

    name: str
    outbox: asyncio.Queue[Response | None] = field(default_factory=asyncio.Queue)
    buckets: set[Any] = field(default_factory=set)


@dataclass(eq=False)
class _Bucket:
    """One bucket of one domain: its rule, the shares of the Envoys that report it."""

    bucket_id: rlqs_pb2.BucketId
    state: RuleState | None  # None: no rule limits it (ALLOW_ALL)
    pool: QuotaPool | None
    vip: bool = False  # its tenant is one of its rule's reserve tenants
    streams: dict[str, _Stream] = field(default_factory=dict)
    strategy: Any = None  # what the policy says now: None (shares), ALLOW_ALL or DENY_ALL
    active: float = field(default_factory=time.monotonic)  # last report with requests
    sent: dict[str, Any] = field(default_factory=dict)  # each stream's last token bucket


class QuotaService(rlqs_pb2_grpc.RateLimitQuotaServiceServicer):
    """The RLQS servicer (grpc.aio); ``refresh`` runs on the decision loop every
    ``REFRESH`` seconds (``run``)."""

    def __init__(
        self,
        decider: Decider,
        *,
        ttl: float = 30.0,
        store: QuotaStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``store`` shares the buckets with other replicas (``--redis``)."""
        self.decider = decider
        self.metrics = metrics
        self.ttl = ttl
        self.store = store
        self._sync_from = 0  # where the next round of exchanges starts in the buckets
        self.buckets: dict[tuple[str, tuple[tuple[str, str], ...]], _Bucket] = {}
        self._names = itertools.count(1)

    async def StreamRateLimitQuotas(
        self, requests: AsyncIterator[rlqs_pb2.RateLimitQuotaUsageReports], context: Any
    ) -> AsyncIterator[Response]:
        stream = _Stream(f"{context.peer()}#{next(self._names)}")
        reader = asyncio.create_task(self._read(requests, stream))
        try:
            while True:
                message = await stream.outbox.get()
                if message is None:
                    return
                yield message
        finally:
            reader.cancel()
            self._disconnect(stream)

    async def _read(self, requests: Any, stream: _Stream) -> None:
        try:
            async for reports in requests:
                self.report(stream, reports)
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            stream.outbox.put_nowait(None)

    def report(self, stream: _Stream, reports: rlqs_pb2.RateLimitQuotaUsageReports) -> None:
        """One message of usage reports: count them, answer each bucket's Envoys."""
        policy = self.decider.policy
        for usage in reports.bucket_quota_usages:
            bucket = self._bucket(reports.domain, usage.bucket_id)
            if bucket is None:
                if self.metrics is not None:
                    self.metrics.rlqs_refused.inc()
                stream.outbox.put_nowait(_assign(usage.bucket_id, DENY_ALL, self.ttl))
                continue
            allowed, denied = usage.num_requests_allowed, usage.num_requests_denied
            if allowed or denied:
                bucket.active = time.monotonic()
            state = bucket.state
            if state is not None:
                _count(state, allowed, denied)
                if policy is not None and allowed:
                    policy.record(state.ops_name, True, allowed)
                if policy is not None and denied:
                    policy.record(state.ops_name, False, denied)
            bucket.streams[stream.name] = stream
            stream.buckets.add(self._key(reports.domain, usage.bucket_id))
            if bucket.pool is None or bucket.strategy is not None:
                stream.outbox.put_nowait(_assign(bucket.bucket_id, bucket.strategy, self.ttl))
                continue
            grants = bucket.pool.report(stream.name, min(allowed, 1 << 62), min(denied, 1 << 62))
            self._send(bucket, grants)

    def _bucket(self, domain: str, bucket_id: rlqs_pb2.BucketId) -> _Bucket | None:
        """The bucket, tracked from its first report on (None: beyond ``MAX_BUCKETS``)."""
        key = self._key(domain, bucket_id)
        bucket = self.buckets.get(key)
        if bucket is not None or len(self.buckets) >= MAX_BUCKETS:
            return bucket
        copy = rlqs_pb2.BucketId()
        copy.CopyFrom(bucket_id)
        pairs = dict(bucket_id.bucket)
        tenant = pairs.pop(TENANT_ENTRY, None)
        state = self._rule(domain, pairs)
        bucket = _Bucket(copy, state, None, vip=state is not None and tenant in state.vips)
        self._update(bucket)
        self.buckets[key] = bucket
        return bucket

    @staticmethod
    def _key(domain: str, bucket_id: rlqs_pb2.BucketId) -> tuple[str, tuple[tuple[str, str], ...]]:
        return domain, tuple(sorted(bucket_id.bucket.items()))

    def _rule(self, domain: str, pairs: dict[str, str]) -> RuleState | None:
        snapshot = self.decider.rulebook.snapshot
        found = snapshot.config.domains.get(domain)
        if found is None or not pairs or len(pairs) > MAX_BUCKET_KEYS:
            return None
        rule, _ = found.match_unordered(pairs)
        if rule is None:
            return None
        state = snapshot.states[rule]
        lim = rule.limit
        in_flight = lim.algorithm == "concurrency" or (
            lim.algorithm == "adaptive" and lim.mode == "concurrency"
        )
        if state.unlimited or in_flight or state.kind is Kind.NONE:
            return None  # not limited, or a limit on requests in flight: no quota holds it
        return state

    def _update(self, bucket: _Bucket) -> dict[str, float]:
        """Bring the bucket's strategy and pool in line with its rule now; returns the
        shares that changed (the strategy's change is the caller's to send)."""
        state = bucket.state
        if state is None:
            bucket.strategy = ALLOW_ALL
            return {}
        policy = self.decider.policy
        limit = state.limit
        bucket.strategy = None
        if policy is not None:
            level = policy.level()
            verdict = policy.rule_verdict(state.ops_name, state.limit, state.priority, level)
            if verdict is not None:
                if verdict.decision is not None:
                    bucket.strategy = ALLOW_ALL if verdict.decision.allowed else DENY_ALL
                elif verdict.shadow:
                    bucket.strategy = ALLOW_ALL
                elif verdict.limit is not None:
                    limit = verdict.limit
        reserved, tier = state.rule.limit.reserved, state.reserve_for
        below = reserved is not None and tier is not None and state.priority < tier
        if below and not bucket.vip and limit > 1:
            # A bucket's requests have their rule's tier: below the reserve's, the bucket
            # is assigned only the unreserved part, unless a VIP tenant's.
            limit -= min(reserved.part(limit), limit - 1)
        per_second, window = _rate(state, limit)
        if bucket.pool is None:
            bucket.pool = QuotaPool(per_second, window=window, ttl=self.ttl)
            return {}
        if per_second != bucket.pool.limit:
            return bucket.pool.set_limit(per_second)
        return {}

    def refresh(self) -> None:
        """Re-check every bucket (limits, switches, levels, reloads, idleness)."""
        now = time.monotonic()
        states = self.decider.rulebook.snapshot.states
        for key, bucket in list(self.buckets.items()):
            state = bucket.state
            if state is not None and states.get(state.rule) is not state:
                self._abandon(key, bucket)  # a reload changed or removed its rule
                continue
            if now - bucket.active > IDLE:
                self._abandon(key, bucket)
                continue
            before = bucket.strategy
            changed = self._update(bucket)
            if bucket.strategy is None and bucket.pool is not None and before is not None:
                self._send(bucket, bucket.pool.grants())  # shared out again
            elif bucket.strategy != before:
                response = _assign(bucket.bucket_id, bucket.strategy, self.ttl)
                for stream in bucket.streams.values():
                    stream.outbox.put_nowait(response)
            elif changed:
                self._send(bucket, changed)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            try:
                self.refresh()
                if self.store is not None:
                    await self.sync()
            except Exception:
                log.exception("quota refresh failed")

    async def sync(self) -> None:
        """One round of exchanges with the other replicas through the store: the I/O on a
        worker thread, the split and the assignments back on this loop."""
        store = self.store
        assert store is not None
        shared = [(k, b) for k, b in self.buckets.items() if b.pool is not None]
        if not shared:
            return
        start = self._sync_from % len(shared)
        batch = (shared[start:] + shared[:start])[:SYNC_BATCH]
        self._sync_from = start + len(batch)
        payload = []
        for (domain, pairs), bucket in batch:
            assert bucket.pool is not None
            payload.append((store.key(domain, pairs), bucket.pool.entries()))
        views = await asyncio.to_thread(store.exchange, payload)
        for n, ((key, bucket), view) in enumerate(zip(batch, views, strict=True), 1):
            if n % APPLY_SLICE == 0:
                await asyncio.sleep(0)  # let checks waiting on the loop in between
            pool = bucket.pool
            if self.buckets.get(key) is not bucket or pool is None:
                continue  # abandoned meanwhile
            changed = pool.isolate() if view is None else pool.set_remote(view.demands, view.held)
            if bucket.strategy is None:
                self._send(bucket, changed, quiet=True)

    def _send(self, bucket: _Bucket, grants: dict[str, float], *, quiet: bool = False) -> None:
        """Assign ``grants``; ``quiet``: only where what Envoy enforces changes (a grant
        that moved by less than a token is not worth a message)."""
        pool = bucket.pool
        assert pool is not None
        for name, grant in grants.items():
            stream = bucket.streams.get(name)
            if stream is None:
                continue
            strategy = token_bucket(grant, pool.fill_seconds) or DENY_ALL
            if quiet and bucket.sent.get(name) == strategy:
                continue
            bucket.sent[name] = strategy
            stream.outbox.put_nowait(_assign(bucket.bucket_id, strategy, self.ttl))

    def _abandon(self, key: Any, bucket: _Bucket) -> None:
        del self.buckets[key]
        response, action = _action(bucket.bucket_id)
        action.abandon_action.SetInParent()
        for stream in bucket.streams.values():
            stream.buckets.discard(key)
            stream.outbox.put_nowait(response)

    def _disconnect(self, stream: _Stream) -> None:
        for key in stream.buckets:
            bucket = self.buckets.get(key)
            if bucket is None:
                continue
            bucket.streams.pop(stream.name, None)
            bucket.sent.pop(stream.name, None)
            if bucket.pool is not None:
                self._send(bucket, bucket.pool.disconnect(stream.name))


def _rate(state: RuleState, limit: int) -> tuple[float, float]:
    """A rule's limit in requests per second, and the window the quota spans (seconds)."""
    lim = state.rule.limit
    current = getattr(state.kernel, "current_limit", None)
    if current is not None:  # an adaptive rule: its limit is per second now
        return float(current), 1.0
    return limit / lim.seconds, float(lim.seconds)


def _count(state: RuleState, allowed: int, denied: int) -> None:
    stats = state.stats
    stats.total_hits += allowed + denied
    stats.within_limit += allowed
    stats.over_limit += denied


def _action(bucket_id: rlqs_pb2.BucketId) -> tuple[Response, Any]:
    """A response with one action on ``bucket_id``, and that action (for the caller to fill)."""
    response = Response()
    action = response.bucket_action.add()
    action.bucket_id.CopyFrom(bucket_id)
    return response, action


def _assign(bucket_id: rlqs_pb2.BucketId, strategy: Any, ttl: float) -> Response:
    """A response assigning ``strategy``: ALLOW_ALL, DENY_ALL or a ``limiter.quota`` token
    bucket."""
    response, action = _action(bucket_id)
    assignment = action.quota_assignment_action
    assignment.assignment_time_to_live.FromNanoseconds(round(ttl * 1e9))
    rule = assignment.rate_limit_strategy
    if isinstance(strategy, int):
        rule.blanket_rule = strategy  # ALLOW_ALL is 0: the assignment still selects it
    else:
        bucket = rule.token_bucket
        bucket.max_tokens = strategy.max_tokens
        bucket.tokens_per_fill.value = strategy.tokens_per_fill
        bucket.fill_interval.FromSeconds(strategy.fill_seconds)
    return response
