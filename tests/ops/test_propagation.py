"""Switch propagation between real processes sharing one real Redis: a change is pushed.

The periodic resync is set to a minute here, so a change seen within ``PUSHED`` seconds
came by the push, not by the resync; ``PUSHED`` is slack for a loaded machine (the
lags measured are printed, and are milliseconds on a quiet one).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.service.conftest import ServiceProcess

TOKEN = "propagation-token-0123456789abcdef"
RESYNC = 60.0
PUSHED = 3.0


def admin_call(base, method, path, body=None, token=TOKEN):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Service(ServiceProcess):
    """A real ``limiter serve`` replica (gRPC + HTTP) sharing Redis with the others."""

    def __init__(self, config: Path, redis_url: str, token_file: str) -> None:
        super().__init__(config, "--redis", redis_url, "--admin-token-file", token_file)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LIMITER_")}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def level_header(self) -> str | None:
        body = json.dumps(
            {"domain": "edge", "descriptors": [{"entries": [{"key": "user", "value": "u1"}]}]}
        )
        req = urllib.request.Request(self.base + "/json", data=body.encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read())
        headers = {h["key"]: h["value"] for h in answer.get("requestHeadersToAdd", [])}
        return headers.get("x-limiter-level")

    def admin(self, method, path, body=None):
        return admin_call(self.base, method, path, body)

    def stop_and_log(self) -> str:
        self.stop()
        return self.logs()


@pytest.fixture(scope="module")
def replicas(redis_server, tmp_path_factory):
    """Three ``limiter serve`` processes sharing switches through one real Redis."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    where = tmp_path_factory.mktemp("replicas")
    # Rules for the switches to name (a rule: switch must name a rule of the config).
    rules = "".join(
        f"  - key: k\n    value: '{i}'\n    rate_limit: {{name: api{i}, unit: second, "
        "requests_per_unit: 10}\n"
        for i in range(5)
    )
    (where / "rules.yaml").write_text(
        f"domain: edge\ndescriptors:\n{rules}---\nswitches: {{resync: {RESYNC}}}\n"
    )
    (where / "token").write_text(TOKEN)
    group = [
        Service(where / "rules.yaml", redis_server.url, str(where / "token")) for _ in range(3)
    ]
    try:
        yield [r.start() for r in group]
    finally:
        for r in group:
            r.stop()


def until(predicate, timeout):
    """Seconds until ``predicate()`` held (polling every 5 ms), or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.005)
    return None


def test_a_change_on_one_replica_is_pushed_to_all(replicas):
    writer, *others = replicas
    lags = []
    for i in range(5):
        sid = f"rule:edge/api{i}"
        status, _ = writer.admin(
            "PUT",
            f"/v1/switches/{sid}",
            {"action": "force_deny", "who": "ops", "why": f"drill {i}"},
        )
        assert status == 200
        for r in others:
            lag = until(
                lambda r=r, sid=sid: r.admin("GET", f"/v1/switches/{sid}")[0] == 200, PUSHED
            )
            assert lag is not None, f"{sid} not visible on {r.base} within {PUSHED} s"
            lags.append(lag)
        writer.admin("DELETE", f"/v1/switches/{sid}", {"who": "ops", "why": "done"})
        for r in others:
            lag = until(
                lambda r=r, sid=sid: r.admin("GET", f"/v1/switches/{sid}")[0] == 404, PUSHED
            )
            assert lag is not None
            lags.append(lag)
    print(f"propagation lag over {len(lags)} observations: max {max(lags) * 1000:.1f} ms")
    # The audit log is shared: any replica shows every change, with who/why.
    audit = others[-1].admin("GET", "/v1/audit?limit=100")[1]["audit"]
    assert len(audit) == 10 and {a["why"] for a in audit} >= {"drill 0", "done"}


def test_kill_switch_and_forced_level_reach_every_replica_and_expire(replicas):
    writer = replicas[1]
    writer.admin(
        "PUT",
        "/v1/switches/global",
        {"action": "force_deny", "who": "ops", "why": "shed all", "ttl": PUSHED + 1},
    )
    writer.admin("PUT", "/v1/switches/level:web", {"level": 2, "who": "ops", "why": "db slow"})
    for r in replicas:
        assert (
            until(
                lambda r=r: (
                    (r.admin("GET", "/v1/status")[1]["kill_switch"] or {}).get("action")
                    == "force_deny"
                ),
                PUSHED,
            )
            is not None
        )
        assert (
            until(
                lambda r=r: any(
                    lv["service"] == "web" and lv["level"] == 2
                    for lv in r.admin("GET", "/v1/levels")[1]["levels"]
                ),
                PUSHED,
            )
            is not None
        )
    # The kill switch had a time to live: it reverts everywhere by itself.
    for r in replicas:
        assert until(lambda r=r: r.admin("GET", "/v1/status")[1]["kill_switch"] is None, 2 * PUSHED)

    def ops():
        return [a["op"] for a in replicas[0].admin("GET", "/v1/audit")[1]["audit"]]

    assert until(lambda: "expire" in ops(), 2 * PUSHED) is not None  # the housekeeper swept it
    time.sleep(0.6)  # every replica's housekeeper has had a turn since
    assert ops().count("expire") == 1  # swept once, not once per replica


def test_service_replicas_apply_a_pushed_forced_level(redis_url, tmp_path):
    """Two `limiter serve` processes + Redis: a switch set on one changes the other's answers."""
    config = tmp_path / "rules.yaml"
    config.write_text(
        "domain: edge\n"
        "descriptors:\n"
        "  - key: user\n"
        "    rate_limit: {name: per-user, unit: second, requests_per_unit: 100}\n"
        "---\n"
        "degradation: {thresholds: [0.8, 0.9, 0.95, 1.0]}\n"
        f"switches: {{resync: {RESYNC}}}\n"
    )
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    services = [Service(config, redis_url, str(token_file)) for _ in range(2)]
    try:
        for s in services:
            s.start()
        a, b = services
        assert a.level_header() == "0" and b.level_header() == "0"
        assert b.admin("GET", "/v1/switches")[0] == 200  # token file reached the service
        status, _ = a.admin(
            "PUT", "/v1/switches/level:default", {"level": 3, "who": "ops", "why": "db failover"}
        )
        assert status == 200
        lag = until(lambda: b.level_header() == "3", PUSHED)
        assert lag is not None, f"replica b did not apply the forced level within {PUSHED} s"
        print(f"service replica applied the level after {lag * 1000:.1f} ms")
        a.admin("DELETE", "/v1/switches/level:default", {"who": "ops", "why": "recovered"})
        assert until(lambda: b.level_header() == "0", PUSHED) is not None
        events = b.admin("GET", "/v1/events")[1]["events"]
        assert [e["level"] for e in events if e["event"] == "level_changed"] == [3, 0]
    finally:
        errors = [s.stop_and_log() for s in services]
    assert not any("Traceback" in e for e in errors), errors
