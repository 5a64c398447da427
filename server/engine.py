"""Rules bound to engine kernels: the state behind every decision the service makes.

The engine holds an immutable ``Snapshot`` (config + one ``RuleState`` per rule) that a
reload swaps in one assignment, so a decision never sees half a config. Kernels and
counters of rules whose limit is unchanged survive a reload. All algorithm logic lives
in the kernels (``limiter._core``); this module only routes keys and costs to them and
keeps the per-rule statistics Prometheus reads. With a Redis backend every rule's state
is shared, rate-mode adaptive rules included (one limit for all replicas and workers);
concurrency-mode adaptive rules stay per process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from envoy.service.ratelimit.v3.rls_pb2 import RateLimitResponse

from limiter import Decision, InvalidParameter
from limiter.config import Config, Limit, Rule, build_limiter, window_seconds

log = logging.getLogger("limiter.server")

RateLimit = RateLimitResponse.RateLimit
MAX_UINT32 = 2**32 - 1
NEAR_LIMIT_RATIO = 0.8
# Distinct label sets a detailed_metric rule may create before folding into "_other".
MAX_DETAILED_SERIES = 1000
# Distinct request-supplied limit overrides kept at once (LRU beyond).
MAX_OVERRIDES = 1024
# A rule's failure_mode -> the Redis backend's on_failure.
ON_FAILURE = {"allow": "open", "deny": "closed", "local": "local"}


class BadRequest(InvalidParameter):
    """A malformed request; the message names the field (answered INVALID_ARGUMENT)."""


@dataclass
class Stats:
    """Counters of one rule, named as envoyproxy/ratelimit names them."""

    total_hits: int = 0
    over_limit: int = 0
    near_limit: int = 0
    within_limit: int = 0
    shadow_mode: int = 0
    backend_errors: int = 0


class RuleState:
    """One rule ready to decide: its kernel, its counters and what responses echo."""

    __slots__ = (
        "batchable",
        "concurrency",
        "detailed",
        "domain",
        "failure_mode",
        "fallback",
        "kernel",
        "label",
        "limit",
        "max_cost",
        "name",
        "near",
        "ops_name",
        "prefix",
        "priority",
        "remote",
        "replaces",
        "rls_limit",
        "rule",
        "shadow",
        "stats",
        "unlimited",
        "window",
    )

    def __init__(self, rule: Rule, kernel: Any, stats: Stats) -> None:
        lim = rule.limit
        self.rule = rule
        self.kernel = kernel
        self.stats = stats
        self.domain = rule.domain
        self.name = lim.name
        self.label = rule.label
        self.limit = lim.requests_per_unit
        # What every RLS status of this rule echoes, encoded once (RateLimitResponse.RateLimit;
        # its requests_per_unit is a uint32, our limits may go higher).
        self.rls_limit = RateLimit(
            requests_per_unit=min(self.limit, MAX_UINT32), unit=lim.unit_enum, name=self.name
        ).SerializeToString()
        self.unlimited = lim.unlimited
        self.shadow = rule.shadow_mode
        self.detailed: dict[str, Stats] | None = {} if rule.detailed_metric else None
        self.replaces = lim.replaces
        self.failure_mode = lim.failure_mode
        self.fallback: Any = None
        self.window = window_seconds(lim) if not lim.unlimited else 0
        self.near = int(self.limit * NEAR_LIMIT_RATIO)
        self.max_cost = lim.max_cost
        # The shared-state binding (limiter.backends) when the rule lives in Redis.
        self.remote = getattr(kernel, "remote", None)
        self.concurrency = lim.algorithm == "concurrency"
        # A rate rule decides many checks in one call: ``acquire_batch`` on a local
        # kernel, ``acquire_many`` (one backend batch) on a shared one.
        self.batchable = not self.concurrency and (
            self.remote is not None or hasattr(kernel, "acquire_batch")
        )
        self.priority = lim.priority
        # How the operations side (switches, shedding) names the rule: "<domain>/<label>".
        self.ops_name = f"{rule.domain}/{rule.label}"
        # Keys are namespaced by rule so a shared backend never mixes two rules' counters.
        self.prefix = f"{rule.domain}\x1f{rule.id}\x1f"

    def acquire(self, key: str, cost: int, hold: bool = False) -> Decision:
        """The kernel's decision for ``key``; never raises for a well-formed request.

        A concurrency rule answers with a Permit; unless ``hold``, it is released at
        once (a stateless RLS check asks "would it fit now" and holds nothing).
        """
        kernel = self.kernel
        if kernel is None or cost > self.max_cost:
            # A zero limit, or a cost no quota can ever hold: refused until the window ends.
            reset = self._window_left()
            return Decision(False, self.limit, 0, reset, reset)
        try:
            decision = kernel.acquire(key, cost)
        except Exception as exc:
            decision = self._failed(key, cost, exc)
        if not hold and type(decision) is not Decision:
            _finish_unheld(decision)
        return decision

    def acquire_batch(self, keys: list[str], costs: list[int]) -> list[Decision]:
        """``acquire`` for many checks of a local ``batchable`` rule in one kernel call (costs
        within ``max_cost``). A batch the kernel refuses changed nothing: each check is
        then answered as ``acquire`` answers it."""
        try:
            return self.kernel.acquire_batch(keys, costs)
        except Exception:
            return [self.acquire(k, c) for k, c in zip(keys, costs, strict=True)]

    async def acquire_async(self, key: str, cost: int, hold: bool = False) -> Any:
        """``acquire`` without blocking the event loop on a shared backend.

        Concurrent callers' backend calls are pipelined into shared round trips by
        the backend. Returns a Decision, or a ``Lease`` (Decision + ``release``) for
        a held concurrency rule.
        """
        remote = self.remote
        if remote is None:
            return self.acquire(key, cost, hold)
        if cost > self.max_cost:
            return self.acquire(key, cost, hold)
        try:
            if not self.concurrency:
                return await remote.acquire_async(key, cost)
            decision, lease = await remote.acquire_lease_async(key, cost)
        except Exception as exc:
            return self._failed(key, cost, exc)
        if lease is None:
            return decision
        held = Lease(decision, remote, key, cost, lease)
        if not hold:
            held.release(wait=False)  # a stateless check holds nothing (posting never blocks)
        return held

    async def acquire_many(self, keys: list[str], costs: list[int]) -> list[Decision]:
        """Many rate checks in one backend round trip (shared rules).

        Costs must be within ``max_cost`` and the rule not a concurrency rule.
        """
        try:
            return await self.remote.acquire_batch_async(keys, costs)
        except Exception as exc:
            return [self._failed(k, c, exc) for k, c in zip(keys, costs, strict=True)]

    @property
    def backend_errors(self) -> int:
        """Failures answered per failure_mode, here and inside the backend binding."""
        return self.stats.backend_errors + getattr(self.remote, "failures", 0)

    def _window_left(self) -> float:
        seconds = self.rule.limit.seconds
        return seconds - time.time() % seconds

    def _failed(self, key: str, cost: int, exc: Exception) -> Decision:
        self.stats.backend_errors += 1
        log.warning(
            "backend error",
            extra={"fields": {"rule": self.label, "domain": self.domain, "error": repr(exc)}},
        )
        if self.failure_mode == "deny":
            return Decision(False, self.limit, 0, 1.0, 1.0)
        if self.failure_mode == "local":
            if self.fallback is None:
                self.fallback = build_limiter(self.rule.limit)
            return self.fallback.acquire(key, cost)
        return Decision(True, self.limit, self.limit, 0.0)

    def count(
        self, decision: Decision, hits: int, detail: str | None = None, shadow: bool = False
    ) -> None:
        """Add one decision to the rule's counters (and its detailed series)."""
        allowed = decision.allowed
        shadow = shadow or self.shadow
        self._add(self.stats, allowed, decision.remaining, hits, shadow)
        if detail is not None and self.detailed is not None:
            self._add(self._series(detail), allowed, decision.remaining, hits, shadow)

    def count_batch(self, decisions: list[Decision], costs: list[int], shadow: bool) -> int:
        """``count`` for many decisions (no detailed series); returns the hits refused."""
        limit, near = self.limit, self.near
        hits = refused = near_hits = 0
        for decision, cost in zip(decisions, costs, strict=True):
            hits += cost
            if not decision.allowed:
                refused += cost
            elif limit - decision.remaining > near:
                near_hits += min(cost, limit - decision.remaining - near)
        stats = self.stats
        stats.total_hits += hits
        stats.over_limit += refused
        if shadow or self.shadow:
            stats.shadow_mode += refused
        stats.within_limit += hits - refused
        stats.near_limit += near_hits
        return refused

    def _add(self, stats: Stats, allowed: bool, remaining: int, hits: int, shadow: bool) -> None:
        stats.total_hits += hits
        if not allowed:
            stats.over_limit += hits
            if shadow:
                stats.shadow_mode += hits
        else:
            stats.within_limit += hits
            used = self.limit - remaining
            if used > self.near:
                stats.near_limit += min(hits, used - self.near)

    def _series(self, detail: str) -> Stats:
        detailed = self.detailed
        assert detailed is not None
        series = detailed.get(detail)
        if series is None:
            if len(detailed) >= MAX_DETAILED_SERIES:
                detail = "_other"
            series = detailed.setdefault(detail, Stats())
        return series


def _finish_unheld(permit: Any) -> None:
    """Free a permit nobody will hold; an adaptive one records no latency sample."""
    ignore = getattr(permit, "ignore", None)
    if ignore is not None:
        ignore()
    else:
        permit.release()


class Lease:
    """A concurrency slot held in a shared backend; ``release`` gives it back once."""

    remote_release = True

    def __init__(self, decision: Decision, remote: Any, key: str, cost: int, lease: Any) -> None:
        self.decision = decision
        self.allowed = decision.allowed
        self.remaining = decision.remaining
        self.reset_after = decision.reset_after
        self.retry_after = decision.retry_after
        self._release: tuple[Any, str, int, Any] | None = (remote, key, cost, lease)

    def release(self, wait: bool = True) -> None:
        """Give the slot back (once). With ``wait``, return only when Redis has it back, so
        a Release RPC's answer means the slot is free for every replica; blocks."""
        if self._release is not None:
            remote, key, cost, lease = self._release
            self._release = None
            remote.release(key, cost, lease)  # posted to the backend's queue
            if wait:
                remote.in_flight(key)  # queued behind the release: returns once it applied


class SharedAdaptive:
    """A rate-mode adaptive rule on Redis: one limit for every replica and worker.

    Wraps ``SharedAdaptiveLimiter`` for the engine. It is its own ``remote``, so the
    servicers decide through ``acquire_async``/``acquire_batch`` as for any shared rule;
    the periodic exchange of reports and limit with Redis runs on a worker thread, so
    the event loop never waits for it; ``record`` takes Observe's outcomes; decisions
    carry the shared adaptive limit, as the in-process kernel's do.
    """

    def __init__(self, shared: Any) -> None:
        self.shared = shared
        self.remote = self
        self.failures = 0
        self._syncing = False

    @property
    def current_limit(self) -> float:
        return float(self.shared.current_limit)

    @property
    def current_percentile(self) -> float:
        """The leader's last evaluated percentile (NaN on a replica that never led)."""
        return float(self.shared.controller.current_percentile)

    def _sync_soon(self) -> None:
        """Start the exchange with Redis on a worker thread when it is due."""
        shared = self.shared
        if self._syncing or time.monotonic_ns() < shared.next_sync:
            return
        self._syncing = True
        # Pushed ahead here so that record() (on the event loop) does not sync inline.
        shared.next_sync = time.monotonic_ns() + shared.sync_ns
        try:
            asyncio.get_running_loop().run_in_executor(None, self._sync)
        except RuntimeError:  # no event loop: this thread may block
            self._sync()

    def _sync(self) -> None:
        try:
            self.shared.sync()
        except Exception as exc:  # Redis faults are the backend's; never lose the flag
            log.warning("adaptive sync failed", extra={"fields": {"error": repr(exc)}})
        finally:
            self._syncing = False

    def _answer(self, decision: Decision) -> Decision:
        """Count the admission for the controller; report the shared limit."""
        shared = self.shared
        if decision.allowed:
            shared.admitted += 1
        else:
            shared.rejected += 1
        return Decision(
            decision.allowed,
            math.ceil(shared.limit),
            decision.remaining,
            decision.reset_after,
            decision.retry_after,
        )

    def acquire(self, key: str, cost: int = 1) -> Decision:
        """Blocking decision (threads and tests); the service uses ``acquire_async``."""
        return self.acquire_batch([key], [cost])[0]

    async def acquire_async(self, key: str, cost: int = 1) -> Decision:
        self._sync_soon()
        bound = self.shared.bound
        failures = bound.failures
        # One limit for every key; a cost above the burst is paced as one burst's worth
        # (as the in-process kernel widens its tolerance to the cost).
        decision = await bound.acquire_async("", min(cost, bound.limit))
        self.failures += bound.failures - failures
        return self._answer(decision)

    def acquire_batch(self, keys: list[str], costs: list[int]) -> list[Decision]:
        """Many checks in one round trip (blocking)."""
        self._sync_soon()
        bound = self.shared.bound
        failures = bound.failures
        answers = bound.acquire_batch([""] * len(keys), [min(c, bound.limit) for c in costs])
        self.failures += bound.failures - failures
        return [self._answer(d) for d in answers]

    async def acquire_batch_async(self, keys: list[str], costs: list[int]) -> list[Decision]:
        """Many checks in one awaited round trip (the service's native batches)."""
        self._sync_soon()
        bound = self.shared.bound
        failures = bound.failures
        capped = [min(c, bound.limit) for c in costs]
        answers = await bound.acquire_batch_async([""] * len(keys), capped)
        self.failures += bound.failures - failures
        return [self._answer(d) for d in answers]

    def record(self, latency: float, ok: bool = True, *, outcome: str | None = None) -> None:
        """A finished call's latency for the shared controller (Observe's outcomes)."""
        if outcome == "ignored":
            return
        self._sync_soon()
        self.shared.record(latency, ok and outcome != "dropped")


@dataclass
class Snapshot:
    """One loaded config and the rule states built from it."""

    config: Config
    states: dict[Rule, RuleState]
    by_name: dict[tuple[str, str], RuleState]
    loaded_at: float = field(default_factory=time.time)


class Engine:
    """Config → kernels, hot-swappable; the single place the degradation level is read.

    ``backend`` is a ``limiter.backends`` URL (None = in-process). ``level_source`` is
    any object with ``level() -> int`` (issue 6's degradation controller plugs in here);
    without one the level is 0.
    """

    def __init__(
        self,
        config: Config,
        *,
        backend: str | None = None,
        max_keys: int = 1_000_000,
        level_source: Any = None,
        permit_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.max_keys = max_keys
        self.level_source = level_source
        self.permit_ttl = permit_ttl
        self.clock = clock
        self.unknown_domain = 0
        self.overrides: dict[tuple[str, int, int], RuleState] = {}
        self.permits: dict[str, tuple[Any, float]] = {}
        self.permits_expired = 0
        # The operations side (issue 6: switches, shedding), set by limiter.server.admin;
        # per check: ops.before(...) -> Verdict | None, then ops.after(...).
        self.ops: Any = None
        self.relimited: dict[tuple[int, int], RuleState] = {}
        self.snapshot = self._build(config, None)

    def level(self) -> int:
        """Current degradation level: 0 = normal (computed here and only here)."""
        source = self.level_source
        return 0 if source is None else int(source.level())

    def reload(self, config: Config) -> None:
        """Swap in ``config``; kernels and counters of unchanged rules carry over."""
        self.snapshot = self._build(config, self.snapshot)
        self.relimited.clear()

    def _build(self, config: Config, old: Snapshot | None) -> Snapshot:
        previous: dict[tuple[str, str], RuleState] = {}
        if old is not None:
            previous = {(s.domain, s.rule.id): s for s in old.states.values()}
        states: dict[Rule, RuleState] = {}
        for rule in config.rules:
            prior = previous.get((rule.domain, rule.id))
            if prior is not None and prior.rule.limit.fingerprint() == rule.limit.fingerprint():
                kernel = prior.kernel
            else:
                kernel = self._kernel(rule.domain, rule.id, rule.limit)
            stats = prior.stats if prior is not None else Stats()
            state = RuleState(rule, kernel, stats)
            if prior is not None and prior.detailed is not None and state.detailed is not None:
                state.detailed = prior.detailed
            states[rule] = state
        by_name: dict[tuple[str, str], RuleState] = {}
        for domain in config.domains.values():
            for rule in domain.rules:
                by_name[(domain.name, rule.id)] = states[rule]
            for name, rule in domain.by_name.items():
                by_name[(domain.name, name)] = states[rule]
        return Snapshot(config, states, by_name)

    def verdict(
        self, state: RuleState, client: str, hits: int, criticality: str, level: int | None = None
    ) -> tuple[Decision | None, RuleState, bool]:
        """Ask the operations side about one check before the kernel.

        Returns (forced decision or None, the state to ask, shadow): a switch may force
        the answer, put the rule in shadow mode, or override its limit. ``level``: this
        request's degradation level (``level()``), if read already.
        """
        verdict = self.ops.before(state.ops_name, client, hits, state.limit, criticality, level)
        return self.apply(state, verdict)

    def apply(self, state: RuleState, verdict: Any) -> tuple[Decision | None, RuleState, bool]:
        """What an operations ``Verdict`` (or None) means for ``state``: (forced decision or
        None, the state to ask, shadow)."""
        if verdict is None:
            return None, state, state.shadow
        if verdict.decision is not None:
            return verdict.decision, state, False
        if verdict.limit is not None and verdict.limit != state.limit:
            state = self.with_limit(state, verdict.limit)
        return None, state, state.shadow or verdict.shadow

    def with_limit(self, state: RuleState, limit: int) -> RuleState:
        """``state``'s rule under an operator's limit override (same counters and keys)."""
        key = (id(state.rule), limit)
        found = self.relimited.get(key)
        if found is None or found.rule.limit.fingerprint()[0] != state.rule.limit.algorithm:
            new_limit = replace(state.rule.limit, requests_per_unit=max(int(limit), 0))
            rule = replace(state.rule, limit=new_limit)
            kernel = self._kernel(rule.domain, rule.id, new_limit)
            found = RuleState(rule, kernel, state.stats)
            if len(self.relimited) >= MAX_OVERRIDES:
                self.relimited.pop(next(iter(self.relimited)))
            self.relimited[key] = found
        return found

    def _kernel(self, domain: str, rule_id: str, limit: Limit) -> Any:
        """The kernel enforcing ``limit``; on Redis a rate-mode adaptive rule is shared."""
        if limit.algorithm != "adaptive" or limit.mode != "rate" or not self._on_redis():
            # Concurrency-mode adaptive rules stay per process (no shared in-flight count).
            return build_limiter(limit, backend=self._backend(limit), max_keys=self.max_keys)
        if limit.unlimited or limit.requests_per_unit == 0:
            return None
        from limiter.backends.redis import shared_backend
        from limiter.backends.shared_adaptive import SharedAdaptiveLimiter

        ceiling = limit.requests_per_unit / limit.seconds
        # Named by rule and ceiling: replicas with the same config meet on one state, and a
        # changed ceiling (reload, operator override) starts a fresh one.
        name = f"{domain}\x1f{rule_id}\x1f{limit.requests_per_unit}/{limit.unit}"
        return SharedAdaptive(
            SharedAdaptiveLimiter(
                shared_backend(self.backend),  # type: ignore[arg-type]
                name,
                target_latency=limit.target_latency,
                percentile=limit.percentile,
                min_limit=min(1.0, ceiling),
                max_limit=ceiling,
                initial_limit=ceiling,
                on_failure=ON_FAILURE[limit.failure_mode],
            )
        )

    def _on_redis(self) -> bool:
        if self.backend is None or self.backend == "memory://":
            return False
        from limiter.backends import REDIS_SCHEMES

        return self.backend.split("://", 1)[0] in REDIS_SCHEMES

    def _backend(self, limit: Limit) -> Any:
        """The rule's backend: the shared one seen with this rule's failure mode."""
        if self.backend is None or self.backend == "memory://" or limit.algorithm == "adaptive":
            return None
        if not self._on_redis():
            return self.backend  # limiter.backends explains what is wrong with it
        from limiter.backends.redis import shared_backend

        on_failure = ON_FAILURE[limit.failure_mode]
        return shared_backend(self.backend).rule(on_failure=on_failure, lease_ttl=self.permit_ttl)

    def override(self, domain: str, requests_per_unit: int, unit: int) -> RuleState:
        """A fixed-window rule for a limit the request supplies (RLS ``limit`` field)."""
        from limiter.config import UNIT_BY_ENUM

        key = (domain, requests_per_unit, unit)
        state = self.overrides.pop(key, None)
        if state is None:
            limit = Limit(requests_per_unit, UNIT_BY_ENUM[unit])
            rule = Rule(domain, (("_override", f"{requests_per_unit}/{limit.unit}"),), limit)
            kernel = build_limiter(limit, backend=self._backend(limit), max_keys=self.max_keys)
            state = RuleState(rule, kernel, Stats())
            if len(self.overrides) >= MAX_OVERRIDES:
                self.overrides.pop(next(iter(self.overrides)))
        self.overrides[key] = state
        return state

    def hold(self, permit: Any) -> str:
        """Keep a concurrency permit until ``release`` (or ``permit_ttl``); returns its id."""
        token = secrets.token_hex(12)
        self.permits[token] = (permit, self.clock() + self.permit_ttl)
        return token

    def take(self, token: str) -> Any:
        """Stop tracking a held permit and return it (None if unknown or expired)."""
        entry = self.permits.pop(token, None)
        return None if entry is None else entry[0]

    def expire_permits(self) -> int:
        """Release permits whose holder never called Release (a crashed client)."""
        now = self.clock()
        stale = [t for t, (_, deadline) in self.permits.items() if deadline <= now]
        for token in stale:
            permit = self.permits.pop(token)[0]
            if type(permit) is Lease:
                permit.release(wait=False)  # called on the event loop: do not wait for Redis
            else:
                permit.release()
        self.permits_expired += len(stale)
        return len(stale)

    def all_states(self) -> list[RuleState]:
        """Every state with its own counters (operator-relimited ones share their rule's)."""
        return [*self.snapshot.states.values(), *self.overrides.values()]
