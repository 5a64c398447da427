"""The Grafana dashboard in deploy/grafana/ charts metrics a real ``limiter serve`` exports.

Every metric name its PromQL queries must be a sample on a running service's /metrics
(parsed with prometheus_client's own text parser), and every family the service exports
must be charted somewhere, so the dashboard and the service cannot drift apart silently.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from limiter.server import v1
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import ServiceProcess, request, wait_until
from tests.support import untyped_samples

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "limiter.json"
TOKEN = "dashboard-test-token-0123456789"
# Enough of everything that each family the service can export has a sample: an
# adaptive rule, a rule with a queue, a detailed_metric rule, a concurrency rule, an
# unlimited rule and a configured breaker (the admin token enables switches).
RULES = """\
domain: shop
descriptors:
  - key: user
    detailed_metric: true
    rate_limit: {name: per-user, unit: minute, requests_per_unit: 1}
  - key: api
    rate_limit:
      name: backend-api
      algorithm: adaptive
      unit: second
      requests_per_unit: 200
      target_latency: 0.05
      percentile: 0.99
  - key: job
    rate_limit:
      name: jobs
      algorithm: token_bucket
      unit: second
      requests_per_unit: 1
      burst: 1
      queue: {max_queue: 10, max_wait: 5}
  - key: tenant
    rate_limit: {name: inflight, algorithm: concurrency, requests_per_unit: 5}
  - key: pool
    rate_limit:
      {name: pool, algorithm: adaptive, mode: concurrency, unit: second, requests_per_unit: 8}
  - key: health
    rate_limit: {unlimited: true}
breakers:
  payments: {}
"""
# A metric name in PromQL: label names and functions never start with limiter_.
METRIC = re.compile(r"\blimiter_[a-zA-Z0-9_:]*")


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets and the template variables' queries."""
    found = []
    for panel in dashboard["panels"]:
        found += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["query"]["query"])
    return found


def queried_metrics(dashboard: dict) -> set[str]:
    return {name for expr in queries(dashboard) for name in METRIC.findall(expr)}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a real service after traffic that touches every family."""
    path = tmp_path_factory.mktemp("grafana") / "rules.yaml"
    path.write_text(RULES)
    service = ServiceProcess(path, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            rls = rls_pb2_grpc.RateLimitServiceStub(channel)
            native = v1.LimiterStub(channel)
            for _ in range(2):  # the second is over the limit
                rls.ShouldRateLimit(request("shop", {"user": "alice"}), timeout=10)
            checks = [
                v1.Check(domain="shop", rule="backend-api", key="k"),
                v1.Check(domain="shop", rule="inflight", key="t"),
                v1.Check(domain="shop", rule="jobs", key="j", max_wait=3),
            ]
            native.Decide(v1.DecideRequest(checks=checks), timeout=10)
            # The bucket is empty: this check is held in the queue until the next token.
            native.Decide(v1.DecideRequest(checks=checks[2:]), timeout=10)
            # The adaptive rule reports its percentile from its first evaluation on.
            slow = v1.Observation(domain="shop", rule="backend-api", key="k", latency=0.2)
            observed = "limiter_adaptive_latency_seconds{"

            def evaluated() -> bool:
                native.Observe(v1.ObserveRequest(observations=[slow] * 20), timeout=10)
                return observed in service.http("GET", "/metrics")[1].decode()

            assert wait_until(evaluated, timeout=20, interval=0.1), "no adaptive evaluation"
        assert service.http("POST", "/json", b"not json")[0] == 400
        switch = json.dumps({"action": "force_open", "who": "test", "why": "dashboard"})
        req = urllib.request.Request(
            f"http://127.0.0.1:{service.http_port}/v1/switches/breaker:payments",
            data=switch.encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.status == 200
        status, body = service.http("GET", "/metrics")
        assert status == 200
    finally:
        assert service.stop() == 0
    return body.decode()


@pytest.fixture(scope="module")
def scraped(exposition: str) -> list[Metric]:
    """The families of ``exposition``; a counter's _created samples (its creation time) are
    no series to chart."""
    return [
        f
        for f in text_string_to_metric_families(exposition)
        if f.samples and not f.name.endswith("_created")
    ]


def test_every_sample_is_typed(exposition):
    """Prometheus reads a sample no TYPE line names as untyped: a counter's TYPE must name
    its ``_total`` samples (checked without prometheus_client, whose parser accepts both)."""
    assert "# TYPE limiter_rule_total_hits_total counter" in exposition.splitlines()
    assert untyped_samples(exposition) == []


@pytest.fixture(scope="module")
def exported(scraped: list[Metric]) -> dict[str, set[str]]:
    """``{family: {sample names}}``."""
    return {f.name: {s.name for s in f.samples} for f in scraped}


def test_every_queried_metric_is_exported(dashboard, exported):
    samples = set().union(*exported.values())
    queried = queried_metrics(dashboard)
    assert len(queried) >= 20
    missing = sorted(queried - samples)
    assert not missing, f"queried but not on /metrics: {missing}"


def test_every_exported_family_is_charted(dashboard, exported):
    queried = queried_metrics(dashboard)
    uncharted = sorted(name for name, samples in exported.items() if not samples & queried)
    assert not uncharted, f"add panels for these families to {DASHBOARD.name}: {uncharted}"


def test_metric_names_are_found_in_promql():
    """The extraction the tests above rely on sees names in every position PromQL allows."""
    dashboard = {
        "panels": [
            {"targets": [{"expr": 'sum by (le) (rate(limiter_a_bucket{x="y"}[5m]))'}]},
            {"targets": [{"expr": "limiter_b / on(rule) limiter_c_total"}]},
        ],
        "templating": {
            "list": [{"type": "query", "query": {"query": "label_values(limiter_d, x)"}}]
        },
    }
    assert queried_metrics(dashboard) == {
        "limiter_a_bucket",
        "limiter_b",
        "limiter_c_total",
        "limiter_d",
    }


def test_dashboard_is_well_formed(dashboard):
    """Unique panel ids, every panel on the 24-column grid, every query on the data source
    variable, no overlapping panels."""
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "domain", "rule"]


def test_limit_adaptive_and_ops_families_report_the_service_state(scraped):
    """The families the dashboard added carry the configured and live values."""
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in scraped for s in f.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return values.get((name, tuple(sorted(labels.items()))))

    shop = {"domain": "shop"}
    assert value("limiter_rule_limit", **shop, rule="per-user", unit="minute") == 1
    assert value("limiter_rule_limit", **shop, rule="inflight", unit="in_flight") == 5
    assert value("limiter_rule_limit", **shop, rule="pool", unit="in_flight") == 8
    assert not [k for k in values if k[0] == "limiter_rule_limit" and ("rule", "health") in k[1]]
    assert value("limiter_adaptive_target_latency_seconds", **shop, rule="backend-api") == 0.05
    assert value("limiter_adaptive_latency_seconds", **shop, rule="backend-api") == 0.2
    states = {state: value("limiter_breaker_state", breaker="payments", state=state)
              for state in ("closed", "open", "half_open")}  # fmt: skip
    assert states == {"closed": 1, "open": 0, "half_open": 0}  # forced open, but never called
    assert value("limiter_switch_active", id="breaker:payments", setting="force_open") == 1
    assert value("limiter_service_level", service="default") == 0


def test_the_manual_lists_every_family_and_nothing_else(scraped):
    """docs/metrics.md names each family as /metrics writes it (counters with _total)."""
    manual = (ROOT / "docs" / "metrics.md").read_text()
    exported = {f"{f.name}_total" if f.type == "counter" else f.name for f in scraped}
    listed = set(re.findall(r"^\| `(limiter_[a-z_]+)` \|", manual, re.MULTILINE))
    assert not exported - listed, f"add to docs/metrics.md: {sorted(exported - listed)}"
    assert not listed - exported, f"not on /metrics: {sorted(listed - exported)}"
