"""The dashboard in a real headless Chromium, served by uvicorn over seeded data, on a desktop
(1280 px) and a phone (390 px): the charts render with their axis titles, a filter changes the
numbers, the comments appear and the search finds one, the empty state shows, and nothing is
wider than the phone's screen. Screenshots of every step are kept in ``test-artifacts/``."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.conftest import Database
from tests.web import test_browser
from tests.web.test_browser import ARTIFACTS, _wait
from tests.web.test_dashboard import SEARCHED, seed_dashboard

pytestmark = pytest.mark.browser

browser = test_browser.browser  # the answer page's fixtures: Chromium, and the app on uvicorn
served = test_browser.served
WHOLE = "since=2026-09-01&until=2026-11-21"


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    """The served app's database: SQLite (the page's SQL is checked on both in the fast tests)."""
    return sqlite_db


def _authorised(driver: Any) -> None:
    """Every request of the browser carries the operators' basic credentials."""
    token = base64.b64encode(b"ops:test-dashboard").decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def _open(driver: Any, url: str, width: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.set_window_size(width, 900)
    driver.get(url)
    _wait(driver, ec.presence_of_element_located((By.TAG_NAME, "main")))


def _shot(driver: Any, name: str, width: int) -> None:
    """A screenshot of the whole page (the window grown to the page's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 40, 8000))
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(width, 900)


def _overflow(driver: Any) -> int:
    return int(driver.execute_script("return document.documentElement.scrollWidth"))


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


@pytest.mark.parametrize("width", [1280, 390])
def test_dashboard_in_a_real_browser(served: str, browser: Any, db: Database, width: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    seed_dashboard(db)
    driver = browser
    _authorised(driver)
    _open(driver, f"{served}/dashboard?{WHOLE}", width)
    assert "NPS dashboard" in driver.title

    # Charts: drawn, with a width, and their axis titles.
    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) >= 7
    assert all(c.size["width"] > 100 for c in charts)
    axes = {
        t.text for t in driver.find_elements(By.CSS_SELECTOR, "svg text.axis-x, svg text.axis-y")
    }
    assert {"Week of purchase", "NPS", "Score", "Answers"} <= axes
    assert driver.find_elements(By.CSS_SELECTOR, "#nps-raw .big")[0].text
    # The style sheet is ours and was applied.
    background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(244, 245, 247)"
    # Method tables are collapsed.
    assert not driver.find_element(By.ID, "method").get_attribute("open")
    if width == 390:
        assert _overflow(driver) <= 390
    _shot(driver, f"dashboard-{width}", width)

    # A filter changes the numbers.
    everyone = _text(driver, "#nps-raw")
    Select(driver.find_element(By.NAME, "channel")).select_by_value("sms")
    driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    _wait(driver, lambda d: "channel=sms" in d.current_url)
    _wait(driver, ec.presence_of_element_located((By.ID, "nps-raw")))
    assert _text(driver, "#nps-raw") != everyone
    if width == 390:
        assert _overflow(driver) <= 390
    _shot(driver, f"dashboard-{width}-sms", width)

    # Comments appear; the search finds the one about a crushed parcel.
    _open(driver, f"{served}/dashboard?{WHOLE}", width)
    assert len(driver.find_elements(By.CSS_SELECTOR, "li.comment")) == 20
    search = driver.find_element(By.NAME, "q")
    search.send_keys("crushed")
    driver.find_element(By.CSS_SELECTOR, "form.comment-filters button[type=submit]").click()
    _wait(driver, lambda d: "q=crushed" in d.current_url)
    found = driver.find_elements(By.CSS_SELECTOR, "li.comment")
    assert len(found) == 1 and SEARCHED in found[0].text
    _shot(driver, f"dashboard-{width}-search", width)

    # A period without answers: the plain empty state.
    _open(driver, f"{served}/dashboard?since=2020-01-01&until=2020-02-01", width)
    empty = driver.find_element(By.ID, "empty-state")
    assert "No answers yet" in empty.text
    assert not driver.find_elements(By.ID, "nps-raw")
    if width == 390:
        assert _overflow(driver) <= 390
    _shot(driver, f"dashboard-{width}-empty", width)
