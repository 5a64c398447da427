"""Switches that would do nothing are refused, and odd admin bodies get a 400.

Mistakes an attacker (or a hurried operator) can make look like success: a switch for a
rule that does not exist (``rule:per-ip`` when the rule is ``rule:edge/per-ip``) was
stored and did nothing; a ``ttl`` of 1e-300 made a switch that expired before it was
made; a deeply nested JSON body answered 500.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.security.conftest import TOKEN, admin
from tests.service.conftest import ROOT

CONFIG = """domain: edge
descriptors:
  - key: ip
    rate_limit: {name: per-ip, unit: second, requests_per_unit: 100}
  - key: path
    rate_limit: {unit: second, requests_per_unit: 100}
"""
WHO = {"who": "t", "why": "t"}


def test_a_switch_for_an_unknown_rule_is_refused(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, env={"LIMITER_ADMIN_TOKEN": TOKEN})
    status, body = admin(
        service, "PUT", "/v1/switches/rule:per-ip", {"action": "force_deny", **WHO}
    )
    assert status == 400 and "no rule 'per-ip'" in body["error"]
    assert "did you mean edge/per-ip" in body["error"]
    assert admin(service, "GET", "/v1/switches")[1]["switches"] == []
    # What exists is accepted: a named rule, a path id, a domain's request-supplied limits,
    # and the kinds that name no rule.
    for sid in ("rule:edge/per-ip", "rule:edge/path", "rule:edge/_override"):
        status, body = admin(service, "PUT", f"/v1/switches/{sid}", {"action": "shadow", **WHO})
        assert status == 200, (sid, body)
    body = {"action": "force_allow", **WHO}
    assert admin(service, "PUT", "/v1/switches/global", body)[0] == 200
    body = {"action": "force_open", **WHO}
    assert admin(service, "PUT", "/v1/switches/breaker:db", body)[0] == 200
    assert admin(service, "PUT", "/v1/switches/level:web", {"level": 2, **WHO})[0] == 200
    # The command line says so too, and exits non-zero.
    out = subprocess.run(
        [sys.executable, "-m", "limiter.server.cli", "switch",
         "--url", f"http://127.0.0.1:{service.http_port}",
         "set", "rule:per-ip", "--action", "force_deny", "--why", "abuse"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, "LIMITER_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip
    assert out.returncode == 1 and "edge/per-ip" in out.stderr, out.stderr


def test_a_switch_must_outlive_its_making(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, env={"LIMITER_ADMIN_TOKEN": TOKEN})
    for ttl in (1e-300, 0.001, 0.5):
        body = {"action": "force_deny", "ttl": ttl, **WHO}
        status, answer = admin(service, "PUT", "/v1/switches/rule:edge/per-ip", body)
        assert status == 400 and "ttl must be seconds in [1," in answer["error"], answer
    body = {"action": "force_deny", "ttl": 1, **WHO}
    assert admin(service, "PUT", "/v1/switches/rule:edge/per-ip", body)[0] == 200


def test_a_deeply_nested_body_is_a_bad_request(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, env={"LIMITER_ADMIN_TOKEN": TOKEN})
    for depth in (990, 20_000):
        nested = "[" * depth + "]" * depth
        raw = f'{{"action": {nested}, "who": "t", "why": "t"}}'
        status, answer = _raw_put(service, "/v1/switches/global", raw.encode())
        assert status == 400 and len(answer) < 500, (depth, status, answer[:200])
    assert service.http("GET", "/healthcheck")[0] == 200


def _raw_put(service, path: str, body: bytes) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{service.http_port}{path}", data=body, method="PUT"
    )
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
