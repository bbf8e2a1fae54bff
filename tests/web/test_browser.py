"""The answer page in a real headless Chromium, against the app served by uvicorn.

A real invitation email is rendered with links for this server; the browser opens the link for
9, the page's script posts the score, the follow-up is answered, thanks are shown.
"""

from __future__ import annotations

import html as html_lib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select

from channels.links import AnswerLinks
from channels.messages import render_email
from models import Answer, utcnow
from tests.conftest import Database, service_missing
from tests.dispatch.test_responses import seed_survey, survey_of
from web.app import create_app

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class _Links(HTMLParser):
    """Every <a href> of a document with its text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((html_lib.unescape(self._href), "".join(self._text).strip()))
            self._href = None


@pytest.fixture
def served(db: Database, runtime_for) -> Iterator[str]:
    """The app on 127.0.0.1 at a free port, in a background thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(runtime_for(db, NPS_PUBLIC_BASE_URL=base))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        service_missing("Chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="nps-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=390,844",  # a phone: the page is mobile first
    ):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except Exception as exc:  # a broken local install, not a failing page
        shutil.rmtree(profile, ignore_errors=True)
        service_missing(f"a working Chromium ({type(exc).__name__}: {str(exc)[:200]})")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout: float = 15):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def test_answer_in_a_real_browser(served: str, browser, db: Database):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    sid = seed_survey(db, channel="email", state="delivered", locale="en-GB")
    links = AnswerLinks("test-secret-key", served)  # the runtime's NPS_SECRET_KEY
    expires = utcnow() + timedelta(days=13)
    email = render_email(
        "en-GB",
        "Example Shop",
        "Ana",
        [links.url_for(sid, expires, score=n) for n in range(11)],
        links.unsubscribe_url(sid, expires),
        False,
    )
    parser = _Links()
    parser.feed(email.html)
    [nine] = [href for href, text in parser.links if text == "9"]
    assert nine.startswith(served + "/s/") and nine.endswith("?score=9")

    driver.get(nine)
    # The script posted the preselected score; the follow-up question is shown.
    comment = _wait(driver, ec.visibility_of_element_located((By.ID, "comment")))
    assert "What did you like most?" in driver.page_source
    assert "?score=" not in driver.current_url and driver.current_url.endswith("?step=comment")
    assert survey_of(db, sid).score == 9
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "answer-page-followup.png"))

    comment.send_keys("Fast delivery and friendly support.")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    heading = _wait(driver, ec.visibility_of_element_located((By.TAG_NAME, "h1")))
    _wait(driver, lambda d: "Thank you for your feedback!" in d.page_source)
    assert heading.text == "Thank you for your feedback!"
    driver.save_screenshot(str(ARTIFACTS / "answer-page.png"))

    survey = survey_of(db, sid)
    assert (survey.state, survey.score, survey.comment) == (
        "completed",
        9,
        "Fast delivery and friendly support.",
    )
    with db.session() as s:
        history = s.execute(
            select(Answer.score, Answer.comment, Answer.via).where(Answer.survey_id == sid)
        ).all()
    assert [tuple(r) for r in history] == [
        (9, None, "web"),
        (None, "Fast delivery and friendly support.", "web"),
    ]
    assert (ARTIFACTS / "answer-page.png").stat().st_size > 0


def test_keyboard_only_answer_without_a_score_in_the_link(served: str, browser, db: Database):
    """No score in the link: nothing posts by itself; a keyboard user picks one and sends."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    sid = seed_survey(db, channel="email", state="sent", locale="de-DE")
    url = AnswerLinks("test-secret-key", served).url_for(sid, utcnow() + timedelta(days=5))
    driver.get(url)
    _wait(driver, ec.presence_of_element_located((By.ID, "score-0")))
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "de"
    time.sleep(0.3)
    assert survey_of(db, sid).score is None  # nothing posted by itself
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "answer-page-scale.png"))
    first = driver.find_element(By.ID, "score-0")
    first.send_keys(Keys.SPACE)  # focus and select 0, then arrow keys move within the group
    for _ in range(3):
        driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element.get_attribute("value") == "3"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(driver, ec.visibility_of_element_located((By.ID, "comment")))
    assert "Was sollten wir verbessern?" in driver.page_source
    assert survey_of(db, sid).score == 3
