"""Logs keep secrets out and stay small: a webhook URL's secret path is never written,
and a failure repeating many times a second is written a few times.

Attack: whoever can read the logs learns a Slack-style webhook's secret (its URL path)
from every failed delivery; a fault that repeats (refused deliveries here; accept errors
or connection tracebacks elsewhere) fills the disk with identical lines.
"""

from __future__ import annotations

import json

from limiter.server.logs import REPEAT_BURST

from tests.security.conftest import TOKEN, admin
from tests.service.conftest import wait_until

SECRET = "T0SECRET/B0SECRET/XyZsecretPATH"
CONFIG = f"""domain: d
descriptors:
  - key: user
    rate_limit: {{unit: second, requests_per_unit: 10}}
alerts:
  cooldown: 0
  webhooks:
    # Nothing listens on port 1: every delivery is refused.
    - url: http://127.0.0.1:1/services/{SECRET}?token=QuErYsEcReT
      retries: 0
      timeout: 1
"""
EVENTS = 40


def test_failed_webhooks_are_logged_redacted_and_once_per_burst(serve) -> None:  # type: ignore[no-untyped-def]
    service = serve(CONFIG, env={"LIMITER_ADMIN_TOKEN": TOKEN})
    for i in range(EVENTS):
        body = {"level": 1, "who": "t", "why": "t"}
        assert admin(service, "PUT", f"/v1/switches/level:svc{i}", body)[0] == 200

    def failed() -> int:
        return admin(service, "GET", "/v1/status")[1]["alerts"]["webhooks"][0]["failed"]

    assert wait_until(lambda: failed() >= EVENTS, 30)
    text = service.logs()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert "SECRET" not in text and "QuErYsEcReT" not in text
    refused = [line for line in lines if line["msg"].startswith("webhook http://127.0.0.1:1")]
    assert refused and refused[0]["msg"] == "webhook http://127.0.0.1:1: ConnectionRefusedError"
    assert len(refused) <= REPEAT_BURST, refused
