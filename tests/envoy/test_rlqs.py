"""The quota service (RLQS) behind the real Envoy 1.40: Envoy enforces limiter's limits itself.

``limiter serve`` answers Envoy's quota filter (``examples/envoy/rlqs.yaml``, ports changed
only): token buckets from the rules file, deny-all and allow-all from switches, buckets
abandoned when a reload changes their rule, the assignment outliving the service until its
time to live, and two Envoys sharing one global limit.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.envoy.harness import EXAMPLES, Envoy, LimiterProcess, envoy_config, uneven_load

TOKEN = "rlqs-test-token-0123456789"
RULE = "rule:envoy-example/per-api-key"
_keys = itertools.count()


def rules(requests_per_unit: int, unit: str = "hour", more: str = "") -> str:
    """The example's per-api-key rule; ``more``: further keys of its rate_limit."""
    return (
        "domain: envoy-example\ndescriptors:\n  - key: api_key\n    rate_limit: "
        f"{{name: per-api-key, unit: {unit}, requests_per_unit: {requests_per_unit}{more}}}\n"
    )


def key() -> dict[str, str]:
    return {"x-api-key": f"k{time.time_ns()}-{next(_keys)}"}


def statuses(envoy: Envoy, headers: dict[str, str], n: int) -> list[int]:
    return [envoy.request("/", headers).status for _ in range(n)]


def until(envoy: Envoy, headers: dict[str, str], status: int, timeout: float = 5.0) -> float:
    """Seconds until a request for ``headers`` gets ``status`` (fails after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if envoy.request("/", headers).status == status:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"no {status} within {timeout}s")


def switch(service: LimiterProcess, method: str, body: dict[str, object] | None = None) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{service.http_port}/v1/switches/{RULE}",
        data=None if body is None else json.dumps({"who": "t", "why": "x", **body}).encode(),
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LimiterProcess, Envoy, Path]]:
    config = tmp_path / "rules.yaml"
    config.write_text(rules(5))
    service = LimiterProcess(
        config, "--quota-ttl", "3", env={"LIMITER_ADMIN_TOKEN": TOKEN}, workdir=tmp_path / "svc"
    ).start()
    proxy = Envoy(
        envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": service.grpc_port}),
        workdir=tmp_path / "envoy",
    )
    try:
        with proxy:
            yield service, proxy, config
    finally:
        service.stop()


def test_a_rules_limit_becomes_a_token_bucket_envoy_enforces(served) -> None:  # type: ignore[no-untyped-def]
    _, envoy, _ = served
    alice = key()
    # The first request of a bucket is decided by no_assignment_behavior (ALLOW_ALL); its
    # report gets the bucket's assignment at once: 5 per hour.
    assert envoy.request("/", alice).status == 200
    time.sleep(0.3)
    assert statuses(envoy, alice, 8) == [200] * 5 + [429] * 3
    other = key()  # each API key is a bucket of its own, with its own limit
    assert envoy.request("/", other).status == 200


def test_switches_deny_and_allow_every_envoy_and_lifting_them_restores_the_limit(served) -> None:  # type: ignore[no-untyped-def]
    service, envoy, _ = served
    alice = key()
    assert envoy.request("/", alice).status == 200
    time.sleep(0.3)
    switch(service, "PUT", {"action": "force_deny"})
    assert until(envoy, alice, 429) < 3  # within the service's refresh period
    switch(service, "PUT", {"action": "force_allow"})
    until(envoy, alice, 200)
    assert statuses(envoy, alice, 10) == [200] * 10  # beyond the 5 per hour
    switch(service, "DELETE")
    until(envoy, alice, 429)  # the token bucket again: the 5 were spent long ago


def test_a_reload_that_changes_the_rule_abandons_its_buckets(served) -> None:  # type: ignore[no-untyped-def]
    _, envoy, config = served
    alice = key()
    envoy.request("/", alice)
    time.sleep(0.3)
    assert statuses(envoy, alice, 6)[-1] == 429
    config.write_text(rules(100))
    # Abandoned, the bucket starts over at its next request, under the new limit.
    until(envoy, alice, 200, timeout=10)
    assert statuses(envoy, alice, 20) == [200] * 20


def test_an_assignment_outlives_the_service_until_its_time_to_live(served) -> None:  # type: ignore[no-untyped-def]
    service, envoy, _ = served
    alice = key()
    # The time to live runs from the assignment, which comes after the bucket's first
    # request: on a slow host, stopping the service may take most of it.
    opened = time.monotonic()
    envoy.request("/", alice)
    time.sleep(0.3)
    assert statuses(envoy, alice, 6)[-1] == 429
    service.stop()
    assert envoy.request("/", alice).status == 429  # still enforced by Envoy itself
    # After --quota-ttl (3 s): expired_assignment_behavior (ALLOW_ALL in the example).
    until(envoy, alice, 200, timeout=10)
    assert time.monotonic() - opened >= 2.9


def test_two_envoys_share_one_global_limit_fairly(tmp_path: Path) -> None:
    """20 per second for one bucket, asked 3:1 by two Envoys (30/s and 10/s): together they
    admit about 20/s, and the lighter one, asking less than its fair share, gets its demand."""
    config = tmp_path / "rules.yaml"
    config.write_text(rules(20, "second"))
    service = LimiterProcess(config, workdir=tmp_path / "svc").start()
    envoys = [
        Envoy(
            envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": service.grpc_port}),
            workdir=tmp_path / f"envoy{i}",
        )
        for i in range(2)
    ]
    try:
        for proxy in envoys:
            proxy.start()
        admitted, demand, seconds = uneven_load(envoys, key(), (30, 10))
    finally:
        for proxy in envoys:
            proxy.stop()
        service.stop()
    total = sum(admitted) / seconds
    assert 18 <= total <= 22, (admitted, demand, seconds)
    # The light Envoy asked ~10/s, under its fair share (10 of 20): it got what it asked.
    assert admitted[1] >= 0.9 * demand[1], (admitted, demand)


def test_a_sheddable_rules_buckets_get_only_the_unreserved_part(tmp_path: Path) -> None:
    config = tmp_path / "rules.yaml"
    config.write_text(rules(10, more=", priority: sheddable, reserved: {fraction: 0.3}"))
    service = LimiterProcess(config, workdir=tmp_path / "svc").start()
    try:
        with Envoy(
            envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": service.grpc_port}),
            workdir=tmp_path / "envoy",
        ) as envoy:
            alice = key()
            assert envoy.request("/", alice).status == 200  # before any assignment
            time.sleep(0.3)
            assert statuses(envoy, alice, 9) == [200] * 7 + [429] * 2  # 10 less the 3 kept
    finally:
        service.stop()


def with_tenant_in_buckets(config: dict[str, Any]) -> dict[str, Any]:
    """The example with an x-tenant header's value as each bucket's ``limiter.tenant``."""
    found = 0
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for http in f["typed_config"].get("http_filters", []):
                    if http["name"] != "envoy.filters.http.rate_limit_quota":
                        continue
                    matchers = http["typed_config"]["bucket_matchers"]["matcher_list"]["matchers"]
                    for matcher in matchers:
                        action = matcher["on_match"]["action"]["typed_config"]
                        builder = action["bucket_id_builder"]["bucket_id_builder"]
                        value = builder["api_key"]["custom_value"]["typed_config"]
                        builder["limiter.tenant"] = {
                            "custom_value": {
                                "name": "tenant",
                                "typed_config": {**value, "header_name": "x-tenant"},
                            }
                        }
                        found += 1
    assert found, "no rate_limit_quota bucket matcher in the example"
    return config


def test_a_vip_tenants_bucket_gets_the_reserve_too(tmp_path: Path) -> None:
    """A bucket's ``limiter.tenant`` pair is no part of the match; a listed tenant's
    bucket of a sheddable rule is assigned the whole limit, another's the unreserved part."""
    config = tmp_path / "rules.yaml"
    reserve = "reserved: {fraction: 0.3, tenants: [acme]}"
    config.write_text(rules(10, more=f", priority: sheddable, {reserve}"))
    service = LimiterProcess(config, workdir=tmp_path / "svc").start()
    try:
        proxy = envoy_config(EXAMPLES / "rlqs.yaml", clusters={"limiter": service.grpc_port})
        with Envoy(with_tenant_in_buckets(proxy), workdir=tmp_path / "envoy") as envoy:
            vip = {**key(), "x-tenant": "acme"}
            other = {**key(), "x-tenant": "globex"}
            for headers in (vip, other):  # before any assignment
                assert envoy.request("/", headers).status == 200
            time.sleep(0.3)
            # Envoy's token bucket starts full at the assignment (as in the test above).
            assert statuses(envoy, vip, 12) == [200] * 10 + [429] * 2
            assert statuses(envoy, other, 9) == [200] * 7 + [429] * 2
    finally:
        service.stop()
