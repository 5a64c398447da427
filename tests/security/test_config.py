"""Config files cannot hurt the service: bombs, duplicate keys, huge files, broken links.

Attacks (by whoever can write a config file, or tricks an operator into loading one):
a billion-laughs document of a few hundred bytes, whose error message once held a 351 MB
repr; a value given twice (the last silently won); a file or rule count so large that
loading it takes minutes; a rule file in a config directory that is a broken link.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from limiter.config import MAX_ALIAS_NODES, MAX_CONFIG_BYTES, MAX_RULES
from tests.service.conftest import ROOT, request, rls_stub, wait_until

GOOD = """domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 10}
"""
# A domain that must be a string, given as nine lists of nine lists ... of "lol": a
# message quoting the whole value would be hundreds of megabytes.
LAUGHS = (
    "domain:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"  - &{b} [{', '.join([f'*{a}'] * 9)}]\n"
        for a, b in zip("abcdefg", "bcdefgh", strict=True)
    )
    + f"  - [{', '.join(['*h'] * 9)}]\n"
)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    run = [sys.executable, "-m", "limiter.server.cli", "check-config", str(path)]
    return subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_billion_laughs_is_refused_at_once_with_a_short_error(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS) < 600  # a billion "lol"s
    start = time.monotonic()
    out = check_config(path)
    assert out.returncode == 1
    assert f"aliases expand the document by more than {MAX_ALIAS_NODES} nodes" in out.stderr
    assert len(out.stderr) < 500
    assert time.monotonic() - start < 20
    # An alias inside what it names (a document containing itself) is refused as well.
    path.write_text("domain: &a [*a]\n")
    out = check_config(path)
    assert out.returncode == 1 and "an alias refers to a node that contains it" in out.stderr


def test_a_bomb_as_hot_reload_keeps_the_last_config_and_the_service_answering(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(GOOD)
    service.config.write_text(LAUGHS)
    service.signal(signal.SIGHUP)
    assert wait_until(lambda: service.metric("limiter_config_last_reload_successful") == 0, 20)
    with grpc.insecure_channel(service.target) as channel:
        answer = rls_stub(channel).ShouldRateLimit(request("d", {"user": "u"}), timeout=5)
    assert answer.overall_code == answer.OK and answer.statuses[0].current_limit.requests_per_unit
    lines = [json.loads(line) for line in service.logs().splitlines()]
    failed = [line for line in lines if line["msg"].startswith("config reload failed")]
    assert failed and "aliases expand" in failed[0]["error"] and len(failed[0]["error"]) < 500


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    twice = "requests_per_unit: 10, requests_per_unit: 100000}"
    for text, line in (
        (GOOD.replace("requests_per_unit: 10}", twice), 4),
        ("domain: d\ndomain: e\n", 2),
        ("domain: d\ndescriptors:\n  - key: a\n    key: b\n", 4),
    ):  # fmt: skip
        path.write_text(text)
        out = check_config(path)
        assert out.returncode == 1, out.stdout
        assert f"line {line} " in out.stderr and "found duplicate key" in out.stderr, out.stderr


def test_size_and_rule_count_are_capped_with_clear_errors(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(GOOD + "#" * MAX_CONFIG_BYTES)
    out = check_config(big)
    assert out.returncode == 1 and f"more than {MAX_CONFIG_BYTES} bytes" in out.stderr
    many = tmp_path / "many.yaml"
    rule = "{key: k, value: '%d', rate_limit: {unit: second, requests_per_unit: 1}}"
    many.write_text(
        "domain: d\ndescriptors: [" + ", ".join(rule % i for i in range(MAX_RULES + 1)) + "]\n"
    )
    out = check_config(many)
    assert out.returncode == 1 and f"more than {MAX_RULES} rules" in out.stderr
    # An error quotes a bounded part of a huge value.
    huge = tmp_path / "huge.yaml"
    huge.write_text(GOOD.replace("unit: second", "unit: " + "x" * 1_000_000))
    out = check_config(huge)
    assert out.returncode == 1 and "rate_limit.unit" in out.stderr and len(out.stderr) < 500


def test_broken_links_in_a_config_directory_are_reported(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "a.yaml").write_text(GOOD)
    (rules / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (rules / "loop.yaml").symlink_to(rules / "loop.yaml")
    out = check_config(rules)
    assert out.returncode == 0
    for name in ("gone.yaml", "loop.yaml"):
        assert f"{rules / name} is a symbolic link to nothing" in out.stderr
    service = serve(GOOD)
    service.stop()
    service.config = rules
    service.start()
    logged = service.logs()
    assert "gone.yaml is a symbolic link to nothing" in logged
    assert "loop.yaml is a symbolic link to nothing" in logged
