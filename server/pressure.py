"""What drives the service's degradation level: signals read from the rules' counters.

Every housekeeping round (off the decision loop) ``ServicePressure.sample`` reads the
rulebook's live rule states and works out, each as a share from 0 to 1:

- ``adaptive_cut``: how deep the most-cut adaptive rule is cut, 1 - limit / ceiling;
- ``latency``: how far the slowest adaptive rule's observed percentile is over its
  target, 1 - target / observed (0 at or under the target, 0.5 at twice it);
- ``throttled``: the share of checks the rules' limits refused over the last
  ``degradation.window`` seconds (refusals the operations policy made itself, such as
  the tiers a level sheds, do not count: the level would feed itself);
- ``fallback``: the share of checks answered by a failure mode (Redis failed) over the
  same window.

The two shares count only once the window holds ``degradation.min_checks`` checks.
The operations policy reads ``signals`` right after and observes them, with the share of
open breakers, in the ``default`` service's level (``limiter.ops.degradation``), whose
weights and hysteresis turn them into a level. The same round feeds the per-rule
fallback counters to the fallback watch (``limiter.ops.fallback``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from limiter.ops.degradation import DegradationConfig
from limiter.ops.fallback import FallbackWatch

__all__ = ["ServicePressure"]


class ServicePressure:
    """The service's pressure signals, sampled from ``rulebook`` (see the module docstring)."""

    def __init__(
        self,
        rulebook: Any,
        config: DegradationConfig,
        fallback: FallbackWatch | None = None,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.rulebook = rulebook
        self.window_ns = int(config.window * 1e9)
        self.min_checks = config.min_checks
        self.fallback = fallback
        self.clock = clock
        # (at, checks, refused by a limit, answered by a failure mode), cumulative over
        # every rule: the oldest kept is the last at or before the window's start. The
        # counters start at zero with the service.
        self._history: deque[tuple[int, int, int, int]] = deque([(clock(), 0, 0, 0)])
        self._signals: dict[str, float] = {}

    def sample(self) -> None:
        """One housekeeping round: read the counters, update the signals."""
        now = self.clock()
        checks = refused = fell = 0
        cut = slow = 0.0
        per_rule: dict[str, tuple[int, int]] = {}
        modes: dict[str, str] = {}
        for state in self.rulebook.all_states():
            stats = state.stats
            checks += stats.total_hits
            refused += stats.over_limit - stats.shadow_mode - stats.policy_refused
            fell += stats.backend_errors
            name = state.ops_name
            before = per_rule.get(name, (0, 0))
            per_rule[name] = (before[0] + stats.total_hits, before[1] + stats.backend_errors)
            lim = state.rule.limit
            modes[name] = str(lim.failure_mode)
            if lim.algorithm == "adaptive" and state.kernel is not None:
                # The ceiling in the kernel's own unit, as ``build_kernel`` sets it.
                n = lim.requests_per_unit
                ceiling = n / lim.seconds if lim.mode == "rate" else n
                cut = max(cut, _cut(state.kernel, ceiling))
                slow = max(slow, _over_target(state.kernel, lim.target_latency))
        if self.fallback is not None:
            self.fallback.sample(per_rule, modes)
        history = self._history
        if history and checks < history[-1][1]:
            history.clear()  # counters started over (a reload gave rules fresh ones)
        history.append((now, checks, refused, fell))
        while len(history) > 1 and history[1][0] <= now - self.window_ns:
            history.popleft()
        _, checks0, refused0, fell0 = history[0]
        seen = checks - checks0
        enough = seen > 0 and seen >= self.min_checks
        self._signals = {
            "adaptive_cut": cut,
            "latency": slow,
            "throttled": _share(refused - refused0, seen) if enough else 0.0,
            "fallback": _share(fell - fell0, seen) if enough else 0.0,
        }

    def signals(self) -> dict[str, float]:
        """The signals of the last ``sample`` (for ``Operations.signals``)."""
        return self._signals


def _share(part: int, whole: int) -> float:
    return min(max(part / whole, 0.0), 1.0)


def _cut(kernel: Any, ceiling: float) -> float:
    current = getattr(kernel, "current_limit", None)
    if current is None or not ceiling or not math.isfinite(current):
        return 0.0
    return min(max(1.0 - float(current) / ceiling, 0.0), 1.0)


def _over_target(kernel: Any, target: float) -> float:
    seen = getattr(kernel, "current_percentile", None)
    if seen is None or not math.isfinite(seen) or seen <= target or target <= 0:
        return 0.0
    return 1.0 - target / float(seen)
