"""What a /metrics scrape costs the service: limiter's exposition vs prometheus_client's.

    python benchmarks/metrics_bench.py [--series 1000] [--repeat 20]   # writes results/metrics.md

A rulebook with one ``detailed_metric`` rule is fed ``--series`` distinct values through
the RLS codec (as ``limiter serve`` is), so the per-rule families hold ``--series`` + a
few series each. Then, best of ``--repeat``:

- ``Metrics.render()``: what the service's /metrics answers (per-rule families written
  as text);
- the same per-rule samples as prometheus_client ``CounterMetricFamily`` objects through
  ``generate_latest`` (the library's own exposition path, which the service used before).

Both are checked to expose the same per-rule samples. A scrape runs on the HTTP thread,
which shares the GIL with the decision loop: its CPU time is time decisions may wait.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

from envoy.service.ratelimit.v3 import rls_pb2
from limiter.server.decider import Decider
from limiter.server.metrics import RULE_COUNTERS, Metrics
from limiter.server.rls import HeaderOptions, RateLimitService
from limiter.server.rules import Rulebook
from machine import cpu_model, git_revision
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from limiter import config

RULES = """domain: web
descriptors:
  - key: ip
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
"""


class Generic(Collector):
    """The per-rule counter families as prometheus_client Metric objects."""

    def __init__(self, book: Rulebook) -> None:
        self.book = book

    def collect(self) -> Iterator[Metric]:
        labels = ["domain", "rule", "detailed"]
        families = {
            name: CounterMetricFamily(
                f"limiter_rule_{name}", f"Hits: {name} (per rule).", labels=labels
            )
            for name in RULE_COUNTERS
        }
        for state in self.book.all_states():
            series = [(state.label, "false", state.stats)]
            series += [(d, "true", s) for d, s in state.detailed.items()]
            for rule, detailed, stats in series:
                for name in RULE_COUNTERS:
                    families[name].add_metric([state.domain, rule, detailed], getattr(stats, name))
        yield from families.values()


def rule_samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        if family.name.startswith("limiter_rule_") and family.name != "limiter_rule_limit"
        for s in family.samples
    }


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "metrics.md"))
    args = parser.parse_args()
    book = Rulebook(config.parse(RULES))
    metrics = Metrics()
    metrics.watch(book, None)
    rls = RateLimitService(Decider(book), metrics, HeaderOptions())

    async def feed() -> None:
        for start in range(0, args.series, 100):
            request = rls_pb2.RateLimitRequest(domain="web")
            for i in range(start, min(start + 100, args.series)):
                request.descriptors.add().entries.add(
                    key="ip", value=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                )
            await rls.decide(request)

    asyncio.run(feed())
    generic = CollectorRegistry()
    generic.register(Generic(book))
    ours_text = metrics.render().decode()
    assert rule_samples(ours_text) == rule_samples(generate_latest(generic).decode())
    samples = len(rule_samples(ours_text))
    ours = best(metrics.render, args.repeat)
    theirs = best(lambda: generate_latest(generic), args.repeat)
    rows = [
        "| exposition | CPU per scrape | per-rule samples |",
        "|---|---|---|",
        f"| limiter `Metrics.render()` (whole /metrics) | {ours * 1e3:.1f} ms | {samples} |",
        f"| prometheus_client `generate_latest`, per-rule families only | {theirs * 1e3:.1f} ms "
        f"| {samples} |",
    ]
    print("\n".join(rows))
    load = os.getloadavg()
    text = [
        "# /metrics: what a scrape costs",
        "",
        f"`python benchmarks/metrics_bench.py --series {args.series}` at {git_revision()} on "
        f"{cpu_model()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        "",
        f"One `detailed_metric` rule fed {args.series} values through the RLS codec; CPU time "
        f"(process time), best of {args.repeat}. Both rows expose the same per-rule samples "
        "(checked); limiter's row also includes every other family of the service's /metrics.",
        "",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(text))


if __name__ == "__main__":
    main()
