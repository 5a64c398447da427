"""Circuit breakers on Redis connections, one per node: a dead shard trips only its keys.

A thin use of ``limiter.ops.breaker``: each node's ``CircuitBreaker`` opens on its first
connection failure, so a dead Redis costs microseconds instead of a timeout per call,
and ``cooldown`` seconds later lets one probe request through; the probe's success
closes it. Only failures and the outcomes of probes are recorded: a success while
closed would change nothing, so a healthy round trip pays one attribute check.
A standalone or Sentinel-managed Redis is one node, named "".
"""

from __future__ import annotations

from limiter.ops.breaker import BreakerConfig, BreakerGroup, CircuitBreaker, Clock, State


class NodeBreakers:
    """The breakers of one backend's Redis nodes, created on first use."""

    def __init__(self, name: str, cooldown: float = 0.2, clock: Clock | None = None) -> None:
        self.cooldown = cooldown
        config = BreakerConfig(minimum_calls=1, failure_ratio=0.0, consecutive_failures=1,
                               open_for=cooldown, half_open_probes=1)  # fmt: skip
        self.group = BreakerGroup(name, config, clock=clock)
        self.main = self.group[""]

    def node(self, name: str) -> CircuitBreaker:
        return self.main if not name else self.group[name]

    def allow(self, name: str = "") -> bool:
        """May a request go to node ``name`` now? (the one probe after a cooldown may)"""
        return self.node(name).allow()

    def failure(self, name: str = "") -> None:
        self.node(name).record(failed=True)

    def success(self, name: str = "") -> None:
        breaker = self.node(name)
        if breaker.state is not State.CLOSED:
            breaker.record(failed=False)

    @property
    def trips(self) -> int:
        return sum(b.trips for b in self.group)

    @property
    def is_open(self) -> bool:
        """Is any node's breaker open (or half-open, awaiting its probe)?"""
        return any(b.state is not State.CLOSED for b in self.group)

    def open_nodes(self) -> list[str]:
        return sorted(b.name for b in self.group if b.state is not State.CLOSED)
