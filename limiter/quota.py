"""Quota allocation: one global limit split across the Envoy instances that share a bucket.

This is the arithmetic behind Envoy's Rate Limit Quota Service (RLQS). Each Envoy reports,
per bucket, how many requests it allowed and denied since its previous report; the server
answers with an assignment that Envoy enforces locally. The sum of the assignments must stay
within the rule's limit, and no instance may starve. Pure logic: no I/O, and time comes from
an injectable clock.

Allocation (:func:`allocate`), max-min fair share in the spirit of Doorman's ``FAIR_SHARE``:

- an instance *wants* its measured demand (requests/s: allowed + denied between two of its
  reports, so requests it denied count too), but at least its reserve; an instance not
  measured yet (it has reported once) wants an equal share of the limit;
- the wants under the water level are granted in full, the others get the level; what nobody
  wants is spread evenly, so a growing instance has room until its next report;
- the reserve: ``reserve`` times the limit is held as floors, an equal part per instance, so
  an instance that was idle is never at zero when traffic returns, and idle instances hold at
  most that fraction of the limit between them.

:class:`QuotaPool` keeps one bucket's instances: their demand and their grant, each grant a
lease that Envoy holds for the assignment's time to live. An instance whose stream ended keeps
its last grant until that lease runs out (Envoy enforces it until then), and the others share
what is left. :func:`token_bucket` turns a grant into what Envoy 1.40 enforces.

Envoy 1.40 behaviour that shapes the conversion (benchmarks/rlqs_probe.py shows it): the
token bucket's ``fill_interval`` counts whole seconds only (under one second means no limit
at all); a bucket that differs from the previous one only in ``fill_interval`` is ignored, so
a pool keeps one fill interval (:attr:`QuotaPool.fill_seconds`) for as long as its limit
stays the same; sending the same bucket again does not refill it, so refreshing an
assignment's time to live is safe, and new token counts take effect without a refill;
``requests_per_time_unit`` is ignored; an ``assignment_time_to_live`` under one second
expires at once.

Across replicas (``limiter serve --redis``): the Envoys of one bucket may report to different
service replicas. Each replica's pool holds its own instances and, as the *remote* view, the
other replicas' instances as last read from the shared store (:meth:`QuotaPool.set_remote`:
their demands, and the grants their ended streams still hold). Every replica computes the same
split over all instances and sends its own instances their shares, so the shares of all
replicas sum to the limit up to the staleness of the views. When the store cannot be read,
:meth:`QuotaPool.isolate` keeps what the other replicas' instances were last given as held
(this replica's share stays what it was) and splits the rest among its own instances.

Bounds: a pool tracks at most ``max_instances`` instances (a new one beyond is refused with
:class:`~limiter.errors.InvalidParameter`); a token bucket's interval is at most the rule's
window and at most :data:`MAX_FILL_SECONDS`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from limiter.errors import InvalidParameter

K = TypeVar("K", bound=Hashable)

DEFAULT_RESERVE = 0.05
# Tokens per fill interval a pool aims for: grants are whole tokens, so this bounds the
# rounding loss of each grant to about one part in TOKEN_GRAIN of the limit.
TOKEN_GRAIN = 100
# The longest fill interval: a rule of a day or more still refills within this many seconds.
MAX_FILL_SECONDS = 3600
# The shortest interval demand is measured over: a new bucket's first report can come just
# before the instance's periodic report, and a handful of requests over a few milliseconds is
# no rate. Reports closer together than this are added up.
MIN_INTERVAL = 1.0


def fair_shares(capacity: float, wants: Mapping[K, float]) -> dict[K, float]:
    """Max-min fair shares of ``capacity``: every want under the water level in full, the
    level for the rest; capacity left over when every want is met is spread evenly.

    The grants sum to at most ``capacity`` (up to float rounding); equal wants get equal
    grants.
    """
    if capacity < 0 or not math.isfinite(capacity):
        raise InvalidParameter(f"capacity must be finite and >= 0, got {capacity!r}")
    for key, want in wants.items():
        if want < 0 or not math.isfinite(want):
            raise InvalidParameter(f"want of {key!r} must be finite and >= 0, got {want!r}")
    if not wants:
        return {}
    level = _water_level(capacity, sorted(wants.values()))
    grants = {key: min(want, level) for key, want in wants.items()}
    if level == math.inf:
        extra = max(capacity - math.fsum(grants.values()), 0.0) / len(grants)
        grants = {key: grant + extra for key, grant in grants.items()}
    return grants


def _water_level(capacity: float, wants: list[float]) -> float:
    """The level L with sum(min(want, L)) == capacity, or inf when every want fits."""
    left = capacity
    for index, want in enumerate(wants):
        share = left / (len(wants) - index)
        if want >= share:
            return share
        left -= want
    return math.inf


def allocate(
    limit: float, demands: Mapping[K, float | None], reserve: float = DEFAULT_RESERVE
) -> dict[K, float]:
    """Each instance's share of ``limit`` (requests/s) from its demand (requests/s, or None
    while not measured yet). See the module's docstring for the rules."""
    _check_limit(limit)
    if not 0 <= reserve < 1:
        raise InvalidParameter(f"reserve must be in [0, 1), got {reserve!r}")
    if not demands:
        return {}
    for key, demand in demands.items():
        if demand is not None and (demand < 0 or not math.isfinite(demand)):
            raise InvalidParameter(f"demand of {key!r} must be finite and >= 0, got {demand!r}")
    floor = reserve * limit / len(demands)
    equal = limit / len(demands)
    wants = {key: equal if d is None else max(d, floor) for key, d in demands.items()}
    return fair_shares(limit, wants)


@dataclass(frozen=True)
class TokenBucket:
    """What Envoy's ``envoy.type.v3.TokenBucket`` carries: ``max_tokens``,
    ``tokens_per_fill`` and ``fill_interval`` (whole seconds)."""

    max_tokens: int
    tokens_per_fill: int
    fill_seconds: int


def fill_seconds(limit: float, window: float) -> int:
    """The fill interval (whole seconds) for a pool whose limit is ``limit`` requests/s under
    a rule whose window is ``window`` seconds: long enough for about TOKEN_GRAIN tokens per
    interval, never longer than the window (nor MAX_FILL_SECONDS), at least one second."""
    if limit < 0 or not math.isfinite(limit):
        raise InvalidParameter(f"limit must be finite and >= 0, got {limit!r}")
    if window <= 0 or not math.isfinite(window):
        raise InvalidParameter(f"window must be finite and > 0, got {window!r}")
    longest = max(1, min(int(window), MAX_FILL_SECONDS))
    if limit * longest <= TOKEN_GRAIN:
        return longest
    return max(1, math.ceil(TOKEN_GRAIN / limit))


def token_bucket(grant: float, seconds: int) -> TokenBucket | None:
    """The token bucket that admits at most ``grant`` requests/s refilled every ``seconds``;
    its burst is one interval's tokens. None when that is less than one token: such a grant
    can only be enforced as DENY_ALL."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise InvalidParameter(f"fill interval must be whole seconds >= 1, got {seconds!r}")
    if grant < 0 or not math.isfinite(grant):
        raise InvalidParameter(f"grant must be finite and >= 0, got {grant!r}")
    tokens = math.floor(grant * seconds)
    if tokens < 1:
        return None
    return TokenBucket(max_tokens=tokens, tokens_per_fill=tokens, fill_seconds=seconds)


@dataclass(frozen=True)
class Entry:
    """One instance of a bucket as replicas exchange it: its demand (requests/s; None while
    not measured) if its stream is live, else the grant it still holds; and the seconds
    until its lease (what Envoy enforces) runs out."""

    name: str
    demand: float | None
    held: float | None  # set (and demand None) for an ended stream
    lease: float


@dataclass
class _Instance:
    demand: float | None  # requests/s over the interval before its last report
    connected: bool
    lease_end: float  # the clock time the last grant sent to it expires
    reported: float  # the clock time demand was last measured
    unmeasured: int = 0  # requests reported since then
    grant: float = 0.0


class QuotaPool:
    """One bucket's global limit shared by the Envoy instances that report it.

    ``limit`` is in requests/s and ``window`` is the rule's window in seconds (a rule of N
    per minute: ``limit`` N / 60, ``window`` 60); ``ttl`` is the ``assignment_time_to_live``
    the server sends with every grant (so Envoy holds a grant at most that long after it was
    sent). Every method that changes grants returns the grants that changed, keyed by
    instance: the server sends each as an assignment on that instance's stream, as
    ``token_bucket(grant, pool.fill_seconds)``.
    """

    def __init__(
        self,
        limit: float,
        *,
        window: float = 1.0,
        reserve: float = DEFAULT_RESERVE,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        max_instances: int = 10_000,
    ) -> None:
        if not 0 <= reserve < 1:
            raise InvalidParameter(f"reserve must be in [0, 1), got {reserve!r}")
        if ttl <= 0 or not math.isfinite(ttl):
            raise InvalidParameter(f"ttl must be finite and > 0, got {ttl!r}")
        if max_instances < 1:
            raise InvalidParameter(f"max_instances must be >= 1, got {max_instances!r}")
        self._limit = _check_limit(limit)
        self.window = window
        self.fill_seconds = fill_seconds(self._limit, window)
        self.reserve = reserve
        self.ttl = ttl
        self.clock = clock
        self.max_instances = max_instances
        self._instances: dict[str, _Instance] = {}
        # Other replicas' instances (demands of live streams) and the grants their ended
        # streams hold; empty and zero when this pool is the only one.
        self._remote: dict[str, float | None] = {}
        self._remote_held = 0.0
        self._remote_share = 0.0  # what the remote instances got in the last split

    @property
    def limit(self) -> float:
        return self._limit

    def entries(self) -> list[Entry]:
        """This pool's own instances, for the other replicas (:meth:`set_remote`)."""
        self._expire()
        now = self.clock()
        return [
            Entry(
                name,
                inst.demand if inst.connected else None,
                None if inst.connected else inst.grant,
                max(inst.lease_end - now, 0.0),
            )
            for name, inst in self._instances.items()
        ]

    def set_remote(self, demands: Mapping[str, float | None], held: float) -> dict[str, float]:
        """The other replicas' instances of this bucket: the demands of their live streams
        (None: not measured yet; names must not clash with this pool's) and the sum of
        the grants their ended streams hold. Returns this pool's grants that changed."""
        if held < 0 or not math.isfinite(held):
            raise InvalidParameter(f"held must be finite and >= 0, got {held!r}")
        if len(demands) + len(self._instances) > self.max_instances:
            keep = max(self.max_instances - len(self._instances), 0)
            demands = dict(list(demands.items())[:keep])
        self._remote = dict(demands)
        self._remote_held = float(held)
        return self._reallocate()

    def isolate(self) -> dict[str, float]:
        """The shared store is away: the other replicas' instances keep what they were
        last given (as held), and this pool splits the rest among its own instances."""
        if self._remote:
            self._remote_held += self._remote_share
            self._remote = {}
            self._remote_share = 0.0
        return self._reallocate()

    def grants(self) -> dict[str, float]:
        """Every instance's current grant (requests/s), including streams that ended and
        whose lease has not run out."""
        self._expire()
        return {name: inst.grant for name, inst in self._instances.items()}

    def report(self, instance: str, allowed: int, denied: int) -> dict[str, float]:
        """One usage report of ``instance``: requests allowed and denied since its previous
        report. The interval is measured on the pool's clock, over at least MIN_INTERVAL:
        Envoy 1.40 truncates ``time_elapsed`` to whole seconds (a 5 s period arrives as 4 s)."""
        for name, value in (("allowed", allowed), ("denied", denied)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidParameter(f"{name} must be an int >= 0, got {value!r}")
        self._expire()
        now = self.clock()
        inst = self._instances.get(instance)
        if inst is None:
            if len(self._instances) >= self.max_instances:
                raise InvalidParameter(
                    f"bucket already shared by max_instances={self.max_instances} instances"
                )
            inst = self._instances[instance] = _Instance(None, True, now, now)
        else:
            inst.unmeasured += allowed + denied
            if now - inst.reported >= MIN_INTERVAL:
                inst.demand = inst.unmeasured / (now - inst.reported)
                inst.unmeasured = 0
                inst.reported = now
        inst.connected = True
        return self._reallocate(always=instance)

    def disconnect(self, instance: str) -> dict[str, float]:
        """``instance``'s stream ended: it keeps enforcing its last grant until the lease
        runs out, so that grant stays counted until then."""
        inst = self._instances.get(instance)
        if inst is not None:
            inst.connected = False
        return self._reallocate()

    def release(self, instance: str) -> dict[str, float]:
        """``instance`` no longer holds a grant (the server sent it an abandon action)."""
        self._instances.pop(instance, None)
        return self._reallocate()

    def set_limit(self, limit: float) -> dict[str, float]:
        """A new limit (an adaptive rule moved, an operator changed it)."""
        self._limit = _check_limit(limit)
        self.fill_seconds = fill_seconds(self._limit, self.window)
        return self._reallocate()

    def _expire(self) -> None:
        now = self.clock()
        for name in [n for n, inst in self._instances.items() if not inst.connected]:
            if now >= self._instances[name].lease_end:
                del self._instances[name]

    def _reallocate(self, always: str | None = None) -> dict[str, float]:
        self._expire()
        # Grants held by ended streams cannot be changed: share what they leave.
        held = math.fsum(i.grant for i in self._instances.values() if not i.connected)
        held += self._remote_held
        live = {name: inst for name, inst in self._instances.items() if inst.connected}
        demands: dict[tuple[bool, str], float | None] = {
            (True, n): i.demand for n, i in live.items()
        }
        demands.update(((False, n), d) for n, d in self._remote.items())
        shares = allocate(max(self._limit - held, 0.0), demands, self.reserve)
        self._remote_share = math.fsum(g for (local, _), g in shares.items() if not local)
        lease_end = self.clock() + self.ttl
        changed = {}
        for (local, name), share in shares.items():
            if not local:
                continue
            inst = live[name]
            if share != inst.grant or name == always:
                inst.grant = share
                inst.lease_end = lease_end
                changed[name] = share
        return changed


def _check_limit(limit: float) -> float:
    if limit < 0 or not math.isfinite(limit):
        raise InvalidParameter(f"limit must be finite and >= 0, got {limit!r}")
    return float(limit)
