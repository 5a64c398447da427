"""The rulebook: config rules bound to what enforces them, swapped whole on reload.

A ``Rulebook`` holds an immutable ``Snapshot`` (config + one ``RuleState`` per rule)
that a reload replaces in one assignment, so a decision never sees half a config.
Kernels and counters of rules whose limit is unchanged survive a reload. Each
``RuleState`` says how its checks are decided (``kind``): by an in-process kernel, by
a shared store (``--redis``: every rule, rate-mode adaptive ones included, is one
limit for all replicas; concurrency-mode adaptive rules stay per process), or by
permits that a caller may hold. No algorithm logic lives here: it is in the kernels
(``limiter._core``) and the stores (``limiter.shared``).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from envoy.service.ratelimit.v3.rls_pb2 import RateLimitResponse

from limiter import Decision, InvalidParameter
from limiter.config import UNIT_BY_ENUM, Config, Limit, Rule, build_kernel, quota_window
from limiter.limits import share
from limiter.priority import Priority

MAX_UINT32 = 2**32 - 1
NEAR_LIMIT_RATIO = 0.8
# Distinct label sets a detailed_metric rule may create before folding into "_other",
# and the longest label value one may have: a longer one is cut and ends in "~" and 16
# hex digits of its BLAKE2b digest, so distinct values stay distinct series.
MAX_DETAILED_SERIES = 1000
MAX_LABEL_CHARS = 128
# Distinct request-supplied or operator limits kept at once (oldest dropped beyond).
MAX_OVERRIDES = 1024
# How switches, throttling and alerts name every request-supplied limit of a domain.
OVERRIDES = "_override"
# Concurrency permits held for native callers at once: per caller (its address) across
# rules, and per rule across callers. Beyond, the newcomer is refused, not the holders.
MAX_PERMITS_PER_CALLER = 10_000
MAX_PERMITS_PER_RULE = 100_000
# Expired permits freed per turn of the lock (the decision loop waits at most that long).
EXPIRY_CHUNK = 256


class BadRequest(InvalidParameter):
    """A malformed request; the message names the field (answered INVALID_ARGUMENT)."""


class Kind(Enum):
    """How a rule's checks are decided."""

    LOCAL = "local"  # an in-process rate kernel: many checks in one call
    SHARED = "shared"  # a shared store: many checks in one awaited round trip
    PERMITS = "permits"  # in-process permits (concurrency, adaptive): one check at a time
    SHARED_PERMITS = "shared_permits"  # leases in a shared store, one awaited check at a time
    NONE = "none"  # unlimited, or a limit of zero


@dataclass
class Stats:
    """Counters of one rule, named as envoyproxy/ratelimit names them."""

    total_hits: int = 0
    over_limit: int = 0
    near_limit: int = 0
    within_limit: int = 0
    shadow_mode: int = 0
    backend_errors: int = 0
    # Hits the operations policy refused (a switch, a shed tier, a blocked or shed
    # client) rather than the limit: not a sign of throttling (levels read it).
    policy_refused: int = 0


class RuleState:
    """One rule ready to decide: what enforces it, its counters, what answers echo."""

    __slots__ = (
        "breaker", "capacity", "detailed", "domain", "kernel", "kind", "label", "limit",
        "max_cost", "name", "near", "ops_name", "prefix", "priority", "replaces", "reserve_for",
        "rls_limit", "rule", "shadow", "stats", "unlimited", "unreserved", "vips", "window",
    )  # fmt: skip

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
        self.rls_limit = RateLimitResponse.RateLimit(
            requests_per_unit=min(self.limit, MAX_UINT32), unit=lim.unit_enum, name=self.name
        ).SerializeToString()
        self.unlimited = lim.unlimited
        self.shadow = rule.shadow_mode
        self.detailed: dict[str, Stats] | None = {} if rule.detailed_metric else None
        self.replaces = lim.replaces
        self.window = quota_window(lim) if not lim.unlimited else 0
        self.near = int(self.limit * NEAR_LIMIT_RATIO)
        self.max_cost = lim.max_cost
        self.priority = lim.priority
        # What the rule's clients share while it throttles (requests per second); a
        # concurrency limit is no rate.
        rate = not lim.unlimited and lim.algorithm != "concurrency" and lim.mode == "rate"
        self.capacity = self.limit / lim.seconds if rate else None
        self.kind = _kind(kernel)
        # The breaker its checks follow: (dependency, the position in a check's key of the
        # value naming the partition, -1 for none).
        self.breaker: tuple[str, int] | None = None
        ref = lim.breaker
        if ref is not None and not isinstance(ref, str):
            keys = [key for key, _ in rule.path]
            at = -1 if ref.partition is None else keys.index(ref.partition)
            self.breaker = (ref.dependency, at)
        # How the operations side (switches, shedding) names the rule: "<domain>/<label>".
        self.ops_name = f"{rule.domain}/{rule.label}"
        # Keys are namespaced by rule so a shared store never mixes two rules' counters.
        self.prefix = f"{rule.domain}\x1f{rule.id}\x1f"
        # A rule with a reserve: checks of a tier below ``reserve_for`` are decided by
        # ``unreserved``, the same state leaving the reserve untouched, unless they come
        # from one of the reserve's ``vips`` (its tenants).
        self.reserve_for: Priority | None = None
        self.unreserved: RuleState | None = None
        self.vips: frozenset[str] = frozenset()
        units = 0 if lim.reserved is None or kernel is None else lim.reserved.units(lim)
        units = min(units, lim.max_cost - 1)  # an override's smaller limit keeps one unit
        if units > 0:
            self.reserve_for = lim.reserved.priority
            self.vips = frozenset(lim.reserved.tenants)
            self.unreserved = self._without(units)

    def _without(self, reserve: int) -> RuleState:
        """This state deciding through its kernel's view that leaves ``reserve`` untouched
        (same keys, counters and names)."""
        view = object.__new__(RuleState)
        for name in RuleState.__slots__:
            setattr(view, name, getattr(self, name))
        view.kernel = self.kernel.reserving(reserve)
        view.max_cost = view.kernel.max_cost
        view.reserve_for = view.unreserved = None
        view.vips = frozenset()
        return view

    def refusal(self) -> Decision:
        """The answer to a check no wait can help (a zero limit, or a cost above what the
        quota can ever hold): refused until the window ends."""
        seconds = self.rule.limit.seconds
        reset = seconds - time.time() % seconds
        return Decision(False, self.limit, 0, reset, reset)

    def acquire(self, key: str, cost: int) -> Any:
        """An in-process kernel's answer (a Decision, or a permit for ``PERMITS``)."""
        if cost > self.max_cost or self.kernel is None:
            return self.refusal()
        return self.kernel.acquire(key, cost)

    def count(self, allowed: bool, remaining: int, hits: int, shadow: bool) -> None:
        """Add one decision to the rule's counters."""
        self._add(self.stats, allowed, remaining, hits, shadow or self.shadow)

    def count_detail(
        self, detail: str, allowed: bool, remaining: int, hits: int, shadow: bool
    ) -> None:
        """Add one decision to a detailed_metric rule's per-value series."""
        assert self.detailed is not None
        series = self.detailed.get(detail)
        if series is None and len(detail) > MAX_LABEL_CHARS:
            detail = short_label(detail)
            series = self.detailed.get(detail)
        if series is None:
            if len(self.detailed) >= MAX_DETAILED_SERIES:
                detail = "_other"
            series = self.detailed.setdefault(detail, Stats())
        self._add(series, allowed, remaining, hits, shadow or self.shadow)

    def counted(self, allowed: bool, cost: int) -> int:
        """The hits a decision counts: its cost, but a refused check asking more than
        the rule can ever grant counts as ``max_cost`` + 1 (so one such request cannot
        swamp the rule's counters or make it look throttling)."""
        return cost if allowed or cost <= self.max_cost else self.max_cost + 1

    def count_batch(self, decisions: list[Any], costs: list[int], shadow: bool) -> tuple[int, int]:
        """``count`` for many decisions; returns the hits counted and those refused."""
        if len(decisions) == 1:
            d = decisions[0]
            cost = self.counted(d.allowed, costs[0])
            self._add(self.stats, d.allowed, d.remaining, cost, shadow or self.shadow)
            return cost, 0 if d.allowed else cost
        limit, near, most = self.limit, self.near, self.max_cost
        hits = refused = near_hits = 0
        for decision, cost in zip(decisions, costs, strict=True):
            if not decision.allowed:
                if cost > most:
                    cost = most + 1
                refused += cost
            elif limit - decision.remaining > near:
                near_hits += min(cost, limit - decision.remaining - near)
            hits += cost
        stats = self.stats
        stats.total_hits += hits
        stats.over_limit += refused
        if shadow or self.shadow:
            stats.shadow_mode += refused
        stats.within_limit += hits - refused
        stats.near_limit += near_hits
        return hits, refused

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


def partition_of(key: str, at: int) -> str:
    """The partition a check's key names: its ``at``-th value (keys join a descriptor's
    values with \\x1f, in the rule's key order); "" for none or a key too short."""
    if at < 0:
        return ""
    parts = key.split("\x1f")
    return parts[at] if at < len(parts) else ""


def short_label(label: str) -> str:
    """A metric label value of at most MAX_LABEL_CHARS characters for ``label``."""
    digest = hashlib.blake2b(label.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return label[: MAX_LABEL_CHARS - 17] + "~" + digest


def _kind(kernel: Any) -> Kind:
    if kernel is None:
        return Kind.NONE
    if hasattr(kernel, "decide"):
        return Kind.SHARED
    if hasattr(kernel, "store"):
        return Kind.SHARED_PERMITS
    if hasattr(kernel, "acquire_batch"):
        return Kind.LOCAL
    return Kind.PERMITS


@dataclass
class Snapshot:
    """One loaded config and the rule states built from it."""

    config: Config
    states: dict[Rule, RuleState]
    by_name: dict[tuple[str, str], RuleState]
    holds: bool = False  # some rule holds the RLS checks it refuses
    detailed: bool = False  # some rule keeps per-value series
    vips: bool = False  # some rule's reserve lists tenants


class Rulebook:
    """Config -> rule states, hot-swappable; also the permits callers hold.

    ``backend`` is a shared store (``limiter.backends.redis.RedisBackend``, or its URL)
    or None (in-process). Held permits are bounded per caller and per rule
    (``max_permits_per_caller``, ``max_permits_per_rule``): past a bound the newcomer's
    permit is given back and its check refused, so one caller cannot take every slot
    of a rule's key table from the others.
    """

    def __init__(
        self,
        config: Config,
        *,
        backend: Any = None,
        max_keys: int = 1_000_000,
        permit_ttl: float = 60.0,
        max_permits_per_caller: int = MAX_PERMITS_PER_CALLER,
        max_permits_per_rule: int = MAX_PERMITS_PER_RULE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.max_keys = max_keys
        self.permit_ttl = permit_ttl
        self.clock = clock
        self.unknown_domain = 0
        self.overrides: dict[tuple[str, int, int], RuleState] = {}
        self.relimited: dict[tuple[int, int], RuleState] = {}
        # token -> (permit, rule, caller)
        self.permits: dict[str, tuple[Any, str, str]] = {}
        # (deadline, token) in deadline order (every permit lives permit_ttl): expiry pops
        # from the left, from any thread, without scanning.
        self._deadlines: deque[tuple[float, str]] = deque()
        self.permits_expired = 0
        self.permits_refused = 0
        self.limits = {"caller": max_permits_per_caller, "rule": max_permits_per_rule}
        # Permits held per caller and per rule, and the deadlines of the latest holds of
        # each (at most its bound: the oldest live one when nothing was released early).
        self._held: dict[str, dict[str, int]] = {"caller": {}, "rule": {}}
        self._recent: dict[str, dict[str, deque[float]]] = {"caller": {}, "rule": {}}
        # Counts change on the decision loop (hold, take) and the housekeeping thread (expiry).
        self._lock = threading.Lock()
        self.snapshot = self._build(config, None)

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
            state = RuleState(rule, kernel, prior.stats if prior is not None else Stats())
            if prior is not None and prior.detailed is not None and state.detailed is not None:
                state.detailed = prior.detailed
            states[rule] = state
        by_name: dict[tuple[str, str], RuleState] = {}
        for domain in config.domains.values():
            for rule in domain.rules:
                by_name[(domain.name, rule.id)] = states[rule]
            for name, rule in domain.by_name.items():
                by_name[(domain.name, name)] = states[rule]
        holds = any(r.limit.hold for r in config.rules)
        detailed = any(r.detailed_metric for r in config.rules)
        vips = any(s.vips for s in states.values())
        return Snapshot(config, states, by_name, holds=holds, detailed=detailed, vips=vips)

    def _kernel(self, domain: str, rule_id: str, limit: Limit) -> Any:
        """What enforces ``limit``: its kernel, or its algorithm on the shared store."""
        kernel = build_kernel(limit, max_keys=self.max_keys)
        if kernel is None or self.backend is None:
            return kernel
        if limit.algorithm != "adaptive":
            return share(kernel, self.backend, limit.failure_mode, lease_ttl=self.permit_ttl)
        if limit.mode != "rate":
            return kernel  # concurrency-mode adaptive rules stay per process
        from limiter.backends.shared_adaptive import SharedAdaptiveLimiter

        ceiling = limit.requests_per_unit / limit.seconds
        # Named by rule and ceiling: replicas with the same config meet on one state, and a
        # changed ceiling (reload, operator override) starts a fresh one.
        return SharedAdaptiveLimiter(
            self.backend,
            f"{domain}\x1f{rule_id}\x1f{limit.requests_per_unit}/{limit.unit}",
            target_latency=limit.target_latency,
            percentile=limit.percentile,
            min_limit=min(1.0, ceiling),
            max_limit=ceiling,
            initial_limit=ceiling,
            failure_mode=limit.failure_mode,
        )

    def override(self, domain: str, requests_per_unit: int, unit: int) -> RuleState:
        """A fixed-window rule for a limit the request supplies (RLS ``limit`` field); the
        operations side sees all of a domain's as one rule, ``<domain>/_override``."""
        key = (domain, requests_per_unit, unit)
        state = self.overrides.pop(key, None)
        if state is None:
            limit = Limit(requests_per_unit, UNIT_BY_ENUM[unit])
            rule = Rule(domain, (("_override", f"{requests_per_unit}/{limit.unit}"),), limit)
            state = RuleState(rule, self._kernel(domain, rule.id, limit), Stats())
            # One family for the operations side (throttling, alerts, switches): limits a
            # request makes up are as many as a caller likes.
            state.ops_name = f"{domain}/{OVERRIDES}"
            if len(self.overrides) >= MAX_OVERRIDES:
                self.overrides.pop(next(iter(self.overrides)))
        self.overrides[key] = state
        return state

    def with_limit(self, state: RuleState, limit: int) -> RuleState:
        """``state``'s rule under an operator's limit override (same counters and keys)."""
        key = (id(state.rule), limit)
        found = self.relimited.get(key)
        if found is None or found.rule.limit.algorithm != state.rule.limit.algorithm:
            new_limit = replace(state.rule.limit, requests_per_unit=max(int(limit), 0))
            rule = replace(state.rule, limit=new_limit)
            found = RuleState(rule, self._kernel(rule.domain, rule.id, new_limit), state.stats)
            if len(self.relimited) >= MAX_OVERRIDES:
                self.relimited.pop(next(iter(self.relimited)))
            self.relimited[key] = found
        return found

    def hold(self, permit: Any, rule: str = "", caller: str = "") -> str | None:
        """Keep a permit of ``rule`` for ``caller`` until ``take`` (or ``permit_ttl``);
        returns its id, or None when the caller or the rule holds its bound (the permit
        is given back then: see ``retry_after``)."""
        held, limits = self._held, self.limits
        if (
            held["caller"].get(caller, 0) >= limits["caller"]
            or held["rule"].get(rule, 0) >= limits["rule"]
        ):
            free(permit)
            self.permits_refused += 1
            return None
        token = secrets.token_hex(12)
        deadline = self.clock() + self.permit_ttl
        with self._lock:
            self.permits[token] = (permit, rule, caller)
            for kind, name in (("caller", caller), ("rule", rule)):
                counts = held[kind]
                counts[name] = counts.get(name, 0) + 1
                recent = self._recent[kind].get(name)
                if recent is None:
                    recent = self._recent[kind][name] = deque(maxlen=limits[kind])
                recent.append(deadline)
        self._deadlines.append((deadline, token))
        return token

    def take(self, token: str) -> Any:
        """Stop tracking a held permit and return it (None if unknown or expired)."""
        with self._lock:
            found = self.permits.pop(token, None)
            if found is None:
                return None
            self._forget(found)
        return found[0]

    def _forget(self, found: tuple[Any, str, str]) -> None:
        for kind, name in (("caller", found[2]), ("rule", found[1])):
            counts = self._held[kind]
            left = counts[name] - 1
            if left:
                counts[name] = left
            else:
                # Its recent deadlines go with the expiry sweep, a chunk at a time: freeing
                # a bound's worth at once would hold the interpreter for milliseconds.
                del counts[name]

    def retry_after(self, rule: str, caller: str = "") -> float:
        """Seconds until a permit of ``caller`` (when it holds its bound) or else of
        ``rule`` expires: when a refused permit check can next be granted unless a
        holder releases first (0.0 when neither holds any)."""
        kind, name = "caller", caller
        if self._held["caller"].get(caller, 0) < self.limits["caller"]:
            kind, name = "rule", rule
        if not self._held[kind].get(name):
            return 0.0
        now = self.clock()
        with self._lock:  # the expiry sweep trims the same deadlines
            recent = self._recent[kind].get(name)
            while recent and recent[0] <= now:
                recent.popleft()
            return max(recent[0] - now, 0.001) if recent else 0.0

    def expire_permits(self) -> int:
        """Release permits whose holder never called Release (a crashed client); safe to
        call from a thread other than the one holding permits."""
        now = self.clock()
        deadlines = self._deadlines
        expired = 0
        while deadlines and deadlines[0][0] <= now:
            gone = []
            with self._lock:  # a chunk at a time: the decision loop waits little
                while deadlines and deadlines[0][0] <= now and len(gone) < EXPIRY_CHUNK:
                    found = self.permits.pop(deadlines.popleft()[1], None)
                    if found is not None:  # not released by its holder in time
                        self._forget(found)
                        gone.append(found[0])
            for permit in gone:
                free(permit)
            expired += len(gone)
        self.permits_expired += expired
        self._trim_recent(now)
        return expired

    def _trim_recent(self, now: float) -> None:
        """Drop passed deadlines, and the deadlines of names that hold nothing any more."""
        for kind, recents in self._recent.items():
            held = self._held[kind]
            for name in list(recents):
                recent = recents[name]
                while recent and recent[0] <= now:
                    with self._lock:
                        for _ in range(EXPIRY_CHUNK):
                            if not recent or recent[0] > now:
                                break
                            recent.popleft()
                with self._lock:
                    if not recent and name not in held:
                        del recents[name]

    def all_states(self) -> list[RuleState]:
        """Every state with its own counters (operator-relimited ones share their rule's)."""
        return [*self.snapshot.states.values(), *self.overrides.values()]


def free(permit: Any) -> None:
    """Give back a permit nobody will use; an adaptive one records no latency sample. A
    ``Decision`` or a refusal holds nothing: nothing to give back."""
    if type(permit) is Decision or not permit.allowed:
        return
    ignore = getattr(permit, "ignore", None)
    if ignore is not None:
        ignore()
    else:
        permit.release()
