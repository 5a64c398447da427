"""Alert webhooks against a real local HTTP receiver: up, slow, failing and down."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from limiter.alerts import Alerts, AlertsConfig, Webhook, sign, verify
from limiter.errors import ConfigError, InvalidParameter
from tests.support import free_port

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
    cfg = AlertsConfig.parse({"webhooks": [hook], "cooldown": 60, **kw})
    return Alerts(cfg, clock=clock)


def wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_receiver_up_gets_signed_json(receiver):
    alerts = hub(receiver.url, hook={"slack": True})
    try:
        alerts.emit(
            "throttle_started",
            {"rule": "api/per_user", "level": 1, "counts": {"over": 12}, "top_clients": ["a"]},
        )
        (req,) = receiver.wait_for(1)
        body = req["body"]
        assert verify(SECRET.encode(), body, req["headers"]["X-Limiter-Signature"])
        assert req["headers"]["X-Limiter-Signature"] == sign(SECRET.encode(), body)
        assert not verify(b"other", body, req["headers"]["X-Limiter-Signature"])
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
        receiver.wait_for(4)
        time.sleep(0.1)
        payloads = receiver.payloads()
        assert len(payloads) == 4 and alerts.suppressed == 1
        assert payloads[-1]["suppressed_since_last"] == 1
        assert len(alerts.recent()) == 5  # operators still see every event
        assert [e["seq"] for e in alerts.recent(since=3)] == [4, 5]
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
        assert elapsed < 0.5  # 50 emits against a 1 s receiver: nothing waited on it
        stats = alerts.stats()["webhooks"][0]
        assert stats["dropped"] >= 40  # bounded queue: the overflow is counted, not kept
        assert stats["queued"] + stats["dropped"] == 50
        assert wait(lambda: alerts.stats()["webhooks"][0]["failed"] >= 1, 3)
    finally:
        alerts.close(timeout=0.5)


def test_receiver_down_fails_after_retries():
    url = f"http://127.0.0.1:{free_port()}/hook"
    alerts = hub(url)
    try:
        start = time.perf_counter()
        alerts.emit("switch_changed", id="global", who="ops", why="drill")
        assert time.perf_counter() - start < 0.05
        assert wait(lambda: alerts.stats()["webhooks"][0]["failed"] == 1)
        assert alerts.stats()["webhooks"][0]["retries"] == 2
        assert alerts.recent()[-1]["event"] == "switch_changed"
    finally:
        alerts.close()


def test_event_filter_and_unsigned(receiver):
    alerts = Alerts(AlertsConfig.parse({"url": receiver.url, "events": ["breaker_opened"]}))
    try:
        alerts.emit("throttle_started", rule="x")
        alerts.emit("breaker_opened", breaker="db")
        (req,) = receiver.wait_for(1)
        time.sleep(0.1)
        assert len(receiver.requests) == 1 and "X-Limiter-Signature" not in req["headers"]
        assert json.loads(req["body"])["event"] == "breaker_opened"
    finally:
        alerts.close()


def test_stats_redact_webhook_path():
    alerts = Alerts(AlertsConfig.parse({"url": "http://127.0.0.1:9/services/T0/B0/SECRET"}))
    try:
        assert alerts.stats()["webhooks"][0]["url"] == "http://127.0.0.1:9"
    finally:
        alerts.close(timeout=0.1)


def test_config_and_bad_input():
    cfg = AlertsConfig.parse(
        {"url": "http://127.0.0.1:1/x", "secret_env": "HOOK"}, env={"HOOK": "abc"}
    )
    assert cfg.webhooks[0].secret == b"abc"
    for section, match in (
        ({"url": "ftp://x"}, "url must be an http"),
        ({"webhooks": [{"secret": "x"}]}, "url is required"),
        ({"url": "http://h/", "secret_env": "MISSING"}, "MISSING"),
        ({"url": "http://h/", "timeout": 0}, "timeout"),
        ({"url": "http://h/", "retries": -1}, "retries"),
        ({"url": "http://h/", "events": ["nope"]}, "events"),
        ({"cooldown": -1}, "cooldown"),
        ({"queue_size": 0}, "queue_size"),
        ({"webhooks": "http://h/"}, "list"),
        ({"bogus": 1}, "unknown key"),
        ("http://h/", "mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            AlertsConfig.parse(section, env={})
    with pytest.raises(InvalidParameter):
        Alerts().emit("made_up_event")
    with pytest.raises(InvalidParameter):
        Webhook("http://h/", slack="yes")
