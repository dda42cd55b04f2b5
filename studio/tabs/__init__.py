"""One module a tab; each has build(studio, demo) that lays the tab out and wires its events."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from llm.run import Metrics
from studio.charts import line_chart
from studio.store import FINAL_STATES

LOSS_COLUMNS = ["step", "loss", "curve"]
# Events that only read (tab fills, dropdown changes, the plan, refresh timers): no queue of their own to
# wait in, so four open pages, a running fine-tune or a generation never hold them up. Generation and batch
# scoring keep a concurrency limit.
LIGHT: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": None}


def bound(handler: Callable, studio: Any) -> Callable:
    """The handler with the studio bound as its first argument, its docstring kept: Gradio describes a
    public endpoint by its function's docstring, and a bare functools.partial's is functools' own."""
    fn = partial(handler, studio)
    fn.__doc__ = handler.__doc__
    return fn


def keyed(handler: Callable, studio: Any, ui: SimpleNamespace) -> Callable:
    """handler(studio, *inputs) returns (or, a generator, yields) {name: value}, a name being an attribute of ui
    (a component, or a list of components given a list of values), or a key of ui.fields; Gradio gets
    {component: value}, and a component left out stays as it is. Outputs are named, never counted. The
    endpoint keeps the handler's signature (Gradio passes gr.Request and gr.Progress by it) and docstring."""

    def components(named: dict[str, Any]) -> dict:
        out = {}
        for name, value in named.items():
            target = component(ui, name)
            out |= dict(zip(target, value, strict=True)) if isinstance(target, list) else {target: value}
        return out or gr.skip()  # an empty dict would read as one output's value

    if inspect.isgeneratorfunction(handler):

        def run(*args: Any) -> Any:
            for named in handler(studio, *args):
                yield components(named)

    else:

        def run(*args: Any) -> Any:
            return components(handler(studio, *args))

    run.__signature__ = inspect.signature(partial(handler, studio))
    run.__doc__, run.__name__ = handler.__doc__, handler.__name__
    return run


def component(ui: SimpleNamespace, name: str) -> Any:
    """The component (or list of components) ui calls name: an attribute, else a form field of ui.fields."""
    return getattr(ui, name) if hasattr(ui, name) else ui.fields[name]


def outputs(ui: SimpleNamespace, *names: str) -> list:
    """The components ui names (a list of components counts as its members), for an event's outputs."""
    found = []
    for name in names:
        target = component(ui, name)
        found += target if isinstance(target, list) else [target]
    return found


def dropdown(**kwargs: Any) -> gr.Dropdown:
    """A dropdown whose choices are filled at run time (datasets, models and runs change in other tabs and
    sessions). Gradio checks a value against the choices this session last saw, so the server must accept
    others; every handler looks the value up itself and says when it is unknown."""
    return gr.Dropdown(allow_custom_value=True, **kwargs)


def run_controls(ui: SimpleNamespace, prefix: str) -> None:
    """A run tab's watch column, top part: ui.run (the picker), ui.stop, ui.resume, ui.state, ui.bar (progress)
    and ui.curve (loss), with element ids <prefix>-run, <prefix>-stop and so on (ticks_while_shown reads
    <prefix>-state)."""
    ui.run = dropdown(label="Run", elem_id=f"{prefix}-run")
    with gr.Row():
        ui.stop = gr.Button("Stop", variant="stop", size="md", interactive=False, elem_id=f"{prefix}-stop")
        ui.resume = gr.Button("Resume", size="md", interactive=False, elem_id=f"{prefix}-resume")
    ui.state = gr.Markdown(elem_id=f"{prefix}-state")
    ui.bar = gr.HTML(elem_id=f"{prefix}-progress")
    ui.curve = loss_plot(elem_id=f"{prefix}-loss")


def stop_run(studio: Any, run_id: str | None) -> str:
    """Stop the run (a working one saves a checkpoint first; a queued one leaves the queue): what happened."""
    return studio.jobs.stop(run_id) if run_id else "Choose a run first."


def resume_run(studio: Any, run_id: str | None) -> str:
    """Queue a stopped, interrupted or cancelled run again (from its last checkpoint): what happened."""
    return studio.jobs.resume(run_id) if run_id else "Choose a run first."


def wire_stop_resume(studio: Any, ui: SimpleNamespace, show: Callable, monitor: list, api_prefix: str | None) -> None:
    """ui.stop and ui.resume act on ui.run and say what happened in ui.start_status; then show(run, seen) draws
    the run into monitor at once. That also sets the tab's timer going again after a resume: the timer stops
    itself while the run does not work, and a resume changes no input that would draw the run otherwise.
    api_prefix: the endpoints' names are <prefix>stop and <prefix>resume (None: no public endpoint)."""
    for button, act, action in ((ui.stop, stop_run, "stop"), (ui.resume, resume_run, "resume")):
        api = {"api_name": f"{api_prefix}{action}"} if api_prefix is not None else {"api_visibility": "private"}
        clicked = button.click(bound(act, studio), ui.run, ui.start_status, concurrency_limit=None, **api)
        clicked.then(show, [ui.run, ui.seen], monitor, show_progress="hidden", **LIGHT)


def behind_flag() -> gr.Checkbox:
    """A hidden input that a timer's script fills (see ticks_while_shown): whether the timer's tab is behind."""
    return gr.Checkbox(False, visible=False, label="behind (set by the page: is the tab behind another?)")


def ticks_while_shown(element_id: str) -> str:
    """The script run before each tick of a timer whose inputs are (run, seen, behind): behind is set to
    whether element_id (a part of the timer's tab) is off screen. A Gradio timer ticks whatever tab is in
    front; the tick then stops it, and showing the tab starts it again."""
    return f"""(run, seen) => {{
  const shown = document.getElementById({element_id!r});
  return [run, seen, !(shown && shown.offsetParent)];
}}"""


def timer_tick(refresh: Callable) -> Callable:
    """A run tab's timer handler from its refresh(studio, run_id, last_seen) (a view of 10 outputs, the timer
    last). behind is set by the page (see ticks_while_shown) and False from the API."""

    def tick(studio: Any, run_id: str | None, last_seen: Any = None, behind: bool = False):
        """The run's view as refresh() gives it; behind (set by the page, False from the API): the tab is
        behind another, and the timer stops instead (the tab starts it again when shown)."""
        if behind:
            return (*[gr.skip()] * 9, gr.Timer(active=False))
        return refresh(studio, run_id, last_seen)

    return tick


def keep(value: str | None, options: list[tuple[str, str]], fallback: str | None = None) -> str | None:
    """value if it is still offered, else fallback if it is, else the first option (None when none)."""
    keys = [k for _, k in options]
    return value if value in keys else fallback if fallback in keys else (keys[0] if keys else None)


def finished_run(studio: Any, options: list[tuple[str, str]]) -> str | None:
    """The newest run among options (model refs) that has finished training: what a tab picks first. A run
    still training is never picked for the user (early on its checkpoint is from step 1)."""
    finished = {f"run:{r['id']}" for r in studio.store.runs(FINAL_STATES)}
    return next((ref for _, ref in options if ref in finished), None)


def chosen(choices: list[tuple[str, str]], value: str | None) -> gr.Dropdown:
    """A dropdown update: these choices, value chosen. No value when it is None: None set on an empty
    dropdown counts as a change and would fire its .change handlers for nothing."""
    return gr.Dropdown(choices=choices, value=value) if value is not None else gr.Dropdown(choices=choices)


LOSS_COLORS = {"train": "#4f7cff", "validation": "#f5a524"}


def loss_plot(**kwargs: Any) -> gr.HTML:
    """Where a loss chart goes: fed loss_chart(frame) (an SVG drawn on the server, see studio/charts.py)."""
    return gr.HTML(loss_chart(loss_frame(Metrics())), elem_classes="chart-box", **kwargs)


def loss_chart(frame: pd.DataFrame, title: str = "Loss (nats per token)") -> str:
    """The loss curves of loss_frame(): one line a curve (train batches, validation, per run when named)."""
    return line_chart(frame, "step", "loss", "curve", title, LOSS_COLORS, empty="No loss values yet.")


def loss_frame(metrics: Metrics, run: str | None = None) -> pd.DataFrame:
    """A run's loss curve for loss_plot: columns step (int), loss (float), curve ("train" or "validation",
    or "<run>: train" ... when run names it). The types are set every time: an empty frame, or one with a
    missing value, would otherwise have object columns, which the plot draws as category labels, no lines."""
    frame = pd.DataFrame(metrics.loss_points(), columns=LOSS_COLUMNS).dropna()
    frame = frame.astype({"step": "int64", "loss": "float64", "curve": "str"})
    if run is not None:
        frame["curve"] = run + ": " + frame["curve"]
    return frame
