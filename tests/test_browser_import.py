"""A model someone else trained, in a real browser (headless Chromium through Playwright; the page fixture and
helpers are tests/test_browser_e2e.py's): import a GGUF file in Models, fine-tune it on an uploaded file,
compare it with its untuned self, chat with it, and take it out again as a GGUF file. The GGUF is the tiny test
model exported by llm (a fine-tune of the real SmolLM2 takes about 8 minutes here: benchmarks/smollm2_finetune.py)."""

from __future__ import annotations

import re

import pytest
from test_browser_e2e import ARTIFACTS, open_tab, page, unlabelled_parts  # noqa: F401  (page is the fixture)

from llm.model.export import export_model
from llm.model.gguf import read_gguf

pytestmark = pytest.mark.slow

ROWS = "question,answer\n" + "".join(f"Say {w} twice.,{w} {w}\n" for w in ["up", "cat", "red", "sun", "tree"] * 8)


def test_import_a_gguf_tune_it_compare_chat_and_export(page, tmp_path, tiny_model_dir):  # noqa: F811
    from playwright.sync_api import expect

    studio = page.studio
    expect.set_options(timeout=30_000)
    expect(page.locator("#data-status")).to_contain_text("examples ready")  # the page has opened
    gguf = export_model(tiny_model_dir, tmp_path / "story-model.gguf", "gguf", "fp32")

    # 1. Models -> Import: what it needs, then its progress; afterwards the model list shows it, picked.
    open_tab(page, "7 · Models")
    expect(page.locator("#models-table")).to_contain_text("base model")
    assert unlabelled_parts(page) == [], "the body holds the parts laid out and no other"
    page.locator("#import-box").get_by_text("Import a model: a GGUF file").click()
    page.locator("#import-file input[type=file]").set_input_files(str(gguf))
    expect(page.locator("#import-needs")).to_contain_text(re.compile(r"parameters.*memory"))
    page.locator("#import-start").click()
    expect(page.locator("#import-status")).to_contain_text("Imported story-model", timeout=120_000)
    expect(page.locator("#models-table")).to_contain_text("imported base model")
    expect(page.locator("#models-pick input")).to_have_value(re.compile("^story-model"))
    expect(page.locator("#models-about")).to_contain_text("imported from")
    page.screenshot(path=str(ARTIFACTS / "import.png"), full_page=True)
    imported = next(m for m in studio.store.models() if m["name"] == "story-model")

    # 2. Data: a file of the user's own, uploaded as the tab is shown again after the import. The tab refills
    # then (the import changed "Tokens as read by"): the upload's answer is not drawn over by the refill's (see
    # data.PageEvents; it was once, on a loaded CI machine).
    open_tab(page, "1 · Data")
    page.locator("#data-upload input[type=file]").set_input_files(
        files=[{"name": "twice.csv", "mimeType": "text/csv", "buffer": ROWS.encode()}]
    )
    expect(page.locator("#data-status")).to_contain_text("twice.csv: 40 examples ready")
    page.wait_for_timeout(1000)  # nothing of the refill lands afterwards
    expect(page.locator("#data-status")).to_contain_text("twice.csv: 40 examples ready")
    expect(page.locator("#data-dataset input")).to_have_value(re.compile(r"^twice\.csv \(uploaded"))

    # 3. Fine-tune: the imported model as the base, the uploaded file, a short run.
    open_tab(page, "3 · Fine-tune")
    page.locator("#ft-base input").click()
    page.get_by_role("option", name="story-model").click()
    page.locator("#ft-dataset input").click()
    page.get_by_role("option", name=re.compile(r"^twice\.csv \(uploaded")).click()
    page.locator("#ft-max-steps input").fill("8")
    expect(page.locator("#ft-plan")).to_contain_text("8 (")
    page.locator("#ft-name textarea, #ft-name input").first.fill("story-twice")
    page.locator("#ft-start").click()
    expect(page.locator("#ft-state")).to_contain_text("done", timeout=300_000)
    run = next(r for r in studio.store.runs() if r["name"] == "story-twice")
    assert run["base_id"] == f"base:{imported['id']}"

    # 4. Compare: the tuned model beside its untuned self, chosen for the user.
    open_tab(page, "4 · Compare")
    expect(page.locator("#compare-models")).to_contain_text("story-twice")
    expect(page.locator("#compare-models")).to_contain_text("story-model")
    page.locator("#compare-prompt textarea").fill("Say up twice.")
    page.locator("#compare-prompt textarea").press("Enter")
    expect(page.locator("#compare-status")).to_contain_text("Done: answers to «Say up twice.»", timeout=60_000)
    answers = page.locator(".answer")
    expect(answers.nth(0)).to_contain_text("story-model")
    expect(answers.nth(1)).to_contain_text("story-twice")

    # 5. Chat with the tuned model.
    open_tab(page, "5 · Chat")
    expect(page.locator("#chat-model input")).to_have_value(re.compile("story-twice"))
    page.locator("#chat-message textarea").fill("Say cat twice.")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).to_contain_text("Answered by story-twice", timeout=60_000)

    # 6. Models: the tuned model out as one GGUF file (the LoRA merged), which reads back as GGUF.
    open_tab(page, "7 · Models")
    page.locator("#models-pick input").click()
    page.get_by_role("option", name=re.compile("^story-twice")).click()
    page.locator("#models-download-gguf").click()
    expect(page.locator("#models-status")).to_contain_text("GGUF file ready", timeout=60_000)
    exported = sorted((studio.workspace / "exports").glob("story-twice-*.gguf"))
    assert len(exported) == 1
    meta, tensors = read_gguf(exported[0])
    assert meta["general.architecture"] == "llama" and "token_embd.weight" in tensors
    page.screenshot(path=str(ARTIFACTS / "import-exported.png"), full_page=True)
