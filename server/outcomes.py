"""Where reports of finished calls go: the adaptive rules, the breakers, abnormal access.

Two adapters report calls: Envoy's access logs (``limiter.server.accesslog``: one
report per HTTP entry, addressed by route and upstream cluster) and the native
``Observe`` (one per observation, addressed by rule). ``Outcomes`` delivers each:

- an adaptive rule learns the latency and outcome (``limiter.ops.outcomes.judge``);
- a breaker counts the call: for an entry, the breaker of its upstream cluster (and the
  partition the ``access_log.partition_header`` names), only for dependencies the
  config knows (declared under ``breakers`` or named by a rule's ``breaker``), so
  unknown clusters never fill the table; for an observation, its rule's ``breaker``
  (the partition from the observation's key, as for checks);
- abnormal-access blocking (``shedding.abnormal``) counts the status for the client
  (an entry's ``access_log.client_header``, an observation's key).

Nothing here decides: the decider reads the breakers and blocks on the next checks.
Everything runs on the decision loop and costs a few dictionary lookups and counter
updates per report.
"""

from __future__ import annotations

from typing import Any

from limiter.server.rules import RuleState, partition_of

from limiter.ops import Operations
from limiter.ops.outcomes import Report, judge


class Outcomes:
    """Delivers reports of finished calls (see the module docstring)."""

    def __init__(self, rulebook: Any, ops: Operations) -> None:
        self.rulebook = rulebook
        self.ops = ops
        self._snapshot: Any = None
        self._by_route: dict[str, list[RuleState]] = {}
        self._by_cluster: dict[str, list[RuleState]] = {}
        self._dependencies: frozenset[str] = frozenset()

    def _index(self) -> None:
        """Rebuild the lookups when a reload swapped the rulebook's snapshot."""
        snapshot = self.rulebook.snapshot
        if snapshot is self._snapshot:
            return
        by_route: dict[str, list[RuleState]] = {}
        by_cluster: dict[str, list[RuleState]] = {}
        dependencies = set(self.ops.breakers.configs)
        for state in snapshot.states.values():
            limit = state.rule.limit
            if state.breaker is not None:
                dependencies.add(state.breaker[0])
            spec = limit.outcomes
            if spec is None or getattr(state.kernel, "record", None) is None:
                continue
            if spec.route is not None:
                by_route.setdefault(spec.route, []).append(state)
            else:
                by_cluster.setdefault(spec.cluster, []).append(state)
        self._by_route, self._by_cluster = by_route, by_cluster
        self._dependencies = frozenset(dependencies)
        self._snapshot = snapshot

    def entry(self, route: str, cluster: str, report: Report, partition: str, client: str) -> bool:
        """Deliver one access-log entry; False when nothing took it (no rule, no known
        dependency, no client to count)."""
        self._index()
        judged = judge(report)
        taken = False
        if judged.adaptive is not None:
            # The adaptive rules the entry reports on: its route's (those naming no cluster
            # or this one), then its cluster's (which all name it).
            for state in [*self._by_route.get(route, ()), *self._by_cluster.get(cluster, ())]:
                if state.rule.limit.outcomes.cluster in (None, cluster):
                    state.kernel.record(report.latency, outcome=judged.adaptive)
                    taken = True
        if judged.breaker_failed is not None and cluster in self._dependencies:
            self._breaker(cluster, partition, report)
            taken = True
        abnormal = self.ops.abnormal
        if client and abnormal is not None and judged.client_status is not None:
            abnormal.response(client, judged.client_status)
            taken = True
        return taken

    def observe(
        self, state: RuleState, key: str, latency: float, outcome: str, status: int
    ) -> bool:
        """Deliver one native observation of ``state``'s rule (``outcome``: the kernel's
        ok, dropped or ignored); False when nothing took it."""
        taken = False
        record = getattr(state.kernel, "record", None)
        if record is not None:
            record(latency, outcome=outcome)
            taken = True
        if state.breaker is not None and outcome != "ignored":
            dependency, at = state.breaker
            report = Report(latency, status, failed=outcome == "dropped")
            self._breaker(dependency, partition_of(key, at), report)
            taken = True
        abnormal = self.ops.abnormal
        if key and status and abnormal is not None:
            abnormal.response(key, status)
        return taken

    def _breaker(self, dependency: str, partition: str, report: Report) -> None:
        breaker = self.ops.breakers.get(dependency, partition)
        if report.status and not report.failed:
            # The dependency's own failure_status / ignore_status classify a status.
            breaker.record(report.latency, status=report.status)
        else:
            # Failed on the way, or no status: a failure exactly when it failed (``judge``).
            breaker.record(report.latency, failed=report.failed)
