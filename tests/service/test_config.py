"""Rule config: envoyproxy/ratelimit format, our extensions, matching and error messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from limiter import ConfigError, schema
from limiter import config as rules
from limiter.ops import SECTIONS
from limiter.priority import Priority

ENVOY_EXAMPLE = """
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: database
    value: default
    rate_limit:
      unit: Second
      requests_per_unit: 500
    shadow_mode: true
  - key: remote_address
    rate_limit:
      unit: MINUTE
      requests_per_unit: 10
    descriptors:
      - key: path
        value: /foo
        rate_limit: {unit: hour, requests_per_unit: 2, name: foo}
        detailed_metric: true
  - key: client
    value: "bot*"
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: client
    value: "botnet*"
    rate_limit: {unit: day, requests_per_unit: 7}
  - key: client
    rate_limit: {unlimited: true, name: clients}
  - key: tier
    value: gold
    rate_limit:
      name: gold
      unit: year
      requests_per_unit: 9
      replaces:
        - name: clients
"""


def match(config: rules.Config, domain: str, *pairs: tuple[str, str]) -> rules.Rule | None:
    return config.domains[domain].match(pairs)


def test_envoy_format_loads_unchanged() -> None:
    config = rules.parse(ENVOY_EXAMPLE, "envoy.yaml")
    users = match(config, "mongo_cps", ("database", "users"))
    assert users is not None and users.limit.requests_per_unit == 500
    assert users.limit.unit == "second" and users.limit.algorithm == "fixed_window"
    default = match(config, "mongo_cps", ("database", "default"))
    assert default is not None and default.shadow_mode
    assert match(config, "mongo_cps", ("database", "other")) is None
    foo = match(config, "mongo_cps", ("remote_address", "1.2.3.4"), ("path", "/foo"))
    assert foo is not None and foo.limit.name == "foo" and foo.detailed_metric
    gold = match(config, "mongo_cps", ("tier", "gold"))
    assert gold is not None and gold.limit.replaces == ("clients",)
    assert match(config, "mongo_cps", ("client", "x")).limit.unlimited  # type: ignore[union-attr]


def test_value_beats_wildcard_beats_key_only_and_longest_prefix_wins() -> None:
    config = rules.parse(ENVOY_EXAMPLE)
    assert match(config, "mongo_cps", ("client", "bot-1")).limit.requests_per_unit == 1  # type: ignore[union-attr]
    assert match(config, "mongo_cps", ("client", "botnet-9")).limit.requests_per_unit == 7  # type: ignore[union-attr]
    assert match(config, "mongo_cps", ("client", "human")).limit.unlimited  # type: ignore[union-attr]


def test_only_the_node_at_the_request_depth_supplies_the_limit() -> None:
    config = rules.parse(ENVOY_EXAMPLE)
    top = match(config, "mongo_cps", ("remote_address", "1.2.3.4"))
    assert top is not None and top.limit.requests_per_unit == 10
    # Deeper than the tree, or a second entry with no child: no limit at all.
    assert match(config, "mongo_cps", ("remote_address", "1.2.3.4"), ("path", "/bar")) is None
    assert match(config, "mongo_cps", ("database", "users"), ("x", "y")) is None


def test_extensions_parse_and_build_kernels() -> None:
    config = rules.parse(
        """
domain: ext
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20,
                 priority: SHEDDABLE, failure_mode: deny}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: sliding_window}
  - key: c
    rate_limit: {requests_per_unit: 3, algorithm: concurrency}
  - key: d
    rate_limit: {unit: second, requests_per_unit: 2, algorithm: leaky_bucket}
  - key: e
    rate_limit: {unit: minute, requests_per_unit: 60, algorithm: adaptive, target_latency: 0.2,
                 percentile: 0.9, mode: concurrency}
"""
    )
    limits = {r.path[0][0]: r.limit for r in config.rules}
    assert limits["a"].burst == 20 and limits["a"].priority is Priority.SHEDDABLE
    assert limits["a"].failure_mode == "deny" and limits["a"].max_cost == 20
    assert limits["b"].failure_mode == "local" and limits["b"].priority is Priority.CRITICAL
    kernels = {k: rules.build_kernel(v) for k, v in limits.items()}
    assert type(kernels["a"]).__name__ == "TokenBucket" and kernels["a"].burst == 20
    assert type(kernels["b"]).__name__ == "SlidingWindow"
    assert type(kernels["c"]).__name__ == "ConcurrencyLimit"
    assert type(kernels["d"]).__name__ == "LeakyBucket" and limits["d"].max_cost == 1
    assert type(kernels["e"]).__name__ == "AdaptiveLimiter" and kernels["e"].mode == "concurrency"
    assert kernels["e"].current_limit == 60 and limits["e"].target_latency == 0.2


A = "domain: d\ndescriptors:\n  - key: a\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (A + "    rate_limit: {unit: fortnight, requests_per_unit: 1}",
         "descriptors[0] (key=a): rate_limit.unit: 'fortnight' is not one of"),
        (A + "    rate_limit: {unit: second, requests_per_unit: -1}",
         "rate_limit.requests_per_unit: must be an integer"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 1, algorithm: magic}",
         "rate_limit.algorithm: 'magic' is not one of"),
        (A + "    descriptors:\n      - key: b\n        value: x\n        rate_limit: {unit: hour}",
         "descriptors[0] (key=a).descriptors[0] (key=b, value=x): rate_limit.requests_per_unit"),
        ("domain: d\ndescriptors:\n  - {key: a, value: x}\n  - {key: a, value: x}",
         "descriptors[1] (key=a, value=x): duplicate descriptor a=x"),
        ("domain: d\ndescriptors:\n  - value: x", "descriptors[0]: key: required"),
        (A + "    rate_limit: {unlimited: true, unit: second}",
         "rate_limit.unit: not allowed together with 'unlimited: true'"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 1, burst: 3}",
         "rate_limit.burst: only token_bucket and leaky_bucket"),
        (A + "    shadow_mode: yes please", "(key=a): shadow_mode: must be true or false"),
        (A + "    limit: 3", "unknown field 'limit'"),
        (
            "domain: d\nalert: {}\n",
            "rules.yaml: unknown field 'alert' (known: access_log, alerts, breakers",
        ),
        ("domain: ''\n", "domain: must be a non-empty string"),
        ("domain: d\ndescriptors: {a: 1}\n", "descriptors: must be a list"),
        ("domain: d\n---\ndomain: d\n", "domain 'd' is already defined"),
        ("domain: [unclosed\n", "invalid YAML"),
        ("- 1\n- 2\n", "a document must be a mapping"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 1, replaces: [other]}",
         "replaces[0]: must be a mapping"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 1, mode: rate}",
         "rate_limit.mode: only algorithm 'adaptive' takes it"),
        (A + "    rate_limit: {algorithm: adaptive, unit: second, requests_per_unit: 5, "
         "percentile: 1.5}", "rate_limit.percentile: must be a number in (0, 1)"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 10, reserved: {fraction: 1}}",
         "rate_limit.reserved.fraction: must be a number in (0, 1)"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 10, reserved: {}}",
         "rate_limit.reserved.fraction: required"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 4, reserved: {fraction: 0.1}}",
         "rate_limit.reserved.fraction: 0.1 of 4 reserves 0 units"),
        (A + "    rate_limit: {requests_per_unit: 4, algorithm: concurrency, "
         "reserved: {fraction: 0.5}}", "rate_limit.reserved: only token_bucket, leaky_bucket"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 9, reserved: {fraction: 0.5, "
         "priority: vip}}", "rate_limit.reserved.priority: "),
        (A + "    rate_limit: {unlimited: true, reserved: {fraction: 0.5}}",
         "rate_limit.reserved: not allowed together with 'unlimited: true'"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 9, reserved: {fraction: 0.5, "
         "tenants: [" + ", ".join(f"t{i}" for i in range(1001)) + "]}}",
         "rate_limit.reserved.tenants: 1001 tenants, at most 1000 allowed"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 9, reserved: {fraction: 0.5, "
         "tenants: [a, b, c, " + "x" * 257 + "]}}",
         "rate_limit.reserved.tenants[3]: 257 characters, at most 256"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 9, reserved: {fraction: 0.5, "
         "tenants: [a, '']}}", "rate_limit.reserved.tenants[1]: must be a non-empty string"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 9, reserved: {fraction: 0.5, "
         "tenants: acme}}", "rate_limit.reserved.tenants: must be a list"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 5, outcomes: {route: r}}",
         "rate_limit.outcomes: only algorithm 'adaptive' takes it"),
        (A + "    rate_limit: {algorithm: adaptive, unit: second, requests_per_unit: 5, "
         "outcomes: {}}", "rate_limit.outcomes: give route, cluster or both"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 5, breaker: db/1}",
         "rate_limit.breaker.dependency: must not contain '/'"),
        (A + "    rate_limit: {unit: second, requests_per_unit: 5, "
         "breaker: {dependency: db, partition: tenant}}",
         "(key=a): rate_limit.breaker.partition: 'tenant' is not one of the rule's descriptor "
         "keys (a)"),
        ("access_log: {latency: p99}\n", "access_log.latency: 'p99' is not one of upstream"),
        ("access_log: {client_header: X-Api-Key}\n",
         "access_log.client_header: must be a lower-case header name"),
        ("access_log: {max_entries: 0}\n", "access_log.max_entries: must be an integer in"),
    ],
)  # fmt: skip
def test_errors_name_file_path_and_field(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        rules.parse(text, "rules.yaml")
    message = str(info.value)
    assert message.startswith("rules.yaml"), message
    assert needle in message, message


def test_ops_sections_and_directories(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.yaml").write_text("domain: a\ndegradation: {restore_after: 3}\n")
    (tmp_path / "b.yml").write_text("domain: b\n")
    (tmp_path / "ignored.txt").write_text("not yaml: [")
    config = rules.load(tmp_path)
    assert sorted(config.domains) == ["a", "b"]
    assert config.sections["degradation"].restore_after == 3


def test_a_breaker_named_alone_is_the_dependency_without_partition() -> None:
    config = rules.parse(
        A + "    rate_limit: {unit: second, requests_per_unit: 5, breaker: db}\n"
        "  - key: b\n"
        "    rate_limit: {unit: second, requests_per_unit: 5, "
        "breaker: {dependency: db, partition: b}}\n"
    )
    first, second = (r.limit.breaker for r in config.rules)
    assert (first.dependency, first.partition) == ("db", None)
    assert (second.dependency, second.partition) == ("db", "b")


def test_missing_file_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="cannot read"):
        rules.load(tmp_path / "nope.yaml")


def test_check_config_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.yaml"
    good.write_text(ENVOY_EXAMPLE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: s, requests_per_unit: 1}"
    )
    run = [sys.executable, "-m", "limiter.server.cli", "check-config"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "OK (1 domains, 8 rules)" in ok.stdout
    fail = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=30)
    assert fail.returncode == 1
    assert f"{bad}: domain 'd': descriptors[0] (key=a): rate_limit.unit: 's'" in fail.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    warned = subprocess.run([*run, str(empty)], capture_output=True, text=True, timeout=30)
    assert warned.returncode == 0 and "OK (0 domains, 0 rules)" in warned.stdout
    assert f"warning: {empty}: empty config" in warned.stderr
    assert "warning" not in ok.stderr


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is what `make docs` generates from the schema now."""
    from limiter.server import reference

    page = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert page.read_text(encoding="utf-8") == reference.render(), "stale: run `make docs`"


def test_the_reference_covers_every_section_and_key() -> None:
    from limiter.server import reference
    from limiter.server.settings import Settings

    paths = dict(reference.sections())
    assert {p.split(".")[0] for p in paths} >= {*SECTIONS, "descriptors[]"}
    assert {"descriptors[].rate_limit", "descriptors[].rate_limit.queue"} <= set(paths)
    for path, cls in [*paths.items(), ("serve", Settings)]:
        for f, _, meta in schema.declared(cls):
            assert meta.hidden or meta.doc, f"{path}.{f.name} has no doc"
            assert not (meta.hidden and cls is not Settings), f"{path}.{f.name} is hidden"
