"""The operations policy: what the decider asks besides the rules themselves.

One object, built from the config's operations sections at start-up and handed to the
decider: manual switches, degradation levels and the tiers they shed, top-client
shedding, abnormal-client blocks, throttling and fallback alerts and breakers. The
decider calls a handful of methods (below); everything else (the admin API,
housekeeping) reads the same object. A background thread does the housekeeping:
sweeping expired switches, ending quiet throttling, feeding levels their signals,
refreshing them and probing breakers.

Per request, for each rule and priority: ``rule_verdict`` (a switch or a tier cut,
the same for every client), then ``client_counter``: the clients are only counted,
many at once, unless the rule is throttling or blocks are on, when each check asks
``client_verdict``; after deciding: ``record`` (once per rule per request). Rules
are named ``"<domain>/<rule label>"``, as ``rule:`` switches address them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from limiter import Decision
from limiter.courtesy import courteous
from limiter.errors import InvalidParameter
from limiter.ops.alerts import Alerts, AlertsConfig
from limiter.ops.breaker import BreakerConfig, Breakers, State
from limiter.ops.degradation import DegradationConfig, ServiceLevels
from limiter.ops.fallback import FallbackConfig, FallbackWatch
from limiter.ops.outcomes import AccessLogConfig
from limiter.ops.shedding import (
    MAX_COUNT,
    AbnormalAccess,
    ClientShedder,
    SheddingConfig,
    ThrottleWatch,
    TopClients,
)
from limiter.ops.switches import StoreUnavailable, Switch, Switches, SwitchesConfig, open_switches
from limiter.priority import Priority
from limiter.schema import FieldError, Section, setting

log = logging.getLogger("limiter.ops")

# Seconds between housekeeping rounds.
HOUSEKEEPING_INTERVAL = 0.5
# Counts many requests' clients of one rule: (clients, hits).
ClientCounter = Callable[[list[str], list[int]], None]


@dataclass(frozen=True)
class OpsConfig(Section):
    """The operations side's sections of a config (each optional)."""

    access_log: AccessLogConfig = setting(
        AccessLogConfig(), "Envoy's access logs as reports of finished calls"
    )
    alerts: AlertsConfig = setting(AlertsConfig(), "alert webhooks")
    breakers: Mapping[str, BreakerConfig] = setting(
        factory=dict, inherit="default", kind="a mapping of dependency name to breaker settings",
        doc="circuit breakers per dependency; `default` applies to every dependency and fills "
        "the keys a named one leaves out",
    )  # fmt: skip
    degradation: DegradationConfig = setting(DegradationConfig(), "degradation levels")
    fallback: FallbackConfig = setting(FallbackConfig(), "checks answered by the failure mode")
    shedding: SheddingConfig = setting(SheddingConfig(), "who gets cut first")
    switches: SwitchesConfig = setting(SwitchesConfig(), "where manual switches live")

    def check(self, given: frozenset[str] | None) -> None:
        for name in self.breakers:
            if not name or "/" in name:
                raise FieldError(
                    "breakers", f"a dependency name must be non-empty, without '/', got {name!r}"
                )


# The config sections this side owns.
SECTIONS = tuple(f.name for f in fields(OpsConfig))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy says about a check before the rule's kernel is asked.

    ``decision``: answer this without asking the kernel (a forced allow/deny, a
    blocked or shed client). ``shadow``: ask the kernel but answer allowed (count the
    would-be rejection). ``limit``: an operator's limit override for the rule.
    """

    decision: Decision | None = None
    shadow: bool = False
    limit: int | None = None


@dataclass
class Operations:
    """Switches, levels, shedding, blocks, alerts and breakers behind the decider."""

    switches: Switches
    alerts: Alerts
    levels: ServiceLevels
    breakers: Breakers
    throttle: ThrottleWatch
    clients: TopClients
    abnormal: AbnormalAccess | None
    fallback: FallbackWatch = field(default_factory=FallbackWatch)
    # Extra housekeeping steps (the service adds its per-rule rate sampling).
    steps: list[Callable[[], Any]] = field(default_factory=list)
    # Pressure signals besides the breakers (the service adds what it measures), read
    # after the steps, each round: name -> value, as ``Degradation.observe`` takes them.
    signals: list[Callable[[], Mapping[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def level(self) -> int:
        """The default service's degradation level (0 = normal)."""
        return self.levels.level()

    def rule_verdict(
        self, rule: str, limit: int, priority: Priority | None, level: int
    ) -> Verdict | None:
        """A switch on ``rule``, or a cut of ``priority``'s tier at ``level``; None when
        neither applies (the fast path)."""
        sw = self.switches.rule(rule)
        if sw is not None:
            action = sw.action
            if action == "force_allow":
                return Verdict(Decision(True, limit, limit, 0.0))
            if action == "force_deny":
                left = 1.0
                if sw.expires_at is not None:
                    left = min(max(sw.expires_at - self.switches.clock() / 1e9, 0.001), 3600.0)
                return Verdict(Decision(False, limit, 0, left, left))
            if action == "shadow":
                return Verdict(shadow=True)
            return Verdict(limit=sw.limit)
        if priority is not None and level and self.levels.config.sheds(priority, level):
            return Verdict(Decision(False, limit, 0, 1.0, 1.0))
        return None

    def client_verdict(
        self, rule: str, client: str, hits: int, limit: int, capacity: float | None = None
    ) -> Verdict | None:
        """Abnormal-client blocks, and top-client shedding while ``rule`` is throttling
        (``capacity``: the rule's limit per second, what its clients share fairly)."""
        if not 1 <= hits <= MAX_COUNT:
            raise InvalidParameter(f"hits must be in [1, {MAX_COUNT}], got {hits!r}")
        abnormal = self.abnormal
        if abnormal is not None and not abnormal.request(client, hits):
            left = max(abnormal.blocked_for(client), 0.001)
            return Verdict(Decision(False, limit, 0, left, left))
        pressure = self.throttle.is_throttling(rule)
        if not self.clients.check(rule, client, hits, pressure=pressure, capacity=capacity):
            return Verdict(Decision(False, limit, 0, 1.0, 1.0))
        return None

    def breaker_verdict(self, dependency: str, partition: str, limit: int) -> Verdict | None:
        """A refusal while ``dependency``'s breaker for ``partition`` fails fast (open, or
        forced open by a switch); None while it lets calls through."""
        breaker = self.breakers.peek(dependency, partition)
        if breaker is None or breaker.allow():
            return None
        left = max(breaker.retry_after(), 0.001)
        return Verdict(Decision(False, limit, 0, left, left))

    def client_counter(self, rule: str) -> ClientCounter | None:
        """While ``client_verdict`` cannot refuse ``rule``'s clients (the rule is not
        throttling, no blocks are on), it only counts them: this counts many in one call.
        None when each client must be asked (``client_verdict`` with pressure)."""
        if self.abnormal is not None or self.throttle.is_throttling(rule):
            return None
        return self.clients[rule].sketch.offer_many

    def record(self, rule: str, allowed: bool, hits: int) -> None:
        """Count the rule's answer (throttle start/stop alerts, top throttled rules)."""
        self.throttle.record(rule, allowed, hits)

    # --- housekeeping -----------------------------------------------------------

    def _pressure(self) -> None:
        """Feed the default service's level with the share of breakers that are not
        closed and every other signal source's readings, in one observation."""
        signals: dict[str, float] = {}
        every = self.breakers.all()
        if every:
            signals["breakers"] = sum(b.state is not State.CLOSED for b in every) / len(every)
        for source in self.signals:
            signals.update(source())
        if signals:
            self.levels["default"].observe(**signals)

    def _sweep(self) -> None:
        """Remove expired switches; the replica that removes one announces it."""
        for sw in self.switches.sweep():
            self.announce(sw.id, "expire", "system", "expired", sw)

    def announce(self, switch_id: str, op: str, who: str, why: str, sw: Switch) -> None:
        """Emit ``switch_changed`` for a switch put, deleted or expired."""
        self.alerts.emit(
            "switch_changed",
            {"id": switch_id, "op": op, "who": who, "why": why, "switch": sw.as_dict()},
        )

    def tick(self) -> None:
        """One round of housekeeping (also run by the background thread)."""
        for step in (
            *self.steps,
            self._pressure,
            self._sweep,
            self.throttle.tick,
            self.levels.refresh,
            self.breakers.run_probes,
        ):
            try:
                step()
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("housekeeping step %s failed", getattr(step, "__name__", step))

    def start(self) -> Operations:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="limiter-ops", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        with courteous():  # housekeeping never holds up the threads deciding
            while not self._stop.wait(HOUSEKEEPING_INTERVAL):
                self.tick()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.switches.close()
        self.alerts.close(timeout=2)


def build(
    sections: Mapping[str, Any] | None = None,
    *,
    redis_url: str | None = None,
    clock: Callable[[], int] | None = None,
    wall_clock: Callable[[], int] | None = None,
    start: bool = True,
) -> Operations:
    """Wire the operations side from config sections (missing ones use defaults)."""
    config = OpsConfig(**(sections or {}))
    alerts = Alerts(config.alerts, clock=wall_clock)
    switches = open_switches(config.switches, redis_url, clock=wall_clock)
    levels = ServiceLevels(
        config.degradation, clock=clock, override=switches.level, on_change=alerts.emit
    )
    breakers = Breakers(
        config.breakers, clock=clock, on_change=alerts.emit, override=switches.breaker
    )

    def on_switch(switch_id: str, switch: Switch | None) -> None:
        if switch_id.startswith("level:"):
            levels[switch_id.split(":", 1)[1]].refresh()

    switches.subscribe(on_switch)
    for sw in switches.list():
        on_switch(sw.id, sw)
    shedding = config.shedding
    clients = TopClients(lambda: ClientShedder(shedding.clients, clock=clock))

    def throttle_event(event: str, fields: dict[str, Any]) -> None:
        """Throttling alerts carry the level and the rule's heaviest clients."""
        top = [(c["client"], c["count"]) for c in clients.top(fields["rule"], 5)]
        alerts.emit(event, {**fields, "level": levels.level(), "top_clients": top})

    def fallback_event(event: str, fields: dict[str, Any]) -> None:
        if event == "fallback_stopped":
            log.info("checks no longer answered by the failure mode", extra={"fields": fields})
        alerts.emit(event, fields)

    ops = Operations(
        switches=switches,
        alerts=alerts,
        levels=levels,
        breakers=breakers,
        throttle=ThrottleWatch(shedding.throttle, clock=clock, on_change=throttle_event),
        clients=clients,
        abnormal=(
            AbnormalAccess(shedding.abnormal, clock=clock, on_block=alerts.emit)
            if shedding.abnormal is not None
            else None
        ),
        fallback=FallbackWatch(config.fallback, clock=clock, on_change=fallback_event),
    )
    return ops.start() if start else ops
