"""The Pretrain tab and the Inside view in a real browser (headless Chromium through Playwright; the page
fixture and helpers are tests/test_browser_e2e.py's).

Pretrain a tiny model on the shipped sample book and watch the sample timeline grow; pick it as the base in
Fine-tune; open the Inside view with two models. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re

import pytest
from test_browser_e2e import ARTIFACTS, events_sent, open_tab, page, unlabelled_parts  # noqa: F401  (page is the fixture)
from test_studio_keeps_work import GUTENBERG_BOOK

pytestmark = pytest.mark.slow


def choose(browser_page, element_id: str, option: str | re.Pattern) -> None:
    browser_page.locator(f"#{element_id} input").click()
    browser_page.get_by_role("option", name=option).click()


def test_pretrain_the_sample_book_then_fine_tune_and_look_inside(page):  # noqa: F811
    from playwright.sync_api import expect

    studio = page.studio
    expect.set_options(timeout=30_000)
    expect(page.locator("#data-status")).to_contain_text("examples ready")  # the page has opened

    def show_pretrain():  # one event fills the tab: the choices, the plan and the run
        open_tab(page, "2 · Pretrain")
        expect(page.locator("#pt-text input")).to_have_value(re.compile(r"^marvelous_land_of_oz\.txt"))
        expect(page.locator("#pt-plan")).to_contain_text("of training: about")  # the default: a time budget

    assert len(events_sent(page, show_pretrain)) == 1  # its body built already filled
    assert unlabelled_parts(page) == [], "the body holds the parts laid out and no other"
    open_tab(page, "1 · Data")
    assert events_sent(page, show_pretrain) == [], "shown again with nothing it draws changed: no event"

    # A Project Gutenberg book is kept without Gutenberg's header, licence and footer, and the status says so.
    page.locator("#pt-upload input[type=file]").set_input_files(
        files=[{"name": "pg-oz.txt", "mimeType": "text/plain", "buffer": GUTENBERG_BOOK.encode()}]
    )
    expect(page.locator("#pt-text-status")).to_contain_text(
        re.compile(r"Project Gutenberg book: its header, licence and footer \([\d,]+ characters\) were left out")
    )
    expect(page.locator("#pt-text input")).to_have_value(re.compile(r"^pg-oz\.txt"))
    kept = next((studio.workspace / "texts").glob("*/pg-oz.txt")).read_text()
    assert "Gutenberg" not in kept and "Dorothy lived" in kept
    choose(page, "pt-text", re.compile(r"^marvelous_land_of_oz\.txt"))

    # A tiny budget: the tiny preset, the base model's tokenizer (so Inside can compare the two), 12 steps.
    choose(page, "pt-tokenizer", re.compile(r"^Reuse the tokenizer of base"))
    page.locator("#pt-preset label", has_text="tiny").click()
    page.locator("#pt-budget label", has_text="Steps").click()
    page.locator("#pt-steps input").fill("12")
    expect(page.locator("#pt-plan")).to_contain_text("**Budget:** 12 steps".replace("**", ""))
    page.locator("#pt-name textarea, #pt-name input").first.fill("oz-tiny")
    page.locator("#pt-start").click()
    expect(page.locator("#pt-state")).to_contain_text("oz-tiny", timeout=60_000)

    # The timeline grows: cards appear at each evaluation, newest first, until the run is done.
    cards = page.locator("#pt-timeline .pt-card")
    expect(cards.first).to_be_visible(timeout=180_000)
    expect(page.locator("#pt-state")).to_contain_text("done", timeout=240_000)
    expect(page.locator("#pt-progress")).to_contain_text("step 12 of 12")
    assert cards.count() >= 10
    expect(cards.first).to_contain_text("step 12")
    expect(cards.first).to_contain_text("bits per byte")
    expect(page.locator("#pt-loss canvas, #pt-loss svg").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "pretrain.png"), full_page=True)

    # The result is a base model in Fine-tune.
    open_tab(page, "3 · Fine-tune")
    page.locator("#ft-base input").click()
    expect(page.get_by_role("option", name=re.compile(r"^oz-tiny"))).to_have_count(2)  # best, and the last
    page.get_by_role("option", name="oz-tiny", exact=True).click()
    expect(page.locator("#ft-plan")).to_contain_text("Estimated memory")

    # Inside: the base and the book model on the same text.
    open_tab(page, "8 · Inside")
    choose(page, "in-model-b", re.compile(r"^oz-tiny$"))
    page.locator("#in-text textarea").fill("The Scarecrow <said> hello & goodbye.")
    page.locator("#in-go").click()
    expect(page.locator("#in-status")).to_contain_text("2 model(s)")
    expect(page.locator("#in-tokens .tok").first).to_have_attribute("title", re.compile(r"^#0 · id \d+"))
    expect(page.locator("#in-tokens")).to_contain_text("<said>")  # escaped, so shown as text
    page.get_by_role("tab", name="Surprise").click()
    expect(page.locator("#in-surprise")).to_contain_text("Difference")
    page.get_by_role("tab", name="Next token").click()
    expect(page.locator("#in-next table").first).to_be_visible()
    page.get_by_role("tab", name="Attention").click()
    expect(page.locator("#in-attention table").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "inside.png"), full_page=True)
    assert studio.store.runs()[0]["command"] == "pretrain"
