"""The studio in a real browser: Debian's headless Chromium driven by Playwright (never `playwright install`).

Upload a sample, see the preview; bad uploads explained; start a short fine-tune and watch it; reload the page
mid-run and see it re-attach; compare the base and the fine-tuned model side by side. Screenshots of every tab
and step go to test-artifacts/; the README's tab screenshots in docs/screenshots/ are retaken with
    STUDIO_SCREENSHOT_BASE_MODEL=models/base pytest tests/test_browser_e2e.py
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from conftest import free_port

from studio.app import build_app, launch
from studio.context import SAMPLES_DIR
from studio.tabs.data import EVENTS
from studio.tabs.finetune import FORM_STORAGE_KEY

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts"
# The README's tab screenshots are retaken on purpose, with the shipped model (see the fixture); an ordinary
# run keeps its tab screenshots with the other artifacts, so running the tests never rewrites committed files.
SCREENSHOT_BASE = os.environ.get("STUDIO_SCREENSHOT_BASE_MODEL")
SCREENSHOTS = REPO / "docs" / "screenshots" if SCREENSHOT_BASE else ARTIFACTS / "screenshots"
MAX_UPLOAD = 100_000
BAD_UPLOADS = [  # (name, content, what the page says)
    ("empty.csv", b"", "the file is empty"),
    ("columns.csv", b"foo,bar\n1,2\n", "which columns hold the prompts"),
    ("broken.json", b'[{"question": "a", "answer": "b"},', "malformed JSON"),
    ("latin1.csv", "question,answer\ncafé?,oui\n".encode("latin-1"), "not UTF-8"),
    ("prices.xlsx", b"PK\x03\x04 a spreadsheet", "Save as > CSV (UTF-8)"),
    ("big.csv", b"question,answer\n" + b"what?,that\n" * 10_000, "larger than the upload limit"),
]

pytestmark = pytest.mark.slow


def workspace_files(workspace: Path) -> list[str]:
    return sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*") if "studio.db" not in p.name)


@pytest.fixture
def page(tmp_path, tiny_model_dir):
    """A studio over a fresh workspace and the tiny test model (STUDIO_SCREENSHOT_BASE_MODEL=DIR swaps in
    another base model, e.g. models/base, to take the README's screenshots), open in Chromium."""
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    workspace = tmp_path / "workspace"
    base = SCREENSHOT_BASE or tiny_model_dir
    demo = build_app(workspace, base, SAMPLES_DIR, max_upload_bytes=MAX_UPLOAD, watch_interval=0.5)
    _, url, _ = launch(demo, port=free_port(), block=False)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.studio, page.url_root = demo.studio, url
        yield page
        page.screenshot(path=str(ARTIFACTS / "last-page.png"), full_page=True)
        browser.close()
    for run in demo.studio.store.runs(("queued", "running", "stopping")):
        demo.studio.jobs.stop(run["id"])
    demo.studio.jobs.close()
    demo.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def expect_lines(page, plot: str) -> None:
    """The chart has drawn at least one line of two or more points, not only an empty frame."""
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].some(p => (p.getAttribute('points') || '').split(' ').length > 1)",
        arg=f"{plot} svg polyline.line",
    )


def events_sent(page, action, settle_ms: int = 1500) -> list[int]:
    """The Gradio events (fn_index of each queue/join) the page sends while action() runs and settle_ms after."""
    sent = []

    def on_request(request):
        if "/queue/join" in request.url:
            sent.append(json.loads(request.post_data or "{}").get("fn_index"))

    page.on("request", on_request)
    action()
    page.wait_for_timeout(settle_ms)
    page.remove_listener("request", on_request)
    return sent


# The label Gradio gives a part made with none: its class's name. Every part the studio lays out is labelled (or
# shows no label), so a part labelled so was made by the studio by mistake (an update made in a tab's body).
GRADIO_LABELS = {"Dropdown", "Radio", "Textbox", "Number", "Checkbox", "CheckboxGroup", "Slider", "Dataframe", "File"}


def unlabelled_parts(page) -> list[str]:
    """The labels of the shown parts labelled with their Gradio class's name."""
    shown = page.evaluate(
        "() => [...document.querySelectorAll('[role=tabpanel] [data-testid=block-info]')]"
        ".filter(label => label.offsetParent).map(label => label.innerText.trim())"
    )
    return [label for label in shown if label in GRADIO_LABELS]


def session_of(page, action) -> str:
    """The session hash (the page, to the server) that the event action sends carries."""
    with page.expect_request(lambda request: "/queue/join" in request.url) as joined:
        action()
    return json.loads(joined.value.post_data)["session_hash"]


def test_upload_finetune_reload_and_compare(page):
    from playwright.sync_api import expect

    studio = page.studio
    status = page.locator("#data-status")
    upload = page.locator("#data-upload input[type=file]")
    expect.set_options(timeout=30_000)  # a loaded CI machine can take seconds per event
    expect(status).to_contain_text("examples ready")  # the page has loaded (the first sample is shown)

    # 1. Data: a sample file, parsed and previewed as the model sees it.
    first_page = session_of(page, lambda: upload.set_input_files(str(SAMPLES_DIR / "opposites.csv")))
    expect(page.locator("#data-dataset input")).to_have_value(re.compile(r"^opposites\.csv \(uploaded"))
    expect(status).to_contain_text(re.compile(r"opposites\.csv: \d+ examples ready"))
    expect(page.locator("#data-hist canvas, #data-hist svg").first).to_be_visible()
    expect(page.locator("#data-preview .trained").first).to_be_visible()
    expect(page.locator("#data-preview .example").first).to_contain_text("<|user|>")
    page.screenshot(path=str(SCREENSHOTS / "data.png"), full_page=True)

    # Bad files: a message on the page, nothing added to the workspace.
    before = workspace_files(studio.workspace)
    for name, content, message in BAD_UPLOADS:
        upload.set_input_files(files=[{"name": name, "mimeType": "text/csv", "buffer": content}])
        expect(page.get_by_text(message, exact=False).first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / f"bad-upload-{name}.png"))
        assert workspace_files(studio.workspace) == before, name
        page.reload()  # a clean page for the next file (and toasts gone)
        expect(status).to_contain_text("examples ready")  # loaded again
    # A page reloaded is a new page: the Data tab's count of the old one's own events went with it (its unload).
    deadline = time.time() + 30
    while first_page in EVENTS.begun and time.time() < deadline:
        page.wait_for_timeout(200)
    assert first_page not in EVENTS.begun
    # A page opens with one event: the Data tab's fill.
    assert len(events_sent(page, lambda: (page.reload(), expect(status).to_contain_text("examples ready")))) == 1
    # A file over the limit: Gradio refuses it in the browser; the page says so, and the previous file's
    # preview and histogram do not stay on screen as if they were this file's.
    expect(page.locator("#data-preview .example").first).to_be_visible()
    big = b"question,answer\n" + b"what?,that\n" * (MAX_UPLOAD // 10)
    upload.set_input_files(files=[{"name": "big.csv", "mimeType": "text/csv", "buffer": big}])
    expect(status).to_contain_text("big.csv is larger than the upload limit of 97.7 KiB")
    expect(page.locator("#data-preview .example")).to_have_count(0)
    expect(page.locator("#data-hist svg")).to_have_count(0)
    assert workspace_files(studio.workspace) == before
    # A file of a type the upload does not take: the browser refuses it too, and the page says why the same way.
    page.reload()
    expect(page.locator("#data-preview .example").first).to_be_visible()
    upload.set_input_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"question,answer\n"}])
    expect(status).to_contain_text("notes.txt: unsupported file type '.txt'")
    expect(page.locator("#data-preview .example")).to_have_count(0)
    assert workspace_files(studio.workspace) == before
    # A name that tries to climb out of the workspace is stored inside it, under its plain name.
    answer = "down\n\n    and $$x$$ *out*"  # an empty line, an indented one, what Markdown and LaTeX would read
    upload.set_input_files(
        files=[{"name": "../../x.csv", "mimeType": "text/csv", "buffer": f'question,answer\nUp?,"{answer}"\n'.encode()}]
    )
    expect(status).to_contain_text("x.csv: 1 example ready")
    # The answer shows as it is, in its example: the HTML the page is sent is one block, nothing of it read as
    # Markdown (which would make what follows the empty line a paragraph of its own).
    expect(page.locator("#data-preview .example")).to_have_count(1)
    assert answer in page.locator("#data-preview .example .trained").first.inner_text()
    assert page.locator("#data-preview p, #data-preview em, #data-preview .katex").count() == 0
    stored = [studio.store.abs(d["path"]) for d in studio.store.datasets() if d["name"] == "x.csv"]
    assert len(stored) == 1 and stored[0].is_relative_to(studio.workspace / "datasets")
    assert not (studio.workspace.parent / "x.csv").exists() and not (studio.workspace.parent.parent / "x.csv").exists()

    # An upload whose columns must be named waits outside the workspace, shown as itself (the Dataset box names
    # no other file meanwhile): Delete has nothing to delete. Delete asks first, naming the file, and deletes it.
    stored_before = workspace_files(studio.workspace)
    upload.set_input_files(
        files=[{"name": "frage.csv", "mimeType": "text/csv", "buffer": b"frage,prompt\nHoch?,tief\n"}]
    )
    expect(status).to_contain_text("which columns hold the prompts")
    expect(page.locator("#data-dataset input")).to_have_value("")
    expect(page.locator("#data-prompt-col input")).to_have_value("prompt")  # the column named prompt, offered first
    page.locator("#data-delete").click()
    expect(page.locator("#data-deleted")).to_contain_text("frage.csv waits for its columns and is not stored")
    expect(page.locator("#data-confirm")).to_be_hidden()
    assert workspace_files(studio.workspace) == stored_before
    page.locator("#data-dataset input").click()
    page.get_by_role("option", name=re.compile(r"^x\.csv \(uploaded")).click()
    expect(status).to_contain_text("x.csv: 1 example ready")
    page.locator("#data-delete").click()
    expect(page.locator("#data-confirm-text")).to_contain_text("Delete x.csv (uploaded, 1 example)?")
    page.locator("#data-confirm-delete").click()
    expect(page.locator("#data-deleted")).to_contain_text("Deleted x.csv")
    assert not [d for d in studio.store.datasets() if d["name"] == "x.csv"] and not stored[0].exists()

    # 2. Fine-tune: the plan, then a short run with a live plot and progress. Every event costs the browser
    # a pass over the page's state: the first showing builds the tab and fills it, later ones fill it.
    def show_finetune():
        open_tab(page, "3 · Fine-tune")
        expect(page.locator("#ft-plan")).to_contain_text("Estimated memory")  # a user waits, then types

    # Shown the first time, its body is built already filled: one event. Shown again with nothing it
    # draws changed, it sends none (the page asks for the tab's stamp over plain HTTP); after a change it draws
    # (a preset saved by another page), one: its fill, which offers the new preset.
    assert len(events_sent(page, show_finetune)) == 1
    assert unlabelled_parts(page) == [], "the body holds the parts laid out and no other"
    open_tab(page, "1 · Data")
    assert len(events_sent(page, show_finetune)) == 0
    open_tab(page, "1 · Data")
    studio.store.save_preset("saved-elsewhere", {"epochs": 1})
    assert len(events_sent(page, show_finetune)) == 1
    page.get_by_text("Presets", exact=True).click()
    page.locator("#ft-preset input").click()
    expect(page.get_by_role("option", name="saved-elsewhere")).to_be_visible()
    page.keyboard.press("Escape")
    page.get_by_text("Presets", exact=True).click()
    page.locator("#ft-dataset input").click()
    page.get_by_role("option", name=re.compile(r"^opposites\.csv \(sample")).click()
    probes = page.locator("#ft-probes textarea")
    expect(probes).not_to_have_value("")
    lines = probes.input_value().splitlines()
    assert len(lines) == len(set(lines)), f"each probe prompt once: {lines}"
    page.locator("#ft-max-steps input").fill("60")
    page.locator("#ft-batch-size input").fill("64")
    expect(page.locator("#ft-plan")).to_contain_text("Estimated memory")
    expect(page.locator("#ft-plan")).to_contain_text("60 (")
    expect(page.locator("#ft-plan")).to_contain_text(re.compile(r"In use now:.*memory in use"))
    page.get_by_text("Advanced settings").click()  # collapsed: the library's defaults, with their help
    expect(page.locator("#ft-warmup-steps")).to_contain_text("learning-rate warmup steps")
    expect(page.locator("#ft-grad-accum input")).to_have_value("1")
    kept = f"localStorage.getItem({json.dumps(FORM_STORAGE_KEY)})"  # encrypted by Gradio: compare, not read
    before = page.evaluate(kept)
    page.locator("#ft-name textarea, #ft-name input").first.fill("opposites-ft")

    # A reload keeps the unsaved form (it lives in the browser), not the defaults.
    page.wait_for_function(f"before => {kept} !== before", arg=before)
    page.reload()
    open_tab(page, "3 · Fine-tune")
    expect(page.locator("#ft-max-steps input")).to_have_value("60")
    expect(page.locator("#ft-batch-size input")).to_have_value("64")
    expect(page.locator("#ft-name textarea, #ft-name input").first).to_have_value("opposites-ft")
    expect(page.locator("#ft-dataset input")).to_have_value(re.compile(r"^opposites\.csv \(sample"))
    expect(page.locator("#ft-plan")).to_contain_text("60 (")

    page.locator("#ft-start").click()
    expect(page.locator("#ft-state")).to_contain_text("running", timeout=60_000)
    progress = page.locator("#ft-progress")
    expect(progress).to_contain_text(re.compile(r"step [1-9]\d* of 60"), timeout=180_000)
    expect_lines(page, "#ft-loss")  # the first points of a run draw lines
    page.screenshot(path=str(ARTIFACTS / "finetune-running.png"), full_page=True)

    # Stop, then Resume: the view follows each without a reload (its timer starts again after the resume).
    state = page.locator("#ft-state")
    page.locator("#ft-stop").click()
    expect(state).to_contain_text("Stopped; the last checkpoint was saved", timeout=60_000)
    page.locator("#ft-resume").click()
    expect(state).to_contain_text(re.compile(r"queued|starting|running"))
    expect(progress).to_contain_text(re.compile(r"step [1-9]\d* of 60"), timeout=180_000)
    # Another tab shown stops the view's timer in the page: no tick is sent, not even one to stop it.
    assert events_sent(page, lambda: open_tab(page, "1 · Data"), settle_ms=2500) == []
    assert studio.store.runs()[0]["status"] == "running", "the run worked all along (else no tick was due)"
    open_tab(page, "3 · Fine-tune")

    # Reload mid-run: the page re-attaches to the run (its state lives in SQLite and files, not the page).
    run = studio.store.runs()[0]
    page.reload()
    open_tab(page, "3 · Fine-tune")
    expect(page.locator("#ft-state")).to_contain_text("opposites-ft")
    assert studio.store.run(run["id"])["status"] in ("running", "done"), "a reload never stops a run"
    expect(page.locator("#ft-state")).to_contain_text("done", timeout=300_000)
    expect(progress).to_contain_text("step 60 of 60")
    expect(page.locator("#ft-log textarea")).to_have_value(re.compile("done at step 60"))
    assert "mfu" not in page.locator("#ft-log textarea").input_value(), "no MFU on a CPU"
    answers = page.locator("#ft-samples tr")  # the header, then a row per probe prompt and evaluation
    expect(answers.nth(1).locator("td").first).to_have_text("60")
    assert page.locator("#ft-samples th").all_inner_texts() == ["step", "prompt", "answer"]
    expect_lines(page, "#ft-loss")
    page.screenshot(path=str(SCREENSHOTS / "finetune.png"), full_page=True)

    # The run's own settings, and a new run from them.
    page.get_by_text("Settings of this run").click()
    expect(page.locator("#ft-run-settings-table")).to_contain_text(re.compile(r"Max steps\s*60"))
    page.locator("#ft-max-steps input").fill("5")
    page.locator("#ft-reuse").click()
    expect(page.locator("#ft-max-steps input")).to_have_value("60")
    expect(page.locator("#ft-start-status")).to_contain_text("opposites-ft")

    # 3. Compare: base and fine-tuned, same prompt and seed, side by side.
    open_tab(page, "4 · Compare")
    expect(page.locator("#compare-models")).to_contain_text("opposites-ft")
    page.locator("#compare-prompt textarea").fill("Opposite of up?")
    page.locator("#compare-prompt textarea").press("Enter")  # as in Chat: Enter generates
    expect(page.locator("#compare-status")).to_contain_text("Done: answers to «Opposite of up?»", timeout=60_000)
    answers = page.locator(".answer")
    expect(answers.nth(0)).to_contain_text("base")
    expect(answers.nth(1)).to_contain_text("opposites-ft")
    assert answers.nth(0).locator("textarea").input_value(), "the base model continues any prompt"
    expect(page.locator(".diff .diff-block")).to_have_count(1)
    page.locator("#compare-vote label", has_text="opposites-ft").click()
    page.get_by_role("button", name="Save vote").click()
    expect(page.get_by_text("Vote saved")).to_be_visible()
    assert studio.store.votes()[-1]["winner"] == f"run:{run['id']}"
    page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)

    # Two prompts in quick succession: the second replaces the first (the first used to be dropped silently and
    # its answers stood under the second prompt); the answers shown, and the vote, are the second prompt's.
    prompt = page.locator("#compare-prompt textarea")
    prompt.fill("Tell a long story about the sea.")
    prompt.press("Enter")
    prompt.fill("Opposite of hot?")
    prompt.press("Enter")
    expect(page.locator("#compare-status")).to_contain_text("Done: answers to «Opposite of hot?»", timeout=60_000)
    page.wait_for_timeout(1500)  # nothing of the first comparison lands afterwards
    expect(page.locator("#compare-status")).to_contain_text("Opposite of hot?")
    page.locator("#compare-vote label", has_text="Tie / both bad").click()
    page.get_by_role("button", name="Save vote").click()
    expect(page.get_by_text("Vote saved for «Opposite of hot?»")).to_be_visible()
    shown = [answers.nth(i).locator("textarea").input_value() for i in range(2)]
    assert studio.store.votes()[-1]["prompt"] == "Opposite of hot?" and studio.store.votes()[-1]["answers"] == shown

    # 5. Chat: two turns with the fine-tuned model; the conversation is kept.
    open_tab(page, "5 · Chat")
    expect(page.locator("#chat-model input")).to_have_value(re.compile("opposites-ft"))
    page.locator("#chat-message textarea").fill("What is the opposite of up?")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-log")).to_contain_text("What is the opposite of up?")
    expect(page.locator("#chat-message textarea")).to_have_value("")
    expect(page.locator("#chat-status")).to_contain_text("Answered by opposites-ft", timeout=60_000)
    page.locator("#chat-message textarea").fill("And of big?")
    page.locator("#chat-message textarea").press("Enter")
    expect(page.locator("#chat-log")).to_contain_text("And of big?")
    expect(page.locator("#chat-log")).to_contain_text("What is the opposite of up?")
    page.screenshot(path=str(SCREENSHOTS / "chat.png"), full_page=True)

    # 6. Votes: the vote cast in Compare, exported as preference pairs, and a preference run on it.
    open_tab(page, "6 · Votes")
    expect(page.locator("#votes-summary")).to_contain_text("2 votes")
    expect(page.locator("#votes-table")).to_contain_text("Opposite of up?")
    page.locator("#votes-export").click()
    expect(page.locator("#votes-status")).to_contain_text("Exported 1 pair and 1 tie")
    page.locator("#votes-max-steps input").fill("2")
    page.locator("#votes-tune").click()
    expect(page.locator("#votes-status")).to_contain_text("Preference run on 1 pair")
    page.screenshot(path=str(SCREENSHOTS / "votes.png"), full_page=True)
    tuned = next(r for r in studio.store.runs() if r["command"] == "prefer")
    deadline = time.time() + 240
    while studio.store.run(tuned["id"])["status"] not in ("done", "failed") and time.time() < deadline:
        time.sleep(1)
    assert studio.store.run(tuned["id"])["status"] == "done", studio.store.run(tuned["id"])["message"]
    open_tab(page, "4 · Compare")
    page.get_by_role("button", name="↻ Refresh list").first.click()
    page.locator("#compare-models input").click()
    expect(page.get_by_role("option", name=tuned["name"])).to_be_visible()
    page.keyboard.press("Escape")

    # 7. Models: the run with its settings, metrics and loss curve. Shown the first time: its body is built
    # already listed, one event (the runs offered for comparison come with their comparison).
    def show_models():
        open_tab(page, "7 · Models")
        expect(page.locator("#models-table")).to_contain_text("opposites-ft")

    assert len(events_sent(page, show_models)) == 1
    page.locator("#models-pick input").click()
    page.get_by_role("option", name=re.compile("^opposites-ft")).click()
    expect(page.get_by_text("data: opposites.csv")).to_be_visible()
    expect(page.get_by_text("status: done")).to_be_visible()
    expect_lines(page, "#models-loss")
    page.wait_for_timeout(700)  # let the closing option list fade out of the screenshot
    page.screenshot(path=str(SCREENSHOTS / "models.png"), full_page=True)

    # The preference run is built on opposites-ft: deleting opposites-ft is refused, naming it (it used to go,
    # and the DPO run's model no longer loaded).
    page.locator("#models-delete").click()
    expect(page.locator("#models-status")).to_contain_text(f"opposites-ft is the base model of {tuned['name']}")
    expect(page.locator("#models-confirm")).to_be_hidden()
    assert studio.store.run(run["id"]) is not None

    # Several runs' curves on one chart, their settings side by side.
    page.get_by_text("Compare runs: loss curves").click()
    page.locator("#models-compare-pick input").click()
    page.get_by_role("option", name=re.compile("^opposites-ft")).click()
    expect_lines(page, "#models-compare-loss")
    expect(page.locator("#models-compare-table")).to_contain_text("max_steps")


def test_folded_settings_are_mounted_when_opened_and_keep_their_values(page):
    """A closed accordion's fields are drawn only once it is opened (a page pays for what it shows), yet they
    hold their values all along: a preset fills them while hidden, the plan reads them, a reload keeps them."""
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    studio = page.studio
    studio.store.save_preset("half-held-out", {"val_fraction": 0.5})
    open_tab(page, "3 · Fine-tune")
    page.locator("#ft-dataset input").click()
    page.get_by_role("option", name=re.compile(r"^opposites\.csv \(sample")).click()
    plan = page.locator("#ft-plan")
    expect(plan).to_contain_text("Estimated memory")
    assert page.locator("#ft-val-fraction").count() == 0, "Advanced settings mounted while closed"
    assert page.locator("#ft-preset").count() == 0, "Presets mounted while closed"
    held_out = re.compile(r"(\d+) to train on, (\d+) held out")

    def shares() -> tuple[int, int]:
        train, held = held_out.search(plan.inner_text()).groups()
        return int(train), int(held)

    default_train, default_held = shares()
    assert default_held < default_train

    # Filled while hidden: the preset sets a field no one has drawn, and the plan follows it.
    page.get_by_text("Presets", exact=True).click()
    page.locator("#ft-preset input").click()
    page.get_by_role("option", name="half-held-out").click()
    page.get_by_text("Fill the form").click()
    expect(page.locator("#ft-start-status")).to_contain_text("Loaded the preset")
    expect(plan).not_to_contain_text(f"{default_train} to train on, {default_held} held out")
    held = shares()[1]
    assert held > default_held, (default_held, held)

    # Opened: the field shows the value it took while hidden; an edit there reaches the plan.
    page.locator("#ft-advanced").get_by_text("Advanced settings").click()
    field = page.locator("#ft-val-fraction input")
    expect(field).to_have_value("0.5")
    kept = f"localStorage.getItem({json.dumps(FORM_STORAGE_KEY)})"  # encrypted by Gradio: compare, not read
    before = page.evaluate(kept)
    field.fill("0.25")
    expect(plan).not_to_contain_text(f"{held} held out")
    assert default_held < shares()[1] < held

    # A reload draws the tab closed again, and the form it keeps has the edit.
    page.wait_for_function(f"before => {kept} !== before", arg=before)  # the browser has kept the edit
    page.reload()
    open_tab(page, "3 · Fine-tune")
    expect(plan).to_contain_text("Estimated memory")
    assert page.locator("#ft-val-fraction").count() == 0
    page.locator("#ft-advanced").get_by_text("Advanced settings").click()
    expect(page.locator("#ft-val-fraction input")).to_have_value("0.25")
