"""Prometheus metrics of the decision service.

Per-rule counters are plain integers on each ``RuleState`` and the decision latency
histogram is a plain list of bucket counts (no lock or label lookup on the decision
path); a collector turns both into Prometheus families at scrape time. Invalid
requests and config reloads (rare) use prometheus-client metrics directly. Families are
prefixed ``limiter_``; rule counters carry ``domain`` and ``rule`` labels (plus
``detailed="true"`` for the per-value series of ``detailed_metric`` rules).
"""

from __future__ import annotations

import contextlib
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from limiter.ops.breaker import State

if TYPE_CHECKING:
    from limiter.server.rules import Rulebook

    from limiter.ops import Operations

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RULE_COUNTERS = ("total_hits", "over_limit", "near_limit", "within_limit", "shadow_mode")
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)


class Metrics:
    """Every metric of one service process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rulebook: Rulebook | None = None
        self.ops: Operations | None = None
        r = self.registry
        self.latency = Latency(
            "limiter_decision_latency_seconds",
            "Time to decide one RPC (all its descriptors/checks), excluding transport.",
            LATENCY_BUCKETS,
        )
        r.register(self.latency)
        self.invalid_requests = Counter(
            "limiter_invalid_requests",
            "Malformed requests answered INVALID_ARGUMENT/400.",
            ["api"],
            registry=r,
        )
        self.config_reloads = Counter(
            "limiter_config_reloads", "Config (re)loads by result.", ["result"], registry=r
        )
        self.config_ok = Gauge(
            "limiter_config_last_reload_successful",
            "1 if the last reload succeeded; 0 while the last good config is kept.",
            registry=r,
        )
        self.redis_restarts = Counter(
            "limiter_redis_restarts",
            "Redis servers seen restarting (a new run id): without persistence, the shared "
            "windows and counters they held started over.",
            registry=r,
        )
        self.rlqs_refused = Counter(
            "limiter_rlqs_refused",
            "Quota (RLQS) buckets answered DENY_ALL because the service tracks its bound of "
            "buckets.",
            registry=r,
        )
        self.access_log_entries = Counter(
            "limiter_access_log_entries",
            "Envoy access-log entries read, by result: fed (an adaptive rule, a breaker or "
            "abnormal-access blocking took it) or unmatched (nothing did).",
            ["result"],
            registry=r,
        )
        self.access_log_refused = Counter(
            "limiter_access_log_refused",
            "Access-log streams refused (bound max_streams) or ended by a message over "
            "access_log.max_entries (bound max_entries).",
            ["bound"],
            registry=r,
        )
        for result in ("fed", "unmatched"):
            self.access_log_entries.labels(result)
        for bound in ("max_streams", "max_entries"):
            self.access_log_refused.labels(bound)
        self.config_loaded_at = Gauge(
            "limiter_config_last_success_timestamp_seconds",
            "Unix time the serving config was loaded.",
            registry=r,
        )

    def watch(self, rulebook: Rulebook, ops: Operations | None) -> None:
        """Export ``rulebook``'s per-rule counters, and the breakers, levels and switches
        of the operations policy, at scrape time."""
        self.rulebook = rulebook
        self.ops = ops
        if ops is not None:
            self.registry.register(_OpsCollector(ops))

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        if self.rulebook is None:
            return text
        return text + _rules_text(self.rulebook, self.ops).encode()


class Buckets:
    """One label set's histogram: ``observe`` is a bisect and two additions, no lock.

    Written only from the event loop that serves RPCs; a scrape reads a slightly
    stale but never torn total (each count is one Python int).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Latency(Collector):
    """A histogram labelled by ``api`` whose samples become a family only at scrape time."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = bounds
        self.series: dict[str, Buckets] = {}

    def labels(self, api: str) -> Buckets:
        """The series for ``api`` (look it up once, then call ``observe`` per RPC)."""
        series = self.series.get(api)
        if series is None:
            series = self.series[api] = Buckets(self.bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["api"])
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for api, series in list(self.series.items()):
            total, cumulative = 0, []
            for edge, count in zip(edges, list(series.counts), strict=True):
                total += count
                cumulative.append((edge, total))
            family.add_metric([api], cumulative, series.sum)
        yield family


# How workers' gauges combine (default: max).
GAUGES: dict[str, Callable[[list[float]], float]] = {
    "limiter_config_last_reload_successful": min,
    "limiter_config_last_success_timestamp_seconds": min,
    "limiter_permits_held": sum,
    "limiter_queue_depth": sum,
}


class SharedMetrics:
    """``--workers``: every worker's /metrics answers for all workers together.

    Each worker writes its own exposition to ``directory`` every ``interval`` seconds;
    whichever worker the kernel hands a scrape to merges its live metrics with the
    others' latest files (at most ``interval`` old): counters and histograms are
    summed, gauges combined per ``GAUGES`` (so a stale-config worker shows up as 0).
    """

    def __init__(self, metrics: Metrics, directory: str, worker: str) -> None:
        self.metrics = metrics
        self.directory = Path(directory)
        self.path = self.directory / f"worker-{worker}.prom"

    def publish(self) -> None:
        """Write this worker's exposition (atomically: readers never see half a file)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(self.metrics.render())
        os.replace(tmp, self.path)

    def render(self) -> bytes:
        texts = [self.metrics.render().decode()]
        for other in sorted(self.directory.glob("worker-*.prom")):
            if other != self.path:
                with contextlib.suppress(OSError):
                    texts.append(other.read_text())
        return merge(texts, GAUGES).encode()


def merge(texts: list[str], gauges: dict[str, Callable[[list[float]], float]]) -> str:
    """Sum Prometheus expositions sample by sample (gauges per ``gauges``, default max)."""
    families: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, (family.type, family.documentation))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples.setdefault(key, []).append(sample.value)
    lines = []
    for name, (kind, doc) in families.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        combine = gauges.get(name, max) if kind == "gauge" else sum
        for (sample, labels), found in values[name].items():
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            head = f"{sample}{{{text}}}" if text else sample
            lines.append(f"{head} {float(combine(found))!r}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Text:
    """One exposition being written: per-rule families have a series per rule and per
    ``detailed_metric`` value, so they are written as text directly (a Metric object
    and its Samples per series would make a scrape of many series cost many times as
    much, in the thread that shares the GIL with the decision loop)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, doc: str) -> None:
        self.lines.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}")

    def sample(self, name: str, labels: str, value: float) -> None:
        self.lines.append(f"{name}{labels} {_number(value)}")


def _labels(**pairs: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    return str(value) if type(value) is int else floatToGoString(value)


def _rules_text(book: Rulebook, ops: Operations | None) -> str:
    """The per-rule families of ``book`` (and the policy's level) as exposition text."""
    out = _Text()
    states = book.all_states()
    series: list[tuple[str, Any]] = []
    for state in states:
        series.append((_labels(domain=state.domain, rule=state.label, detailed="false"),
                       state.stats))  # fmt: skip
        if state.detailed:
            series += [
                (_labels(domain=state.domain, rule=d, detailed="true"), stats)
                for d, stats in list(state.detailed.items())
            ]
    for name in RULE_COUNTERS:
        family = f"limiter_rule_{name}"
        out.family(family, "counter", f"Hits: {name} (per rule).")
        out.lines += [f"{family}_total{labels} {getattr(stats, name)}" for labels, stats in series]
    out.family(
        "limiter_backend_errors", "counter",
        "Backend failures answered per the rule's failure_mode.",
    )  # fmt: skip
    for state in states:
        labels = _labels(domain=state.domain, rule=state.label)
        out.sample("limiter_backend_errors_total", labels, state.stats.backend_errors)
    if ops is not None:
        out.family(
            "limiter_fallback_active", "gauge",
            "1 while a rule's checks are answered by its failure_mode (between the "
            "fallback_started and fallback_stopped events).",
        )  # fmt: skip
        for state in states:
            labels = _labels(domain=state.domain, rule=state.label)
            out.sample(
                "limiter_fallback_active", labels, int(ops.fallback.is_active(state.ops_name))
            )
    out.family(
        "limiter_rule_limit", "gauge",
        "Configured limit of each limited rule: requests per unit, or calls in flight.",
    )  # fmt: skip
    for state in states:
        if not state.unlimited:
            lim = state.rule.limit
            in_flight = lim.algorithm == "concurrency" or (
                lim.algorithm == "adaptive" and lim.mode == "concurrency"
            )
            labels = _labels(
                domain=state.domain, rule=state.label, unit="in_flight" if in_flight else lim.unit
            )
            out.sample("limiter_rule_limit", labels, state.limit)
    adaptive = [
        (state, _labels(domain=state.domain, rule=state.label))
        for state in states
        if getattr(state.kernel, "current_limit", None) is not None
    ]
    out.family(
        "limiter_adaptive_limit", "gauge",
        "Current limit of adaptive rules (per second, or calls in flight); on Redis, "
        "the limit every replica shares.",
    )  # fmt: skip
    for state, labels in adaptive:
        out.sample("limiter_adaptive_limit", labels, float(state.kernel.current_limit))
    out.family(
        "limiter_adaptive_latency_seconds", "gauge",
        "Latency percentile an adaptive rule's limit follows (absent before samples).",
    )  # fmt: skip
    for state, labels in adaptive:
        seen = getattr(state.kernel, "current_percentile", None)
        if seen is not None and math.isfinite(seen):
            out.sample("limiter_adaptive_latency_seconds", labels, float(seen))
    out.family(
        "limiter_adaptive_target_latency_seconds", "gauge",
        "Latency an adaptive rule aims its percentile at.",
    )  # fmt: skip
    for state, labels in adaptive:
        out.sample("limiter_adaptive_target_latency_seconds", labels,
                   float(state.rule.limit.target_latency))  # fmt: skip
    out.family(
        "limiter_unknown_domain", "counter",
        "RLS requests for a domain the config does not define (answered OK).",
    )  # fmt: skip
    out.sample("limiter_unknown_domain_total", "", book.unknown_domain)
    out.family("limiter_permits_held", "gauge", "Concurrency permits held for native clients.")
    out.sample("limiter_permits_held", "", len(book.permits))
    out.family("limiter_permits_expired", "counter", "Permits released because Release never came.")
    out.sample("limiter_permits_expired_total", "", book.permits_expired)
    out.family(
        "limiter_permits_refused", "counter",
        "Permit checks refused because their caller or rule held its bound of permits.",
    )  # fmt: skip
    out.sample("limiter_permits_refused_total", "", book.permits_refused)
    out.family("limiter_level", "gauge", "Current degradation level.")
    out.sample("limiter_level", "", 0 if ops is None else ops.level())
    return "\n".join(out.lines) + "\n"


class _OpsCollector(Collector):
    """Breakers, per-service degradation levels and live switches of the operations policy."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    def collect(self) -> Iterator[Metric]:
        ops = self.ops
        states = GaugeMetricFamily(
            "limiter_breaker_state",
            "1 for the state each circuit breaker is in (closed, open, half_open); configured "
            "dependencies no call has used yet are closed.",
            labels=["breaker", "state"],
        )
        rejected = CounterMetricFamily(
            "limiter_breaker_rejected", "Calls a breaker failed fast.", labels=["breaker"]
        )
        seen: dict[str, tuple[State, int]] = {}
        for breaker in ops.breakers.all():
            seen[breaker.name] = (breaker.state, breaker.rejected)
        for dependency in ops.breakers.configs:
            seen.setdefault(dependency, (State.CLOSED, 0))
        for name, (state, refused) in sorted(seen.items()):
            for each in State:
                states.add_metric([name, each.value], 1.0 if each is state else 0.0)
            rejected.add_metric([name], refused)
        levels = GaugeMetricFamily(
            "limiter_service_level",
            "Degradation level of each service (0 = normal), forced or computed.",
            labels=["service"],
        )
        pressure = GaugeMetricFamily(
            "limiter_service_pressure",
            "Pressure signal a service's computed level follows (0 to 1).",
            labels=["service"],
        )
        for level in ops.levels.snapshot():
            levels.add_metric([level["service"]], level["level"])
            pressure.add_metric([level["service"]], level["pressure"])
        switches = GaugeMetricFamily(
            "limiter_switch_active",
            "1 for each live manual switch, by id and what it sets.",
            labels=["id", "setting"],
        )
        for switch in ops.switches.list():
            setting = switch.action or ("" if switch.level is None else f"level {switch.level}")
            switches.add_metric([switch.id, setting], 1.0)
        yield states
        yield rejected
        yield levels
        yield pressure
        yield switches
