"""The console in headless Chromium against a real ``limiter serve``: live numbers under
load, a switch flipped from the page changing real decisions, errors, keyboard use.

Screenshots go to tests/console/artifacts/ (printed at the start of the run).
"""

from __future__ import annotations

import json
import threading
import urllib.request

import grpc
import pytest
from limiter.server import v1
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.console.conftest import TOKEN, screenshot, script_errors
from tests.service.conftest import ServiceProcess
from tests.support import RedisServer

pytestmark = pytest.mark.timeout(120)


def wait(driver, predicate, timeout=10.0, what="condition"):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate())
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def by_id(driver, element_id):
    return driver.find_element(By.ID, element_id)


def cell(driver, key, field):
    selector = f'#rules tr[data-key="{key}"] td[data-field="{field}"]'
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def as_number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


CHART = """
const card = document.querySelector(`#charts figure[data-key="${arguments[0]}"]`);
if (!card) return null;
const svg = card.querySelector("svg");
const box = svg.getBoundingClientRect();
const paths = {};
for (const p of svg.querySelectorAll("path")) {
  paths[p.getAttribute("class")] = ((p.getAttribute("d") || "").match(/[ML]/g) || []).length;
}
const text = (sel) => Array.from(svg.querySelectorAll(sel)).map((t) => t.textContent);
return {
  width: box.width, height: box.height, paths, label: svg.getAttribute("aria-label"),
  labels: {left: text('text[data-axis="left"]'), right: text('text[data-axis="right"]'),
           x: text("text.x-label")},
  legend: Array.from(card.querySelectorAll(".legend li")).filter((li) => !li.hidden)
    .map((li) => li.className),
};
"""


def chart(driver, key):
    """Size (CSS px), points per series, axis labels and legend of a rule's chart card."""
    found = driver.execute_script(CHART, key)
    return found or {"width": 0, "height": 0, "paths": {}, "labels": {}, "legend": [], "label": ""}


def open_console(driver, svc, token=TOKEN):
    driver.get(f"http://127.0.0.1:{svc.http_port}/console/")
    field = by_id(driver, "token")
    wait(driver, lambda: field.is_displayed(), what="the token field")
    field.send_keys(token)
    by_id(driver, "connect").click()


def connected(driver):
    return by_id(driver, "conn").text == "Connected." and by_id(driver, "dashboard").is_displayed()


def rls_status(svc, key, value):
    body = {"domain": "edge", "descriptors": [{"entries": [{"key": key, "value": value}]}]}
    return svc.http("POST", "/json", json.dumps(body).encode())[0]


def admin(svc, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{svc.http_port}{path}", data=data, method=method
    )
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


class Load:
    """Background traffic: RLS checks on two rules, native Decide + slow Observe on the
    adaptive rule, until stopped."""

    def __init__(self, svc):
        self.svc = svc
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with grpc.insecure_channel(self.svc.target) as channel:
            stub = v1.LimiterStub(channel)
            check = v1.Check(domain="edge", rule="backend-api", key="k")
            slow = v1.Observation(domain="edge", rule="backend-api", key="k", latency=0.3)
            while not self.stop_event.is_set():
                rls_status(self.svc, "user", "load")
                rls_status(self.svc, "login", "mallory")
                stub.Decide(v1.DecideRequest(checks=[check]), timeout=5)
                stub.Observe(v1.ObserveRequest(observations=[slow] * 20), timeout=5)
                self.stop_event.wait(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=10)


def test_wrong_token_is_refused_with_a_clear_error(driver, service, artifacts):
    open_console(driver, service, token="not-the-token-0000000000")
    error = by_id(driver, "error")
    wait(driver, lambda: error.is_displayed(), what="the error message")
    assert "refused the token (401" in error.text
    assert error.get_attribute("role") == "alert"
    assert not by_id(driver, "dashboard").is_displayed()
    assert driver.execute_script("return document.activeElement.id") == "token"
    screenshot(driver, artifacts / "wrong-token.png")


def test_live_numbers_move_under_load(driver, service, artifacts):
    open_console(driver, service)
    wait(driver, lambda: connected(driver), what="the dashboard")
    with Load(service):
        wait(
            driver,
            lambda: (as_number(cell(driver, "edge/user", "hits_per_s")) or 0) > 0,
            timeout=10,
            what="a hits/s rate on edge/per-user",
        )
        first = as_number(cell(driver, "edge/user", "total_hits"))
        wait(
            driver,
            lambda: as_number(cell(driver, "edge/user", "total_hits")) > first,
            what="the total to grow",
        )
        # login allows 5 per minute: the rest of the load is over the limit.
        wait(
            driver,
            lambda: (as_number(cell(driver, "edge/login", "over_per_s")) or 0) > 0,
            what="an over-limit rate on edge/login",
        )
        # The adaptive rule's limit falls below its 200/s ceiling as slow latencies arrive.
        wait(
            driver,
            lambda: (as_number(cell(driver, "edge/api", "adaptive_limit")) or 200) < 200,
            timeout=15,
            what="the adaptive limit to drop",
        )
        wait(
            driver,
            lambda: cell(driver, "edge/api", "observed").endswith(" ms"),
            what="the observed P99",
        )
        assert cell(driver, "edge/api", "observed").startswith("P99 ")
        wait(
            driver,
            lambda: chart(driver, "edge/api")["paths"].get("observed", 0) >= 2,
            what="the observed latency in the adaptive rule's chart",
        )
        user, api = chart(driver, "edge/user"), chart(driver, "edge/api")
        for drawn in (user, api):  # readable: most of a card's width, not a thumbnail
            assert drawn["width"] >= 500 and drawn["height"] >= 200, drawn
            assert drawn["paths"]["hits"] >= 2 and drawn["labels"]["x"] == ["−60 s", "−30 s", "now"]
            assert drawn["labels"]["left"][0] == "0" and drawn["labels"]["left"][-1] != "0"
        assert user["paths"]["over"] >= 2
        assert user["legend"] == ["hits", "over"]  # no adaptive series on a fixed window
        assert api["legend"] == ["hits", "over", "limit", "observed", "target"]
        assert api["paths"]["limit"] >= 2 and api["paths"]["target"] >= 2
        assert api["labels"]["right"][-1].endswith(" ms")
        assert "adaptive limit" in api["label"] and "observed latency P99" in api["label"]
        wait(
            driver,
            lambda: "mallory" in by_id(driver, "top-clients").text,
            what="the heaviest client in top clients",
        )
        assert "edge/login" in by_id(driver, "top-rules").text
        screenshot(driver, artifacts / "live-under-load.png")
    # The token is nowhere but the tab's memory.
    stored = driver.execute_script(
        "return [sessionStorage.length, localStorage.length, location.href, document.cookie]"
    )
    assert stored == [0, 0, f"http://127.0.0.1:{service.http_port}/console/", ""]
    assert TOKEN not in driver.page_source
    assert by_id(driver, "ov-pid").text == str(service.proc.pid)  # whose counts these are
    assert script_errors(driver) == []


TABLE_LAYOUT = """
return Array.from(document.querySelectorAll("main table")).map((t) => [
  t.id,
  Array.from(t.tHead.rows[0].cells).map((c) => [c.scope, c.textContent]),
  Array.from(t.tBodies[0].rows).map((r) =>
    Array.from(r.cells).reduce((n, c) => n + c.colSpan, 0)),
]);
"""


def test_every_table_has_scoped_headings_as_wide_as_its_rows(driver, service):
    """The page builds its table heads; each must name every column its rows fill."""
    open_console(driver, service)
    wait(driver, lambda: connected(driver), what="the dashboard")
    layout = {name: (heads, widths) for name, heads, widths in driver.execute_script(TABLE_LAYOUT)}
    assert set(layout) == {
        "rules", "breakers", "levels", "top-clients", "top-rules", "switches", "audit", "events",
    }  # fmt: skip
    for name, (heads, widths) in layout.items():
        assert {scope for scope, _ in heads} == {"col"}, name
        assert widths and set(widths) == {len(heads)}, (name, widths, heads)
    names = [text for _, text in layout["breakers"][0]]
    assert names == ["Breaker", "State", "Mode", "Calls", "Failures", "Rejected", "Actions"]
    assert [text for _, text in layout["rules"][0]][-2:] == ["Switch", "Actions"]
    assert script_errors(driver) == []


def test_switch_flipped_from_the_page_changes_decisions(driver, service, artifacts):
    open_console(driver, service)
    wait(driver, lambda: connected(driver), what="the dashboard")
    assert rls_status(service, "user", "zoe") == 200
    switch_button = 'button[aria-label="Switch for rule edge/per-user"]'
    driver.find_element(By.CSS_SELECTOR, switch_button).click()
    assert by_id(driver, "sw-target").get_attribute("value") == "edge/per-user"
    assert by_id(driver, "sw-action").get_attribute("value") == "force_deny"
    by_id(driver, "sw-ttl").send_keys("120")
    by_id(driver, "sw-who").send_keys("console-test")
    # A missing reason is refused in the page, naming the field.
    by_id(driver, "sw-review").click()
    assert "Why is required" in by_id(driver, "sw-error").text
    assert by_id(driver, "sw-why").get_attribute("aria-invalid") == "true"
    by_id(driver, "sw-why").send_keys("incident 42: abusive traffic")
    by_id(driver, "sw-review").click()
    dialog = by_id(driver, "confirm")
    wait(driver, lambda: dialog.is_displayed(), what="the confirmation")
    text = by_id(driver, "confirm-text").text
    assert "rule:edge/per-user" in text and "force_deny" in text and "120 s" in text
    # Nothing is changed before the operator confirms.
    assert admin(service, "GET", "/v1/switches") == {"switches": []}
    screenshot(driver, artifacts / "switch-confirm.png")
    by_id(driver, "confirm-ok").click()
    propagation = by_id(driver, "propagation")
    wait(
        driver,
        lambda: (
            "Live in /v1/switches" in propagation.text and "In the audit log" in propagation.text
        ),
        what="the change to show in /v1/switches and /v1/audit",
    )
    assert "console-test: incident 42: abusive traffic" in propagation.text
    assert rls_status(service, "user", "zoe") == 429
    with grpc.insecure_channel(service.target) as channel:
        check = v1.Check(domain="edge", rule="per-user", key="zoe")
        reply = v1.LimiterStub(channel).Decide(v1.DecideRequest(checks=[check]))
        assert not reply.results[0].allowed
    wait(
        driver,
        lambda: cell(driver, "edge/user", "switch").startswith("force_deny (console-test)"),
        what="the rule row to show the switch",
    )
    assert "incident 42" in by_id(driver, "audit").text
    assert "incident 42" in by_id(driver, "events").text
    screenshot(driver, artifacts / "switch-applied.png")

    # Remove it from the active switches table, again confirmed and with a reason.
    driver.find_element(
        By.CSS_SELECTOR, 'button[aria-label="Remove switch rule:edge/per-user"]'
    ).click()
    wait(driver, lambda: dialog.is_displayed(), what="the removal confirmation")
    assert by_id(driver, "rm-who").get_attribute("value") == "console-test"
    by_id(driver, "confirm-ok").click()
    assert "Why is required" in by_id(driver, "confirm-error").text
    by_id(driver, "rm-why").send_keys("incident 42 resolved")
    by_id(driver, "confirm-ok").click()
    wait(
        driver,
        lambda: (
            "Removal of rule:edge/per-user" in propagation.text
            and "In the audit log" in propagation.text
        ),
        what="the removal to propagate",
    )
    assert admin(service, "GET", "/v1/switches") == {"switches": []}
    assert rls_status(service, "user", "zoe") == 200
    audit = admin(service, "GET", "/v1/audit?limit=2")["audit"]
    assert [(a["op"], a["who"], a["why"]) for a in audit] == [
        ("delete", "console-test", "incident 42 resolved"),
        ("put", "console-test", "incident 42: abusive traffic"),
    ]
    assert script_errors(driver) == []


def press(driver, *keys):
    ActionChains(driver).send_keys(*keys).perform()


def focused(driver):
    return driver.execute_script("return document.activeElement.id")


def tab_to(driver, element_id, limit=80):
    for _ in range(limit):
        if focused(driver) == element_id:
            return
        press(driver, Keys.TAB)
    raise AssertionError(f"#{element_id} is not reachable with Tab (at {focused(driver)!r})")


def test_keyboard_only_forces_a_degradation_level(driver, service, artifacts):
    driver.get(f"http://127.0.0.1:{service.http_port}/console/")
    wait(driver, lambda: focused(driver) == "token", what="the token field to have focus")
    press(driver, TOKEN, Keys.ENTER)
    wait(driver, lambda: connected(driver), what="the dashboard")
    tab_to(driver, "sw-kind")
    press(driver, Keys.ARROW_DOWN, Keys.ARROW_DOWN)  # Rule -> Global -> Degradation level
    assert by_id(driver, "sw-kind").get_attribute("value") == "level"
    # The focus order follows the visible form: hidden fields are skipped.
    for element_id, keys in (
        ("sw-target", "default"),
        ("sw-level", "2"),
        ("sw-ttl", "60"),
        ("sw-who", "keyboard-op"),
        ("sw-why", "load test of the console"),
    ):
        press(driver, Keys.TAB)
        assert focused(driver) == element_id
        press(driver, keys)
    press(driver, Keys.TAB)
    assert focused(driver) == "sw-review"
    press(driver, Keys.ENTER)
    wait(driver, lambda: by_id(driver, "confirm").is_displayed(), what="the confirmation")
    assert focused(driver) == "confirm-cancel"  # the safe choice has focus first
    press(driver, Keys.TAB)
    assert focused(driver) == "confirm-ok"
    press(driver, Keys.ENTER)
    wait(
        driver,
        lambda: "default: 2" in by_id(driver, "ov-level").text,
        what="the overview to show level 2",
    )
    assert focused(driver) == "sw-review"  # focus returns to the form after the dialog
    screenshot(driver, artifacts / "keyboard-level.png")
    with grpc.insecure_channel(service.target) as channel:
        check = v1.Check(domain="edge", rule="per-user", key="kb")
        assert v1.LimiterStub(channel).Decide(v1.DecideRequest(checks=[check])).level == 2
    sw = admin(service, "GET", "/v1/switches/level:default")
    assert (sw["level"], sw["who"], sw["why"]) == (2, "keyboard-op", "load test of the console")
    admin(service, "DELETE", "/v1/switches/level:default", {"who": "t", "why": "cleanup"})
    assert script_errors(driver) == []


def test_unreachable_service_is_reported(driver, service, artifacts, tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(service.config.read_text())
    other = ServiceProcess(config, env={"LIMITER_ADMIN_TOKEN": TOKEN}).start()
    try:
        open_console(driver, other)
        wait(driver, lambda: connected(driver), what="the dashboard")
    finally:
        assert other.stop() == 0
    error = by_id(driver, "error")
    try:
        wait(driver, lambda: error.is_displayed(), timeout=15, what="the unreachable error")
        assert "unreachable" in error.text and f"127.0.0.1:{other.http_port}" in error.text
        assert by_id(driver, "conn").text == "Connection problem."
        assert "stale" in by_id(driver, "dashboard").get_attribute("class")
        screenshot(driver, artifacts / "unreachable.png")
        other.start()  # the same ports: the page's retries find it again
        wait(driver, lambda: not error.is_displayed(), timeout=15, what="the error to clear")
        assert connected(driver)
        assert "stale" not in by_id(driver, "dashboard").get_attribute("class")
    finally:
        assert other.stop() == 0


# One case per kind of switch: (kind, target, action, extra form fields, stored fields).
SWITCH_CASES = [
    ("global", None, "force_allow", {}, {"id": "global", "action": "force_allow"}),
    (
        "rule",
        "edge/reports",
        "override",
        {"sw-limit": "1000"},
        {"id": "rule:edge/reports", "action": "override", "limit": 1000},
    ),
    ("rule", "edge/reports", "shadow", {}, {"id": "rule:edge/reports", "action": "shadow"}),
    (
        "breaker",
        "payments",
        "force_open",
        {},
        {"id": "breaker:payments", "action": "force_open"},
    ),
]


def test_every_kind_of_switch_can_be_flipped_from_the_page(driver, service, artifacts):
    # "reports" allows 2 a day: eve's third report is over the limit until a switch acts.
    assert [rls_status(service, "report", "eve") for _ in range(3)] == [200, 200, 429]
    open_console(driver, service)
    wait(driver, lambda: connected(driver), what="the dashboard")
    propagation = by_id(driver, "propagation")
    for kind, target, action, extra, stored in SWITCH_CASES:
        Select(by_id(driver, "sw-kind")).select_by_value(kind)
        assert by_id(driver, "sw-target-field").is_displayed() == (target is not None)
        if target is not None:
            by_id(driver, "sw-target").clear()
            by_id(driver, "sw-target").send_keys(target)
        Select(by_id(driver, "sw-action")).select_by_value(action)
        assert by_id(driver, "sw-limit-field").is_displayed() == ("sw-limit" in extra)
        for element_id, value in {"sw-who": "ops", "sw-why": f"try {action}", **extra}.items():
            by_id(driver, element_id).clear()
            by_id(driver, element_id).send_keys(value)
        by_id(driver, "sw-review").click()
        wait(driver, lambda: by_id(driver, "confirm").is_displayed(), what="the confirmation")
        by_id(driver, "confirm-ok").click()
        wait(
            driver,
            # The audit line names this case's reason: not the previous case's text.
            lambda why=f"In the audit log (ops: try {action})": why in propagation.text,
            what=f"{stored['id']} to propagate",
        )
        live = admin(service, "GET", "/v1/switches")["switches"]
        assert [{k: s[k] for k in stored} for s in live] == [stored]
        assert live[0]["who"] == "ops" and live[0]["why"] == f"try {action}"
        if kind == "breaker":
            wait(
                driver,
                lambda: "force_open by ops" in by_id(driver, "breakers").text,
                what="the breaker row to show the switch",
            )
        else:  # each of these lets eve's over-limit report through
            assert rls_status(service, "report", "eve") == 200
        screenshot(driver, artifacts / f"switch-{kind}-{action}.png")
        admin(service, "DELETE", f"/v1/switches/{stored['id']}", {"who": "t", "why": "next"})
    assert rls_status(service, "report", "eve") == 429
    # What the service refuses (400) is shown in the dialog, naming what is wrong.
    Select(by_id(driver, "sw-kind")).select_by_value("rule")
    by_id(driver, "sw-target").clear()
    by_id(driver, "sw-target").send_keys("x" * 300)
    by_id(driver, "sw-review").click()
    wait(driver, lambda: by_id(driver, "confirm").is_displayed(), what="the confirmation")
    by_id(driver, "confirm-ok").click()
    refusal = by_id(driver, "confirm-error")
    wait(driver, lambda: refusal.is_displayed(), what="the refusal")
    assert "answered 400" in refusal.text and "switch id must be" in refusal.text
    screenshot(driver, artifacts / "switch-refused.png")
    by_id(driver, "confirm-cancel").click()
    assert admin(service, "GET", "/v1/switches") == {"switches": []}
    assert script_errors(driver) == []


def test_token_kept_for_the_tab_only_when_asked(driver, service):
    driver.get(f"http://127.0.0.1:{service.http_port}/console/")
    by_id(driver, "remember").click()
    by_id(driver, "token").send_keys(TOKEN)
    by_id(driver, "connect").click()
    wait(driver, lambda: connected(driver), what="the dashboard")
    keys = "return [Object.keys(sessionStorage), localStorage.length]"
    assert driver.execute_script(keys) == [["limiter.console.token"], 0]
    driver.refresh()  # the same tab: connects again without asking
    wait(driver, lambda: connected(driver), what="the dashboard after a reload")
    by_id(driver, "disconnect").click()
    assert driver.execute_script(keys) == [[], 0]
    assert by_id(driver, "token").is_displayed() and not by_id(driver, "dashboard").is_displayed()
    assert focused(driver) == "token"


def test_switch_store_outage_is_shown_while_the_rest_keeps_updating(
    driver, service, artifacts, tmp_path
):
    with RedisServer() as redis_server:
        config = tmp_path / "rules.yaml"
        config.write_text(service.config.read_text())
        shared = ServiceProcess(
            config, "--redis", redis_server.url, env={"LIMITER_ADMIN_TOKEN": TOKEN}
        ).start()
        try:
            open_console(driver, shared)
            wait(driver, lambda: connected(driver), what="the dashboard")
            assert by_id(driver, "ov-store").text == "healthy"
            redis_server.kill()
            error = by_id(driver, "error")
            wait(driver, lambda: error.is_displayed(), what="the store outage")
            assert "switch store is unavailable (503" in error.text
            assert by_id(driver, "ov-store").text == "UNREACHABLE"
            assert "stale" not in by_id(driver, "dashboard").get_attribute("class")
            before = as_number(cell(driver, "edge/user", "total_hits"))
            assert rls_status(shared, "user", "during-outage") == 200  # failure_mode: allow
            wait(
                driver,
                lambda: as_number(cell(driver, "edge/user", "total_hits")) > before,
                what="the rules to keep updating",
            )
            # A change cannot be stored: the dialog says so and nothing pretends otherwise.
            Select(by_id(driver, "sw-kind")).select_by_value("global")
            by_id(driver, "sw-who").send_keys("ops")
            by_id(driver, "sw-why").send_keys("outage drill")
            by_id(driver, "sw-review").click()
            wait(driver, lambda: by_id(driver, "confirm").is_displayed(), what="the dialog")
            by_id(driver, "confirm-ok").click()
            refusal = by_id(driver, "confirm-error")
            wait(driver, lambda: refusal.is_displayed(), what="the refusal")
            assert "switch store is unavailable (503" in refusal.text
            screenshot(driver, artifacts / "store-outage.png")
            by_id(driver, "confirm-cancel").click()
            redis_server.start()
            wait(driver, lambda: not error.is_displayed(), timeout=20, what="the store to heal")
            wait(  # the store's subscriber reconnects with a back-off of up to 2 s
                driver,
                lambda: by_id(driver, "ov-store").text == "healthy",
                timeout=10,
                what="the store to be reported healthy",
            )
            assert script_errors(driver) == []
        finally:
            assert shared.stop() == 0
