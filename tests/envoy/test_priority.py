"""A request's tier from a header, through the real Envoy: Envoy's ``request_headers``
action puts it in a ``limiter.priority`` descriptor entry, and a rule's reserve keeps
what sheddable requests may not take, except a VIP tenant's (``limiter.tenant``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.envoy.harness import EXAMPLES, Envoy, LimiterProcess, envoy_config

RULES = """
domain: envoy-example
descriptors:
  - key: api_key
    rate_limit:
      name: per-api-key
      unit: hour
      requests_per_unit: 10
      reserved: {fraction: 0.3, priority: critical, tenants: [acme]}
"""
PRIORITY_ACTION = {
    "request_headers": {
        "header_name": "x-priority",
        "descriptor_key": "limiter.priority",
        "skip_if_absent": True,
    }
}
TENANT_ACTION = {
    "request_headers": {
        "header_name": "x-tenant",
        "descriptor_key": "limiter.tenant",
        "skip_if_absent": True,
    }
}


def with_priority_header(config: dict[str, Any]) -> dict[str, Any]:
    """The example's routes with the priority and tenant actions added to every
    rate-limit entry."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                routes = f["typed_config"].get("route_config", {})
                for host in routes.get("virtual_hosts", []):
                    for route in host["routes"]:
                        for entry in route.get("route", {}).get("rate_limits", []):
                            for action in (PRIORITY_ACTION, TENANT_ACTION):
                                if action not in entry["actions"]:
                                    entry["actions"].append(action)
    return config


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[Envoy]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service = LimiterProcess(rules, workdir=tmp_path / "svc").start()
    try:
        config = envoy_config(EXAMPLES / "rls.yaml", clusters={"limiter": service.grpc_port})
        with Envoy(with_priority_header(config), workdir=tmp_path / "envoy") as proxy:
            yield proxy
    finally:
        service.stop()


def statuses(
    envoy: Envoy, key: str, n: int, priority: str | None = None, tenant: str | None = None
) -> list[int]:
    headers = {"x-api-key": key}
    if priority is not None:
        headers["x-priority"] = priority
    if tenant is not None:
        headers["x-tenant"] = tenant
    return [envoy.request("/", headers).status for _ in range(n)]


def test_sheddable_requests_leave_the_reserve_to_critical_ones(envoy: Envoy) -> None:
    key = f"k{time.time_ns()}"
    assert statuses(envoy, key, 9, "sheddable") == [200] * 7 + [429] * 2
    assert statuses(envoy, key, 4, "critical") == [200] * 3 + [429]
    # Without the header the descriptor still goes, at the rule's tier (critical).
    other = f"o{time.time_ns()}"
    assert statuses(envoy, other, 11) == [200] * 10 + [429]


def test_a_vip_tenants_sheddable_requests_may_use_the_reserve(envoy: Envoy) -> None:
    key = f"v{time.time_ns()}"
    assert statuses(envoy, key, 8, "sheddable", "globex") == [200] * 7 + [429]
    assert statuses(envoy, key, 1, "sheddable") == [429]
    assert statuses(envoy, key, 4, "sheddable", "acme") == [200] * 3 + [429]
