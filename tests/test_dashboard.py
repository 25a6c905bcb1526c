"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium through
Debian's chromedriver (nothing downloads a browser), against a real gateway, coordinator
and three nodes.

It checks what a person would see: the login form; three nodes alive, each row naming its
host:port; a job's curve gaining points; a node killed with SIGKILL shown dead within a few
seconds, with an event saying so; the page carrying on across a gateway restart. It saves
a screenshot (to $DASHBOARD_SCREENSHOT when set: the README's is made that way).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import require, wait_for

from harness import LocalCluster, start_gateway

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEAD_WITHIN_S = 8.0  # heartbeats every 0.5 s, the gateway watching every 0.5 s


def seen(what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """wait_for, for what the page shows: an element replaced mid-look counts as not yet."""
    from selenium.common.exceptions import WebDriverException

    return wait_for(check, what, timeout_s, interval_s=0.1, tolerate=(WebDriverException,))


@pytest.fixture()
def browser() -> Iterator[Any]:
    require(os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER),
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver)")
    from selenium import webdriver  # a test extra
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1100", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def node_states(driver: Any) -> dict[str, str]:
    """address -> the word in its state cell, as the page shows them."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#nodes tr[data-node]')]"
        ".map(tr => [tr.dataset.node, tr.querySelector('td.state').textContent]))")


def curve_points(driver: Any, job_id: int) -> int:
    """Points the chart draws for the job (and the job row says the same)."""
    return driver.execute_script(
        "const c = Chart.getChart('curves'); if (!c) return -1;"
        "const d = c.data.datasets.find(s => s.jobId === arguments[0]);"
        "const row = document.querySelector(`#jobs tr[data-job='${arguments[0]}']`);"
        "if (!d || !row || Number(row.dataset.points) !== d.data.length) return -1;"
        "return d.data.length;", job_id)


def test_the_dashboard_shows_the_cluster_live_in_a_browser(tmp_path: Path, browser) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        for _ in range(3):  # loaded on every task: rounds slow enough to watch, same maths
            cluster.add_node(1.0, "--load-delay-s", "0.4")
        coordinator = cluster.add_coordinator("round-robin", "--heartbeat-s", "0.5")
        options = ["--watch-interval-s", "0.5"]
        gateway = start_gateway(tmp_path / "gw", [coordinator.address], *options)
        try:
            url = f"http://{gateway.address}"
            api = httpx.Client(base_url=url, timeout=10.0)
            account = {"username": "grace", "password": "analytical engine"}
            assert api.post("/v1/users", json=account).status_code == 201

            browser.get(url + "/")
            form = seen("the login form", lambda: browser.find_element(
                "id", "login-form").is_displayed() and browser.find_element("id", "login-form"))
            form.find_element("id", "login-username").send_keys(account["username"])
            form.find_element("id", "login-password").send_keys(account["password"])
            form.find_element("css selector", "button[type=submit]").click()

            addresses = {str(n.address) for n in cluster.nodes}
            seen("three nodes alive", lambda: node_states(browser) == dict.fromkeys(
                addresses, "alive"))

            token = api.post("/v1/tokens", json=account).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            job = api.post("/v1/jobs", headers=auth, json={
                "dataset": "letters", "rounds": 8, "epochs": 1, "h": 16, "eta": 0.003,
                "batch_size": 64, "momentum": 0.9, "init": "he", "standardize": True,
            }).json()["id"]
            first = seen("the job's first points", lambda: curve_points(browser, job) >= 1
                             and curve_points(browser, job))
            seen("the curve gaining points",
                     lambda: curve_points(browser, job) >= first + 2, timeout_s=60)

            victim = cluster.nodes[0]
            killed_at = time.monotonic()
            victim.kill()
            seen("the killed node shown dead",
                     lambda: node_states(browser).get(str(victim.address)) == "dead",
                     timeout_s=DEAD_WITHIN_S)
            shown_dead_s = time.monotonic() - killed_at
            assert sum(state == "alive" for state in node_states(browser).values()) == 2
            event = seen("an event saying the node is dead", lambda: [
                li.text for li in browser.find_elements("css selector",
                                                        "#events li[data-kind=node_dead]")
                if str(victim.address) in li.text])
            assert "heartbeats" in event[0], event  # the cause, in words
            assert "DEAD" in browser.find_element(
                "css selector", f"#nodes tr[data-node='{victim.address}']").text.upper()

            seen("the job done", lambda: api.get(f"/v1/jobs/{job}", headers=auth)
                     .json()["state"] == "done", timeout_s=120)
            seen("the whole curve", lambda: curve_points(browser, job) == 8)
            seen("the leaderboard row", lambda: browser.find_elements(
                "css selector", f"#leaderboard tr[data-job='{job}']"))
            shot = Path(os.environ.get("DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

            # The page carries on across a gateway restart (same port, same registry).
            gateway.stop()
            seen("the page saying the gateway is gone", lambda: "unreachable" in
                     browser.find_element("id", "connection").text)
            gateway = start_gateway(tmp_path / "gw", [coordinator.address], *options,
                                    port=gateway.address.port)
            seen("the page live again", lambda: "live" in
                     browser.find_element("id", "connection").text)
            assert browser.find_element("id", "board").is_displayed()  # still logged in
            assert curve_points(browser, job) == 8
        finally:
            gateway.stop()
    print(f"killed node shown dead after {shown_dead_s:.1f} s; screenshot {shot}")


def test_a_public_dashboard_needs_no_login_and_a_private_one_does(tmp_path: Path,
                                                                    browser) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.add_node()
        coordinator = cluster.add_coordinator("round-robin")
        public = start_gateway(tmp_path / "public", [coordinator.address], "--public-dashboard")
        private = start_gateway(tmp_path / "private", [coordinator.address])
        try:
            browser.get(f"http://{public.address}/")
            seen("the node, without logging in", lambda: node_states(browser) == {
                str(cluster.nodes[0].address): "alive"})
            assert not browser.find_element("id", "login").is_displayed()

            browser.get(f"http://{private.address}/")
            seen("the login form", lambda: browser.find_element("id", "login")
                     .is_displayed())
            assert not browser.find_element("id", "board").is_displayed()
            answer = httpx.get(f"http://{private.address}/v1/dashboard", timeout=10.0)
            assert answer.status_code == 401
            page = httpx.get(f"http://{private.address}/", timeout=10.0)
            assert "default-src 'self'" in page.headers["content-security-policy"]
        finally:
            public.stop()
            private.stop()


def test_the_page_ships_chart_js_with_its_licence() -> None:
    vendor = Path(__file__).resolve().parents[1] / "gateway" / "static" / "vendor"
    assert (vendor / "chart.umd.min.js").read_text().startswith("/*!\n * Chart.js v4.5.1")
    assert "MIT License" in (vendor / "chart.js-LICENSE.md").read_text()
