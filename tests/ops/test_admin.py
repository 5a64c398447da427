"""Admin API over real HTTP: security first, then switches, reads and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from limiter.server import admin
from limiter.server.admin import AdminApi
from limiter.server.http import HttpServer

from limiter import ops as operations
from limiter.errors import ConfigError

TOKEN = "t0ken-for-tests-0123456789abcdef"


class Api:
    """The admin API mounted on the service's HTTP server, on a free port."""

    def __init__(self, ops, token=TOKEN):
        self.ops = ops
        self.server = HttpServer()
        self.server.mount("/v1/", AdminApi(ops, token=token))
        self.base = f"http://127.0.0.1:{self.server.start('127.0.0.1', 0)}"

    def call(self, method, path, body=None, token=TOKEN, auth=None, raw=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if auth is not None:
            req.add_header("Authorization", auth)
        elif token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method, path, body=None, **kw):
        status, _, raw = self.call(method, path, body, **kw)
        return status, json.loads(raw)

    def close(self):
        self.server.stop()
        self.ops.close()


@pytest.fixture
def api():
    a = Api(operations.build({}))
    yield a
    a.close()


def strip_volatile(headers):
    return {k: v for k, v in headers.items() if k not in ("Date",)}


REFUSAL_CASES = [
    {"token": None},
    {"token": "wrong-token-0123456789abcdef"},
    {"token": TOKEN[:-1]},
    {"token": TOKEN + "x"},
    {"auth": f"Basic {TOKEN}"},
    {"auth": TOKEN},
    {"auth": "Bearer "},
]


@pytest.mark.parametrize("creds", REFUSAL_CASES)
def test_refusals_are_identical_and_change_nothing(api, creds):
    answers = set()
    for method, path, body in (
        ("GET", "/v1/switches", None),
        ("GET", "/v1/switches/global", None),
        ("PUT", "/v1/switches/global", {"action": "force_deny", "who": "x", "why": "y"}),
        ("DELETE", "/v1/switches/global", None),
        ("GET", "/v1/no-such-endpoint", None),
        ("POST", "/v1/status", None),
    ):
        status, headers, raw = api.call(method, path, body, **creds)
        answers.add((status, raw, tuple(sorted(strip_volatile(headers).items()))))
    assert len(answers) == 1  # the same refusal whether or not the endpoint exists
    (status, raw, headers) = answers.pop()
    assert status == 401 and json.loads(raw) == {"error": "unauthorized"}
    assert TOKEN.encode() not in raw and b"global" not in raw
    assert api.ops.switches.list() == [] and api.ops.switches.audit() == []


def test_admin_disabled_without_token():
    a = Api(operations.build({}), token=None)
    try:
        for creds in ({"token": TOKEN}, {"token": None}):
            status, _, raw = a.call("GET", "/v1/switches", **creds)
            assert status == 404 and json.loads(raw) == {"error": "not found"}
        status, _, _ = a.call(
            "PUT", "/v1/switches/global", {"action": "force_deny", "who": "x", "why": "y"}
        )
        assert status == 404 and a.ops.switches.list() == []
    finally:
        a.close()


def test_load_token(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert admin.load_token(f, env={}) == TOKEN
    assert admin.load_token(None, env={"LIMITER_ADMIN_TOKEN": TOKEN}) == TOKEN
    assert admin.load_token(None, env={}) is None
    f.write_text("short")
    with pytest.raises(ConfigError, match="at least 16"):
        admin.load_token(f, env={})
    with pytest.raises(ConfigError, match="cannot read") as info:
        admin.load_token(tmp_path / "missing", env={})
    assert TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match="LIMITER_ADMIN_TOKEN"):
        admin.load_token(None, env={"LIMITER_ADMIN_TOKEN": "has space inside token"})


def test_switch_lifecycle(api):
    body = {"action": "override", "limit": 7, "ttl": 600, "who": "alice", "why": "promo"}
    status, sw = api.json("PUT", "/v1/switches/rule:shop%2Fper_user", body)
    assert status == 200 and sw["id"] == "rule:shop/per_user" and sw["limit"] == 7
    assert api.ops.switches.rule("shop/per_user").limit == 7
    status, listed = api.json("GET", "/v1/switches")
    assert [s["id"] for s in listed["switches"]] == ["rule:shop/per_user"]
    assert api.json("GET", "/v1/switches/rule:shop/per_user")[1]["who"] == "alice"
    status, gone = api.json(
        "DELETE", "/v1/switches/rule:shop/per_user", {"who": "bob", "why": "over"}
    )
    assert status == 200 and gone["deleted"]["limit"] == 7
    assert api.json("DELETE", "/v1/switches/rule:shop/per_user")[0] == 404
    assert api.json("GET", "/v1/switches/rule:shop/per_user")[0] == 404
    audit = api.json("GET", "/v1/audit?limit=10")[1]["audit"]
    assert [(a["op"], a["who"], a["why"]) for a in audit] == [
        ("delete", "bob", "over"),
        ("put", "alice", "promo"),
    ]
    events = api.json("GET", "/v1/events")[1]["events"]
    assert [(e["event"], e["op"]) for e in events] == [
        ("switch_changed", "put"),
        ("switch_changed", "delete"),
    ]


def test_forced_level_and_breaker_and_kill_switch(api):
    ops = api.ops
    api.json("PUT", "/v1/switches/level:checkout", {"level": 3, "who": "a", "why": "b"})
    assert ops.levels.level("checkout") == 3
    levels = api.json("GET", "/v1/levels")[1]["levels"]
    assert levels[0]["service"] == "checkout" and levels[0]["forced"] is True
    assert any(e["event"] == "level_changed" for e in ops.alerts.recent())
    api.json("PUT", "/v1/switches/breaker:db", {"action": "force_open", "who": "a", "why": "b"})
    assert not ops.breakers.get("db", "shard1").allow()
    assert api.json("GET", "/v1/breakers")[1]["breakers"][0]["mode"] == "forced_open"
    api.json("PUT", "/v1/switches/global", {"action": "force_allow", "who": "a", "why": "b"})
    status = api.json("GET", "/v1/status")[1]
    assert status["kill_switch"]["action"] == "force_allow" and status["switches"] == 3
    assert status["fallback"] == []
    ops.fallback.sample({"shop/tb": (10, 4)})  # 4 checks answered by the failure mode
    assert api.json("GET", "/v1/status")[1]["fallback"] == ["shop/tb"]


def test_read_endpoints_for_autoscalers():
    # A fixed clock: the over-limit count is over a sliding window, and a window
    # boundary passing between the checks and the read would weigh part of it down.
    frozen = 1_000 * 10**9
    api = Api(operations.build({"shedding": {"abnormal": {"burst": 1}}}, clock=lambda: frozen))
    ops = api.ops
    for i in range(30):
        ops.clients.check("api", "heavy" if i % 3 else "light")
        ops.throttle.record("api", i % 2 == 0)
    ops.abnormal.request("x")
    clients = api.json("GET", "/v1/top/clients?rule=api&n=1")[1]["clients"]
    assert clients == [
        {"rule": "api", "client": "heavy", "count": 20, "error": 0, "share": pytest.approx(2 / 3)}
    ]
    assert api.json("GET", "/v1/top/clients")[1]["clients"][0]["client"] == "heavy"
    rules = api.json("GET", "/v1/top/rules")[1]["rules"]
    assert rules[0]["rule"] == "api" and rules[0]["over_limit"] == 15
    ops.abnormal.request("x")  # over its burst of 1: blocked
    blocked = api.json("GET", "/v1/blocked")[1]["blocked"]
    assert [b["client"] for b in blocked] == ["x"] and blocked[0]["seconds_left"] > 59
    api.close()


@pytest.mark.parametrize(
    ("method", "path", "raw", "status", "match"),
    [
        ("PUT", "/v1/switches/rule:x", b"{not json", 400, "not valid JSON"),
        ("PUT", "/v1/switches/rule:x", b"[1]", 400, "JSON object"),
        ("PUT", "/v1/switches/rule:x", b"", 400, "JSON object"),
        ("PUT", "/v1/switches/nonsense", b'{"who":"a","why":"b"}', 400, "switch id"),
        ("PUT", "/v1/switches/rule:x", b'{"action":"nuke","who":"a","why":"b"}', 400, "action"),
        ("GET", "/v1/audit?limit=abc", None, 400, "limit"),
        ("GET", "/v1/top/rules?n=99999999", None, 400, "n must"),
        ("PUT", "/v1/switches/rule:x", b"x" * 70_000, 413, None),  # refused before reading
        ("PATCH", "/v1/switches", None, 405, "method"),
        ("POST", "/v1/switches", None, 405, "method"),
        ("GET", "/v1/nothing", None, 404, "not found"),
    ],
)
def test_bad_requests(api, method, path, raw, status, match):
    got, _, body = api.call(method, path, raw=raw)
    assert got == status
    if match:
        assert match in json.loads(body)["error"]
    assert api.ops.switches.list() == []


def run_cli(api, *args, token=TOKEN):
    env = {**os.environ, "LIMITER_ADMIN_TOKEN": token, "LIMITER_ADMIN_URL": api.base}
    return subprocess.run(
        [sys.executable, "-m", "limiter.server.cli", "switch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_cli(api):
    out = run_cli(
        api,
        "set",
        "rule:api",
        "--action",
        "force_deny",
        "--ttl",
        "10m",
        "--why",
        "abuse",
        "--who",
        "carol",
    )
    assert out.returncode == 0, out.stderr
    sw = json.loads(out.stdout)
    assert sw["action"] == "force_deny" and sw["expires_at"] - sw["created_at"] == pytest.approx(
        600, abs=0.01
    )
    assert api.ops.switches.rule("api").who == "carol"
    out = run_cli(api, "list")
    assert [s["id"] for s in json.loads(out.stdout)["switches"]] == ["rule:api"]
    out = run_cli(
        api, "set", "level:web", "--level", "2", "--why", "x", token="bad-token-0123456789"
    )
    assert out.returncode == 1 and "HTTP 401" in out.stderr and out.stdout == ""
    out = run_cli(api, "set", "rule:api", "--action", "nope", "--why", "x")
    assert out.returncode == 1 and "action" in out.stderr
    out = run_cli(api, "delete", "rule:api", "--why", "fixed")
    assert out.returncode == 0 and api.ops.switches.list() == []
    out = run_cli(api, "audit", "--limit", "5")
    assert [a["op"] for a in json.loads(out.stdout)["audit"]] == ["delete", "put"]
    out = run_cli(api, "set", "rule:api", "--action", "shadow", "--ttl", "soon", "--why", "x")
    assert out.returncode == 2 and "invalid duration" in out.stderr


def test_switch_is_a_command_of_the_limiter_parser():
    from limiter.server import cli

    parser = cli.build_parser()
    args = parser.parse_args(["switch", "set", "global", "--action", "force_allow", "--why", "x"])
    assert args.func is cli.cmd_switch and args.id == "global" and args.ttl is None


def test_check_config_knows_the_ops_sections(tmp_path):
    """Through the real CLI (a subprocess: registering sections is process-wide state)."""
    good = tmp_path / "good.yaml"
    good.write_text(
        "domain: d\n---\n"
        "alerts: {webhooks: [{url: 'http://127.0.0.1:9/hook', secret_env: HOOK_SECRET}]}\n"
        "breakers: {default: {failure_ratio: 0.4}, payments: {open_for: 10}}\n"
        "degradation: {thresholds: [0.7, 0.9], restore_after: 60}\n"
        "shedding: {clients: {max_share: 0.3}, abnormal: {burst: 500}}\n"
        "switches: {store: memory}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: d\n---\nbreakers: {payments: {open_for: -1}}\n")

    def check(path):
        return subprocess.run(
            [sys.executable, "-m", "limiter.server.cli", "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOOK_SECRET": "s" * 20},
        )

    ok = check(good)
    assert ok.returncode == 0, ok.stderr
    out = check(bad)
    assert out.returncode == 1
    assert f"{bad}" in out.stderr and "breakers.payments.open_for: must be" in out.stderr


@pytest.mark.parametrize("allow_remote", [False, True])
def test_service_port_serves_admin_to_loopback_only_by_default(tmp_path, allow_remote):
    """The real Service wiring: remote callers get the disabled-admin 404."""
    import asyncio

    from limiter.server.app import Service, Settings
    from limiter.server.http import Request

    from limiter import config as rules

    path = tmp_path / "rules.yaml"
    path.write_text("domain: d\n")
    settings = Settings(config=str(path), admin_token=TOKEN, admin_allow_remote=allow_remote)

    async def run():
        service = Service(settings, rules.load(path))
        try:
            auth = {"authorization": f"Bearer {TOKEN}"}
            answers = {}
            for client in ("127.0.0.1", "10.1.2.3"):
                req = Request("GET", "/v1/switches", "", auth, b"", client)
                answers[client] = await service.admin(req)
            return answers, service.decider.policy is service.admin.ops is service.ops
        finally:
            service.ops.close()

    answers, wired = asyncio.run(run())
    assert wired
    assert answers["127.0.0.1"].status == 200
    assert json.loads(answers["127.0.0.1"].body) == {"switches": []}
    remote = answers["10.1.2.3"]
    assert remote.status == (200 if allow_remote else 404)
    if not allow_remote:
        assert json.loads(remote.body) == {"error": "not found"}
