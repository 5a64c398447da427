"""Switch propagation between real processes sharing one real Redis (<= 1 s everywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support import free_port, wait_for_port

TOKEN = "propagation-token-0123456789abcdef"


def admin_call(base, method, path, body=None, token=TOKEN):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Replica:
    """``python -m limiter.server.admin`` with Redis-backed switches, in its own process."""

    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        env = {**os.environ, "LIMITER_ADMIN_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "limiter.server.admin",
                "--port",
                str(self.port),
                "--redis",
                redis_url,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def wait(self) -> Replica:
        wait_for_port(self.port, timeout=20)
        return self

    def call(self, method, path, body=None):
        return admin_call(self.base, method, path, body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def replicas(redis_server):
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    group = [Replica(redis_server.url) for _ in range(3)]
    try:
        yield [r.wait() for r in group]
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


def test_a_change_on_one_replica_takes_effect_on_all_within_a_second(replicas):
    writer, *others = replicas
    lags = []
    for i in range(5):
        sid = f"rule:api{i}"
        status, _ = writer.call(
            "PUT",
            f"/v1/switches/{sid}",
            {"action": "force_deny", "who": "ops", "why": f"drill {i}"},
        )
        assert status == 200
        for r in others:
            lag = until(lambda r=r, sid=sid: r.call("GET", f"/v1/switches/{sid}")[0] == 200, 1.0)
            assert lag is not None, f"{sid} not visible on {r.base} within 1 s"
            lags.append(lag)
        writer.call("DELETE", f"/v1/switches/{sid}", {"who": "ops", "why": "done"})
        for r in others:
            lag = until(lambda r=r, sid=sid: r.call("GET", f"/v1/switches/{sid}")[0] == 404, 1.0)
            assert lag is not None
            lags.append(lag)
    print(f"propagation lag over {len(lags)} observations: max {max(lags) * 1000:.1f} ms")
    # The audit log is shared: any replica shows every change, with who/why.
    audit = others[-1].call("GET", "/v1/audit?limit=100")[1]["audit"]
    assert len(audit) == 10 and {a["why"] for a in audit} >= {"drill 0", "done"}


def test_kill_switch_and_forced_level_reach_every_replica_and_expire(replicas):
    writer = replicas[1]
    writer.call(
        "PUT",
        "/v1/switches/global",
        {"action": "force_deny", "who": "ops", "why": "shed all", "ttl": 1.5},
    )
    writer.call("PUT", "/v1/switches/level:web", {"level": 2, "who": "ops", "why": "db slow"})
    for r in replicas:
        assert (
            until(
                lambda r=r: (
                    (r.call("GET", "/v1/status")[1]["kill_switch"] or {}).get("action")
                    == "force_deny"
                ),
                1.0,
            )
            is not None
        )
        assert (
            until(
                lambda r=r: any(
                    lv["service"] == "web" and lv["level"] == 2
                    for lv in r.call("GET", "/v1/levels")[1]["levels"]
                ),
                1.0,
            )
            is not None
        )
    # The kill switch was given 1.5 s: it reverts everywhere by itself.
    for r in replicas:
        assert until(lambda r=r: r.call("GET", "/v1/status")[1]["kill_switch"] is None, 3.0)

    def ops():
        return [a["op"] for a in replicas[0].call("GET", "/v1/audit")[1]["audit"]]

    assert until(lambda: "expire" in ops(), 2.0) is not None  # the housekeeper swept it
    time.sleep(0.6)  # every replica's housekeeper has had a turn since
    assert ops().count("expire") == 1  # swept once, not once per replica


class Service:
    """A real ``limiter serve`` replica (gRPC + HTTP) sharing Redis with the others."""

    def __init__(self, config: str, redis_url: str, token_file: str) -> None:
        self.http = free_port()
        self.grpc = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "limiter.server.cli",
                "serve",
                "--config",
                config,
                "--redis",
                redis_url,
                "--host",
                "127.0.0.1",
                "--http-port",
                str(self.http),
                "--grpc-port",
                str(self.grpc),
                "--admin-token-file",
                token_file,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("LIMITER_")},
        )
        self.base = f"http://127.0.0.1:{self.http}"

    def level_header(self) -> str | None:
        body = json.dumps(
            {"domain": "edge", "descriptors": [{"entries": [{"key": "user", "value": "u1"}]}]}
        )
        req = urllib.request.Request(self.base + "/json", data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read())
        headers = {h["key"]: h["value"] for h in answer.get("requestHeadersToAdd", [])}
        return headers.get("x-limiter-level")

    def admin(self, method, path, body=None):
        return admin_call(self.base, method, path, body)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


def test_service_replicas_apply_a_forced_level_within_a_second(redis_url, tmp_path):
    """Two `limiter serve` processes + Redis: a switch set on one changes the other's answers."""
    config = tmp_path / "rules.yaml"
    config.write_text(
        "domain: edge\n"
        "descriptors:\n"
        "  - key: user\n"
        "    rate_limit: {name: per-user, unit: second, requests_per_unit: 100}\n"
        "---\n"
        "degradation: {thresholds: [0.8, 0.9, 0.95, 1.0]}\n"
        "switches: {resync: 5}\n"
    )
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    services = [Service(str(config), redis_url, str(token_file)) for _ in range(2)]
    try:
        for s in services:
            wait_for_port(s.http, timeout=30)
        a, b = services
        assert a.level_header() == "0" and b.level_header() == "0"
        assert b.admin("GET", "/v1/switches")[0] == 200  # token file reached the service
        status, _ = a.admin(
            "PUT", "/v1/switches/level:default", {"level": 3, "who": "ops", "why": "db failover"}
        )
        assert status == 200
        lag = until(lambda: b.level_header() == "3", 1.0)
        assert lag is not None, "replica b did not apply the forced level within 1 s"
        print(f"service replica applied the level after {lag * 1000:.1f} ms")
        a.admin("DELETE", "/v1/switches/level:default", {"who": "ops", "why": "recovered"})
        assert until(lambda: b.level_header() == "0", 1.0) is not None
        events = b.admin("GET", "/v1/events")[1]["events"]
        assert [e["level"] for e in events if e["event"] == "level_changed"] == [3, 0]
    finally:
        errors = [s.stop() for s in services]
    assert not any("Traceback" in e for e in errors), errors
