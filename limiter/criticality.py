"""Criticality tiers: who keeps capacity when it is short.

Four tiers, as in Google SRE's load-shedding practice: CRITICAL_PLUS, CRITICAL (the
default), SHEDDABLE_PLUS (batch) and SHEDDABLE. Higher tiers may reserve a share of a
capacity that lower tiers can never take, every tier may burst into whatever is not
reserved for a tier above it, and so under overload the lowest tier is refused first
and completely before the next one up loses anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum

from limiter.errors import ConfigError, InvalidParameter

__all__ = ["Criticality", "PriorityGate", "ReservedShares", "shed_plan"]


class Criticality(IntEnum):
    """Ordered so that a larger value is more important."""

    SHEDDABLE = 0
    SHEDDABLE_PLUS = 1
    CRITICAL = 2
    CRITICAL_PLUS = 3

    @classmethod
    def parse(cls, value: object, field: str = "criticality") -> Criticality:
        """A tier from an enum, a name (any case, ``-`` or ``_``) or 0..3; None is CRITICAL."""
        if value is None:
            return cls.CRITICAL
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.strip().upper().replace("-", "_")
            if name in cls.__members__:
                return cls[name]
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
            return cls(value)
        names = ", ".join(cls.__members__)
        raise InvalidParameter(f"{field} must be one of {names}, got {value!r:.80}")

    @classmethod
    def from_proto(cls, value: int) -> Criticality:
        """From limiter.v1 ``Priority`` (1 CRITICAL_PLUS .. 4 SHEDDABLE; 0 unspecified)."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
            raise InvalidParameter(f"priority must be a limiter.v1 Priority 0..4, got {value!r}")
        return cls.CRITICAL if value == 0 else cls(4 - value)

    @property
    def rank(self) -> int:
        """0 for the most important tier: the order ``limiter.admission`` queues serve in."""
        return 3 - int(self)


TIERS = tuple(Criticality)


class ReservedShares:
    """Shares of a capacity kept for tiers, e.g. ``{"CRITICAL": 0.2}`` keeps 20% for CRITICAL.

    A tier's ceiling is the capacity minus what the tiers above it have reserved and
    not yet used, so a reservation protects its tier (and those above) from lower
    tiers without ever idling: an unused reserve still serves its own and higher tiers.
    """

    def __init__(self, reserved: Mapping[object, float] | None = None) -> None:
        self.reserved = [0.0] * len(TIERS)
        for tier, share in (reserved or {}).items():
            t = Criticality.parse(tier, "reserved tier")
            if (
                isinstance(share, bool)
                or not isinstance(share, (int, float))
                or not (0.0 <= share <= 1.0)
            ):
                raise InvalidParameter(
                    f"reserved share of {t.name} must be in [0, 1], got {share!r}"
                )
            self.reserved[t] = float(share)
        if sum(self.reserved) > 1.0 + 1e-9:
            raise InvalidParameter(f"reserved shares add up to more than 1: {sum(self.reserved):g}")

    @classmethod
    def from_config(cls, section: object, where: str = "reserved") -> ReservedShares:
        """From a YAML mapping tier -> share (``{CRITICAL: 0.2}``); errors name ``where``."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: must be a mapping of tier to share, got {section!r:.80}")
        try:
            return cls(section)
        except InvalidParameter as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def ceiling(
        self,
        tier: Criticality,
        capacity: float,
        used: Sequence[float],
        expected: Sequence[float] | None = None,
    ) -> float:
        """Total usage up to which ``tier`` is admitted; sequences are indexed by tier.

        Each higher tier holds back the larger of its reserve and its ``expected``
        demand (e.g. last window's), minus what it already uses, so when higher tiers
        ask for everything the lower ones get nothing.
        """
        held = 0.0
        for higher in range(int(tier) + 1, len(TIERS)):
            want = self.reserved[higher] * capacity
            if expected is not None:
                want = max(want, min(expected[higher], capacity))
            if want > used[higher]:
                held += want - used[higher]
        return capacity - held

    def admits(
        self,
        tier: Criticality,
        cost: float,
        capacity: float,
        used: Sequence[float],
        expected: Sequence[float] | None = None,
    ) -> bool:
        """May ``cost`` more of ``tier`` run when ``used[t]`` is in use per tier?"""
        return sum(used) + cost <= self.ceiling(tier, capacity, used, expected)

    def as_dict(self) -> dict[str, float]:
        return {t.name: self.reserved[t] for t in TIERS if self.reserved[t]}


def shed_plan(demand: Mapping[Criticality, float], capacity: float) -> dict[Criticality, float]:
    """Fraction of each tier's demand to admit so lower tiers are shed first and fully.

    Capacity goes to tiers from the top down; the tier where it runs out is admitted
    partially and every tier below it is refused entirely.
    """
    plan: dict[Criticality, float] = {}
    left = max(0.0, float(capacity))
    for tier in sorted(TIERS, reverse=True):
        want = max(0.0, float(demand.get(tier, 0.0)))
        if want == 0:
            plan[tier] = 1.0 if left > 0 else 0.0
            continue
        take = min(want, left)
        plan[tier] = take / want
        left -= take
    return plan


class PriorityGate:
    """Admission to a rate ``capacity`` per ``window`` seconds, by tier, in one process.

    Windows are fixed and short (default 1 s). Each tier's demand in the previous
    window forecasts its demand in this one, so capacity goes to the tiers from the top
    down: under overload the lowest tiers are refused entirely, and reserves hold even
    for a tier that has not asked yet. ``capacity`` may change at any time (e.g. set by
    the adaptive limiter) and admission follows it at once.
    """

    def __init__(
        self,
        capacity: float,
        *,
        window: float = 1.0,
        reserved: ReservedShares | Mapping[object, float] | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.capacity = capacity
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
            raise InvalidParameter(f"window must be a positive number of seconds, got {window!r}")
        self.window_ns = int(window * 1e9)
        self.shares = reserved if isinstance(reserved, ReservedShares) else ReservedShares(reserved)
        self.clock = clock or time.monotonic_ns
        self._lock = threading.Lock()
        self._start = -1
        self._used = [0.0] * len(TIERS)
        self._asked = [0.0] * len(TIERS)
        self._expected = [0.0] * len(TIERS)

    @property
    def capacity(self) -> float:
        return self._capacity

    @capacity.setter
    def capacity(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InvalidParameter(f"capacity must be a number >= 0, got {value!r}")
        self._capacity = float(value)

    def _roll(self, now: int) -> None:
        start = now - now % self.window_ns
        if start != self._start:
            adjacent = start - self._start == self.window_ns
            self._expected = self._asked if adjacent else [0.0] * len(TIERS)
            self._asked = [0.0] * len(TIERS)
            self._used = [0.0] * len(TIERS)
            self._start = start

    def acquire(self, criticality: object = Criticality.CRITICAL, cost: float = 1) -> bool:
        """Admit ``cost`` units of ``criticality`` if its ceiling allows."""
        tier = Criticality.parse(criticality)
        with self._lock:
            self._roll(self.clock())
            self._asked[tier] += cost
            if not self.shares.admits(tier, cost, self._capacity, self._used, self._expected):
                return False
            self._used[tier] += cost
            return True

    def usage(self) -> dict[str, dict[str, float]]:
        """Admitted and asked units per tier in the current window."""
        with self._lock:
            self._roll(self.clock())
            return {t.name: {"used": self._used[t], "asked": self._asked[t]} for t in TIERS}
