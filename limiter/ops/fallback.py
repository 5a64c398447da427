"""Visible fallback: which rules are answered by their failure mode, said out loud.

When a rule's shared store (Redis) fails, its checks are answered by the rule's
``failure_mode`` (``limiter.failure``): decided in this process, allowed or refused.
Each such answer is already counted per rule; this watch turns the counts into what an
operator notices: a ``fallback_started`` event (and webhook) when a rule's checks start
being answered by the failure mode, ``fallback_stopped`` once none has been for
``stop_after`` seconds, and at most one log line per rule per ``log_every`` seconds
saying how many checks were answered so since the last line.

It reads cumulative counters from housekeeping (``sample``), never from the decision
loop: the decisions themselves only add to a counter they already keep.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limiter.ops.shedding import Clock, Listener, ThrottleConfig, ThrottleWatch
from limiter.schema import Section, setting

__all__ = ["FallbackConfig", "FallbackWatch"]

log = logging.getLogger("limiter.ops.fallback")

EVENTS = ("fallback_started", "fallback_stopped")


@dataclass(frozen=True)
class FallbackConfig(Section):
    """Visible fallback (``fallback``): a rule whose checks are answered by its
    failure_mode (its shared store failed) raises ``fallback_started``, then
    ``fallback_stopped`` once none has been for ``stop_after``; meanwhile one log line per
    rule per ``log_every`` counts them."""

    stop_after: float = setting(
        10.0, "fallback stops after this long without a check answered by the failure mode",
        low=0, high=86400, seconds=True,
    )  # fmt: skip
    log_every: float = setting(
        10.0, "at most one log line per rule per this long (it counts the checks since the last)",
        low=0, high=86400, seconds=True,
    )  # fmt: skip


class FallbackWatch(ThrottleWatch):
    """Per rule: is it answered by its failure mode, with start/stop events and a log.

    ``sample({rule: (checks answered by the store or its failure mode, those answered
    by the failure mode)})`` takes cumulative counters (a counter that went down, after
    a reload, starts over from zero). The start/stop hysteresis is ``ThrottleWatch``'s,
    with every fallback answer counting as "over": the first one starts it.
    """

    def __init__(
        self,
        config: FallbackConfig | None = None,
        *,
        clock: Clock | None = None,
        on_change: Listener | None = None,
    ) -> None:
        self.config = config = config or FallbackConfig()
        super().__init__(
            ThrottleConfig(start_ratio=0.0, min_over=1, stop_after=config.stop_after),
            clock=clock,
            on_change=on_change,
            events=EVENTS,
        )
        self._last: dict[str, tuple[int, int]] = {}
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, int] = {}

    def sample(
        self, counts: Mapping[str, tuple[int, int]], modes: Mapping[str, str] | None = None
    ) -> None:
        """Feed cumulative (checks, fallback answers) per rule; emit, log, and stop quiet
        rules. ``modes``: each rule's failure mode, for the log."""
        now = self.clock()
        every = int(self.config.log_every * 1e9)
        last = self._last
        for rule, (total, fallback) in counts.items():
            before_total, before_fallback = last.get(rule, (0, 0))
            new_total = total - before_total if total >= before_total else total
            new_fallback = fallback - before_fallback if fallback >= before_fallback else fallback
            if new_fallback > 0:
                self.record(rule, False, new_fallback)
                self._unlogged[rule] = self._unlogged.get(rule, 0) + new_fallback
            if new_total > new_fallback:
                self.record(rule, True, new_total - new_fallback)
            pending = self._unlogged.get(rule, 0)
            if pending and now - self._logged_at.get(rule, now - every) >= every:
                self._log(rule, pending, now, (modes or {}).get(rule))
        self._last = dict(counts)
        for rule in [r for r in self._unlogged if r not in counts]:
            del self._unlogged[rule]  # a rule a reload removed
        self.tick()

    def _log(self, rule: str, count: int, now: int, mode: str | None) -> None:
        since = self._logged_at.get(rule)
        fields: dict[str, Any] = {"rule": rule, "checks": count}
        if since is not None:
            fields["seconds"] = round((now - since) / 1e9, 3)
        if mode is not None:
            fields["failure_mode"] = mode
        log.warning("checks answered by the failure mode", extra={"fields": fields})
        self._logged_at[rule] = now
        self._unlogged[rule] = 0

    def active(self) -> list[str]:
        """The rules answered by their failure mode now."""
        return self.throttling()

    def is_active(self, rule: str) -> bool:
        return self.is_throttling(rule)
