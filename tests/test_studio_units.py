"""Studio pieces without a server: the SQLite store, job bookkeeping, file names, diffs and histograms."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing

import brotli
import gradio as gr
import pandas as pd
import pytest
from gradio.context import get_blocks_context

from llm.config import FinetuneConfig
from llm.errors import ConfigError
from llm.run import RunDir, read_metrics
from studio.app import build_app
from studio.assets import FrontendAssets
from studio.charts import line_chart, nice_ticks
from studio.context import SAMPLES_DIR, Studio
from studio.jobs import Jobs, command_line, explain
from studio.store import SCHEMA, Store
from studio.tabs import STAMP_LABEL, finetune, html_part, laid_out, loss_frame, made_as, made_filled
from studio.tabs.compare import diff_panel, word_diff_html
from studio.tabs.data import length_bins, length_histogram, safe_filename


def test_store_persists_datasets_runs_and_votes(tmp_path):
    store = Store(tmp_path / "ws")
    sample = tmp_path / "samples" / "qa.csv"
    sample.parent.mkdir()
    sample.write_text("question,answer\nhi,hello\n")
    store.sync_samples([sample])
    upload = store.workspace / "datasets" / "x" / "mine.csv"
    key = store.add_dataset("mine.csv", upload, "upload", "pairs", {"prompt": "q"}, 3)
    run_id = store.add_run("r1", "base:base", key, "lora", {"lr": 0.01}, store.workspace / "runs" / "r1")
    store.add_vote("p", ["base:base", f"run:{run_id}"], ["a", "b"], {"seed": 0}, f"run:{run_id}", "c1")
    store.add_vote("p", ["base:base", f"run:{run_id}"], ["a", "b"], {"seed": 0}, "base:base", "c1")  # changed

    again = Store(tmp_path / "ws")  # a restarted studio sees everything
    assert {d["id"] for d in again.datasets()} == {"sample-qa", key}
    mine = again.dataset(key)
    assert mine["path"] == "datasets/x/mine.csv", "paths inside the workspace are stored relative to it"
    assert again.abs(mine["path"]) == upload.resolve()
    assert mine["mapping"] == {"prompt": "q"} and mine["rows"] == 3
    assert again.run(run_id)["config"] == {"lr": 0.01} and again.run(run_id)["status"] == "queued"
    (vote,) = again.votes()  # one vote per comparison: the second replaced the first
    assert vote["answers"] == ["a", "b"] and vote["winner"] == "base:base"

    sample.unlink()
    again.sync_samples([])
    assert [d["id"] for d in again.datasets()] == [key], "a sample that is gone is no longer offered"


def test_reads_on_a_kept_connection_see_every_write_and_hold_no_lock(tmp_path):
    """Each thread reads on a connection of its own, kept open: it sees what another studio on the same
    workspace wrote since, and between two reads it holds no transaction (a full checkpoint of the log,
    which waits for every reader, goes through)."""
    store = Store(tmp_path)
    assert store.datasets() == []
    key = Store(tmp_path).add_dataset("a.csv", tmp_path / "a.csv", "upload")  # another studio's connection
    assert [d["id"] for d in store.datasets()] == [key], "a write committed elsewhere is seen"
    readers = [store.readers.db]
    thread = threading.Thread(target=lambda: (store.runs(), readers.append(store.readers.db)))
    thread.start()
    thread.join()
    assert readers[0] is not readers[1], "one connection per thread: sqlite3 ties a connection to its thread"
    Store(tmp_path).add_dataset("b.csv", tmp_path / "b.csv", "upload")  # a write for the checkpoint to wait on
    with closing(sqlite3.connect(store.path, timeout=0)) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "no read transaction is left open"
    with pytest.raises(AssertionError):
        store._rows("DELETE FROM datasets")  # the kept connection only reads


def test_only_one_run_is_claimed_at_a_time(tmp_path):
    store = Store(tmp_path)
    ids = [store.add_run(f"r{i}", "base:base", "d", "lora", {}, tmp_path / "runs" / f"r{i}") for i in range(4)]
    claimed = []
    threads = [threading.Thread(target=lambda: claimed.append(store.claim_next_run())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [c for c in claimed if c is not None]
    assert len(won) == 1 and won[0]["id"] == ids[0], "the oldest queued run, and only it, may start"
    assert store.claim_next_run() is None, "the device is busy while a run is starting"
    store.update_run(ids[0], status="done")
    assert store.claim_next_run()["id"] == ids[1]


def test_safe_filename_never_leaves_the_folder():
    assert safe_filename("../../x.csv") == "x.csv"
    assert safe_filename("..\\..\\evil.JSONL") == "evil.jsonl"
    assert safe_filename("/etc/passwd") == "passwd"
    assert safe_filename("my data (v2).csv") == "my_data_v2.csv"
    assert safe_filename(".hidden.csv") == "hidden.csv"
    assert safe_filename("(((.csv") == "dataset.csv"
    assert "/" not in safe_filename("a/b/../../../c.tsv")


def test_word_diff_marks_added_and_missing_words():
    html = word_diff_html("the cat sat", "the dog sat <b>")
    assert "<del>cat</del>" in html and "<ins>dog</ins>" in html
    assert "&lt;b&gt;" in html, "answers are escaped, never rendered as HTML"
    panel = diff_panel(["base", "tuned"], ["same words", "same words"])
    assert "100% of words shared" in panel and "<ins>" not in panel.split("</div>", 1)[1]
    unlike = diff_panel(["base", "tuned"], ["Once upon a time there was a dog", "down"])
    assert "shown whole" in unlike and "<del>" not in unlike.split("diff-block", 1)[1], "no crossed-out wall"


def test_length_histogram_splits_at_the_context():
    frame = length_histogram([3, 10, 30, 70, 70, 500], context_length=63)
    width, labels = length_bins(63)
    assert (width, labels[0], labels[-1]) == (20, "0–19", "140+"), "round bins up to twice the context"
    assert list(frame["tokens"].unique()) == labels
    assert frame[frame["tokens"] == "140+"]["examples"].sum() == 1, "anything longer lands in the last bin"
    fits = frame[frame["length"] == "fits the context"]["examples"].sum()
    cut = frame[frame["length"] == "cut by the context"]["examples"].sum()
    assert (fits, cut) == (3, 3), "64 ids fit a context of 63 predictions; 70 do not"


def test_metrics_reader_tolerates_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"event": "start", "max_steps": 10, "params": 5, "trainable": 2, "device": "cpu"},
        {"step": 2, "train_loss": 2.5, "lr": 0.01, "elapsed": 1.0},
        {"step": 2, "val_loss": 2.4, "train_eval_loss": 2.5, "samples": [{"prompt": "p", "output": "o"}]},
        {"event": "checkpoint", "step": 2},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "train_lo')
    metrics = read_metrics(path)
    assert metrics.start["max_steps"] == 10 and metrics.step == 2 and metrics.final is None
    frame = loss_frame(metrics)
    assert set(frame["curve"]) == {"train", "validation"} and len(frame) == 2
    assert read_metrics(tmp_path / "missing.jsonl").step == 0


def test_probe_answers_are_a_table_newest_first_with_their_text_escaped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    evals = [
        {"step": s, "val_loss": 2.0, "samples": [{"prompt": "<b>Up?</b>", "output": f"down & {s}"}]} for s in (2, 4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in evals))
    p = {"metrics": read_metrics(path)}
    assert finetune.probe_answers(p) == [
        {"step": 4, "prompt": "<b>Up?</b>", "answer": "down & 4"},
        {"step": 2, "prompt": "<b>Up?</b>", "answer": "down & 2"},
    ]
    table = finetune.probe_answers_html(p)
    assert "<th>step</th><th>prompt</th><th>answer</th>" in table and "<b>Up?</b>" not in table
    assert table.index("<td>4</td><td>&lt;b&gt;Up?&lt;/b&gt;</td><td>down &amp; 4</td>") < table.index("<td>2</td>")
    assert "appear here at each evaluation" in finetune.probe_answers_html(None)


def test_failures_are_explained_by_their_kind_not_their_wording():
    memory = explain({"event": "error", "message": "no room", "kind": "memory"})
    assert "smaller batch size" in memory
    assert "killed" in explain(None, -9)
    assert "half the learning rate" in explain({"event": "error", "message": "loss became nan", "kind": "diverged"})
    assert "Data tab" in explain({"event": "error", "message": "data.csv, row 4: empty response", "kind": "data"})
    worded = explain({"event": "error", "message": "must be positive, got 0", "field": "lr", "kind": "config"})
    assert "Learning rate must be positive, got 0" in worded and "--lr" not in worded


def test_a_run_starts_from_its_config_file(tmp_path, monkeypatch):
    """Every FinetuneConfig field reaches the child: the studio writes the config, the CLI reads it."""
    from llm import cli

    cfg = FinetuneConfig(
        base="/m", data="/d.csv", format="pairs", mapping={"prompt": "q", "response": "a"}, method="full",
        epochs=2, max_steps=7, lr=0.001, batch_size=4, probes=["-starts with a dash", "hi"], max_eval_rows=9,
    )  # fmt: skip
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    cfg.save(run.settings("finetune"))
    cmd = command_line("finetune", run, resume=False)
    assert cmd[:4] == [sys.executable, "-m", "llm", "finetune"]
    assert cmd[cmd.index("--config") + 1] == str(run.path / "finetune.json")
    seen = {}

    def capture(read: FinetuneConfig):
        seen["cfg"] = read
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr("llm.train.finetune.prepare", capture)
    assert cli.main(cmd[3:]) == 130
    assert seen["cfg"] == cfg
    assert command_line("finetune", run, resume=True)[-1] == "--resume"


def test_a_vanished_process_marks_the_run_interrupted(tmp_path):
    store = Store(tmp_path)
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "latest").mkdir(parents=True)
    (run_dir / "latest" / "trainer_state.pt").write_bytes(b"x")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"event": "start", "max_steps": 5}) + "\n")
    run_id = store.add_run("r", "base:base", "d", "lora", {}, run_dir)
    store.update_run(run_id, status="running", pid=2**22 + 12345, started=1.0)  # no such process
    Jobs(store).tick()
    run = store.run(run_id)
    assert run["status"] == "interrupted" and "Resume" in run["message"]


@pytest.mark.parametrize("event,status", [("done", "done"), ("stopped", "stopped"), ("error", "failed")])
def test_the_final_event_decides_the_status(tmp_path, event, status):
    store = Store(tmp_path)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    record = {"event": event, "step": 3, "message": "the training loss became nan at step 3: the run diverged."}
    (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    run_id = store.add_run("r", "base:base", "d", "lora", {}, run_dir)
    store.update_run(run_id, status="running", pid=2**22 + 12345, started=1.0)
    Jobs(store).tick()
    assert store.run(run_id)["status"] == status


def test_a_resumed_run_ignores_the_end_of_its_earlier_attempt(tmp_path):
    records = [{"event": "start", "max_steps": 9}, {"event": "stopped", "step": 3}, {"event": "start", "step": 3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_metrics(tmp_path / "metrics.jsonl").final is None


def test_a_workspace_from_an_earlier_studio_is_migrated(tmp_path):
    old_schema = re.sub(r",\n    command TEXT[^;]*?\n\);", "\n);", SCHEMA, count=1)  # runs before these columns
    assert "command TEXT" not in old_schema and "attempt_started" not in old_schema
    with sqlite3.connect(tmp_path / "studio.db") as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO runs (id, name, base_id, dataset_id, method, config, dir, status, created, queued) "
            "VALUES ('r', 'old run', 'base:base', 'd', 'lora', '{}', 'runs/r', 'done', 1, 1)"
        )
    run = Store(tmp_path).run("r")
    assert run["command"] == "finetune", "runs made before other commands were fine-tunes"
    assert run["attempt_started"] is None and run["elapsed_before"] == 0


def test_the_loss_chart_draws_numeric_lines_even_when_empty_or_ragged():
    """Loss values read as text would be drawn as category labels and no line: step must be int and loss
    float always, and the chart draws one polyline a curve with its points in step order."""
    from llm.run import Metrics
    from studio.tabs import loss_chart

    assert "No loss values yet" in loss_chart(loss_frame(Metrics()))
    metrics = Metrics()
    metrics.train = [{"step": 2, "train_loss": 1.5}, {"step": 1, "train_loss": 2}]  # an int loss, as JSON may give
    metrics.evals = [{"step": 2, "val_loss": 1.7}, {"step": 2}]  # an evaluation without a validation loss
    frame = loss_frame(metrics, "run-a")
    assert frame["step"].dtype == "int64" and frame["loss"].dtype == "float64"
    assert list(frame["curve"]) == ["run-a: train", "run-a: train", "run-a: validation"]
    chart = loss_chart(frame)
    lines = dict(re.findall(r"data-series='([^']*)' points='([^']*)'", chart))
    assert set(lines) == {"run-a: train", "run-a: validation"}
    train = [tuple(map(float, p.split(","))) for p in lines["run-a: train"].split()]
    assert len(train) == 2 and train[0][0] < train[1][0], "left to right in step order"
    assert train[0][1] < train[1][1], "loss 2 is drawn above loss 1.5 (SVG y grows downwards)"
    with pytest.raises(AssertionError):
        line_chart(frame.astype({"loss": "str"}), "step", "loss", "curve", "text values are refused")


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 9.3) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(1.62, 2.91) == [1.5, 2.0, 2.5, 3.0]
    assert nice_ticks(5, 5) == [5, 5.2, 5.4, 5.6, 5.8, 6.0], "a flat line still gets an axis"


def test_the_form_is_built_from_finetune_config():
    import dataclasses

    import gradio as gr

    from studio.tabs.form import FORM_FIELDS, field_component, form_settings, form_values

    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    assert set(FORM_FIELDS) <= set(fields), "every field the form offers is a FinetuneConfig field"
    with gr.Blocks():
        for name in FORM_FIELDS:
            component = field_component(name)
            assert component.info == fields[name].metadata["help"], name
            if isinstance(component, gr.Number):  # no bound of Gradio's: the plan names the field and the rule
                assert component.preprocess(-5) == -5, name
    defaults = form_values({})
    assert set(defaults) == set(FORM_FIELDS) and defaults["epochs"] == FinetuneConfig().epochs
    assert FinetuneConfig(**form_settings(defaults)) == FinetuneConfig(), "the form's defaults are the library's"
    chosen = {"method": "full", "epochs": 3, "lr": 0.002, "grad_accum": 2, "lora_targets": ["wq"], "probes": ["a", "b"]}
    again = form_settings(form_values(chosen))
    assert {k: again[k] for k in chosen} == chosen, "a run's settings fill the form and come back unchanged"
    assert "lr" not in form_settings({"lr": 0}) and form_settings({"max_steps": 0.0}) == {"max_steps": 0}
    with pytest.raises(ConfigError, match="must be a number") as refused:
        form_settings({"epochs": "many"})
    assert refused.value.field == "epochs", "a value that is no number names its field (no bare TypeError)"


def test_warmup_and_weight_decay_reach_the_trainer():
    from llm.train.tuning import training_settings

    default, _ = training_settings(FinetuneConfig(max_steps=50), 100, 10, 64)
    assert default.warmup_steps == 5 and default.weight_decay == 0.0
    chosen, _ = training_settings(FinetuneConfig(max_steps=50, warmup_steps=0, weight_decay=0.1), 100, 10, 64)
    assert chosen.warmup_steps == 0 and chosen.weight_decay == 0.1


def test_probe_prompts_are_distinct():
    from types import SimpleNamespace

    from studio.tabs.finetune import probe_prompts

    def example(prompt):
        return SimpleNamespace(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": "x"}])

    rows = [example("Give the story a title."), example("Give the story a title."), example("Why?\nSay"), example("c")]
    assert probe_prompts(rows) == ["Give the story a title.", "Why? Say", "c"]


def test_names_are_unique_trimmed_printable_and_short(tmp_path, tiny_model_dir):
    from studio.context import SAMPLES_DIR, Studio, StudioError

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    settings = {"max_steps": 1, "probes": []}
    first = studio.create_run("base:base", "sample-opposites", settings)
    second = studio.create_run("base:base", "sample-opposites", settings)
    assert (
        studio.store.run(first)["name"] == "opposites-lora-1" and studio.store.run(second)["name"] == "opposites-lora-2"
    )
    studio.rename(f"run:{first}", "  Mine  ")
    assert studio.store.run(first)["name"] == "Mine", "trimmed"
    assert studio.free_name("opposites-lora") == "opposites-lora-1", "a freed name is offered again"
    for bad, why in [
        ("BASE", "taken"),
        ("mine", "taken"),
        ("a\tb", "printable"),
        ("x" * 81, "at most 80"),
        (" ", "empty"),
    ]:
        with pytest.raises(StudioError, match=why):
            studio.rename(f"run:{second}", bad)
    with pytest.raises(StudioError, match="taken"):
        studio.create_run("base:base", "sample-opposites", settings, "MINE")
    studio.rename(f"run:{first}", "MINE")  # its own name in another case is fine
    with pytest.raises(StudioError, match="unknown model"):
        studio.rename("run:nope", "new")


def test_a_run_cancelled_while_queued_can_start_again(tmp_path):
    store = Store(tmp_path)
    run_id = store.add_run("r", "base:base", "d", "lora", {}, tmp_path / "runs" / "r")
    jobs = Jobs(store)
    jobs.stop(run_id)
    run = store.run(run_id)
    assert run["status"] == "cancelled" and "never started" in run["message"] and run["finished"]
    from studio.tabs.models import dates_line

    assert "never started" in dates_line(run) and "started: ," not in dates_line(run)
    jobs.submit = lambda key: "Queued."  # queue it again without starting a trainer
    jobs.resume(run_id)
    run = store.run(run_id)
    assert run["status"] == "queued" and run["config"]["resume"] is False, "it never trained: it starts over"


def test_wall_time_spans_attempts_and_the_first_start_is_kept(tmp_path):
    from studio.jobs import wall_time

    store = Store(tmp_path)
    run_id = store.add_run("r", "base:base", "d", "lora", {}, tmp_path / "runs" / "r")
    first = store.claim_next_run()
    store.update_run(run_id, status="stopped", finished=time.time())
    store.update_run(run_id, status="queued")
    second = store.claim_next_run()
    assert second["started"] == first["started"] and second["attempt_started"] >= first["attempt_started"]
    now = time.time()
    run = {
        "status": "running",
        "started": now - 500,
        "attempt_started": now - 10,
        "finished": None,
        "elapsed_before": 300.0,
    }
    assert 309 <= wall_time(run) <= 312, "the earlier attempts' 300 s, then this one's 10 s"
    assert wall_time({**run, "status": "stopped", "finished": now - 5}) == pytest.approx(305, abs=1)


def test_the_logged_command_can_be_pasted(tmp_path, monkeypatch):
    """The log's first line is the command, shell-quoted: shlex.split gives back the argv that ran."""
    store = Store(tmp_path)
    run_dir = RunDir(tmp_path / "runs" / "r")
    run_dir.path.mkdir(parents=True)
    FinetuneConfig(probes=["Have a nice day! it's $HOME"]).save(run_dir.settings("finetune"))
    store.add_run("r", "base:base", "d", "lora", {}, run_dir.path)

    class FakeChild:
        pid = 2**22 + 4321

        def __init__(self, cmd, **kwargs):
            self.cmd = cmd

        def poll(self):
            return None

    monkeypatch.setattr("studio.jobs.subprocess.Popen", FakeChild)
    Jobs(store).tick()
    line = run_dir.log.read_text().splitlines()[0]
    assert line.startswith("$ ") and shlex.split(line[2:]) == json.loads(run_dir.command.read_text())


def test_csv_cells_never_run_as_spreadsheet_formulas():
    import pandas as pd

    from studio.context import spreadsheet_safe

    frame = pd.DataFrame({"answer": ["=HYPERLINK(1)", "+1", "-2", "@SUM(A1)", "fine", "a=b"], "row": range(6)})
    safe = spreadsheet_safe(frame)
    assert safe["answer"].tolist() == ["'=HYPERLINK(1)", "'+1", "'-2", "'@SUM(A1)", "fine", "a=b"]
    assert safe["row"].tolist() == list(range(6)) and frame["answer"][0] == "=HYPERLINK(1)", "a copy; numbers kept"


def test_previews_show_whole_characters_only(tok):
    from studio.tabs.data import token_html

    ids = tok.encode("猫 cat")  # byte-fallback pieces: the test tokenizer never saw Chinese
    assert len(ids) > 3
    for cut in range(1, len(ids) + 1):  # every cut, including inside the character's three bytes
        shown = token_html(tok, ids[:cut], [False] * cut)
        assert "\ufffd" not in shown and "�" not in shown
    assert "猫" in token_html(tok, ids, [False] * len(ids))


def test_an_upload_can_be_deleted_unless_a_run_uses_it(tmp_path, tiny_model_dir):
    from studio.context import SAMPLES_DIR, Studio, StudioError

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    with pytest.raises(StudioError, match="sample"):
        studio.delete_dataset("sample-opposites")
    folder = studio.workspace / "datasets" / "up1"
    folder.mkdir(parents=True)
    (folder / "mine.csv").write_text("question,answer\nhi,hello\nbye,ciao\n")
    key = studio.store.add_dataset("mine.csv", folder / "mine.csv", "upload", "auto", {}, 2, key="up1")
    run_id = studio.store.add_run("r", "base:base", key, "lora", {}, tmp_path / "ws" / "runs" / "r")
    with pytest.raises(StudioError, match="used by r"):
        studio.delete_dataset(key)
    studio.store.update_run(run_id, status="done")
    assert studio.delete_dataset(key) == "Deleted mine.csv."
    assert studio.store.dataset(key) is None and not folder.exists()


def test_the_preview_pages_through_every_example(tmp_path):
    from llm.data.tasks import read_task_file
    from studio.tabs.data import PREVIEW_EXAMPLES, preview_html

    path = tmp_path / "rows.csv"
    path.write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(1, 3 * PREVIEW_EXAMPLES + 2)))
    data = read_task_file(path)
    second = preview_html(data, None, None, None, page=2)
    assert "Page 2 of 4" in second and f"row {PREVIEW_EXAMPLES + 1}<" in second and "row 1<" not in second
    assert f"row {3 * PREVIEW_EXAMPLES + 1}<" in preview_html(data, None, None, None, page=99), "the last page"


def test_showing_the_data_tab_again_sends_nothing_unless_something_changed(tmp_path, tiny_model_dir):

    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs.data import on_load

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    first = on_load(studio, None)
    chosen, seen = first["dataset"].value, first["seen"]
    assert "examples ready" in first["status"] and seen is not None
    assert on_load(studio, chosen, seen) == {}, "nothing is sent"
    assert on_load(studio, None, None, pending={"path": "x.csv", "name": "x.csv"}) == {}, "a waiting upload stays"
    studio.store.update_dataset(chosen, rows=1)  # another page applied other settings
    changed = on_load(studio, chosen, seen)
    assert "examples ready" in changed["status"] and changed["seen"] != seen, "drawn again"


def test_showing_the_models_tab_again_sends_nothing_unless_something_changed(tmp_path, tiny_model_dir):
    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs.models import listing

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    first = listing(studio)
    chosen, seen = first["pick"].value, first["seen"]
    assert first["compare_curve"] == "" and "compare_pick" in first, "the runs offered, with their comparison"
    assert listing(studio, chosen, [], seen) == {}, "nothing is sent"
    studio.store.set_model("other", "another base", tiny_model_dir)  # another page added a model
    added = listing(studio, chosen, [], seen)
    assert added["seen"] != seen and {"table", "pick"} <= added.keys()
    assert not {"about", "curve", "compare_pick"} & added.keys(), "the pick's details, the runs offered: as they were"
    studio.rename(chosen, "renamed base")
    renamed = listing(studio, chosen, [], added["seen"])
    assert "renamed base" in renamed["about"] and renamed["new_name"] == "renamed base"


def test_the_models_tab_never_picks_a_run_still_training(tmp_path, tiny_model_dir):
    """A training run's details change at every step: picked, the tab would draw them at every showing."""
    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs.models import listing

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)

    def run(name: str, status: str) -> str:
        (tmp_path / "runs" / name).mkdir(parents=True)
        key = studio.store.add_run(name, "base:base", "sample-opposites", "lora", {}, tmp_path / "runs" / name)
        studio.store.update_run(key, status=status)
        return f"run:{key}"

    training = run("training", "running")
    assert listing(studio)["pick"].value == "base:base", "no finished run: the base model"
    finished = run("finished", "done")
    run("newer-training", "running")
    assert listing(studio)["pick"].value == finished, "the newest finished run, not the newer one training"
    assert listing(studio, training)["pick"].value == training, "picked by the user, it stays"
    seen = listing(studio, finished)["seen"]
    studio.store.update_run(training[4:], message="step 2 of 10")  # the training run moves on
    assert not {"about", "curve", "pick"} & listing(studio, finished, [], seen).keys(), "the pick is as it was"


def test_a_timer_whose_tab_is_behind_stops_itself_and_sends_nothing(tmp_path, tiny_model_dir):

    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs import finetune, pretrain

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    for tab in (finetune, pretrain):
        behind = tab.VIEW.tick(studio, None, None, behind=True)
        assert list(behind) == ["timer"] and behind["timer"].active is False, tab.__name__
        shown = tab.VIEW.tick(studio, None, None)  # shown, and from the API: the view refresh() draws
        assert shown["state"].startswith("No "), shown["state"]
        again = tab.VIEW.tick(studio, None, shown["seen"])
        assert list(again) == ["timer"] and again["timer"].active is False, "then nothing more"


def test_a_tick_sends_again_only_the_parts_of_a_working_run_that_changed(tmp_path, tiny_model_dir):
    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    run_id = studio.create_run("base:base", "sample-opposites", {"max_steps": 50}, "watched")
    studio.store.update_run(run_id, status="running")
    metrics = studio.jobs.run_dir(studio.store.run(run_id)).metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text('{"step": 1, "train_loss": 2.5, "lr": 0.001, "elapsed": 1.0}\n')
    first = finetune.VIEW.refresh(studio, run_id, None)
    assert {"state", "curve", "samples", "log", "bar"} <= first.keys()
    time.sleep(0.01)  # a file time that differs
    with metrics.open("a") as f:  # a step, no evaluation: the same probe answers
        f.write('{"step": 2, "train_loss": 2.4, "lr": 0.001, "elapsed": 2.0}\n')
    second = finetune.VIEW.refresh(studio, run_id, first["seen"])
    assert {"curve", "bar"} <= second.keys() and "samples" not in second and "state" not in second
    assert finetune.VIEW.refresh(studio, run_id, None).keys() == first.keys(), "a page that drew nothing: all"


def test_showing_the_finetune_tab_again_sends_choices_only_when_they_changed(tmp_path, tiny_model_dir):

    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs.finetune import show_tab
    from studio.tabs.form import FORM_FIELDS

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    first = show_tab(studio, {}, None, None, None)
    offered, form = first["offered"], set(FORM_FIELDS) | {"base", "dataset", "name", "plan", "preset"}
    assert first["base"].value and offered is not None and form <= set(first), "the form is filled the first time"
    again = show_tab(studio, {}, None, offered, first["seen"])
    assert set(again) == {"offered", "timer"}, "only what cannot be skipped is sent"
    studio.store.set_model("other", "another base", tiny_model_dir)  # another page added a model
    changed = show_tab(studio, {}, None, offered, first["seen"])
    assert "another base" in str(changed["base"].choices) and changed["offered"] != offered
    assert not (form - {"base"}) & set(changed), "the form itself is left alone"


def test_a_preset_fills_the_settings_but_keeps_the_datasets_probe_prompts(tmp_path, tiny_model_dir):
    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs.finetune import default_probes, load_preset, store_preset

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    settings = {"epochs": 2, "probes": ["Capital of Cuba?"], "device": "cpu"}  # device: no field of the form
    assert "Saved" in store_preset(studio, "short", settings)
    assert studio.store.presets()["short"] == settings, "every key is kept"
    filled = load_preset(studio, {"preset": "short", "base": "base:base", "dataset": "sample-opposites"})
    assert filled["epochs"] == 2 and filled["extra"] == {"device": "cpu"} and "device = cpu" in filled["start_status"]
    assert filled["probes"] == default_probes(studio, "sample-opposites") and "Cuba" not in filled["probes"]


def test_two_uploads_of_one_name_are_told_apart_by_when_they_came(tmp_path, tiny_model_dir, monkeypatch):
    import studio.store
    from studio.context import SAMPLES_DIR, Studio

    studio_ = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\nUp?,down\n")
    for when in (1_700_000_000.0, 1_700_000_100.0):
        monkeypatch.setattr(studio.store.time, "time", lambda when=when: when)
        studio_.store.add_dataset("qa.csv", data, "upload", rows=1)
    studio_.store.add_dataset("other.csv", data, "upload", rows=1)
    labels = [label for label, _ in studio_.dataset_choices() if "(uploaded" in label]
    assert len(labels) == 3 and len(set(labels)) == 3, labels
    assert "other.csv (uploaded, 1 example)" in labels, "a name used once keeps the plain label"


def test_one_dataset_cache_reads_and_encodes_a_file_once_for_pages_plans_and_probes(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Data's page turns, the Fine-tune plan for new settings and the probe prompts share one reading and one
    encoding of an unchanged file; a changed file is read again."""
    from llm.data import tasks
    from llm.train import finetune as lib
    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs.data import show_page
    from studio.tabs.finetune import default_probes, plan_markdown

    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    reads, encodings = [], []
    read, encode = tasks.read_task_file, lib.encode_data
    monkeypatch.setattr(tasks, "read_task_file", lambda *a, **k: reads.append(a) or read(*a, **k))
    monkeypatch.setattr(lib, "encode_data", lambda *a, **k: encodings.append(a) or encode(*a, **k))
    pages = [show_page(studio, "sample-opposites", n) for n in (1, 2, 3)]
    assert "Page 2 of" in pages[1] and len(reads) == 1 and len(encodings) == 1
    for settings in ({"epochs": 1}, {"epochs": 2, "val_fraction": 0.2}, {"method": "full", "seed": 3}):
        assert "**Steps:**" in plan_markdown(studio, "base:base", "sample-opposites", settings)
    assert default_probes(studio, "sample-opposites")
    assert len(reads) == 1 and len(encodings) == 1, "new settings select from the one encoding"
    mine = tmp_path / "mine.csv"
    mine.write_text("question,answer\nUp?,down\n")
    key = studio.store.add_dataset("mine.csv", mine, "upload", rows=1)
    show_page(studio, key, 1)
    show_page(studio, key, 1)
    assert len(reads) == 2, "another file: read once"
    mine.write_text("question,answer\nUp?,down\nIn?,out\n")  # the file changed: its size and time
    assert "row 2" in show_page(studio, key, 1) and len(reads) == 3


def test_the_events_a_page_sends_on_its_own_report_progress_on_the_sink_alone(tmp_path):
    """Gradio's page updates the loading state of every part any event reported progress on, at the start and end
    of every event: a tab's fill, a timer's tick and the render that builds a tab report on one hidden sink, so
    they do not make every later event of the page pass over the tab's parts."""
    demo = build_app(tmp_path / "ws", watch_interval=3600)
    try:
        with demo:  # build every lazy tab's body, as a page does when it first shows the tab
            renders = list(get_blocks_context().renderables)
            for render in renders:  # shown (True), with nothing kept in the browser (None for each other input)
                render.fn(True, *[None] * (len(render.inputs) - 1))
        events = list(demo.fns.values())
        sink = [demo.progress_sink]
        assert len(renders) == 8 and all(fn.show_progress_on == sink for fn in events if fn.renderable is not None), (
            "a render reports on the column holding its tab's body otherwise"
        )
        stamps = {block._id for block in demo.blocks.values() if getattr(block, "label", None) == STAMP_LABEL}
        assert len(stamps) == 4  # Data, Pretrain, Fine-tune and Models are filled when their stamp changes
        fills = [fn for fn in events if fn.fn and any(block in stamps for block, _ in fn.targets)]
        assert len(fills) == 4
        own = [fn for fn in events if fn.fn and {t[1] for t in fn.targets} & {"select", "load", "tick"}] + fills
        assert len(own) >= 12  # a fill for each tab (some also on a refresh click) and three timers
        assert all(fn.show_progress_on == sink and fn.show_progress == "hidden" for fn in own), [
            (fn.name, fn.show_progress_on) for fn in own if fn.show_progress_on != sink
        ]
    finally:
        demo.studio.jobs.close()


def test_the_finetune_stamp_follows_the_runs_state_and_sets_the_timer_going_while_it_works(tmp_path, tiny_model_dir):
    studio = Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)
    empty, ticking = finetune.stamp(studio, None)
    assert ticking is False and finetune.stamp(studio, None) == (empty, False)
    run_id = studio.create_run("base:base", "sample-opposites", {"max_steps": 5}, "stamped")
    assert finetune.stamp(studio, None)[0] != empty, "the run picker offers the new run"
    stamps = set()
    for status, works in (("running", True), ("done", False)):
        studio.store.update_run(run_id, status=status)
        stamp, ticking = finetune.stamp(studio, run_id)
        assert ticking is works, status
        stamps.add(stamp)
    assert len(stamps) == 2, "a run that ended is drawn again"
    metrics = studio.jobs.run_dir(studio.store.run(run_id)).metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text('{"step": 1}\n')
    assert finetune.stamp(studio, run_id)[0] in stamps, "its files are the timer's to redraw, not the stamp's"
    run_dir = studio.jobs.run_dir(studio.store.run(run_id))
    for checkpoint in (run_dir.best, run_dir.latest):
        shutil.copytree(tiny_model_dir, checkpoint)
    with_checkpoints = finetune.stamp(studio, run_id)[0]
    info = run_dir.latest / "info.json"
    info.write_text(json.dumps(json.loads(info.read_text()) | {"step": 99}))  # the trainer saved again
    assert finetune.stamp(studio, run_id)[0] == with_checkpoints, "the base models offered stay the same"


def test_releasing_gpu_memory_waits_for_a_torch_import_under_way_in_another_thread():
    """The studio imports torch in a warm-up thread as it starts; a run started meanwhile (through the API, at
    once) releases GPU memory, and found a half-imported torch ("no attribute 'cuda'")."""
    script = (
        "import sys, threading\n"
        "from studio.context import release_gpu_memory\n"
        "assert 'torch' not in sys.modules\n"
        "importer = threading.Thread(target=lambda: __import__('torch'))\n"
        "importer.start()\n"
        "while importer.is_alive():\n"
        "    release_gpu_memory()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]


def test_a_part_made_as_an_update_would_leave_it():
    """A lazy tab's body is built already filled (tabs.made_as): each part takes what the fill's update gives
    it, normalised as Gradio normalises a constructor's arguments, and keeps the rest of its own."""
    with gr.Blocks():
        pick = gr.Dropdown(label="Run", allow_custom_value=True, elem_id="pick")
        table = gr.Dataframe(headers=["a"], interactive=False)
        stop = gr.Button("Stop", interactive=False)
        made_as(pick, gr.Dropdown(choices=[("one · done", "r1")], value="r1"))
        made_as(table, pd.DataFrame({"a": [1, 2]}))
        made_as(stop, gr.Button(interactive=True))
    assert (pick.choices, pick.value, pick.label, pick.elem_id) == ([("one · done", "r1")], "r1", "Run", "pick")
    assert table.get_config()["value"]["data"] == [[1], [2]]
    assert (stop.value, stop.interactive) == ("Stop", True)


def test_a_tab_made_filled_holds_its_own_parts_and_no_update():
    """The updates a fill's answer is made of are components, made where the tab is being built: made_filled
    takes every one made meanwhile off the page again, the ones its answer gives and one it threw away."""

    def layout(ui):
        ui.pick = gr.Dropdown(label="Run", elem_id="pick")
        ui.note = gr.Markdown(elem_id="note")

    def view():
        thrown_away = {"note": gr.Markdown("old")}
        return thrown_away | {"pick": gr.Dropdown(choices=["r1"], value="r1"), "note": gr.Markdown("new")}

    with gr.Blocks() as demo, gr.Tab("t"):
        ui = laid_out(layout)
        made_filled(ui, view)
    parts = [part for part in demo.get_config_file()["components"] if part["type"] in ("dropdown", "markdown")]
    assert [part["props"]["elem_id"] for part in parts] == ["pick", "note"], "no update on the page"
    assert (ui.pick.value, ui.note.value) == ("r1", "new")


def test_an_html_part_gets_its_html_as_one_line_however_it_is_sent():
    """A user's text with an empty line and indented lines in it reaches the page as one line of HTML (the
    Markdown renderer would read what follows an empty line as Markdown), whether it is the part's first value,
    a value sent later, an update, or what a lazy tab's body is made as."""
    text = "<div class='example'>def f():\n\n    return 1</div>"
    one_line = "<div class='example'>def f():&#10;&#10;    return 1</div>"
    with gr.Blocks():
        part = html_part(text, elem_id="p")
        made = html_part()
        made_as(made, text)
    assert (part.value, made.value) == (one_line, one_line)
    assert part.postprocess(text) == one_line, "a value a handler sends"
    assert html_part(text, render=False).constructor_args["value"] == one_line, "an update"
    assert (part.sanitize_html, part.latex_delimiters) == (False, []), "HTML as it is: no LaTeX read into a text"
    titled = "<span title='a\nb'>x</span>"  # a newline in an attribute's value: read back as the same newline
    assert part.postprocess(titled) == "<span title='a&#10;b'>x</span>"
    with pytest.raises(AssertionError, match="between a tag's attributes"):
        part.postprocess("<div\nclass='x'>")


def test_frontend_assets_are_compressed_once_and_other_paths_go_on_to_gradio(tmp_path, monkeypatch):
    """Gradio's page files are answered from memory (Brotli when the browser takes it, kept by the browser for
    good); only files of the folder are, and anything else goes on to Gradio untouched."""
    script = "export const x = 1;\n" * 100
    (tmp_path / "Index-abc123.js").write_text(script)
    (tmp_path / "fonts").mkdir()
    passed, compressed = [], []
    compress = brotli.compress
    monkeypatch.setattr(brotli, "compress", lambda data, quality: compressed.append(data) or compress(data))

    async def gradio(scope, receive, send):
        passed.append(scope["path"])

    async def get(path: str, encoding: bytes) -> tuple[dict, bytes]:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"accept-encoding", encoding)]}
        await assets(scope, None, send)
        return (dict(sent[0]["headers"]), sent[1]["body"]) if sent else ({}, b"")

    assets = FrontendAssets(gradio, tmp_path)
    headers, body = asyncio.run(get("/assets/Index-abc123.js", b"gzip, br"))
    assert headers[b"content-encoding"] == b"br" and brotli.decompress(body) == script.encode()
    assert b"immutable" in headers[b"cache-control"] and headers[b"content-length"] == str(len(body)).encode()
    headers, body = asyncio.run(get("/assets/Index-abc123.js", b"identity"))
    assert b"content-encoding" not in headers and body == script.encode()
    assert len(compressed) == 1, "compressed at its first request only"
    for other in ("/assets/fonts", "/assets/../app.py", "/assets/missing.js", "/config", "/Index-abc123.js"):
        assert asyncio.run(get(other, b"br")) == ({}, b"")
    assert passed == ["/assets/fonts", "/assets/../app.py", "/assets/missing.js", "/config", "/Index-abc123.js"]
