"""Benchmarks tab: what can a model do? Pick models and standard tasks (grammar, commonsense, science), see the
estimated time, run them, and compare the scores with each other and with picking at random.

A run is `python -m llm bench --config <run>/bench.json --out <run>` through the job runner and its queue
(studio.jobs), so it never shares the device with a training run and survives a closed page. The scores are
kept in each model's own directory (llm.eval.bench), so they stay with the model and show here for any model
scored before, by this tab or the command line.
"""

from __future__ import annotations

import datetime
import functools
import html
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from llm.config import BenchConfig
from llm.data.benchmarks import TASKS, BenchTask, find_spec, read_task, task_path
from llm.errors import LLMError
from llm.run import read_benchmarks
from studio.charts import empty_chart, grouped_bar_chart
from studio.context import Studio, StudioError
from studio.jobs import CHILD_THREADS, field_label
from studio.store import ACTIVE_STATES, WORKING_STATES
from studio.tabs import EDIT, LIGHT, bound, dropdown, html_part, laid_out, lazy_page, on_show, quiet
from studio.tabs.runs import behind_flag, clock, ticks_while_shown

COMMAND = "bench"
TAB_LABEL = "9 · Benchmarks"
DEFAULT_TASKS = ["blimp"]
NO_RUN = "no run"  # what a page without a benchmark run last drew
TABLE_COLUMNS = ["model", "task", "acc", "acc_norm", "rows", "chance", "scored"]
CHART_TITLE = "Accuracy (each task's usual metric) ± 1 standard error"
STATE_WORDS = {
    "done": "Finished: the scores are saved with each model.",
    "stopped": "Stopped: the tasks that finished are saved with their models.",
    "cancelled": "Cancelled while queued.",
    "interrupted": "Interrupted: the tasks that finished are saved with their models.",
}


@functools.lru_cache(maxsize=16)
def cached_task(name: str, limit: int, stamp: tuple) -> BenchTask:
    """A task read once per version of its file (stamp), for estimates: BLiMP takes seconds to read."""
    return read_task(name, limit)


def read_tasks(names: list[str], limit: int) -> list[BenchTask]:
    tasks = []
    for name in names:
        path = task_path(find_spec(name))
        stat = path.stat() if path.is_file() else None
        tasks.append(cached_task(name, limit, (stat.st_mtime_ns, stat.st_size) if stat else ()))
    return tasks


def bench_config(studio: Studio, refs: list[str] | None, tasks: list[str] | None, limit: float | None) -> BenchConfig:
    """The form as a BenchConfig: each model's directory, the tasks, the rows. StudioError or ConfigError."""
    if not refs:
        raise StudioError("Choose one or more models.")
    if not tasks:
        raise StudioError("Choose one or more tasks.")
    models = [str(studio.model_dir(ref)) for ref in refs]
    return BenchConfig(models=models, tasks=list(tasks), limit=int(limit or 0))


def estimate_text(studio: Studio, refs: list[str] | None, tasks: list[str] | None, limit: float | None) -> str:
    """The run's size and estimated time on this device, or what is wrong with the choice."""
    from llm.eval import bench

    try:
        cfg = bench_config(studio, refs, tasks, limit)
        cost = bench.estimate(cfg, read_tasks(cfg.tasks, cfg.limit), threads=CHILD_THREADS)
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"
    return (
        f"**Estimated time:** about {clock(max(1.0, cost['seconds']))} on {cost['device'].split(' (')[0]} · "
        f"{cost['requests']:,} choices to score, about {cost['tokens']:,} tokens"
    )


def bench_runs(studio: Studio) -> list[dict[str, Any]]:
    return studio.store.runs(commands=(COMMAND,))


def do_start(studio: Studio, refs: list[str] | None, tasks: list[str] | None, limit: float | None):
    """Queue a benchmark run (it starts when the device is free); what happened, and the run to watch."""
    try:
        cfg = bench_config(studio, refs, tasks, limit)
        name = studio.free_name("benchmarks")
        run_id = studio.add_run(COMMAND, cfg, name, "", "", COMMAND)  # scores models: built on none
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}", gr.skip()
    return studio.jobs.submit(run_id), run_id


def progress(studio: Studio, run_id: str | None) -> dict[str, Any] | None:
    """The run's status, choices scored of all, seconds, and seconds left at the rate so far."""
    if not run_id or studio.store.run(run_id) is None:
        return None
    p = studio.jobs.progress(run_id)
    records = [r for r in p["metrics"].evals if "elapsed" in r]
    done, total = p["step"], p["max_steps"]
    remaining = records[-1].get("remaining") if records and p["status"] in WORKING_STATES else None
    where = f"{records[-1]['task']} · {Path(records[-1]['model']).name}" if records else ""
    return {**p, "done": done, "total": total, "remaining": remaining, "where": where}


def job_html(p: dict[str, Any] | None) -> str:
    if p is None:
        return "<div class='run-progress-text'>No benchmark run yet: choose models and tasks, then Start.</div>"
    share = p["done"] / p["total"] if p["total"] else 0.0
    total = f"{p['total']:,}" if p["total"] else "?"  # unknown until the child has read the tasks
    left = f" · about {clock(p['remaining'])} left" if p["remaining"] is not None else ""
    words = STATE_WORDS.get(p["status"], p["message"])
    return (
        f"<span class='state-badge {p['status']}'>{p['status']}</span> <b>{html.escape(p['run']['name'])}</b> "
        f"{html.escape(words or '')}<div class='run-progress {p['status']}'><div class='bar' "
        f"style='width:{100 * share:.1f}%'></div></div><div class='run-progress-text'>{p['done']:,} of "
        f"{total} choices scored · {share:.0%} · elapsed {clock(p['elapsed'])}{left}"
        f"{' · ' + html.escape(p['where']) if p['where'] and p['status'] in WORKING_STATES else ''}</div>"
    )


def saved_results(studio: Studio, refs: list[str]) -> dict[str, dict[str, Any]]:
    """{model label: {task: record}} of each chosen model that has results (a model that is gone is left out)."""
    found = {}
    for ref in refs:
        try:
            results = read_benchmarks(studio.model_dir(ref))
        except LLMError:
            continue
        if results.get("tasks"):
            found[studio.model_label(ref)] = results["tasks"]
    return found


def results_table(results: dict[str, dict[str, Any]], tasks: list[str]) -> pd.DataFrame:
    def cell(record: dict[str, Any], metric: str) -> str:
        value, error = record["metrics"].get(metric), record["metrics"].get(f"{metric}_stderr")
        return "" if value is None else f"{value:.3f} ± {error or 0:.3f}"

    rows = [
        {
            "model": model,
            "task": task,
            "acc": cell(record, "acc"),
            "acc_norm": cell(record, "acc_norm"),
            "rows": f"{record['rows']:,} of {record['rows_in_file']:,}",
            "chance": round(record["chance"], 3),
            "scored": datetime.datetime.fromtimestamp(record["time"]).strftime("%Y-%m-%d %H:%M"),
        }
        for model, records in results.items()
        for task, record in records.items()
        if task in tasks
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def results_chart(results: dict[str, dict[str, Any]], tasks: list[str]) -> str:
    """Bars of models x tasks (each task's headline metric) with error bars, and each task's chance line."""
    groups = [t for t in tasks if any(t in records for records in results.values())]
    if not groups:
        return empty_chart(CHART_TITLE, "No scores yet for these models and tasks: press Start.")
    bars: dict[str, list[tuple[float, float] | None]] = {}
    for model, records in results.items():
        bars[model] = []
        for task in groups:
            record = records.get(task)
            metrics = record["metrics"] if record else {}
            headline = record.get("headline", "acc") if record else "acc"
            bars[model].append((metrics[headline], metrics[f"{headline}_stderr"] or 0.0) if record else None)
    chance = [next(r[t]["chance"] for r in results.values() if t in r) for t in groups]
    return grouped_bar_chart(groups, bars, chance, CHART_TITLE, "accuracy", "random choice")


def show_results(studio: Studio, refs: list[str] | None, tasks: list[str] | None):
    results = saved_results(studio, refs or [])
    return results_chart(results, list(tasks or [])), results_table(results, list(tasks or []))


def refresh(studio: Studio, run_id: str | None, refs: list[str] | None, tasks: list[str] | None, seen: Any):
    """The job's view, and the results once it ends; the 1-second timer ticks while the job is queued or
    works. Nothing is redrawn when nothing changed."""
    p = progress(studio, run_id)
    active = p is not None and p["status"] in ACTIVE_STATES
    signature = (run_id, p["status"], p["done"]) if p else NO_RUN
    if signature == seen:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen, gr.Timer(active=active)
    stop = gr.Button(interactive=active and p["status"] != "stopping")
    ended = isinstance(seen, tuple) and p is not None and not active and seen[1] != p["status"]
    chart, table = show_results(studio, refs, tasks) if ended else (gr.skip(), gr.skip())
    return job_html(p), stop, chart, table, signature, gr.Timer(active=active)


def tick(studio: Studio, run_id: str | None, refs: list[str] | None, tasks: list[str] | None, seen: Any, behind=False):
    """refresh(), or the timer stopped while the tab is behind another (showing the tab starts it again)."""
    if behind:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen, gr.Timer(active=False)
    return refresh(studio, run_id, refs, tasks, seen)


def show_tab(studio: Studio, refs: list[str] | None, tasks: list[str] | None, run_id: str | None):
    """The tab is shown: the models as they are now (the chosen ones kept), the newest benchmark run (or the
    one shown), and the saved results. The estimate follows in its own event (reading BLiMP takes seconds)."""
    choices = studio.model_choices()
    refs = [r for r in refs or [] if r in dict((v, k) for k, v in choices)] or [r for _, r in choices[:1]]
    runs = bench_runs(studio)
    run_id = run_id if run_id in {r["id"] for r in runs} else (runs[0]["id"] if runs else None)
    job, stop, _, _, seen, timer = refresh(studio, run_id, refs, tasks, None)
    chart, table = show_results(studio, refs, tasks)
    return gr.Dropdown(choices=choices, value=refs, multiselect=True), run_id, job, stop, chart, table, seen, timer


def layout(ui: SimpleNamespace) -> None:
    gr.Markdown(
        "What can a model do? Standard benchmarks score it: each question's answers are ranked by how likely "
        "the model finds them. BLiMP asks for grammar (right for tiny models), the others for commonsense and "
        "science. The dashed line is what picking at random scores."
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            ui.models = dropdown(label="Models", multiselect=True, elem_id="bench-models")
            ui.tasks = gr.CheckboxGroup(
                [(f"{t.name}: {t.about}", t.name) for t in TASKS.values()],
                value=DEFAULT_TASKS,
                label="Tasks (zero-shot, scored as lm-evaluation-harness scores them)",
                elem_id="bench-tasks",
                **EDIT,
            )
            ui.limit = gr.Number(
                0, precision=0, label="Rows per task (0: all; BLiMP: per phenomenon)", elem_id="bench-limit", **EDIT
            )
            ui.estimate = gr.Markdown(elem_classes="plan", elem_id="bench-estimate")
            ui.start = gr.Button("Start", variant="primary", elem_id="bench-start")
            ui.start_status = gr.Markdown(elem_id="bench-start-status")
        with gr.Column(scale=3, min_width=420):
            ui.job = html_part(elem_id="bench-job")
            ui.stop = gr.Button("Stop", variant="stop", size="md", interactive=False, elem_id="bench-stop")
            ui.chart = html_part(elem_classes="chart-box", elem_id="bench-chart")
            ui.table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, elem_id="bench-table")
    ui.run = gr.State(None)  # the benchmark run shown
    ui.seen = gr.State(None)  # what this page last drew of it
    ui.timer = gr.Timer(1.0, active=False)
    ui.behind = behind_flag()


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    form = [ui.models, ui.tasks, ui.limit]
    monitor = [ui.job, ui.stop, ui.chart, ui.table, ui.seen, ui.timer]
    shown = [ui.models, ui.run, *monitor[:2], ui.chart, ui.table, ui.seen, ui.timer]
    estimate = bound(estimate_text, studio)
    filled = gr.on(on_show(demo, tab), bound(show_tab, studio), [ui.models, ui.tasks, ui.run], shown, **quiet(demo))
    filled.then(estimate, form, ui.estimate, **quiet(demo))
    gr.on([c.input for c in form], estimate, form, ui.estimate, trigger_mode="always_last", **quiet(demo))
    shown_results = bound(show_results, studio)
    gr.on([ui.models.input, ui.tasks.input], shown_results, [ui.models, ui.tasks], [ui.chart, ui.table], **LIGHT)
    started = ui.start.click(bound(do_start, studio), form, [ui.start_status, ui.run], **LIGHT)
    started.then(bound(refresh, studio), [ui.run, ui.models, ui.tasks, ui.seen], monitor, **quiet(demo))
    ui.stop.click(lambda run_id: studio.jobs.stop(run_id) if run_id else "", ui.run, ui.start_status, **LIGHT)
    tick_inputs = [ui.run, ui.models, ui.tasks, ui.seen, ui.behind]
    ui.timer.tick(bound(tick, studio), tick_inputs, monitor, js=ticks_while_shown("bench-job"), **quiet(demo))


def api_functions(studio: Studio) -> dict[str, Callable]:
    def api_estimate(model_refs: list[str], tasks: list[str], limit: int = 0) -> str:
        """The estimated time of scoring these models (refs) on these tasks (limit: rows per task, 0 all)."""
        return estimate_text(studio, model_refs, tasks, limit)

    def api_start(model_refs: list[str], tasks: list[str], limit: int = 0) -> tuple[str, str | None]:
        """Queue a benchmark run scoring these models (refs) on these tasks (limit: rows per task, 0 all; it
        starts when the device is free): (what happened, the run's id, or None when refused)."""
        message, run_id = do_start(studio, model_refs, tasks, limit)
        return message, run_id if isinstance(run_id, str) else None

    def api_progress(run_id: str) -> dict[str, Any]:
        """A benchmark run's status, message, choices scored (done) of total, elapsed and remaining seconds,
        and its view as the tab draws it (job, HTML); an error for an unknown run."""
        p = progress(studio, run_id)
        if p is None:
            raise gr.Error(f"No benchmark run {run_id!r}.")
        return {k: p[k] for k in ("status", "message", "done", "total", "elapsed", "remaining")} | {"job": job_html(p)}

    def api_results(model_refs: list[str]) -> dict[str, dict[str, Any]]:
        """The saved benchmark results of these models: {model name: {task: record}} (llm.eval.bench)."""
        return saved_results(studio, model_refs)

    return {"bench_estimate": api_estimate, "bench_start": api_start, "bench_progress": api_progress,
            "bench_results": api_results}  # fmt: skip


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab (once shown) and wire its events; returns the plain API functions to register by name."""
    lazy_page(demo, TAB_LABEL, "bench", lambda tab: wire(studio, demo, tab, laid_out(layout)))
    return api_functions(studio)
