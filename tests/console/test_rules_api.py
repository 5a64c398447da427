"""``GET /v1/rules`` and the console's rate arithmetic, in-process with an injected clock;
the page's static files and their headers over a real ``limiter serve``."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
from limiter.server.admin import AdminApi
from limiter.server.console import PREFIX, Assets, RuleRates, sample_rules
from limiter.server.rules import Rulebook

from limiter import config as rules
from limiter import ops as operations
from limiter.ops.breaker import BreakerConfig
from limiter.ops.switches import Switch
from tests.console.conftest import TOKEN
from tests.service.conftest import ServiceProcess

RULES = """
domain: d
descriptors:
  - key: user
    rate_limit: {name: per-user, unit: minute, requests_per_unit: 3}
  - key: api
    rate_limit:
      {name: api, algorithm: adaptive, unit: second, requests_per_unit: 50, target_latency: 0.05}
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = 5_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


# -- RuleRates ----------------------------------------------------------------------------


def test_rates_need_two_samples_and_follow_the_clock():
    clock = Clock()
    rates = RuleRates(clock, step=1.0, keep=5)
    assert rates.sample([("a", 0, 0, None, None)])
    assert rates.view("a") == {"hits_per_s": None, "over_per_s": None}
    clock.advance(0.5)
    assert not rates.sample([("a", 100, 100, None, None)])  # within the step: not recorded
    clock.advance(1.5)  # 2 s after the first sample
    assert rates.sample([("a", 30, 6, None, None)])
    assert rates.view("a") == {"hits_per_s": 15.0, "over_per_s": 3.0}
    assert rates.view("unknown") == {"hits_per_s": None, "over_per_s": None}


def test_rates_history_is_capped_oldest_first_and_resets_count_from_zero():
    clock = Clock()
    rates = RuleRates(clock, step=1.0, keep=4)
    hits = [0, 10, 30, 60, 100, 7]  # the last one: the counter restarted (reload)
    for n in hits:
        rates.sample([("a", n, 0, 40.0 + n, 0.01 * n)])
        clock.advance(1.0)
    view = rates.view("a", history=10)
    assert view["hits_per_s"] == 7.0
    # keep=4 samples -> 3 steps: 60->... (30->60, 60->100, 100->7 restarted)
    assert view["history"]["hits_per_s"] == [30.0, 40.0, 7.0]
    assert view["history"]["limit"] == [100.0, 140.0, 47.0]
    assert rates.view("a", history=1)["history"]["hits_per_s"] == [7.0]


def test_rates_forget_removed_rules_and_never_emit_nan():
    clock = Clock()
    rates = RuleRates(clock)
    rates.sample([("a", 0, 0, math.nan, math.inf), ("b", 0, 0, None, None)])
    clock.advance(1)
    rates.sample([("a", 1, 0, math.nan, math.nan)])
    view = rates.view("a", history=5)
    assert view["history"]["limit"] == [None] and view["history"]["observed"] == [None]
    assert rates.view("b") == {"hits_per_s": None, "over_per_s": None}


# -- GET /v1/rules against a real rulebook ------------------------------------------------


@pytest.fixture
def api():
    breakers = {"payments": BreakerConfig(), "search": BreakerConfig()}
    ops = operations.build({"breakers": breakers}, start=False)
    clock = Clock()
    book = Rulebook(rules.parse(RULES))
    a = AdminApi(ops, token=TOKEN, rulebook=book, rates=RuleRates(clock, step=1.0))
    ops.steps.append(lambda: sample_rules(book, a.rates))
    a.clock = clock  # type: ignore[attr-defined]
    yield a
    ops.close()


def get(api, target, headers=AUTH):
    resp = api.handle("GET", target, headers, b"")
    return resp.status, json.loads(resp.body)


def hit(api, rule, key, n):
    state = api.rulebook.snapshot.by_name[("d", rule)]
    for _ in range(n):
        decision = state.acquire(key, 1)
        state.count(decision.allowed, decision.remaining, 1, False)


def test_rules_lists_every_rule_with_counters_rates_and_adaptive_state(api):
    api.ops.tick()
    hit(api, "per-user", "alice", 5)  # limit 3/minute: 3 allowed, 2 over
    api.clock.advance(1.0)
    api.ops.tick()
    status, doc = get(api, "/v1/rules?history=3")
    assert status == 200 and doc["step"] == 1.0
    by_rule = {r["rule"]: r for r in doc["rules"]}
    assert set(by_rule) == {"d/per-user", "d/api"}
    user = by_rule["d/per-user"]
    assert user["algorithm"] == "fixed_window" and user["limit"] == 3 and user["unit"] == "minute"
    assert (user["total_hits"], user["over_limit"], user["within_limit"]) == (5, 2, 3)
    assert (user["hits_per_s"], user["over_per_s"]) == (5.0, 2.0)
    assert user["history"]["hits_per_s"] == [5.0] and user["adaptive"] is None
    row = by_rule["d/api"]
    assert row["adaptive"]["limit"] == 50.0 and row["adaptive"]["percentile"] == 0.99
    assert row["adaptive"]["observed"] is None  # no latency reported yet: None, not NaN
    assert row["adaptive"]["target_latency"] == 0.05 and row["adaptive"]["mode"] == "rate"
    # The adaptive limit follows reported latency, and the view reads the live kernel.
    kernel = api.rulebook.snapshot.by_name[("d", "api")].kernel
    for _ in range(300):
        kernel.record(0.5)
    api.clock.advance(1.0)
    api.ops.tick()
    row = {r["rule"]: r for r in get(api, "/v1/rules?history=5")[1]["rules"]}["d/api"]
    assert row["adaptive"]["limit"] == kernel.current_limit
    assert row["adaptive"]["observed"] == pytest.approx(kernel.current_percentile)
    assert row["adaptive"]["observed"] > 0.05
    assert "history" not in get(api, "/v1/rules")[1]["rules"][0]


def test_request_supplied_limits_are_listed_without_history(api):
    state = api.rulebook.override("d", 10, 2)  # RLS: a descriptor carrying its own limit
    decision = state.acquire("k", 1)
    state.count(decision.allowed, decision.remaining, 1, False)
    api.ops.tick()
    rows = {r["key"]: r for r in get(api, "/v1/rules?history=5")[1]["rules"]}
    override = rows[f"d/{state.rule.id}"]
    assert override["request_override"] and override["total_hits"] == 1
    assert override["limit"] == 10 and override["unit"] == "minute"
    assert "history" not in override and "history" in rows["d/user"]
    assert not rows["d/user"]["request_override"]


def test_rules_shows_the_switch_acting_on_a_rule_and_filters_by_domain(api):
    now = api.ops.switches.clock()
    body = {"action": "force_deny", "who": "ann", "why": "incident", "ttl": 60}
    api.ops.switches.put(Switch.from_request("rule:d/per-user", body, now))
    rows = {r["rule"]: r for r in get(api, "/v1/rules")[1]["rules"]}
    assert rows["d/per-user"]["switch"]["action"] == "force_deny"
    assert rows["d/per-user"]["switch"]["who"] == "ann"
    assert rows["d/api"]["switch"] is None
    assert len(get(api, "/v1/rules?domain=d")[1]["rules"]) == 2
    assert get(api, "/v1/rules?domain=other") == (
        200,
        {"rules": [], "step": 1.0, "pid": os.getpid()},
    )
    assert len(get(api, "/v1/rules?domain=")[1]["rules"]) == 2  # empty = every domain


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("/v1/rules?history=abc", "history"),
        ("/v1/rules?history=-1", "history"),
        ("/v1/rules?history=61", "history"),
        ("/v1/rules?history=1.5", "history"),
    ],
)
def test_rules_bad_query_is_400_naming_the_field(api, target, field):
    status, doc = get(api, target)
    assert status == 400
    assert f"query parameter {field} " in doc["error"]


def test_rules_needs_the_token_and_is_empty_without_a_service(api):
    status, doc = get(api, "/v1/rules", headers={})
    assert status == 401 and doc == {"error": "unauthorized"}
    status, _ = get(api, "/v1/rules", headers={"Authorization": "Bearer wrong-token-000000000"})
    assert status == 401
    standalone = AdminApi(operations.build({}, start=False), token=TOKEN, rates=RuleRates(step=1.0))
    try:
        assert get(standalone, "/v1/rules") == (200, {"rules": [], "step": 1.0, "pid": os.getpid()})
    finally:
        standalone.ops.close()


def test_breakers_names_configured_dependencies(api):
    status, doc = get(api, "/v1/breakers")
    assert status == 200 and doc == {"breakers": [], "configured": ["payments", "search"]}
    api.ops.breakers.get("payments")  # a breaker exists once something asks for it
    assert [b["name"] for b in get(api, "/v1/breakers")[1]["breakers"]] == ["payments"]


# -- the page's files ----------------------------------------------------------------------


def test_assets_serve_only_known_files(tmp_path):
    assets = Assets()
    body, kind = assets.get(PREFIX)
    assert kind.startswith("text/html") and b"console.js" in body
    assert assets.get(PREFIX + "console.js")[1].startswith("text/javascript")
    assert assets.get(PREFIX + "console.css")[1].startswith("text/css")
    for path in ("/console/../admin.py", "/console/admin.py", "/console/static", "/x/", "/"):
        assert assets.get(path) is None
    with pytest.raises(FileNotFoundError, match=r"console\.html"):
        Assets(tmp_path)


def raw_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_page_is_served_without_token_and_holds_no_secret(service):
    status, page = service.http("GET", "/console/")
    assert status == 200 and b"<title>limiter ops console</title>" in page
    assert TOKEN.encode() not in page
    for name in ("console.js", "console.css"):
        status, body = service.http("GET", "/console/" + name)
        assert status == 200 and TOKEN.encode() not in body
    assert service.http("POST", "/console/", b"x")[0] == 405
    assert service.http("GET", "/console/nope.js")[0] == 404
    for path in ("/console/../admin.py", "/console/%2e%2e/admin.py", "/console/static/x"):
        assert raw_get(service.http_port, path) == 404
    assert raw_get(service.http_port, "/console") == 301


def test_page_headers_forbid_other_origins(service):
    import urllib.request

    url = f"http://127.0.0.1:{service.http_port}/console/"
    with urllib.request.urlopen(url, timeout=5) as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe" not in csp


def test_no_page_when_admin_is_disabled(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    env = {"LIMITER_ADMIN_TOKEN": "", "LIMITER_ADMIN_TOKEN_FILE": ""}  # no token: off
    svc = ServiceProcess(path, env=env).start()
    try:
        assert svc.http("GET", "/console/")[0] == 404
        assert svc.http("GET", "/console/console.js")[0] == 404
    finally:
        assert svc.stop() == 0


@pytest.mark.parametrize("allow_remote", [False, True])
def test_page_follows_the_admin_loopback_rule(tmp_path, allow_remote):
    """The real Service wiring: remote callers get 404 unless remote admin is allowed."""
    import asyncio

    from limiter.server.app import Service, Settings
    from limiter.server.http import Request

    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    settings = Settings(config=str(path), admin_token=TOKEN, admin_allow_remote=allow_remote)

    async def run():
        service = Service(settings, rules.load(path))
        try:
            page = service.http.mounts[0][1].handler  # the console's mount (the longest prefix)
            return {
                client: (await page(Request("GET", "/console/", "", {}, b"", client))).status
                for client in ("127.0.0.1", "10.1.2.3")
            }
        finally:
            service.ops.close()

    assert asyncio.run(run()) == {"127.0.0.1": 200, "10.1.2.3": 200 if allow_remote else 404}
