"""Degradation levels: how much a service should give up to survive, from 0 (nothing) to N.

The level follows a pressure signal in [0, 1+]: the largest of weighted signals (in the
service: adaptive cut depth, share of checks throttled, share of breakers open, latency
over target and share of checks answered by the failure mode; see
``limiter.server.pressure``). It rises as soon as pressure crosses the next
threshold (shed fast) but falls one level at a time, and only after pressure has
stayed below that threshold minus a margin for ``restore_after`` seconds (restore
slowly), so it does not flap. An operator can force a level (a manual switch), which
wins until it is lifted. Each level's meaning is the backend's business; the default
names follow the brief: throttle, simplify, serve cached, stop secondary features.
The limiter's own part is ``shed``: from a given level a priority tier is refused
outright (by default SHEDDABLE from level 1, SHEDDABLE_PLUS from level 2), so the
least important traffic goes first and completely.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from limiter.errors import InvalidParameter, is_number
from limiter.priority import Priority
from limiter.schema import FieldError, Section, setting

__all__ = ["Degradation", "DegradationConfig", "ServiceLevels"]

Clock = Callable[[], int]
Listener = Callable[[str, dict[str, Any]], None]
Override = Callable[[str], int | None]

DEFAULT_THRESHOLDS = (0.8, 0.9, 0.95, 1.0)
DEFAULT_NAMES = ("normal", "throttle-secondary", "simplify", "serve-cached", "stop-secondary")
# The signals the service measures itself (``limiter.server.pressure``), each a share
# from 0 to 1. Breakers and fallback weigh 0.9, so even all of them at their worst mean
# level 2 ("simplify"), not the most severe level: a Redis outage answered locally does
# not say the backends are failing. Throttling weighs 0.8: only a service refusing every
# check reaches level 1 by it, since one abuser refused could otherwise shed everyone's
# sheddable traffic. Adaptive cuts
# weigh 1.5: a limit cut below about half its ceiling starts level 1, to a third level 4.
DEFAULT_WEIGHTS = {
    "breakers": 0.9,
    "adaptive_cut": 1.5,
    "throttled": 0.8,
    "latency": 1.0,
    "fallback": 0.9,
}


@dataclass(frozen=True)
class DegradationConfig(Section):
    """Degradation levels (``degradation``): the level (0 = normal) rises as soon as the
    pressure (the largest weighted signal: adaptive cut depth, share of checks throttled,
    of breakers open, latency over target, share answered by the failure mode) crosses
    the next threshold, and falls one level at a time once it has stayed below for
    ``restore_after``. From a given level a priority tier is refused outright."""

    thresholds: tuple[float, ...] = setting(
        DEFAULT_THRESHOLDS, "the pressure at which each level (1, 2, ...) starts; increasing",
        low=0, open_low=True,
    )  # fmt: skip
    margin: float = setting(
        0.1, "a level ends only once pressure is this far below its threshold", low=0, high=10
    )
    raise_after: float = setting(
        0.0, "pressure must stay above a threshold this long to raise the level",
        low=0, high=86400, seconds=True,
    )  # fmt: skip
    restore_after: float = setting(
        30.0, "pressure must stay below a threshold (minus margin) this long to lower the "
        "level by one", low=0, high=86400, seconds=True,
    )  # fmt: skip
    names: tuple[str, ...] = setting(
        (), f"a name per level from 0 (default {', '.join(DEFAULT_NAMES)}, level-5, ...)"
    )
    weights: Mapping[str, float] = setting(
        factory=lambda: dict(DEFAULT_WEIGHTS), low=0, high=10,
        doc="signal name -> weight: pressure is the largest weighted signal (a config's "
        "weights add to the default; unnamed signals weigh 1)",
    )  # fmt: skip
    window: float = setting(
        5.0, "the service's shares of checks (throttled, answered by the failure mode) are "
        "measured over this sliding window", low=0, high=3600, open_low=True, seconds=True,
    )  # fmt: skip
    min_checks: int = setting(
        50, "checks the window must hold before those shares count (fewer: 0)",
        low=0, high=1 << 40,
    )  # fmt: skip
    # The least important traffic goes first and completely (CRITICAL tiers are never
    # shed here unless configured).
    shed: Mapping[Priority, int] = setting(
        factory=lambda: {Priority.SHEDDABLE: 1, Priority.SHEDDABLE_PLUS: 2}, low=1, high=100,
        doc="tier -> the level from which its traffic is refused outright",
    )  # fmt: skip

    def check(self, given: frozenset[str] | None) -> None:
        t = self.thresholds
        if not t:
            raise FieldError("thresholds", "must list at least one threshold")
        if any(b <= a for a, b in itertools.pairwise(t)):
            raise FieldError("thresholds", f"must increase strictly, got {list(t)!r}")
        if given is not None and "weights" in given:
            object.__setattr__(self, "weights", {**DEFAULT_WEIGHTS, **self.weights})
        if not self.names:
            more = tuple(f"level-{i}" for i in range(len(DEFAULT_NAMES), len(t) + 1))
            object.__setattr__(self, "names", (DEFAULT_NAMES + more)[: len(t) + 1])
        if len(self.names) != len(t) + 1:
            raise FieldError(
                "names", f"must be {len(t) + 1} names (level 0..{len(t)}), got {list(self.names)!r}"
            )

    @property
    def max_level(self) -> int:
        return len(self.thresholds)

    def sheds(self, tier: Priority, level: int) -> bool:
        """Is ``tier``'s traffic refused outright at ``level``?"""
        start = self.shed.get(tier)
        return start is not None and level >= start


class Degradation:
    """One service's level, driven by ``update(pressure)`` or ``observe(**signals)``.

    ``override(service)`` (e.g. ``Switches.level``) returns a forced level or None;
    ``on_change("level_changed", fields)`` is called when the effective level moves.
    """

    def __init__(
        self,
        service: str = "default",
        config: DegradationConfig | None = None,
        *,
        clock: Clock | None = None,
        override: Override | None = None,
        on_change: Listener | None = None,
    ) -> None:
        self.service = service
        self.config = config or DegradationConfig()
        self.clock = clock or time.monotonic_ns
        self.override = override
        self.on_change = on_change
        self.computed = 0
        self.pressure = 0.0
        self.signals: dict[str, float] = {}
        self._raise_since: int | None = None
        self._calm_since: int | None = None
        self._reported = 0
        self._lock = threading.Lock()

    @property
    def level(self) -> int:
        """The effective level: a forced one if an operator set it, else the computed one."""
        if self.override is not None:
            forced = self.override(self.service)
            if forced is not None:
                return min(max(0, forced), self.config.max_level)
        return self.computed

    @property
    def name(self) -> str:
        return self.config.names[self.level]

    def observe(self, **signals: float) -> int:
        """Pressure is the largest weighted signal, e.g. ``observe(utilisation=0.9)``."""
        for key, value in signals.items():
            if not is_number(value):
                raise InvalidParameter(f"signal {key} must be a number, got {value!r}")
        with self._lock:
            self.signals.update({k: float(v) for k, v in signals.items()})
            weights = self.config.weights
            pressure = max((v * weights.get(k, 1.0) for k, v in self.signals.items()), default=0.0)
        return self.update(pressure)

    def update(self, pressure: float) -> int:
        """Move the computed level for ``pressure``; returns the effective level."""
        if not is_number(pressure):
            raise InvalidParameter(f"pressure must be a number, got {pressure!r}")
        cfg = self.config
        now = self.clock()
        with self._lock:
            self.pressure = float(pressure)
            target = sum(1 for t in cfg.thresholds if pressure >= t)
            level = self.computed
            if target > level:
                self._calm_since = None
                if self._raise_since is None:
                    self._raise_since = now
                if now - self._raise_since >= cfg.raise_after * 1e9:
                    self.computed = target
                    self._raise_since = None
            else:
                self._raise_since = None
                if level > 0 and pressure < cfg.thresholds[level - 1] - cfg.margin:
                    if self._calm_since is None:
                        self._calm_since = now
                    elif now - self._calm_since >= cfg.restore_after * 1e9:
                        self.computed = level - 1
                        self._calm_since = now
                else:
                    self._calm_since = None
        return self.refresh()

    def refresh(self) -> int:
        """Report a change of the effective level (also after an override changed)."""
        level = self.level
        if level != self._reported:
            before, self._reported = self._reported, level
            if self.on_change is not None:
                forced = level != self.computed
                self.on_change(
                    "level_changed",
                    {
                        "service": self.service,
                        "level": level,
                        "previous": before,
                        "name": self.config.names[level],
                        "forced": forced,
                        "pressure": round(self.pressure, 4),
                    },
                )
        return level

    def snapshot(self) -> dict[str, Any]:
        level = self.level
        return {
            "service": self.service,
            "level": level,
            "name": self.config.names[level],
            "computed": self.computed,
            "forced": level != self.computed,
            "max_level": self.config.max_level,
            "pressure": self.pressure,
            "signals": dict(self.signals),
        }


class ServiceLevels:
    """The level of every service, created on first use with one shared config."""

    def __init__(
        self,
        config: DegradationConfig | None = None,
        *,
        clock: Clock | None = None,
        override: Override | None = None,
        on_change: Listener | None = None,
    ) -> None:
        self.config = config or DegradationConfig()
        self._kw: dict[str, Any] = {"clock": clock, "override": override, "on_change": on_change}
        self._services: dict[str, Degradation] = {}
        self._lock = threading.Lock()

    def __getitem__(self, service: str) -> Degradation:
        d = self._services.get(service)
        if d is None:
            with self._lock:
                d = self._services.get(service)
                if d is None:
                    d = self._services[service] = Degradation(service, self.config, **self._kw)
        return d

    def level(self, service: str = "default") -> int:
        return self[service].level

    def refresh(self) -> None:
        """Re-evaluate effective levels, e.g. after a switch changed a forced level."""
        for d in list(self._services.values()):
            d.refresh()

    def snapshot(self) -> list[dict[str, Any]]:
        return [d.snapshot() for _, d in sorted(self._services.items())]
