"""Fixtures of the console area: Debian Chromium + chromedriver (installed when missing),
a real ``limiter serve`` with an admin token, and a headless browser on its console page.

Selenium is pointed at ``/usr/bin/chromedriver`` and ``/usr/bin/chromium`` explicitly and
runs with ``SE_OFFLINE`` so Selenium Manager never downloads a driver or a browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import ServiceProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "console-test-token-0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

RULES = """\
domain: edge
descriptors:
  - key: user
    rate_limit: {name: per-user, unit: minute, requests_per_unit: 100000}
  - key: login
    rate_limit: {name: login, unit: minute, requests_per_unit: 5}
  - key: report
    rate_limit: {name: reports, unit: day, requests_per_unit: 2}
  - key: api
    rate_limit:
      name: backend-api
      algorithm: adaptive
      unit: second
      requests_per_unit: 200
      target_latency: 0.05
      percentile: 0.99
breakers:
  payments: {}
"""


def ensure_browser() -> None:
    """Install Debian's chromium and chromium-driver when they are absent (CI runs as root)."""
    if CHROMEDRIVER.exists() and CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "chromium/chromedriver are missing and cannot be installed here: run "
            "`apt-get install -y chromium chromium-driver` as root"
        )
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([*apt, "update"], [*apt, "install", "-y", "chromium", "chromium-driver"]):
        subprocess.run(command, check=True, env=env, timeout=900, stdout=subprocess.DEVNULL)
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        raise RuntimeError("apt-get finished but /usr/bin/chromium or chromedriver is missing")


@pytest.fixture(scope="session")
def browser_installed() -> None:
    ensure_browser()


SAVED: list[Path] = []


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Say where this run's screenshots are, also without ``-s``."""
    if SAVED:
        terminalreporter.write_line(f"console screenshots ({len(SAVED)}): {ARTIFACTS}")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    path = tmp_path_factory.mktemp("console") / "rules.yaml"
    path.write_text(RULES)
    svc = ServiceProcess(path, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    yield svc
    assert svc.stop() == 0


def new_driver():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(15)
    driver.set_script_timeout(10)
    return driver


@pytest.fixture(scope="module")
def driver(browser_installed: None) -> Iterator[object]:
    d = new_driver()
    yield d
    d.quit()


def screenshot(driver, path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole page, not just the viewport: the window grows to the page's height."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(height, min(full + 150, 6000)))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)
    SAVED.append(path)


def script_errors(driver) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Uncaught exceptions and console.error calls of the page since the last call."""
    return [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and e.get("source") in ("javascript", "console-api")
    ]
