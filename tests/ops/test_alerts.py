"""Alert webhooks against a real local HTTP receiver: up, slow, failing and down."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import socket
import time

import pytest

from limiter.errors import ConfigError, InvalidParameter
from limiter.ops.alerts import Alerts, AlertsConfig, Webhook, verify
from limiter.schema import load

SECRET = "s3cret-webhook-key"


def hub(url, clock=None, **kw):
    hook = {
        "url": url,
        "secret": SECRET,
        "timeout": 0.3,
        "retries": 2,
        "backoff": 0.05,
        **kw.pop("hook", {}),
    }
    cfg = load(AlertsConfig, {"webhooks": [hook], "cooldown": 60, **kw}, "alerts")
    return Alerts(cfg, clock=clock)


def wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def delivered_up_to_a_marker(alerts, receiver) -> list:
    """Every payload delivered before a marker event emitted now, which is not included.

    One webhook is served in order from one queue, so once the marker has arrived,
    nothing emitted before it is still on its way: no wait-and-hope for extra deliveries.
    """
    alerts.emit("breaker_opened", breaker="marker")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        payloads = receiver.payloads()
        if payloads and payloads[-1].get("breaker") == "marker":
            assert [p.get("breaker") for p in payloads].count("marker") == 1
            return payloads[:-1]
        time.sleep(0.01)
    raise AssertionError(f"the marker never arrived; got {receiver.payloads()}")


def test_receiver_up_gets_signed_json(receiver):
    alerts = hub(receiver.url, hook={"slack": True})
    try:
        alerts.emit(
            "throttle_started",
            {"rule": "api/per_user", "level": 1, "counts": {"over": 12}, "top_clients": ["a"]},
        )
        (req,) = receiver.wait_for(1)
        body = req["body"]  # the bytes as received
        # The documented format, computed here with hmac/hashlib, not the library's helper.
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert req["headers"]["X-Limiter-Signature"] == expected
        # verify() (what receivers may use) accepts exactly that and nothing else.
        assert verify(SECRET.encode(), body, expected)
        assert not verify(b"other", body, expected)
        assert not verify(SECRET.encode(), body[:-1] + b" ", expected)
        sha1 = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
        assert not verify(SECRET.encode(), body, sha1)
        payload = json.loads(body)
        assert payload["event"] == "throttle_started" and payload["rule"] == "api/per_user"
        assert payload["counts"] == {"over": 12} and payload["top_clients"] == ["a"]
        assert payload["at_iso"].endswith("Z") and payload["at"] > 0
        assert payload["text"].startswith("[limiter] throttle_started api/per_user level=1")
        assert wait(lambda: alerts.stats()["webhooks"][0]["sent"] == 1)
    finally:
        alerts.close()


def test_cooldown_dedups_per_event_and_subject(receiver, clock):
    alerts = hub(receiver.url, clock=clock)
    try:
        alerts.emit("breaker_opened", breaker="db")
        alerts.emit("breaker_opened", breaker="db")  # within cool-down: suppressed
        alerts.emit("breaker_opened", breaker="cache")  # another subject
        alerts.emit("breaker_closed", breaker="db")  # another event
        clock.advance(61)
        alerts.emit("breaker_opened", breaker="db")
        payloads = delivered_up_to_a_marker(alerts, receiver)
        assert [(p["event"], p.get("breaker")) for p in payloads] == [
            ("breaker_opened", "db"),
            ("breaker_opened", "cache"),
            ("breaker_closed", "db"),
            ("breaker_opened", "db"),
        ]
        assert alerts.suppressed == 1
        assert payloads[-1]["suppressed_since_last"] == 1
        assert len(alerts.recent()) == 6  # operators still see every event (marker included)
        assert [e["seq"] for e in alerts.recent(since=3)] == [4, 5, 6]
    finally:
        alerts.close()


def test_failing_500_is_retried_then_counted(receiver):
    receiver.fail_first = 2
    alerts = hub(receiver.url)
    try:
        alerts.emit("level_changed", service="api", level=2)
        reqs = receiver.wait_for(3)
        assert len(reqs) == 3
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(reqs)]
        assert gaps[0] >= 0.025 and gaps[1] >= 0.05  # backoff 0.05 * 2^n, half jittered
        assert wait(lambda: alerts.stats()["webhooks"][0]["sent"] == 1)
        receiver.mode = "fail"
        alerts.emit("level_changed", service="api2", level=3)
        assert wait(lambda: alerts.stats()["webhooks"][0]["failed"] == 1)
        assert len(receiver.requests) == 6  # 1 + 2 retries
        assert alerts.stats()["webhooks"][0]["retries"] == 4
    finally:
        alerts.close()


def test_slow_receiver_times_out_without_slowing_emit(receiver):
    receiver.mode = "slow"
    receiver.delay = 1.0
    alerts = hub(receiver.url, hook={"timeout": 0.2, "retries": 1}, queue_size=5)
    try:
        start = time.perf_counter()
        for i in range(50):
            alerts.emit("client_blocked", client=f"c{i}")
        elapsed = time.perf_counter() - start
        stats = alerts.stats()["webhooks"][0]
        # Nothing waited on the receiver: the bounded queue overflowed at once (the
        # overflow counted, not kept), and 50 emits took less than waiting out the
        # 0.2 s timeout of even 10 deliveries would.
        assert stats["dropped"] >= 40
        assert elapsed < 0.2 * 10
        assert stats["queued"] + stats["dropped"] == 50
        assert wait(lambda: alerts.stats()["webhooks"][0]["failed"] >= 1, 3)
    finally:
        alerts.close(timeout=0.5)


def test_receiver_down_fails_after_retries():
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # bound and never listening: every connection is refused
    url = f"http://127.0.0.1:{held.getsockname()[1]}/hook"
    # Backoff 0.5 s: delivering in emit() would take at least 0.25 + 0.5 s of backoff.
    alerts = hub(url, hook={"backoff": 0.5})
    try:
        start = time.perf_counter()
        alerts.emit("switch_changed", id="global", who="ops", why="drill")
        assert time.perf_counter() - start < 0.5
        assert wait(lambda: alerts.stats()["webhooks"][0]["failed"] == 1)
        assert alerts.stats()["webhooks"][0]["retries"] == 2
        assert alerts.recent()[-1]["event"] == "switch_changed"
    finally:
        alerts.close()
        held.close()


def test_event_filter_and_unsigned(receiver):
    alerts = Alerts(AlertsConfig((Webhook(receiver.url, events=("breaker_opened",)),)))
    try:
        alerts.emit("throttle_started", rule="x")
        alerts.emit("breaker_opened", breaker="db")
        payloads = delivered_up_to_a_marker(alerts, receiver)
        assert [(p["event"], p.get("breaker")) for p in payloads] == [("breaker_opened", "db")]
        assert all("X-Limiter-Signature" not in r["headers"] for r in receiver.requests)
    finally:
        alerts.close()


def test_stats_redact_webhook_path():
    alerts = Alerts(AlertsConfig((Webhook("http://127.0.0.1:9/services/T0/B0/SECRET"),)))
    try:
        assert alerts.stats()["webhooks"][0]["url"] == "http://127.0.0.1:9"
    finally:
        alerts.close(timeout=0.1)


def test_config_and_bad_input(monkeypatch):
    monkeypatch.setenv("HOOK", "abc")
    monkeypatch.delenv("MISSING", raising=False)
    cfg = load(AlertsConfig, {"webhooks": [{"url": "http://h:1/x", "secret_env": "HOOK"}]}, "a")
    assert cfg.webhooks[0].secret == b"abc"
    for section, match in (
        ({"url": "ftp://x"}, r"alerts: webhooks\[0\]\.url: must be a URL starting with http://"),
        ({"url": "http:///x"}, r"webhooks\[0\]\.url: has no host"),
        ({"secret": "x"}, r"webhooks\[0\]\.url: required"),
        ({"url": "http://h/", "secret_env": "MISSING"}, "secret_env: environment variable 'MISS"),
        ({"url": "http://h/", "secret_env": "HOOK", "secret": "x"}, "secret or secret_env"),
        ({"url": "http://h/", "timeout": 0}, r"timeout: must be a number of seconds in \[0.001"),
        ({"url": "http://h/", "retries": -1}, "retries"),
        ({"url": "http://h/", "events": ["nope"]}, r"events\[0\]: 'nope' is not one of"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(AlertsConfig, {"webhooks": [section]}, "alerts")
    for section, match in (
        ({"cooldown": -1}, "cooldown"),
        ({"queue_size": 0}, "queue_size"),
        ({"webhooks": "http://h/"}, "webhooks: must be a list"),
        ({"bogus": 1}, "unknown field 'bogus'"),
        ("http://h/", "must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(AlertsConfig, section, "alerts")
    with pytest.raises(InvalidParameter):
        Alerts().emit("made_up_event")
    with pytest.raises(InvalidParameter):
        Webhook("http://h/", slack="yes")
