"""The studio never loses a user's work or shows the wrong thing (issue 23's items 1-4), without a server:
the handlers and the library functions the events call."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from studio.context import SAMPLES_DIR, Studio, StudioError


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    return Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)


def finished_run(studio: Studio, name: str, base_ref: str = "base:base", command: str = "finetune") -> str:
    """A run recorded as done (its folder exists; no trainer ran)."""
    run_dir = studio.workspace / "runs" / name
    run_dir.mkdir(parents=True)
    run_id = studio.store.add_run(name, base_ref, "sample-opposites", "lora", {}, run_dir, command)
    studio.store.update_run(run_id, status="done")
    return run_id


def test_a_run_that_others_are_built_on_is_not_deleted_and_they_are_named(studio):
    from studio.tabs.models import deletable

    tuned = finished_run(studio, "tuned")
    finished_run(studio, "votes-dpo", f"run:{tuned}", "prefer")
    finished_run(studio, "again", f"run:{tuned}/latest")
    with pytest.raises(StudioError, match="votes-dpo.*again|again.*votes-dpo"):
        studio.delete_run(tuned)
    assert studio.store.run(tuned) is not None and (studio.workspace / "runs" / "tuned").is_dir()
    run, why = deletable(studio, f"run:{tuned}")
    assert run is None and "votes-dpo" in why and "again" in why, "the box says which runs are built on it"
    leaf = finished_run(studio, "leaf", f"run:{tuned}")
    studio.delete_run(leaf)  # nothing is built on it
    assert studio.store.run(leaf) is None


def test_a_failed_chat_turn_keeps_the_users_message(studio):
    from studio.tabs.chat import reply

    sampling = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4, "seed": 0}
    *_, last = reply(studio, "run:gone", "", [], "my long question", sampling)
    assert "⚠" in str(last) and "my long question" in str(last), "the message typed is not dropped"


def test_a_second_prompt_replaces_the_first_and_a_vote_records_the_prompt_of_its_answers(studio):
    from studio.tabs.compare import compare, record_vote

    page, refs = SimpleNamespace(session_hash="page-1"), ["base:base", "base:base"]
    first = compare(studio, refs, "first prompt", 0, 1, 64, 0, page)
    next(first), next(first)  # models loaded, the first pieces written
    second = list(compare(studio, refs, "second prompt", 0, 1, 8, 0, page))
    assert list(first) == [], "the first comparison shows nothing more once the second is asked"
    shown = second[-1]["last"]
    assert shown["prompt"] == "second prompt" and "second prompt" in second[-1]["status"]
    record_vote(studio, shown, "tie")
    vote = studio.store.votes()[-1]
    assert vote["prompt"] == "second prompt" and vote["answers"] == shown["answers"]
    other_page = list(compare(studio, refs, "a third", 0, 1, 4, 0, SimpleNamespace(session_hash="page-2")))
    assert other_page[-1]["last"]["prompt"] == "a third", "another page's question replaces nothing here"


def test_the_page_reaches_a_handler_through_its_wiring(studio):
    """Gradio gives gr.Request to the parameter its type hint names. Through keyed(), as wired, Compare learns
    which page asked: without it every prompt was a page of its own, and a second prompt replaced nothing."""
    import gradio as gr
    from gradio.helpers import special_args

    from studio.tabs import keyed
    from studio.tabs.compare import compare

    request = gr.Request(session_hash="page-1")
    inputs, *_ = special_args(keyed(compare, studio, SimpleNamespace()), [["base:base"] * 2, "hi", 0, 1, 8, 0], request)
    assert inputs[-1] is request


def test_a_fill_sent_before_an_upload_answered_does_not_draw_over_it(studio, tmp_path):
    """The Data tab's fill, sent as the tab is shown again, is made from the page's values as they were: an upload
    of the page's own that runs, or has answered since, makes it draw nothing. Its late answer drew the previous
    dataset over the upload's (seen on a loaded machine: the status named the old file)."""
    import gradio as gr

    from studio.tabs.data import EVENTS, do_upload, on_load, own_event

    page = gr.Request(session_hash="page-1")
    opened = on_load(studio, None, request=page)
    sample, seen = opened["dataset"].value, opened["seen"]
    assert "examples ready" in opened["status"]
    with EVENTS.event("page-1"):  # an upload of the page runs as the fill, sent before it, is answered
        assert on_load(studio, sample, None, None, None, 0, page) == {"stamp": ""}, "the tab is filled when next shown"
    upload = tmp_path / "twice.csv"
    upload.write_text("question,answer\nUp?,down\nHot?,cold\nBig?,small\n")
    answered = own_event(do_upload)(studio, str(upload), sample, None, page)
    assert answered["edits"] == 2 and "twice.csv: 3 examples ready" in answered["status"]
    assert on_load(studio, sample, seen, None, None, 1, page) == {"stamp": "", "edits": 2}, "sent before it answered"
    uploaded = answered["dataset"].value
    again = on_load(studio, uploaded, None, None, None, 2, page)  # the fill the cleared stamp sends
    assert again["dataset"].value == uploaded and "twice.csv: 3 examples ready" in again["status"]
    other = on_load(studio, sample, None, request=gr.Request(session_hash="page-2"))
    assert "examples ready" in other["status"], "another page's events hold up nothing here"


def test_a_plan_wired_with_its_form_as_a_set_learns_its_page(studio):
    """The plans' inputs are the form, given as a set (one {component: value}); keyed() names them and passes
    the request that Gradio adds after them, so the plan knows its page (tabs.newest)."""
    import gradio as gr
    from gradio.helpers import special_args

    from studio.tabs import keyed, newest

    ui = SimpleNamespace(plan=gr.Markdown(render=False), fields={"epochs": gr.Number(render=False)})
    forms = []

    def plan(studio: Studio, form: dict) -> dict:
        forms.append(form)
        return {"plan": f"{form['epochs']} epochs"}

    wired = keyed(newest(plan, "a test's plan", ("plan",)), studio, ui)
    request = gr.Request(session_hash="page-1")
    inputs, *_ = special_args(wired, [{ui.fields["epochs"]: 3}], request)
    assert inputs[-1] is request
    assert wired(*inputs) == {ui.plan: "3 epochs"} and forms == [{"epochs": 3}]


PRETRAIN_FORM = {"text": None, "tokenizer": None, "vocab": None, "preset": "micro", "budget": "time", "minutes": 5,
                 "steps": None, "prompts": "", "validation": None}  # fmt: skip


@pytest.fixture
def slow_micro_plans(monkeypatch):
    """Pretrain's plans made at once, the one for micro held until released (a plan times a training step:
    seconds on a busy machine): (started, release) events."""
    from studio.tabs import pretrain

    started, release = threading.Event(), threading.Event()

    def plan_markdown(studio: Studio, text_key, tokenizer_ref, settings: dict) -> str:
        if settings.get("preset") == "micro":
            started.set()
            assert release.wait(60)
        return f"plan of {settings.get('preset')}, {settings.get('max_steps') or 'a time budget'}"

    monkeypatch.setattr(pretrain, "plan_markdown", plan_markdown)
    return started, release


def answered_later(handler, *args) -> tuple[threading.Thread, dict]:
    """handler(*args) run in a thread: (the thread, its answer once joined)."""
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(handler(*args)))
    thread.start()
    return thread, answer


def test_a_plan_asked_first_but_answered_last_draws_nothing_of_its_form(studio, slow_micro_plans):
    """A tab's plans on their way at once: the one asked first may answer last. Its answer must not draw the plan
    of the form it was asked with over the newer one's (once on a loaded CI machine, the Pretrain plan stayed at
    micro and 5:00 after the user chose tiny and 12 steps)."""
    import gradio as gr

    from studio.tabs import pretrain

    started, release = slow_micro_plans
    page = gr.Request(session_hash="page-1")
    thread, older = answered_later(pretrain.asked_plan, studio, PRETRAIN_FORM, page)
    assert started.wait(60)
    tiny = PRETRAIN_FORM | {"preset": "tiny", "budget": "steps", "steps": 12}
    assert pretrain.asked_plan(studio, tiny, page) == {"plan": "plan of tiny, 12"}
    other = pretrain.asked_plan(studio, tiny, gr.Request(session_hash="page-2"))
    assert other == {"plan": "plan of tiny, 12"}, "another page's plans are its own"
    release.set()
    thread.join(60)
    assert older == {}, "the older plan's late answer draws nothing"
    again = pretrain.asked_plan(studio, tiny | {"steps": 20}, page)
    assert again == {"plan": "plan of tiny, 20"}, "asked after the newest answered: drawn"


def test_a_refill_overtaken_by_a_plan_draws_none_of_its_form_and_is_sent_again(studio, slow_micro_plans):
    """The Pretrain tab's refill (sent as it is shown again) draws the form it was sent with and its plan. A plan
    the user asked for after it, answered first, is not drawn over: the refill draws only the run and clears the
    stamp, so the page sends it again with the form as it is now."""
    import gradio as gr

    from studio.tabs import pretrain

    started, release = slow_micro_plans
    page = gr.Request(session_hash="page-1")
    thread, refilled = answered_later(pretrain.refill, studio, PRETRAIN_FORM | {"run": None, "seen": None}, page)
    assert started.wait(60)
    tiny = PRETRAIN_FORM | {"preset": "tiny"}
    assert pretrain.asked_plan(studio, tiny, page) == {"plan": "plan of tiny, a time budget"}
    release.set()
    thread.join(60)
    assert refilled["stamp"] == "" and "state" in refilled, "the run is drawn, the stamp cleared"
    assert not set(refilled) & set(pretrain.FORM_SHOWN), "none of the form it was sent with"
    sent_again = pretrain.refill(studio, tiny | {"run": None, "seen": None}, page)
    assert sent_again["plan"] == "plan of tiny, a time budget" and "stamp" not in sent_again


def test_a_page_that_closes_while_its_upload_runs_is_forgotten():
    from studio.tabs.data import PageEvents

    events = PageEvents()
    with events.event("page-1"):
        assert events.state("page-1") == (1, True)
        events.forget("page-1")  # Gradio's unload: the page closed or reloaded
    assert events.state("page-1") == (0, False) and not events.begun and not events.running


GUTENBERG_BOOK = """\ufeffThe Project Gutenberg eBook of Oz, by L. Frank Baum\r
\r
This eBook is for the use of anyone anywhere in the United States and most other parts of the world at no\r
cost and with almost no restrictions whatsoever.\r
\r
*** START OF THE PROJECT GUTENBERG EBOOK OZ ***\r
\r
Chapter 1\r
\r
Dorothy lived in the midst of the great Kansas prairies.\r
\r
End of Project Gutenberg's Oz, by L. Frank Baum\r
\r
*** END OF THE PROJECT GUTENBERG EBOOK OZ ***\r
\r
Section 1. General Terms of Use and Redistributing Project Gutenberg-tm electronic works\r
"""


def test_a_project_gutenberg_book_is_kept_without_its_licence_and_the_status_says_so(studio, tmp_path):
    from studio.texts import store_text

    path = tmp_path / "oz.txt"
    path.write_bytes(GUTENBERG_BOOK.encode())
    info = store_text(studio, path, "oz.txt")
    kept = info.path.read_text()
    assert kept == "Chapter 1\n\nDorothy lived in the midst of the great Kansas prairies.\n"
    removed = len(GUTENBERG_BOOK.lstrip("\ufeff").replace("\r\n", "\n")) - len(kept)
    assert f"Project Gutenberg book: its header, licence and footer ({removed:,} characters)" in info.describe()
    plain = tmp_path / "mine.txt"
    plain.write_text("My own words.\n\nMore of them.\n")
    mine = store_text(studio, plain, "mine.txt")
    assert mine.path.read_bytes() == plain.read_bytes() and "Gutenberg" not in mine.describe()


def test_elapsed_never_goes_back_across_stop_and_resume(tmp_path, monkeypatch):
    """The trainer's checkpoint counts training seconds only; the page counted the attempt from its start
    (imports, data): a resume that began from the checkpoint's figure showed 1:17 after 1:43 at Stop."""
    import json
    import time

    from llm.run import INFO, STATE, RunDir
    from studio.jobs import Jobs, wall_time
    from studio.store import Store

    store = Store(tmp_path / "ws")
    run_dir = RunDir(store.workspace / "runs" / "r")
    run_dir.latest.mkdir(parents=True)
    (run_dir.latest / STATE).write_bytes(b"state")
    (run_dir.latest / INFO).write_text(json.dumps({"wall_seconds": 60.0}))
    run_id = store.add_run("r", "base:base", "d", "lora", {}, run_dir.path)
    now = time.time()
    store.update_run(run_id, status="stopped", started=now - 100, attempt_started=now - 100, finished=now)
    shown_at_stop = wall_time(store.run(run_id))

    class Child:
        pid = 2**22 + 77

        def __init__(self, cmd, **kwargs):
            pass

        def poll(self):
            return None

    monkeypatch.setattr("studio.jobs.subprocess.Popen", Child)
    jobs = Jobs(store)
    jobs.resume(run_id)
    assert store.run(run_id)["status"] == "running"
    assert wall_time(store.run(run_id)) >= shown_at_stop >= 100


def test_run_names_are_escaped_in_the_queue_and_stop_messages(tmp_path, monkeypatch):
    from studio.jobs import Jobs
    from studio.store import Store

    monkeypatch.setattr("studio.jobs.process_alive", lambda pid, marker: True)  # the first run trains

    store = Store(tmp_path / "ws")
    first = store.add_run("<b>first</b>", "base:base", "d", "lora", {}, store.workspace / "runs" / "a")
    store.update_run(first, status="running", pid=2**22 + 5)
    second = store.add_run("<img src=x>", "base:base", "d", "lora", {}, store.workspace / "runs" / "b")
    jobs = Jobs(store)
    queued = jobs.submit(second)
    assert "&lt;b&gt;first&lt;/b&gt;" in queued and "<b>" not in queued
    for message in (jobs.stop(second), jobs.stop(first)):
        assert "<img" not in message and "<b>" not in message, message


def test_delete_asks_first_names_the_file_and_deletes_exactly_it(studio, tmp_path):
    """An upload whose columns still had to be chosen left the previous dataset in the Dataset box, and
    'Delete this upload' deleted that one (a finished run's training data), without asking."""
    from studio.tabs.data import ask_delete, delete, do_upload

    first = tmp_path / "trained-on.csv"
    first.write_text("question,answer\nUp?,down\n")
    kept = do_upload(studio, str(first), None)["dataset"].value
    columns = tmp_path / "qa.csv"
    columns.write_text("frage,antwort\nHoch?,tief\n")
    waiting = do_upload(studio, str(columns), kept)
    shown = waiting["dataset"].value  # what the Dataset box now names
    assert shown != kept and waiting["pending"]["name"] == "qa.csv"
    asked = ask_delete(studio, shown, waiting["pending"])
    assert "qa.csv" in asked["deleted"] and "not stored" in asked["deleted"] and asked["doomed"] is None
    assert studio.store.dataset(kept) is not None, "nothing deleted: the upload shown is not stored"
    again = tmp_path / "again" / "trained-on.csv"  # a second upload of the same name
    again.parent.mkdir()
    again.write_text("question,answer\nIn?,out\n")
    second = do_upload(studio, str(again), kept)["dataset"].value
    asked = ask_delete(studio, kept, None)
    assert asked["confirm_row"].visible and asked["doomed"] == kept
    assert "trained-on.csv (uploaded " in asked["confirm_text"], "two share the name: when it came tells them apart"
    assert "nothing was deleted" in delete(studio, second, doomed=kept)["deleted"], "the pick changed since"
    assert studio.store.dataset(kept) and studio.store.dataset(second)
    assert "Deleted trained-on.csv" in delete(studio, kept, doomed=kept)["deleted"]
    assert studio.store.dataset(kept) is None and studio.store.dataset(second) is not None


def test_inside_shows_a_character_once_and_control_tokens_by_name(studio):
    """Byte-fallback tokens showed their whole character once per byte ("多多多"); <|end|> as a next-token
    choice was an empty cell; a 0 in a number field gave Gradio's bare "Error"."""
    from studio.tabs.inside import candidate_text, look

    numbers = (-1, 5, 0.8, 0.9, 0, -1)  # position, top k, temperature, top-p, layer, head
    out = look(
        studio, "base:base", None, "text", "猫 and 狗", "", "", *numbers
    )  # the test tokenizer spells them in bytes
    assert out["tokens_view"].count("猫") == 1 and out["tokens_view"].count("狗") == 1
    assert out["surprise_view"].count("猫") == 1, "the surprise view too"
    end = {"rank": 1, "id": 3, "piece": "<|end|>", "text": "", "probability": 0.5, "sampled_probability": 0.6}
    assert "&lt;|end|&gt;" in candidate_text(end)
    assert candidate_text({**end, "piece": "<0xE7>", "text": "\ufffd"}).count("0xE7") == 1, "a lone byte by its name"
    for zero, field in ((0, "Top k"), (None, "Top k")):
        refused = look(studio, "base:base", None, "text", "Once upon a time", "", "", -1, zero, 0.8, 0.9, 0, -1)
        assert refused["status"].startswith(f"⚠ {field} must be"), refused["status"]
