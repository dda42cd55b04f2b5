"""The Pretrain tab's and the Inside view's endpoints, called with gradio_client against a launched app."""

from __future__ import annotations

import gzip
import json
import time
from types import SimpleNamespace

import pytest
from conftest import free_port
from gradio_client import Client, handle_file
from test_studio_api import snapshot

from studio.app import build_app, launch
from studio.context import SAMPLES_DIR

BOOK = "sample:marvelous_land_of_oz.txt"
ENDPOINTS = {
    "pretrain_upload", "pretrain_plan", "pretrain_start", "pretrain_progress", "pretrain_timeline",
    "pretrain_texts", "inspect",
}  # fmt: skip


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    workspace = tmp_path_factory.mktemp("workspace")
    demo = build_app(workspace, tiny_model_dir, SAMPLES_DIR, max_upload_bytes=400_000, watch_interval=0.5)
    _, url, _ = launch(demo, port=free_port(), block=False)
    client = Client(url, verbose=False)
    yield SimpleNamespace(url=url, client=client, studio=demo.studio, workspace=demo.studio.workspace)
    for run in demo.studio.store.runs(("queued", "starting", "running", "stopping")):
        demo.studio.jobs.stop(run["id"])
    demo.studio.jobs.close()
    demo.close()


def test_every_endpoint_has_a_name(app):
    named = {n.lstrip("/") for n in app.client.view_api(print_info=False, return_format="dict")["named_endpoints"]}
    assert ENDPOINTS <= named, f"missing: {ENDPOINTS - named}"


def test_the_sample_book_is_offered_and_planned(app):
    assert {"key": BOOK, "label": "marvelous_land_of_oz.txt (sample book)"} in app.client.predict(
        api_name="/pretrain_texts"
    )
    settings = {"vocab_size": 2048, "preset": "micro", "max_time": 300.0, "max_steps": 0}
    plan = app.client.predict(BOOK, "new", json.dumps(settings), api_name="/pretrain_plan")
    assert "parameters (micro: 4 layers × 128" in plan and "0:05:00" not in plan and "5:00 of training" in plan
    reused = app.client.predict(BOOK, "base:base", '{"preset": "tiny", "max_steps": 30, "max_time": 0}',
                                api_name="/pretrain_plan")  # fmt: skip
    assert "vocabulary 400" in reused and "**Budget:** 30 steps" in reused
    bad = app.client.predict(BOOK, "new", '{"vocab_size": 100}', api_name="/pretrain_plan")
    assert bad.startswith("⚠ Vocab size")
    assert "Choose a text" in app.client.predict("upload:gone", api_name="/pretrain_plan")
    assert "unknown PretrainConfig field(s): preset_name" in app.client.predict(
        BOOK, "new", '{"preset_name": "tiny"}', api_name="/pretrain_plan"
    ), "the settings are PretrainConfig's: a misspelt key is an error"
    assert "chosen in the studio" in app.client.predict(BOOK, "new", '{"inputs": ["/etc"]}', api_name="/pretrain_plan")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
        ("latin1.txt", "Un café, s'il vous plaît.\n".encode("latin-1"), "not UTF-8"),
        ("empty.txt", b"", "no text in it"),
    ],
)
def test_a_bad_text_is_explained_and_leaves_nothing(app, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    before = snapshot(app.workspace)
    status = app.client.predict(handle_file(path), api_name="/pretrain_upload")["text_status"]
    assert status.startswith("⚠ This text cannot be used") and message in status and name in status
    assert str(tmp_path) not in status, "the message names the file, not the upload's temporary path"
    assert snapshot(app.workspace) == before


def test_other_file_types_are_refused(app, tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    before = snapshot(app.workspace)
    status = app.client.predict(handle_file(path), api_name="/pretrain_upload")["text_status"]
    assert "table.csv: a text to pretrain on must be .txt, .txt.gz, .jsonl" in status
    assert snapshot(app.workspace) == before


def test_an_uploaded_text_is_kept_and_chosen(app, tmp_path, story_file):
    path = tmp_path / "stories.txt.gz"
    path.write_bytes(gzip.compress(story_file.read_bytes()))
    out = app.client.predict(handle_file(path), api_name="/pretrain_upload")
    key, status = out["text"], out["text_status"]
    assert status.startswith("✓ stories.txt.gz") and "600 paragraphs" in status
    assert key.startswith("upload:") and {"key": key, "label": "stories.txt.gz (uploaded)"} in app.client.predict(
        api_name="/pretrain_texts"
    )
    settings = '{"vocab_size": 400, "preset": "tiny", "max_steps": 10, "max_time": 0}'
    assert "parameters" in app.client.predict(key, "new", settings, api_name="/pretrain_plan")


def wait_done(app, run_id: str, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = app.studio.store.run(run_id)
        if run["status"] in ("done", "failed", "stopped", "interrupted"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not end")


@pytest.mark.slow
def test_pretrain_watch_the_timeline_then_fine_tune_and_inspect_it(app):
    prompts = "The Scarecrow\nTip"
    settings = {"preset": "tiny", "max_steps": 12, "max_time": 0, "sample_prompts": prompts.splitlines()}
    _, run_id = app.client.predict(BOOK, "base:base", json.dumps(settings), "oz-tiny", api_name="/pretrain_start")
    run = wait_done(app, run_id)
    assert run["status"] == "done", run["message"] + app.studio.jobs.progress(run_id)["log"]
    assert run["command"] == "pretrain" and (app.studio.jobs.run_dir(run).path / "pretrain.json").is_file()
    timeline = app.client.predict(run_id, api_name="/pretrain_timeline")
    assert [e["step"] for e in timeline] == sorted((e["step"] for e in timeline), reverse=True), "newest first"
    assert len(timeline) >= 10 and timeline[0]["val_bits_per_byte"] > 0
    assert [s["prompt"] for s in timeline[0]["samples"]] == ["The Scarecrow", "Tip"]
    progress = app.client.predict(run_id, api_name="/pretrain_progress")
    assert "oz-tiny" in progress["state"] and "step <b>12</b> of 12" in progress["bar"]
    assert "The Scarecrow" in progress["samples"]

    # A base model everywhere: offered by every model picker, and fine-tuning plans from it.
    assert f"run:{run_id}" in [ref for _, ref in app.studio.model_choices()]
    plan = app.client.predict(f"run:{run_id}", "sample-opposites", '{"max_steps": 5}', api_name="/plan")
    assert "**Parameters:**" in plan, plan

    # Inside: the shipped (here: test) base and the book model share a tokenizer, so they compare token by token.
    report = app.client.predict(
        "base:base", "The Scarecrow said <b>&", f"run:{run_id}", "", "", -1, 5, 0.8, 0.9, 1, 0, api_name="/inspect"
    )
    assert report["models"] == ["base", "oz-tiny"] and report["tokens"] == len(report["rows"])
    assert all(abs(r["delta_bits"] - (r["bits_2"] - r["bits"])) < 1e-9 for r in report["rows"])
    assert len(report["next_token"]) == 2 and len(report["next_token"][0]["candidates"]) == 5
    for view in report["attention"]:
        assert view["layer"] == 1 and view["head"] == 0
        assert all(abs(sum(row) - 1) < 1e-4 for row in view["weights"])
    from studio.tabs.inside import look

    html_out = look(
        app.studio, "base:base", f"run:{run_id}", "text", "The Scarecrow said <b>&", "", "", -1, 5, 0.8, 0.9, 0, -1
    )
    status, tokens, surprise = html_out["status"], html_out["tokens_view"], html_out["surprise_view"]
    next_html, attention = html_out["next_view"], html_out["attention_view"]
    assert f"{report['tokens']} tokens" in status
    assert "&lt;" in tokens and "&amp;" in tokens and "<b>&" not in tokens and "title='#0 · id " in tokens
    assert "Difference" in surprise and "mean over heads" in attention and "oz-tiny" in next_html


def test_inspect_refuses_a_bad_position(app):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="outside the"):
        app.client.predict("base:base", "Tom had a ball.", "", "", "", 99, api_name="/inspect")
