"""The chat page in a real browser (headless Chromium driven by Selenium) against a real server on loopback.

The first tests use the real default answering service (MiniLM, Gemma 3 270M, extract mode) over a small
signed corpus, and assert what a person sees: the answer, a citation card with its signer and the chunk
hash the ledger commits, the AI label, an abstention in plain words, a phone-width layout. The last ones
use the fake generator to check what needs no model: text shown as text, the API token and the 401 messages.

`RAG_CHAT_SCREENSHOTS=DIR` saves a screenshot of each state there (README "Chat page" shows them).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from api.app import create_app
from ingest.ledger import Ledger
from rag.apikeys import ApiKeyStore
from rag.settings import Settings
from rag.wiring import build_answer_service, build_embedder, build_ingestor
from tests.api_server import live_server, serving_app
from tests.conftest import Curator, pydoc_text
from tests.fakes import FakeGenerator

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_SCOPE = "What does the pass statement do when it is executed?"
OUT_OF_SCOPE = "Who won the 2018 FIFA World Cup?"
TOPICS = ("pass", "assert", "del", "break", "continue", "global")
ANSWER_TIMEOUT_S = 120
SCREENSHOTS = os.environ.get("RAG_CHAT_SCREENSHOTS")


@contextmanager
def chromium(width: int = 1200, height: int = 1600) -> Iterator[WebDriver]:
    """A fresh headless Chromium with its own profile, offline as far as its flags allow; fails in CI when it
    is not installed (test.sh installs it)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "chromium and chromium-driver are not installed (bash test.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    with tempfile.TemporaryDirectory(prefix="chat-page-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = ANSWER_TIMEOUT_S) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def ask(driver: WebDriver, question: str, mode: str | None = None) -> WebElement:
    """Type a question as a person would (Enter sends it); returns the finished answer element."""
    if mode is not None:
        driver.find_element(By.CSS_SELECTOR, f'input[name="mode"][value="{mode}"]').click()
    before = len(driver.find_elements(By.CSS_SELECTOR, ".turn"))
    box = driver.find_element(By.ID, "question")
    box.send_keys(question, Keys.ENTER)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn")) == before + 1, 10)
    turn = driver.find_elements(By.CSS_SELECTOR, ".turn")[-1]
    wait_for(driver, lambda _: "pending" not in turn.find_element(By.CSS_SELECTOR, "article").get_attribute("class"))
    return turn.find_element(By.CSS_SELECTOR, "article")


def screenshot(
    driver: WebDriver, name: str, element: WebElement | None = None, hover: WebElement | None = None
) -> None:
    """Saved under RAG_CHAT_SCREENSHOTS, if set, with `element` scrolled to the top of the window."""
    if not SCREENSHOTS:
        return
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    if element is not None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
    else:
        driver.execute_script("window.scrollTo(0, 0)")
    if hover is not None:
        ActionChains(driver).move_to_element(hover).perform()
    driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))


def fact(container: WebElement, term: str) -> WebElement:
    """The value shown beside `term` in a list of facts (a card's, or the label's)."""
    for row in container.find_elements(By.CSS_SELECTOR, ".fact"):
        if row.find_element(By.TAG_NAME, "dt").text == term:
            return row.find_element(By.TAG_NAME, "dd")
    raise AssertionError(f"no {term!r} shown")


def label_value(answer: WebElement, term: str) -> str:
    return str(fact(answer.find_element(By.CSS_SELECTOR, ".label"), term).text)


# ---- the real default service ----


@pytest.fixture(scope="module")
def real_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    """The server as `rag serve` runs it (defaults: extract mode), over six signed pydoc topics."""
    root = tmp_path_factory.mktemp("chat-page")
    settings = Settings(
        data_dir=root / "data", trust_path=root / "trust.json", ledger_key_path=root / "ledger-key" / "ledger.key"
    )
    curator = Curator(root, settings.trust_path)
    corpus = root / "corpus"
    corpus.mkdir()
    for topic in TOPICS:
        (corpus / f"{topic}.md").write_text(pydoc_text(topic), encoding="utf-8")
        curator.sign(corpus / f"{topic}.md", title=f"The {topic} statement")
    embedder = build_embedder(settings)
    report = build_ingestor(settings, embedder).ingest([corpus])
    assert len(report.accepted) == len(TOPICS), report.as_dict()
    app = create_app(settings, build_answer_service(settings, embedder=embedder))
    with live_server(app, settings) as url:
        yield url, settings


@pytest.fixture(scope="module")
def page(real_site: tuple[str, Settings]) -> Iterator[WebDriver]:
    with chromium() as driver:
        driver.get(real_site[0] + "/")
        status = driver.find_element(By.ID, "status")
        wait_for(driver, lambda _: status.text.startswith("Ready."), 300)  # the page polls /readyz while models load
        assert f"{len(TOPICS)} signed documents" in status.text
        yield driver


def test_an_in_scope_question_shows_the_answer_its_source_card_and_the_label(
    page: WebDriver, real_site: tuple[str, Settings]
) -> None:
    answer = ask(page, IN_SCOPE)
    text = answer.find_element(By.CSS_SELECTOR, ".answer-text").text
    assert "nothing happens" in text or "null operation" in text, text
    card = answer.find_element(By.CSS_SELECTOR, ".card")
    assert "pass statement" in card.find_element(By.CSS_SELECTOR, ".title").text
    assert card.find_element(By.CSS_SELECTOR, ".signer").text == "test-curator"
    assert card.find_element(By.CSS_SELECTOR, ".badge").text == "human"
    assert "PSF-2.0" in card.text
    # The [n] in the answer links to this card.
    marker = answer.find_element(By.CSS_SELECTOR, ".answer-text a.marker")
    assert marker.get_attribute("href").endswith("#" + card.get_attribute("id"))
    # The chunk hash: short on the card, whole on hover, and the one the ledger commits for this document.
    chunk_hash = fact(card, "Chunk sha256").find_element(By.CSS_SELECTOR, ".hash")
    full = chunk_hash.get_attribute("title")
    live = Ledger(real_site[1].ledger_path).live()
    assert full in (live["pass.md"].chunk_hashes or []) and chunk_hash.text == full[:12] + "…"
    excerpt = card.find_element(By.CSS_SELECTOR, ".excerpt")
    quoted = excerpt.find_element(By.TAG_NAME, "mark").text  # the quoted words, marked in the source
    assert quoted == re.sub(r"\s*\[\d+\]", "", text)
    link = card.find_element(By.CSS_SELECTOR, "a.provenance-link")
    assert link.get_attribute("href").endswith("/v1/documents/pass.md")
    # The label: a quotation, nothing generated, no watermark, the corpus version the ledger holds now.
    assert label_value(answer, "AI-generated") == "no"
    assert label_value(answer, "Watermark") == "none: nothing was generated"
    assert label_value(answer, "What this is").startswith("A quotation")
    assert label_value(answer, "Answer mode") == "extract"
    head = answer.find_element(By.CSS_SELECTOR, ".label .hash")
    assert head.get_attribute("title") == Ledger(real_site[1].ledger_path).head()
    # The provenance record opens in place, from the same API.
    card.find_element(By.CSS_SELECTOR, "button[aria-controls]").click()
    panel = card.find_element(By.CSS_SELECTOR, ".provenance")
    wait_for(page, lambda _: "Ledger entry" in panel.text, 20)
    assert "Python documentation authors" in panel.text
    hover_box = "return getComputedStyle(arguments[0], '::after').content"
    assert page.execute_script(hover_box, chunk_hash) == "none"
    ActionChains(page).move_to_element(chunk_hash).perform()
    assert page.execute_script(hover_box, chunk_hash) == f'"{full}"'  # the whole hash shows on hover
    screenshot(page, "answer", answer.find_element(By.XPATH, ".."), hover=chunk_hash)


def test_an_out_of_scope_question_shows_an_abstention_in_plain_words(page: WebDriver) -> None:
    answer = ask(page, OUT_OF_SCOPE)
    assert "abstained" in answer.get_attribute("class")
    box = answer.find_element(By.CSS_SELECTOR, ".abstention")
    assert "No answer from the verified sources" in box.text
    assert "No signed source is close enough to this question" in box.text  # no_relevant_passage, in words
    assert not answer.find_elements(By.CSS_SELECTOR, ".card")
    assert not page.find_elements(By.CSS_SELECTOR, "[role=alert]")  # not an error
    assert "No answer" in page.find_element(By.ID, "announce").get_attribute("textContent")
    screenshot(page, "abstention", answer.find_element(By.XPATH, ".."))


CONTRAST = """
const luminance = (colour) => {
  const [r, g, b] = colour.match(/[\\d.]+/g).slice(0, 3).map((v) => {
    v = Number(v) / 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const background = (node) => {
  for (; node; node = node.parentElement) {
    const colour = getComputedStyle(node).backgroundColor;
    const parts = colour.match(/[\\d.]+/g);
    if (parts.length < 4 || Number(parts[3]) > 0) return colour;
  }
  return "rgb(255, 255, 255)";
};
return arguments[0].map((selector) => {
  const shown = [...document.querySelectorAll(selector)].filter((n) => n.getClientRects().length);
  const ratios = shown.map((n) => {
    const [a, b] = [luminance(getComputedStyle(n).color), luminance(background(n))];
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  });
  return [selector, shown.length ? Math.min(...ratios) : null];
});
"""
TEXT = [
    "body",
    "h1",
    ".intro",
    ".status",
    ".access summary",
    ".help",
    ".who",
    ".question",
    ".answer-text",
    ".marker",
    ".sources-head",
    ".card .num",
    ".card .title",
    ".badge",
    ".signer",
    ".hash",
    ".fact dt",
    ".fact dd",
    ".excerpt",
    ".excerpt mark",
    ".card-links a",
    ".link-button",
    ".label h4",
    ".notice",
    ".abstention h3",
    ".abstention p",
    ".question-label",
    ".modes legend",
    ".modes b",
    ".hint",
    "#ask-button",
]


def test_text_keeps_a_contrast_of_at_least_4_5_to_1(page: WebDriver) -> None:
    """WCAG AA for normal text, measured on the rendered page (an answer, a card, a label, an abstention)."""
    measured = dict(page.execute_script(CONTRAST, TEXT))
    assert [selector for selector, ratio in measured.items() if ratio is None] == []  # each one is on the page
    low = {selector: round(ratio, 2) for selector, ratio in measured.items() if ratio < 4.5}
    assert not low, low


def test_the_page_fits_a_phone_and_works_from_the_keyboard(page: WebDriver, real_site: tuple[str, Settings]) -> None:
    """At 390 px nothing scrolls sideways; the question box, the modes and the cards stay usable."""
    page.set_window_size(390, 844)
    page.execute_script("window.scrollTo(0, 0)")
    viewport = page.execute_script("return document.documentElement.clientWidth")
    assert page.execute_script("return document.documentElement.scrollWidth") <= viewport
    for selector in ("#question", "#ask-button", ".card", ".modes label"):
        element = page.find_element(By.CSS_SELECTOR, selector)
        rect = element.rect
        assert rect["x"] >= 0 and rect["x"] + rect["width"] <= viewport, (selector, rect)
    first = page.find_elements(By.CSS_SELECTOR, ".turn")[0]
    screenshot(page, "phone", first)
    # From the keyboard, on a fresh load: the first Tab reaches the skip link, which leads to the question box.
    page.get(real_site[0] + "/")
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    skip = page.switch_to.active_element
    assert skip.text == "Skip to the question"
    skip.send_keys(Keys.ENTER)
    assert page.switch_to.active_element.get_attribute("id") == "question"
    page.switch_to.active_element.send_keys(Keys.TAB)
    assert page.switch_to.active_element.get_attribute("id") == "ask-button"


# ---- what needs no model: the fake generator behind the real server ----

HOSTILE_TITLE = "<img src=x onerror=\"document.title='owned'\">"
HOSTILE_TEXT = "# Markup\n\nThe <b>bold</b> markup <img src=x onerror=alert(1)> is shown as text, never run.\n"
HOSTILE_ANSWER = "The bold markup is shown as text, never run."


@pytest.fixture
def fake_site(settings: Settings, curator: Curator, tmp_path: Path) -> Iterator[tuple[str, str]]:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "pass.md").write_text(pydoc_text("pass"), encoding="utf-8")
    curator.sign(corpus / "pass.md", title="pass")
    (corpus / "markup.md").write_text(HOSTILE_TEXT, encoding="utf-8")
    curator.sign(corpus / "markup.md", title=HOSTILE_TITLE)
    _, token = ApiKeyStore(settings.api_keys_path).new("page-reader", "reader")  # once a key exists, all need one
    app = serving_app(settings, corpus, FakeGenerator(HOSTILE_ANSWER))
    with live_server(app, settings) as url:
        yield url, token


def test_text_from_documents_is_shown_as_text_and_the_token_opens_the_api(fake_site: tuple[str, str]) -> None:
    """With an API key made, the page asks for a token, says so when one is missing or wrong, and with a
    reader's token shows the answer; markup in a signed document's title and text stays text."""
    url, token = fake_site
    with chromium() as driver:
        driver.get(url + "/")
        status = driver.find_element(By.ID, "status")
        wait_for(driver, lambda _: "Ready." in status.text, 20)
        assert "asks for an API token" in status.text  # /v1/documents said 401: the page says what to do
        refused = ask(driver, "What is shown as text?", mode="free")
        alert = refused.find_element(By.CSS_SELECTOR, "[role=alert]")
        assert "The server asks for an API token" in alert.text and "missing_api_key" in alert.text
        driver.find_element(By.CSS_SELECTOR, "#access summary").click()
        driver.find_element(By.ID, "token").send_keys("rag_not-a-token", Keys.ENTER)
        wrong = ask(driver, "What is shown as text?").find_element(By.CSS_SELECTOR, "[role=alert]")
        assert "did not accept this tab's API token" in wrong.text and "invalid_api_key" in wrong.text
        driver.find_element(By.ID, "token").send_keys(token, Keys.ENTER)
        assert driver.find_element(By.ID, "token-state").text == "(set for this tab)"
        assert driver.execute_script("return sessionStorage.getItem('rag.apiToken')") == token
        wait_for(driver, lambda _: "signed documents" in status.text, 20)
        answer = ask(driver, "What markup is shown as text?")
        assert answer.find_element(By.CSS_SELECTOR, ".answer-text").text.startswith(HOSTILE_ANSWER[:-1])
        card = answer.find_element(By.CSS_SELECTOR, ".card")
        assert card.find_element(By.CSS_SELECTOR, ".title").text == HOSTILE_TITLE  # the markup, as text
        assert "<b>bold</b>" in card.find_element(By.CSS_SELECTOR, ".excerpt").text
        assert not driver.find_elements(By.CSS_SELECTOR, "main img, main b")
        assert driver.title == "Ask the verified knowledge base"  # no handler ran
        assert label_value(answer, "Answer mode") == "free" and label_value(answer, "AI-generated") == "yes"
        assert label_value(answer, "Watermark").startswith("kgw-lefthash-1")
        card.find_element(By.CSS_SELECTOR, "button[aria-controls]").click()  # the record, fetched with the token
        panel = card.find_element(By.CSS_SELECTOR, ".provenance")
        wait_for(driver, lambda _: "Ledger entry" in panel.text, 20)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert all(" 401 " in e for e in errors), errors  # the refused requests only: no CSP violation
