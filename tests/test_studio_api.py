"""The studio's named endpoints, called with gradio_client against a launched app (temp workspace, tiny model)."""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio.state_holder
import httpx
import pytest
from conftest import free_port
from gradio.route_utils import BUILD_PATH_LIB
from gradio_client import Client, handle_file
from gradio_client.utils import SKIP_COMPONENTS
from test_hostile_inputs import BAD_FILES as HOSTILE_FILES

from studio.app import API_PAGE, build_app, launch
from studio.context import SAMPLES_DIR
from studio.tabs import STAMP_API, STAMP_SESSION, stamp_script
from studio.tabs.compare import record_vote

MAX_UPLOAD = 100_000  # bytes: small, so the oversized-upload test needs no big file
ENDPOINTS = {
    "upload", "validate", "dataset", "plan", "start", "progress", "stop", "resume", "runs",
    "compare", "vote", "batch_compare", "models", "rename", "delete", "download",
    "save_preset", "presets", "loss_curves", "votes", "export_votes", "tune_on_votes", "chat", "delete_dataset",
}  # fmt: skip


def value(output):
    """A component's value from an output that may be an update dict."""
    return output.get("value") if isinstance(output, dict) and "__type__" in output else output


def named(app, api_name: str, out: tuple, raw: bool = False) -> dict:
    """An endpoint's outputs by their components' elem_id (outputs are keyed by component, never counted), each
    unwrapped from its update (raw: as sent); the client leaves out State and layout outputs, and so does this."""
    config = app.client.config
    event = next(d for d in config["dependencies"] if d.get("api_name") == api_name.lstrip("/"))
    components = {c["id"]: c for c in config["components"]}
    shown = [components[i] for i in event["outputs"]]
    shown = [c for c in shown if not c.get("skip_api", c["type"] in SKIP_COMPONENTS)]
    out = out if isinstance(out, tuple) else (out,)
    return {c["props"].get("elem_id") or f"#{c['id']}": o if raw else value(o) for c, o in zip(shown, out, strict=True)}


def snapshot(workspace: Path) -> tuple:
    """The workspace's files (the database's own files aside) and its dataset rows."""
    files = sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*") if "studio.db" not in p.name)
    return files


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    workspace = tmp_path_factory.mktemp("workspace")
    demo = build_app(workspace, tiny_model_dir, SAMPLES_DIR, max_upload_bytes=MAX_UPLOAD, watch_interval=0.5)
    _, url, _ = launch(demo, port=free_port(), block=False)
    client = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield SimpleNamespace(url=url, client=client, studio=demo.studio, workspace=demo.studio.workspace, demo=demo)
    for run in demo.studio.store.runs(("queued", "starting", "running", "stopping")):
        demo.studio.jobs.stop(run["id"])
    demo.studio.jobs.close()
    demo.close()


def upload(app, path: Path, client: Client | None = None, raw: bool = False) -> dict:
    """The upload endpoint's outputs by element id."""
    return named(app, "/upload", (client or app.client).predict(handle_file(path), None, api_name="/upload"), raw)


def test_deleting_an_upload_shows_the_next_dataset_and_a_sample_stays(app, tmp_path):
    path = tmp_path / "gone.csv"
    path.write_text("question,answer\nUp?,down\nIn?,out\n")
    key = upload(app, path)["data-dataset"]
    out = named(app, "/delete_dataset", app.client.predict(key, None, api_name="/delete_dataset"))
    assert out["data-deleted"] == "Deleted gone.csv." and app.studio.store.dataset(key) is None
    assert out["data-dataset"] != key, "the next dataset is picked"
    status = out["data-status"]
    assert "gone.csv" not in status and "examples ready" in status, "the view shows the next dataset, not the gone one"
    out = named(app, "/delete_dataset", app.client.predict("sample-opposites", None, api_name="/delete_dataset"))
    assert "sample" in out["data-deleted"] and app.studio.store.dataset("sample-opposites") is not None


def test_every_endpoint_has_a_name(app):
    named = {
        name.lstrip("/") for name in app.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    }
    assert ENDPOINTS <= named, f"missing: {ENDPOINTS - named}"


def test_every_endpoint_is_described_by_its_own_docstring(app):
    """Gradio describes an endpoint by its function's docstring: a bare functools.partial would give
    functools' own ("partial(func, *args, **keywords) - new function ...")."""
    endpoints = app.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    generic = {name for name, info in endpoints.items() if "partial(func" in json.dumps(info)}
    assert not generic, f"described as functools.partial: {sorted(generic)}"


def test_the_endpoints_for_scripts_are_on_a_page_of_their_own(app):
    """The studio's page carries only its own parts and events (the browser goes through every one as the page
    opens); the endpoints for scripts are on API_PAGE, whose "Use via API" lists them, and a client sees all."""
    page = httpx.get(f"{app.url}config", params={"page": ""}, timeout=10).json()
    api_page = httpx.get(f"{app.url}config", params={"page": API_PAGE}, timeout=10).json()
    on_page = {d["api_name"] for d in page["dependencies"]}
    for_scripts = {d["api_name"] for d in api_page["dependencies"]}
    assert {"plan", "start", "progress", "runs", "chat", STAMP_API} <= for_scripts
    assert {"upload", "validate", "dataset", "delete_dataset"} <= on_page, "the Data tab's events stay its own"
    assert not on_page & for_scripts and not any(c["type"] == "api" for c in page["components"])
    html = httpx.get(app.url, timeout=10).text
    assert '"pretrain_start"' not in html and '"upload"' in html, "the page's own config is the one it is sent"
    docs = httpx.get(f"{app.url}{API_PAGE}", timeout=10)
    assert docs.status_code == 200 and '"pretrain_start"' in docs.text
    client_sees = app.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {f"/{name}" for name in for_scripts - {STAMP_API}} | {"/upload"} <= set(client_sees)


def test_the_pages_scripts_are_served_whole_and_kept_by_the_browser(app):
    """Each script the page asks for comes from memory (FrontendAssets), the same bytes as Gradio's file."""
    html = httpx.get(app.url, timeout=10).text
    names = re.findall(r"assets/([\w.-]+\.(?:js|css))", html)
    assert names, "the page names its scripts"
    for name in names:
        answer = httpx.get(f"{app.url}assets/{name}", timeout=10)  # httpx asks for and undoes Brotli
        assert answer.headers["content-encoding"] == "br" and "immutable" in answer.headers["cache-control"]
        assert answer.content == (Path(BUILD_PATH_LIB) / name).read_bytes()


def test_a_tabs_stamp_changes_with_what_it_draws_and_is_asked_for_over_plain_http(app, tmp_path, monkeypatch):
    """A shown tab is filled only when its stamp changed: the page's script asks for it by a plain POST (no
    queue, no Gradio event), with the values of the tab's inputs, naming one session for every stamp (Gradio
    would otherwise make a session state, the config of every part, for each call)."""
    assert f"session_hash: {STAMP_SESSION!r}" in stamp_script("data", timer=False)
    made, made_by_stamps = [], []
    init = gradio.state_holder.SessionState.__init__
    monkeypatch.setattr(gradio.state_holder.SessionState, "__init__", lambda s, b: made.append(1) or init(s, b))

    def stamp(tab: str, *values) -> list:
        body = {"data": [tab, list(values)], "session_hash": STAMP_SESSION}  # as stamp_script posts it
        before = len(made)
        answer = httpx.post(f"{app.url}gradio_api/run/shown_stamp", json=body, timeout=30)
        made_by_stamps.extend(made[before:])
        assert answer.status_code == 200, answer.text
        return answer.json()["data"][0]

    data, ticking = stamp("data", None, None)
    assert ticking is False and stamp("data", None, None) == [data, False], "the same workspace, the same stamp"
    finetune, models = stamp("finetune", None)[0], stamp("models", None, [])[0]
    path = tmp_path / "stamped.csv"
    path.write_text("question,answer\nUp?,down\nIn?,out\n")
    key = upload(app, path)["data-dataset"]
    assert stamp("data", None, None)[0] != data, "the Data tab offers the new dataset"
    assert stamp("data", key, None)[0] != stamp("data", "sample-opposites", None)[0], "each page's own choice"
    assert stamp("finetune", None)[0] != finetune, "the Fine-tune form offers it too"
    assert stamp("models", None, [])[0] == models, "the Models tab does not show datasets"
    assert len(made_by_stamps) <= 1, f"{len(made_by_stamps)} session states made for 9 stamps: one is kept"
    unknown = httpx.post(f"{app.url}gradio_api/run/shown_stamp", json={"data": ["nope", []]}, timeout=30)
    assert unknown.status_code == 500 and "No stamp for the tab 'nope'" in unknown.text


def test_the_samples_are_offered_out_of_the_box(app):
    ids = {d["id"] for d in app.studio.store.datasets()}
    assert {f"sample-{p.stem}" for p in SAMPLES_DIR.glob("*") if p.suffix in (".csv", ".json", ".jsonl")} <= ids
    out = named(app, "/dataset", app.client.predict("sample-opposites", api_name="/dataset"))
    assert "examples ready" in out["data-status"] and "class='trained'" in out["data-preview"]


def test_upload_parses_previews_and_stores_the_file(app, tmp_path):
    path = tmp_path / "qa.csv"
    long_row = "Say this back: " + "words " * 300 + ",ok\n"
    rows = "".join(f"What is {i} plus one?,{i + 1}\n" for i in range(29))
    path.write_text("question,answer\n" + rows + long_row + "Empty?,\n")
    out = upload(app, path)
    status, preview, problems = out["data-status"], out["data-preview"], out["data-problems"]
    assert "30 examples ready" in status and "1 row dropped" in status
    # A long prompt and a short answer: the row keeps the answer and the end of its prompt, and says so.
    assert "1 example (3%) is longer; training sees only its end (the prompt alone fills the context)." in status
    assert "&lt;|assistant|&gt;" in preview and "class='trained'" in preview, "template applied, trained part marked"
    assert problems["data"][0][:3] == [31, "answer", "empty response"], "the dropped row, its column and why"
    stored = [d for d in app.studio.store.datasets() if d["name"] == "qa.csv"]
    assert len(stored) == 1 and stored[0]["rows"] == 30
    assert app.studio.store.abs(stored[0]["path"]).read_text() == path.read_text()
    assert out["data-dataset"] == stored[0]["id"], "the new dataset is selected"
    histogram = out["data-hist"]
    fits = re.findall(r"<title>[^<]*: (\d+) \(fits the context\)</title>", histogram)
    cut = re.findall(r"<title>[^<]*: (\d+) \(cut by the context\)</title>", histogram)
    assert "<svg" in histogram and sum(map(int, fits)) == 29, "the length histogram counts every kept example"
    assert sum(map(int, cut)) == 1
    assert "fits the context" in histogram and "cut by the context" in histogram


BAD_FILES = {
    "empty.csv": (b"", "empty"),
    "columns.csv": (b"foo,bar\n1,2\n", "which columns hold the prompts"),
    "broken.json": (b'[{"question": "a", "answer": "b"},', "malformed JSON"),
    "latin1.csv": ("question,answer\ncafé?,oui\n".encode("latin-1"), "not UTF-8"),
    "header_only.csv": (b"question,answer\n", "no rows"),
    "all_bad.jsonl": (b'{"question": "", "answer": "x"}\n', "no usable rows"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_upload_is_explained_and_leaves_the_workspace_unchanged(app, tmp_path, name):
    content, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    before, rows = snapshot(app.workspace), len(app.studio.store.datasets())
    status = upload(app, path)["data-status"]
    assert message in status and "Traceback" not in status
    assert str(tmp_path) not in status, "the message names the file, not a temporary path"
    assert snapshot(app.workspace) == before and len(app.studio.store.datasets()) == rows


# The task-file types the upload accepts, within this app's upload limit (Gradio refuses larger files at the door).
HOSTILE_UPLOADS = [
    (name, content, message)
    for name, content, message in HOSTILE_FILES
    if name.rsplit(".", 1)[-1] in ("csv", "tsv", "json", "jsonl") and len(content) <= MAX_UPLOAD
]


@pytest.mark.parametrize("name,content,message", HOSTILE_UPLOADS, ids=[case[0] for case in HOSTILE_UPLOADS])
def test_every_hostile_file_uploaded_is_explained_and_the_server_stays_up(app, tmp_path, name, content, message):
    """The bad-file matrix of tests/test_hostile_inputs.py through the studio's upload endpoint."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before, rows = snapshot(app.workspace), len(app.studio.store.datasets())
    status = upload(app, path)["data-status"]
    assert "Traceback" not in status and str(tmp_path) not in status
    assert "cannot be used" in status or "which columns" in status, status
    assert snapshot(app.workspace) == before and len(app.studio.store.datasets()) == rows
    assert app.client.predict(api_name="/models"), "the server still answers"


def test_a_file_of_another_type_is_refused(app, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("question,answer\na,b\n")
    before = snapshot(app.workspace)
    with pytest.raises(Exception, match="Invalid file type"):
        upload(app, path)
    assert snapshot(app.workspace) == before
    sheet = tmp_path / "prices.xlsx"
    sheet.write_bytes(b"PK\x03\x04 a spreadsheet")
    status = upload(app, sheet)["data-status"]
    assert "prices.xlsx: unsupported file type '.xlsx'" in status and "Save as > CSV (UTF-8)" in status
    assert snapshot(app.workspace) == before


def test_an_oversized_upload_is_refused(app, tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("question,answer\n" + "what?,that\n" * (MAX_UPLOAD // 10))
    before = snapshot(app.workspace)
    # Gradio's own limit at the door is the model uploads' (Models -> Import); a dataset's is the studio's.
    status = upload(app, path)["data-status"]
    assert "big.csv is larger than the upload limit of 97.7 KiB" in status
    assert snapshot(app.workspace) == before


def test_an_upload_named_to_escape_stays_in_the_workspace(app):
    content = b"question,answer\nUp?,down\n"
    response = httpx.post(f"{app.url}gradio_api/upload", files=[("files", ("../../x.csv", content, "text/csv"))])
    response.raise_for_status()
    server_path = response.json()[0]
    file_data = {"path": server_path, "orig_name": "../../x.csv", "meta": {"_type": "gradio.FileData"}}
    status = named(app, "/upload", app.client.predict(file_data, None, api_name="/upload"))["data-status"]
    assert "1 example ready" in status
    stored = [d for d in app.studio.store.datasets() if d["name"] == "x.csv"]
    assert len(stored) == 1
    path = app.studio.store.abs(stored[0]["path"])
    assert path.is_relative_to(app.workspace / "datasets") and path.read_bytes() == content
    assert not (app.workspace.parent / "x.csv").exists() and not (app.workspace.parent.parent / "x.csv").exists()


def test_columns_can_be_named_after_an_upload(app, tmp_path):
    client = Client(app.url, verbose=False)  # its own session: the waiting upload lives in it
    path = tmp_path / "frage.csv"
    path.write_text("frage,antwort\nHoch?,tief\nKalt?,warm\n")
    before = snapshot(app.workspace)
    out = upload(app, path, client, raw=True)
    assert "which columns" in value(out["data-status"]) and snapshot(app.workspace) == before
    assert [c[1] for c in out["data-prompt-col"]["choices"]] == ["", "frage", "antwort"]
    out = named(app, "/validate", client.predict(None, "pairs", "frage", "antwort", "", api_name="/validate"))
    assert "2 examples ready" in out["data-status"] and "frage → prompt" in out["data-status"]
    stored = next(d for d in app.studio.store.datasets() if d["name"] == "frage.csv")
    assert stored["format"] == "pairs" and stored["mapping"] == {"prompt": "frage", "response": "antwort"}


def test_validate_keeps_the_old_settings_when_the_new_ones_fail(app):
    out = named(app, "/validate", app.client.predict("sample-opposites", "alpaca", "", "", "", api_name="/validate"))
    assert (
        "missing column for the alpaca format's instruction" in out["data-status"]
        and "not changed" in out["data-status"]
    )
    assert app.studio.store.dataset("sample-opposites")["format"] == "auto"


def plan(app, settings: dict | str, dataset: str = "sample-opposites") -> str:
    text = settings if isinstance(settings, str) else json.dumps(settings)
    return app.client.predict("base:base", dataset, text, api_name="/plan")


def test_the_plan_follows_the_settings(app):
    from llm.train import finetune

    settings = {"method": "lora", "epochs": 1, "batch_size": 8, "lora_rank": 4}
    expected = finetune.prepare(app.studio.finetune_config("base:base", "sample-opposites", settings))
    per_epoch = expected.steps_per_epoch
    assert f"**Steps:** {per_epoch} (1.0 epochs of {per_epoch}, batch 8)" in plan(app, settings)
    assert f"**Steps:** {3 * per_epoch} (3.0 epochs" in plan(app, settings | {"epochs": 3}), (
        "3 epochs, 3 times the steps"
    )
    lora, full = plan(app, settings), plan(app, settings | {"method": "full"})
    trained = [int(re.search(r"trained: ([\d,]+)", text).group(1).replace(",", "")) for text in (lora, full)]
    assert trained[0] < trained[1], "LoRA trains fewer parameters than a full fine-tune"
    assert "⚠" in app.client.predict("base:base", "", api_name="/plan")


def test_the_api_takes_settings_as_one_object_checked_by_the_config(app):
    text = plan(app, {"grad_accum": 2, "merge": True})
    assert "In use now:** CPU" in text and "memory in use" in text
    assert "⚠ Warmup steps must be" in plan(app, {"warmup_steps": -1})
    batch = plan(app, {"batch_size": 100_000})
    assert re.search(r"⚠ Batch size must be at most \d+, the rows there are to train on; got 100000", batch)
    assert "⚠ Max steps must be >= 0, got -5" in plan(app, {"max_steps": -5})
    assert "unknown FinetuneConfig field(s): epoch" in plan(app, {"epoch": 2}), "a misspelt key is an error"
    assert "chosen in the studio" in plan(app, {"data": "/etc/passwd"}), "the dataset is the studio's to choose"
    assert "epochs must be a number" in plan(app, {"epochs": "two"})
    assert "⚠" in plan(app, "[1, 2]") and "⚠" in plan(app, "{not json")
    runs = len(app.studio.store.runs())
    message, run_id = app.client.predict("base:base", "sample-opposites", '{"lr": -1}', "", api_name="/start")
    assert run_id is None and "Learning rate must be positive" in message and len(app.studio.store.runs()) == runs


def test_presets_are_saved_in_the_workspace_with_every_key(app):
    settings = {"method": "full", "epochs": 2, "probes": ["Hi?"], "device": "cpu"}
    assert "Saved the preset" in app.client.predict("short runs", json.dumps(settings), api_name="/save_preset")
    assert "⚠ Epochs must be" in app.client.predict("bad", '{"epochs": 0}', api_name="/save_preset")
    assert app.client.predict(api_name="/presets")["short runs"] == settings, "no key dropped"
    assert "bad" not in app.studio.store.presets()


def test_progress_without_a_run_offers_nothing_to_stop_or_resume(app):
    from gradio_client.exceptions import AppError

    from studio.tabs.finetune import VIEW

    with pytest.raises(AppError, match="No run 'nope'"):
        app.client.predict("nope", api_name="/progress")
    view = VIEW.refresh(app.studio, None, None)  # what a page without a run shows
    assert not view["stop"].interactive and not view["resume"].interactive and not view["timer"].active
    assert "<polyline" not in view["curve"] and "appear here at each evaluation" in view["samples"]
    assert "Choose a run first" in app.client.predict("", api_name="/stop")


def test_compare_needs_two_models_and_a_prompt(app):
    client = Client(app.url, verbose=False)  # its own page: nothing compared yet
    out = client.predict(["base:base"], "Hi", 0, 1, 8, 0, api_name="/compare")
    assert "Choose 2 to 4 models" in out["status"] and not any(out["answers"]) and not out["comparison"]
    out = client.predict(["base:base", "base:base"], "  ", 0, 1, 8, 0, api_name="/compare")
    assert "Write a prompt" in out["status"] and not any(out["answers"]) and not out["comparison"]
    votes = len(app.studio.store.votes())
    assert "Generate answers first" in record_vote(app.studio, {}, "tie") and len(app.studio.store.votes()) == votes


def test_compare_answers_side_by_side_and_votes_are_stored(app):
    client = Client(app.url, verbose=False)
    out = client.predict(["base:base", "base:base"], "Once upon a time", 0.8, 0.9, 12, 7, api_name="/compare")
    first, second = out["answers"]
    assert first and first == second, "same model, same seed and settings: the same answer"
    assert "100% of words shared" in out["diff"] and "seed (7)" in out["status"]
    comparison = out["comparison"]
    assert comparison["prompt"] == "Once upon a time" and comparison["answers"] == [first, second]
    votes = len(app.studio.store.votes())
    assert "Vote saved" in client.predict(comparison, "base:base", api_name="/vote")
    vote = app.studio.store.votes()[-1]
    assert len(app.studio.store.votes()) == votes + 1
    assert vote["prompt"] == "Once upon a time" and vote["answers"] == [first, second]
    assert vote["settings"]["seed"] == 7 and vote["winner"] == "base:base"
    assert "Vote saved" in client.predict(comparison, "tie", api_name="/vote")  # again on the same comparison
    assert len(app.studio.store.votes()) == votes + 1 and app.studio.store.votes()[-1]["winner"] == "tie"
    exported = app.client.predict(api_name="/export_votes")
    assert exported["n_ties"] >= 1 and Path(exported["pairs"]).is_file()


def test_chat_keeps_the_conversation(app):
    first = app.client.predict("base:base", "", [], "Once upon a time", 0, 1, 8, 0, api_name="/chat")
    assert [m["role"] for m in first["history"]] == ["user", "assistant"] and first["status"].startswith("Answered")
    second = app.client.predict("base:base", "Be brief.", first["history"], "And then?", 0, 1, 8, 0, api_name="/chat")
    assert [m["role"] for m in second["history"]] == ["user", "assistant", "user", "assistant"]
    assert second["history"][:2] == first["history"]
    assert "Choose a model" in app.client.predict(None, "", [], "Hi", 0, 1, 8, 0, api_name="/chat")["status"]


def test_models_lists_the_base_model(app):
    rows = app.client.predict(api_name="/models")
    base = next(r for r in rows if r["ref"] == "base:base")
    assert base["status"] == "ready" and base["kind"] == "base model"


def test_names_must_be_unique_and_a_missing_model_is_not_renamed(app):
    taken = "Other base (shipped)"
    app.studio.store.set_model("other", taken, app.studio.base_model)  # a second entry with its own name
    status = app.client.predict("base:base", taken.upper() + "  ", api_name="/rename")
    assert status.startswith("⚠ Name") and "taken" in status
    assert app.studio.store.model("base")["name"] != taken.upper().strip(), "not renamed"
    out = app.client.predict("run:nope", "fresh name", api_name="/rename")
    assert "unknown model" in out and not any(r["name"] == "fresh name" for r in app.studio.store.runs())
    out = app.client.predict("base:base", "x" * 81, api_name="/rename")
    assert "at most 80" in out and app.studio.store.model("base")["name"] != "x" * 81
    settings = '{"max_steps": 1, "batch_size": 8}'
    message, _ = app.client.predict("base:base", "sample-opposites", settings, taken, api_name="/start")
    assert "taken" in message and not any(r["name"] == taken for r in app.studio.store.runs())
    with app.studio.store.connect() as db:
        db.execute("DELETE FROM models WHERE id = 'other'")


def test_the_base_model_cannot_be_deleted(app):
    assert "cannot be deleted" in app.client.predict("base:base", api_name="/delete")
    assert app.studio.store.model("base")


@pytest.mark.slow
def test_finetune_progress_compare_batch_and_model_actions(app):
    """One short run through the UI's endpoints: start, watch, then use the model everywhere."""
    c = app.client
    settings = {
        "epochs": 1,
        "max_steps": 6,
        "lr": 0.003,
        "batch_size": 8,
        "lora_rank": 4,
        "probes": ["Opposite of up?"],
    }
    message, run = c.predict("base:base", "sample-opposites", json.dumps(settings), "tiny-run", api_name="/start")
    run_id = value(run)
    assert "Started" in message or "Queued" in message
    deadline, out = time.time() + 120, None
    while time.time() < deadline:
        out = c.predict(run_id, api_name="/progress")
        if app.studio.store.run(run_id)["status"] in ("done", "failed", "stopped", "interrupted"):
            break
        time.sleep(1)
    out = c.predict(run_id, api_name="/progress")
    assert app.studio.store.run(run_id)["status"] == "done" and out["status"] == "done", out["log"]
    assert "done" in out["state"] and "step <b>6</b> of 6" in out["bar"] and out["step"] == out["max_steps"] == 6
    assert {"train", "validation"} <= set(re.findall(r"<polyline class='line' data-series='([^']*)'", out["curve"]))
    assert out["samples"] and out["samples"][0]["prompt"] == "Opposite of up?"
    assert "done at step 6" in out["log"]
    assert any(r["id"] == run_id and r["status"] == "done" for r in c.predict(api_name="/runs"))

    ref = f"run:{run_id}"
    points = c.predict([ref, "run:gone"], api_name="/loss_curves")
    assert {p["curve"] for p in points} == {"tiny-run: train", "tiny-run: validation"}
    assert all(isinstance(p["loss"], float) and isinstance(p["step"], int) for p in points)
    out = c.predict(["base:base", ref], "Opposite of up?", 0, 1, 16, 0, api_name="/compare")
    assert len(out["answers"]) == 2 and out["comparison"]["labels"] == ["base", "tiny-run"], "labelled by name"
    out = c.predict(["base:base", ref], "sample-opposites", 4, 8, 0, api_name="/batch_compare")
    assert "Scored 4 held-out rows" in out["batch_status"]
    totals, table = out["batch_totals"], out["batch_table"]
    assert [row["model"] for row in totals] == ["base", "tiny-run"] and totals[0]["rows"] == 4
    assert {"exact", "contains", "f1", "ref_loss"} <= set(table[0])
    assert Path(out["batch_file"]).read_text().startswith("model,row,prompt,reference,answer")

    row = next(r for r in c.predict(api_name="/models") if r["ref"] == ref)
    assert row["kind"] == "fine-tuned (LoRA)" and row["steps"] == 6 and row["dataset"] == "opposites.csv"
    assert "Renamed" in c.predict(ref, "opposites-lora", api_name="/rename")
    assert app.studio.store.run(run_id)["name"] == "opposites-lora"
    zip_path = c.predict(ref, api_name="/download")["zip_file"]
    names = zipfile.ZipFile(zip_path).namelist()
    assert "opposites-lora/model.safetensors" in names, "a LoRA run downloads as a standalone merged model"
    assert "opposites-lora/metrics.jsonl" in names and not any("trainer_state" in n for n in names)
    info = json.loads(zipfile.ZipFile(zip_path).read("opposites-lora/info.json"))
    assert info["method"] == "lora" and info["dataset"]["name"] == "opposites.csv"
    hf_zip = zipfile.ZipFile(c.predict(ref, True, api_name="/download")["zip_file"])
    hf_config = json.loads(hf_zip.read("opposites-lora-hf/config.json"))
    assert hf_config["architectures"] == ["LlamaForCausalLM"], "a Hugging Face folder, the LoRA merged in"
    assert {"opposites-lora-hf/tokenizer.json", "opposites-lora-hf/model.safetensors"} <= set(hf_zip.namelist())
    run_dir = app.studio.store.abs(app.studio.store.run(run_id)["dir"])
    # The page's box named another model than the pick now holds: "Yes, delete it" deletes nothing.
    from studio.tabs.models import delete

    asked = delete(app.studio, ref, doomed="run:another")["status"]
    assert "nothing was deleted" in asked and app.studio.store.run(run_id) is not None
    assert "Deleted" in c.predict(ref, api_name="/delete")
    assert app.studio.store.run(run_id) is None and not run_dir.exists()


def test_two_pages_uploading_the_same_name_get_two_intact_datasets(app, tmp_path):
    import threading

    files = []
    for i in range(2):
        folder = tmp_path / f"page{i}"
        folder.mkdir()
        path = folder / "same.csv"
        path.write_text("question,answer\n" + f"Page {i}?,yes\n" * (i + 1))
        files.append(path)
    clients = [Client(app.url, verbose=False) for _ in files]
    threads = [threading.Thread(target=upload, args=(app, f, c)) for f, c in zip(files, clients, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [d for d in app.studio.store.datasets() if d["name"] == "same.csv"]
    assert len(stored) == 2 and len({d["path"] for d in stored}) == 2, "each upload gets its own id and folder"
    contents = sorted(app.studio.store.abs(d["path"]).read_text() for d in stored)
    assert contents == sorted(f.read_text() for f in files)


def test_gradio_does_not_recompute_its_latency_summary_after_every_event(app):
    """Gradio's queue summarises every endpoint's latency for its API page from its last 10,000 events (a pandas
    table); after each event, by default, which a timer ticking each second made ever dearer."""
    queue = app.demo._queue
    for _ in range(3):
        app.client.predict(api_name="/runs")
    assert queue.events_recorded >= 3
    assert queue.events_recorded - queue.event_count_at_last_cache >= 3, "no summary after each of those events"
