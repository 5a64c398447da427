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
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from limiter.server.engine import Engine

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
        self.config_loaded_at = Gauge(
            "limiter_config_last_success_timestamp_seconds",
            "Unix time the serving config was loaded.",
            registry=r,
        )

    def watch(self, engine: Engine) -> None:
        """Export ``engine``'s per-rule counters at scrape time."""
        self.registry.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


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


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        labels = ["domain", "rule", "detailed"]
        families = {
            name: CounterMetricFamily(
                f"limiter_rule_{name}", f"Hits: {name} (per rule).", labels=labels
            )
            for name in RULE_COUNTERS
        }
        errors = CounterMetricFamily(
            "limiter_backend_errors",
            "Backend failures answered per the rule's failure_mode.",
            labels=["domain", "rule"],
        )
        adaptive = GaugeMetricFamily(
            "limiter_adaptive_limit",
            "Current limit of adaptive rules (per second, or calls in flight); on Redis, "
            "the limit every replica shares.",
            labels=["domain", "rule"],
        )
        for state in engine.all_states():
            current = getattr(state.kernel, "current_limit", None)
            if current is not None:
                adaptive.add_metric([state.domain, state.label], current)
            series = [(state.label, "false", state.stats)]
            if state.detailed:
                series += [(d, "true", s) for d, s in list(state.detailed.items())]
            for rule, detailed, stats in series:
                for name in RULE_COUNTERS:
                    families[name].add_metric([state.domain, rule, detailed], getattr(stats, name))
            errors.add_metric([state.domain, state.label], state.backend_errors)
        yield from families.values()
        yield errors
        yield adaptive
        yield CounterMetricFamily(
            "limiter_unknown_domain",
            "RLS requests for a domain the config does not define (answered OK).",
            value=engine.unknown_domain,
        )
        yield GaugeMetricFamily(
            "limiter_permits_held", "Concurrency permits held for native clients.",
            value=len(engine.permits),
        )  # fmt: skip
        yield CounterMetricFamily(
            "limiter_permits_expired", "Permits released because Release never came.",
            value=engine.permits_expired,
        )  # fmt: skip
        yield GaugeMetricFamily("limiter_level", "Current degradation level.", value=engine.level())
