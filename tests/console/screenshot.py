"""Save the README's console screenshot (docs/console.png) from a real service under load.

    .venv/bin/python -m tests.console.screenshot [OUT]     # about 75 s

Starts ``limiter serve`` with the console tests' rules and admin token, drives a minute of
traffic that changes over time (a steady client, a brute-forcer over its login limit, an
adaptive backend that slows down and recovers), then opens the console in headless Chromium
and saves the overview, the rules table and the per-rule charts.
"""

from __future__ import annotations

import io
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from limiter.server import v1
from PIL import Image
from selenium.webdriver.common.by import By

from tests.console.conftest import RULES, TOKEN, ensure_browser, new_driver
from tests.service.conftest import ServiceProcess, request

ROOT = Path(__file__).resolve().parents[2]
LOAD_S = 70.0


def drive(service: ServiceProcess, seconds: float, stop: threading.Event) -> None:
    """Traffic on 127.0.0.1 that changes shape every few seconds, until ``stop`` is set
    (or at most ``seconds``)."""
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    start = time.monotonic()
    with grpc.insecure_channel(service.target) as channel:
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        native = v1.LimiterStub(channel)
        while (elapsed := time.monotonic() - start) < seconds and not stop.is_set():
            users = 30 + 20 * math.sin(elapsed / 9)  # requests per second, varying
            for i in range(max(1, round(users / 10))):
                rls.ShouldRateLimit(request("edge", {"user": f"u{i % 7}"}), timeout=5)
            if 15 < elapsed < 45:  # a brute-force burst against the 5/minute login rule
                rls.ShouldRateLimit(request("edge", {"login": "mallory"}), timeout=5)
            # The backend behind the adaptive rule slows down for a while, then recovers;
            # only admitted calls report a latency.
            latency = 0.3 if 15 < elapsed < 30 else 0.02
            api = request("edge", {"api": "k"}, {"api": "k"}, {"api": "k"})
            reply = rls.ShouldRateLimit(api, timeout=5)
            admitted = sum(s.code == rls_pb2.RateLimitResponse.OK for s in reply.statuses)
            seen = v1.Observation(domain="edge", rule="backend-api", key="k", latency=latency)
            if admitted:
                native.Observe(v1.ObserveRequest(observations=[seen] * admitted), timeout=5)
            time.sleep(0.1)


def main(out: Path) -> None:
    ensure_browser()
    config = Path(tempfile.mkdtemp(prefix="limiter-console-")) / "rules.yaml"
    config.write_text(RULES)
    service = ServiceProcess(config, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    driver = new_driver()
    stop = threading.Event()
    load = threading.Thread(target=drive, args=(service, LOAD_S + 30, stop), daemon=True)
    try:
        load.start()
        time.sleep(LOAD_S)  # the service keeps the last minute: the page shows all of it
        if not load.is_alive():
            raise SystemExit("the load stopped early (see its traceback above)")
        driver.get(f"http://127.0.0.1:{service.http_port}/console/")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "connect").click()
        time.sleep(3)  # a few polls: every chart drawn
        bottom = driver.execute_script(
            "return document.getElementById('charts').getBoundingClientRect().bottom"
        )
        driver.set_window_size(1400, int(bottom) + 400)
        height = min(int(bottom) + 16, driver.execute_script("return window.innerHeight"))
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
        shot.crop((0, 0, shot.width, height)).save(out, optimize=True)
    finally:
        stop.set()
        load.join(10)
        driver.quit()
        service.stop()
    print(f"saved {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "console.png")
