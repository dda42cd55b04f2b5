"""The Benchmarks tab: an estimate before starting; a run through the job runner's queue as a child process,
stoppable; its scores saved with each model and drawn as bars with error bars beside the random-choice line;
benchmark runs kept out of the lists of runs that make models."""

from __future__ import annotations

import os
import re
import shutil
import signal

import gradio as gr
import pytest
from test_studio_jobs import FINAL, wait

from llm.run import read_benchmarks
from studio.context import SAMPLES_DIR, Studio
from studio.tabs import bench


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")  # the scores are written beside the model
    studio = Studio(tmp_path / "workspace", base, SAMPLES_DIR)
    yield studio
    for run in studio.store.runs(("running", "stopping"), None):
        os.kill(run["pid"], signal.SIGKILL)


def record(value: float, stderr: float, chance: float, headline: str = "acc") -> dict:
    return {"metrics": {headline: value, f"{headline}_stderr": stderr}, "headline": headline, "chance": chance,
            "rows": 100, "rows_in_file": 1000, "time": 0}  # fmt: skip


def test_the_chart_has_a_bar_and_error_bar_per_model_and_task_and_the_chance_lines():
    results = {
        "base": {"blimp": record(0.6, 0.01, 0.5), "piqa": record(0.55, 0.02, 0.5, "acc_norm")},
        "tuned": {"blimp": record(0.7, 0.01, 0.5)},
    }
    svg = bench.results_chart(results, ["blimp", "piqa", "hellaswag"])
    assert svg.count("<rect class='bar'") == 3 and svg.count("class='whisker'") == 3  # tuned has no piqa
    assert svg.count("class='chance'") == 2  # hellaswag has no scores: not drawn
    assert "base, piqa: 0.550 ± 0.020" in svg and "random choice: 0.5" in svg
    tops = [float(y) for y in re.findall(r"<rect class='bar' x='[\d.]+' y='([\d.]+)'", svg)]
    chance_y = float(re.search(r"class='chance' x1='[\d.]+' x2='[\d.]+' y1='([\d.]+)'", svg).group(1))
    assert tops[1] < tops[0] < tops[2] < chance_y  # in drawing order: base, tuned on blimp, base on piqa (y grows down)
    table = bench.results_table(results, ["blimp"])
    assert table["acc"].tolist() == ["0.600 ± 0.010", "0.700 ± 0.010"] and table["rows"][0] == "100 of 1,000"
    assert "No scores yet" in bench.results_chart(results, ["boolq"])


def test_a_new_page_shows_the_shipped_base_and_no_run(studio):
    models, run_id, job, stop, chart, _, seen, timer = bench.show_tab(studio, None, ["blimp"], None)
    assert models.value == ["base:base"] and run_id is None and "No benchmark run yet" in job
    assert "No scores yet" in chart and seen == bench.NO_RUN and timer.active is False


def test_the_estimate_names_the_work_or_what_is_missing(studio):
    text = bench.estimate_text(studio, ["base:base"], ["blimp", "piqa"], 5)
    assert (
        text.startswith("**Estimated time:** about ") and "680 choices to score" in text
    )  # 67 x 5 pairs + 5 x 2 choices
    assert bench.estimate_text(studio, ["base:base"], [], 0) == "⚠ Choose one or more tasks."
    assert bench.estimate_text(studio, [], ["blimp"], 0) == "⚠ Choose one or more models."
    assert "Limit must be >= 0" in bench.estimate_text(studio, ["base:base"], ["blimp"], -1)


def test_the_api_starts_and_follows_a_run_or_says_why_not(studio):
    api = bench.api_functions(studio)
    assert api["bench_start"]([], ["blimp"], 0) == ("⚠ Choose one or more models.", None)
    with pytest.raises(gr.Error, match="No benchmark run 'nope'"):
        api["bench_progress"]("nope")
    message, run_id = api["bench_start"](["base:base"], ["blimp"], 1)
    assert message.startswith("Started") and run_id
    p = api["bench_progress"](run_id)
    assert p["status"] in ("queued", "starting", "running", "done") and "choices scored" in p["job"]
    studio.jobs.stop(run_id)
    wait(studio, run_id, lambda r, m: r["status"] in FINAL)


@pytest.mark.slow
def test_a_benchmark_run_is_a_queued_job_that_stops_and_saves_with_the_model(studio):
    message, long_run = bench.do_start(studio, ["base:base"], ["blimp", "hellaswag"], 0)
    assert message.startswith("Started")
    message, short_run = bench.do_start(studio, ["base:base"], ["piqa", "blimp"], 2)
    assert message.startswith("Queued"), "one job on the device at a time"
    wait(studio, long_run, lambda r, m: m.step > 0)
    p = bench.progress(studio, long_run)
    assert p["status"] == "running" and 0 < p["done"] < p["total"] and p["remaining"] is not None
    assert "choices scored" in bench.job_html(p)
    assert "Stopping" in studio.jobs.stop(long_run)
    run, metrics = wait(studio, long_run, lambda r, m: r["status"] in FINAL)
    assert run["status"] == "stopped" and metrics.final["event"] == "stopped"

    run, metrics = wait(studio, short_run, lambda r, m: r["status"] in FINAL)
    assert run["status"] == "done", run["message"]
    saved = read_benchmarks(studio.model_dir("base:base"))["tasks"]
    assert set(saved) == {"piqa", "blimp"} and saved["blimp"]["rows"] == 134
    chart, table = bench.show_results(studio, ["base:base"], ["blimp", "piqa"])
    assert chart.count("<rect class='bar'") == 2 and len(table) == 2
    job, _, chart, _, _, timer = bench.refresh(studio, short_run, ["base:base"], ["blimp"], (short_run, "running", 9))
    assert "Finished" in job and chart.count("<rect class='bar'") == 1, "a run that ended redraws the scores"
    assert [r["id"] for r in bench.bench_runs(studio)] == [short_run, long_run]
    assert studio.store.runs() == [], "benchmark runs make no model: the other tabs do not list them"
