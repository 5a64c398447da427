"""Degradation levels: how much a service should give up to survive, from 0 (nothing) to N.

The level follows a pressure signal in [0, 1+] (the largest of utilisation, adaptive
cuts, open breakers, shedding ...). It rises as soon as pressure crosses the next
threshold (shed fast) but falls one level at a time, and only after pressure has
stayed below that threshold minus a margin for ``restore_after`` seconds (restore
slowly), so it does not flap. An operator can force a level (a manual switch), which
wins until it is lifted. Each level's meaning is the backend's business; the default
names follow the brief: throttle, simplify, serve cached, stop secondary features.
The limiter's own part is ``shed``: from a given level a criticality tier is refused
outright (by default SHEDDABLE from level 1, SHEDDABLE_PLUS from level 2), so the
least important traffic goes first and completely.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from limiter.criticality import Criticality
from limiter.errors import ConfigError, InvalidParameter

__all__ = ["Degradation", "DegradationConfig", "ServiceLevels"]

Clock = Callable[[], int]
Listener = Callable[[str, dict[str, Any]], None]
Override = Callable[[str], int | None]

DEFAULT_THRESHOLDS = (0.8, 0.9, 0.95, 1.0)
DEFAULT_NAMES = ("normal", "throttle-secondary", "simplify", "serve-cached", "stop-secondary")


@dataclass(frozen=True)
class DegradationConfig:
    """The ``degradation:`` section (shared by every service's level)."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    margin: float = 0.1
    raise_after: float = 0.0
    restore_after: float = 30.0
    names: tuple[str, ...] = ()
    # Signal name -> weight; breakers default to 0.9 so every breaker open means level 2
    # ("simplify"), not the most severe level.
    weights: Mapping[str, float] = field(default_factory=lambda: {"breakers": 0.9})
    # Tier -> the level from which that tier's traffic is refused outright, so the
    # least important traffic goes first and completely (CRITICAL tiers are never shed
    # here unless configured).
    shed: Mapping[Criticality, int] = field(
        default_factory=lambda: {Criticality.SHEDDABLE: 1, Criticality.SHEDDABLE_PLUS: 2}
    )

    def __post_init__(self) -> None:
        t = self.thresholds
        if not t or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0 for x in t
        ):
            raise InvalidParameter(f"thresholds must be positive numbers, got {t!r}")
        if any(b <= a for a, b in itertools.pairwise(t)):
            raise InvalidParameter(f"thresholds must increase strictly, got {list(t)!r}")
        for name in ("margin", "raise_after", "restore_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e9:
                raise InvalidParameter(f"{name} must be a number >= 0, got {v!r}")
        if not self.names:
            derived = DEFAULT_NAMES + tuple(
                f"level-{i}" for i in range(len(DEFAULT_NAMES), len(t) + 1)
            )
            object.__setattr__(self, "names", derived[: len(t) + 1])
        if len(self.names) != len(t) + 1 or not all(isinstance(n, str) for n in self.names):
            raise InvalidParameter(
                f"names must be {len(t) + 1} strings (level 0..{len(t)}), got {list(self.names)!r}"
            )
        for k, w in self.weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 10:
                raise InvalidParameter(f"weights.{k} must be a number in [0, 10], got {w!r}")
        if not isinstance(self.shed, Mapping):
            raise InvalidParameter(
                f"shed must be a mapping of tier to level, got {self.shed!r:.80}"
            )
        shed = {}
        for key, level in self.shed.items():
            tier = Criticality.parse(key, "shed tier")
            # A level above max_level is allowed: that tier is then never shed.
            if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 100:
                raise InvalidParameter(
                    f"shed.{tier.name} must be a level in [1, 100], got {level!r}"
                )
            shed[tier] = level
        object.__setattr__(self, "shed", shed)

    @property
    def max_level(self) -> int:
        return len(self.thresholds)

    def sheds(self, tier: Criticality, level: int) -> bool:
        """Is ``tier``'s traffic refused outright at ``level``?"""
        start = self.shed.get(tier)
        return start is not None and level >= start

    @classmethod
    def parse(cls, section: object, where: str = "degradation") -> DegradationConfig:
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: must be a mapping, got {section!r:.80}")
        known = {"thresholds", "margin", "raise_after", "restore_after", "names", "weights", "shed"}
        for key in section:
            if key not in known:
                raise ConfigError(f"{where}: unknown key {key!r} (known: {sorted(known)})")
        kwargs = dict(section)
        for key in ("thresholds", "names"):
            if key in kwargs:
                if not isinstance(kwargs[key], Sequence) or isinstance(kwargs[key], str):
                    raise ConfigError(f"{where}.{key}: must be a list, got {kwargs[key]!r:.80}")
                kwargs[key] = tuple(kwargs[key])
        if "weights" in kwargs and not isinstance(kwargs["weights"], Mapping):
            raise ConfigError(f"{where}.weights: must be a mapping, got {kwargs['weights']!r:.80}")
        if "weights" in kwargs:
            kwargs["weights"] = {**cls().weights, **kwargs["weights"]}
        try:
            return cls(**kwargs)
        except InvalidParameter as exc:
            raise ConfigError(f"{where}: {exc}") from None


class Degradation:
    """One service's level, driven by ``update(pressure)`` or ``observe(**signals)``.

    ``override(service)`` (e.g. ``SwitchBoard.level``) returns a forced level or None;
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise InvalidParameter(f"signal {key} must be a number, got {value!r}")
        with self._lock:
            self.signals.update({k: float(v) for k, v in signals.items()})
            weights = self.config.weights
            pressure = max((v * weights.get(k, 1.0) for k, v in self.signals.items()), default=0.0)
        return self.update(pressure)

    def update(self, pressure: float) -> int:
        """Move the computed level for ``pressure``; returns the effective level."""
        if (
            isinstance(pressure, bool)
            or not isinstance(pressure, (int, float))
            or pressure != pressure
        ):
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
        d = self._services.get(service)
        return (d or self[service]).level

    def refresh(self) -> None:
        """Re-evaluate effective levels, e.g. after a switch changed a forced level."""
        for d in list(self._services.values()):
            d.refresh()

    def snapshot(self) -> list[dict[str, Any]]:
        return [d.snapshot() for _, d in sorted(self._services.items())]
