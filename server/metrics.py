"""Prometheus metrics of the decision service.

Per-rule counters are plain integers on each ``RuleState`` and the decision latency
histogram is a plain list of bucket counts (no lock or label lookup on the decision
path); at scrape time a collector turns the histogram into a family and the rule
counters, with the operations policy's breakers, levels and switches, are written as
exposition text (``_rules_text``). Invalid requests and config reloads (rare) use
prometheus-client metrics directly. Families are prefixed ``limiter_``; rule counters
carry ``domain`` and ``rule`` labels (plus ``detailed="true"`` for the per-value series
of ``detailed_metric`` rules).
"""

from __future__ import annotations

import contextlib
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
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
        # The parser names a counter's family without ``_total``; its samples keep it, and
        # the TYPE line must name them.
        typed = name + "_total" if kind == "counter" else name
        lines.append(f"# HELP {typed} {doc}")
        lines.append(f"# TYPE {typed} {kind}")
        combine = gauges.get(name, max) if kind == "gauge" else sum
        for (sample, labels), found in values[name].items():
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            head = f"{sample}{{{text}}}" if text else sample
            lines.append(f"{head} {float(combine(found))!r}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(
    lines: list[str],
    name: str,
    kind: str,
    doc: str,
    samples: Iterable[tuple[str, float]],
) -> None:
    """Append one family to ``lines``: HELP and TYPE, then a line per ``(labels, value)``
    sample, ``labels`` already written (``{domain="d"}``, or ""). ``name`` is the samples'
    name, a counter's ``_total`` included: the text format types only the samples its TYPE
    line names.

    Families with a series per rule and per ``detailed_metric`` value are written as text
    directly: a Metric object and its Samples per series would make a scrape of many
    series cost many times as much, in the thread that shares the GIL with the decision
    loop."""
    lines.append(f"# HELP {name} {doc}")
    lines.append(f"# TYPE {name} {kind}")
    lines += [
        f"{name}{labels} {value if type(value) is int else floatToGoString(value)}"
        for labels, value in samples
    ]


def _labels(**pairs: str) -> str:
    """``{k="v",...}``, values escaped; ``labels[:-1] + ',more="x"}'`` adds a pair."""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _rules_text(book: Rulebook, ops: Operations | None) -> str:
    """The per-rule families of ``book``, the policy's level and, with ``ops``, its
    breakers, per-service levels and live switches, as exposition text."""
    lines: list[str] = []
    states = book.all_states()
    # Each rule's labels, written once for every family below.
    rules = [(state, _labels(domain=state.domain, rule=state.label)) for state in states]
    # The counters' series: each rule, then each of its detailed_metric values.
    series: list[str] = []
    counters: list[Any] = []
    for state, labels in rules:
        series.append(labels[:-1] + ',detailed="false"}')
        counters.append(state.stats)
        if state.detailed:
            for d, stats in list(state.detailed.items()):
                series.append(_labels(domain=state.domain, rule=d, detailed="true"))
                counters.append(stats)
    for name in RULE_COUNTERS:
        _family(
            lines, f"limiter_rule_{name}_total", "counter", f"Hits: {name} (per rule).",
            zip(series, map(attrgetter(name), counters), strict=True),
        )  # fmt: skip
    _family(
        lines, "limiter_backend_errors_total", "counter",
        "Backend failures answered per the rule's failure_mode.",
        [(labels, state.stats.backend_errors) for state, labels in rules],
    )  # fmt: skip
    if ops is not None:
        _family(
            lines, "limiter_fallback_active", "gauge",
            "1 while a rule's checks are answered by its failure_mode (between the "
            "fallback_started and fallback_stopped events).",
            [(labels, int(ops.fallback.is_active(state.ops_name))) for state, labels in rules],
        )  # fmt: skip
    limits = []
    for state, labels in rules:
        if not state.unlimited:
            lim = state.rule.limit
            in_flight = lim.algorithm == "concurrency" or (
                lim.algorithm == "adaptive" and lim.mode == "concurrency"
            )
            unit = _escape("in_flight" if in_flight else lim.unit)
            limits.append((f'{labels[:-1]},unit="{unit}"}}', state.limit))
    _family(
        lines, "limiter_rule_limit", "gauge",
        "Configured limit of each limited rule: requests per unit, or calls in flight.", limits,
    )  # fmt: skip
    adaptive = [
        (state, labels)
        for state, labels in rules
        if getattr(state.kernel, "current_limit", None) is not None
    ]
    _family(
        lines, "limiter_adaptive_limit", "gauge",
        "Current limit of adaptive rules (per second, or calls in flight); on Redis, "
        "the limit every replica shares.",
        [(labels, float(state.kernel.current_limit)) for state, labels in adaptive],
    )  # fmt: skip
    seen = [
        (labels, float(percentile))
        for state, labels in adaptive
        if (percentile := getattr(state.kernel, "current_percentile", None)) is not None
        and math.isfinite(percentile)
    ]
    _family(
        lines, "limiter_adaptive_latency_seconds", "gauge",
        "Latency percentile an adaptive rule's limit follows (absent before samples).", seen,
    )  # fmt: skip
    _family(
        lines, "limiter_adaptive_target_latency_seconds", "gauge",
        "Latency an adaptive rule aims its percentile at.",
        [(labels, float(state.rule.limit.target_latency)) for state, labels in adaptive],
    )  # fmt: skip
    _family(
        lines, "limiter_unknown_domain_total", "counter",
        "RLS requests for a domain the config does not define (answered OK).",
        [("", book.unknown_domain)],
    )  # fmt: skip
    _family(
        lines, "limiter_permits_held", "gauge", "Concurrency permits held for native clients.",
        [("", len(book.permits))],
    )  # fmt: skip
    _family(
        lines, "limiter_permits_expired_total", "counter",
        "Permits released because Release never came.", [("", book.permits_expired)],
    )  # fmt: skip
    _family(
        lines, "limiter_permits_refused_total", "counter",
        "Permit checks refused because their caller or rule held its bound of permits.",
        [("", book.permits_refused)],
    )  # fmt: skip
    _family(
        lines, "limiter_level", "gauge", "Current degradation level.",
        [("", 0 if ops is None else ops.level())],
    )  # fmt: skip
    if ops is not None:
        _ops_families(lines, ops)
    return "\n".join(lines) + "\n"


def _ops_families(lines: list[str], ops: Operations) -> None:
    """Breakers, per-service degradation levels and live switches of the policy."""
    breakers: dict[str, tuple[State, int]] = {}
    for breaker in ops.breakers.all():
        breakers[breaker.name] = (breaker.state, breaker.rejected)
    for dependency in ops.breakers.configs:
        breakers.setdefault(dependency, (State.CLOSED, 0))
    named = [(_labels(breaker=name), found) for name, found in sorted(breakers.items())]
    _family(
        lines, "limiter_breaker_state", "gauge",
        "1 for the state each circuit breaker is in (closed, open, half_open); configured "
        "dependencies no call has used yet are closed.",
        [
            (f'{labels[:-1]},state="{each.value}"}}', 1.0 if each is state else 0.0)
            for labels, (state, _) in named
            for each in State
        ],
    )  # fmt: skip
    _family(
        lines, "limiter_breaker_rejected_total", "counter", "Calls a breaker failed fast.",
        [(labels, float(rejected)) for labels, (_, rejected) in named],
    )  # fmt: skip
    levels = [(_labels(service=level["service"]), level) for level in ops.levels.snapshot()]
    _family(
        lines, "limiter_service_level", "gauge",
        "Degradation level of each service (0 = normal), forced or computed.",
        [(labels, float(level["level"])) for labels, level in levels],
    )  # fmt: skip
    _family(
        lines, "limiter_service_pressure", "gauge",
        "Pressure signal a service's computed level follows (0 to 1).",
        [(labels, float(level["pressure"])) for labels, level in levels],
    )  # fmt: skip
    switches = []
    for switch in ops.switches.list():
        setting = switch.action or ("" if switch.level is None else f"level {switch.level}")
        switches.append((_labels(id=switch.id, setting=setting), 1.0))
    _family(
        lines, "limiter_switch_active", "gauge",
        "1 for each live manual switch, by id and what it sets.", switches,
    )  # fmt: skip
