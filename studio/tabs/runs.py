"""What the run tabs (Fine-tune, Pretrain) share: the watch column (run picker, Stop and Resume, state,
progress bar, loss chart), its refresh from the run's row and files, and the timer that redraws it.

A tab's view of a run is a RunView: the parts every run tab has, plus the tab's own samples (probe answers, or
the pretraining timeline). Every handler returns {part name: value} (see studio.tabs.keyed); a part left out
is not sent, so an unchanged run costs the page nothing.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import gradio as gr

from llm.run import RunDir
from studio import tabs
from studio.store import ACTIVE_STATES, RESUMABLE_STATES, WORKING_STATES

NO_RUN = "no run"  # what a page without a run last drew
MONITOR = ("state", "bar", "curve", "samples", "log", "stop", "resume", "run", "seen", "timer")  # a run's view


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def run_choices(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The run picker's choices: each run's name and state."""
    return [(f"{r['name']} · {r['status']}", r["id"]) for r in runs]


def default_run(runs: list[dict[str, Any]]) -> str | None:
    """The run to show when a page opens: an active one, else the newest."""
    active = [r for r in runs if r["status"] in ACTIVE_STATES and r["status"] != "queued"]
    return (active or runs or [{"id": None}])[0]["id"]


def progress_html(p: dict[str, Any]) -> str:
    """The bar (studio.jobs.Jobs.progress's fraction: of the steps, or of the time of a run by the clock) and
    the step, share, elapsed and remaining time."""
    step, total, share, state = p["step"], p["max_steps"], p["fraction"], p["status"]
    left = f" · about {clock(p['remaining'])} left" if p["remaining"] is not None else ""
    done = f"step <b>{step}</b> of {total or '?'}"
    if p["max_time"]:
        done = f"step <b>{step}</b> · {clock(min(p['trained'], p['max_time']))} of {clock(p['max_time'])} trained"
    return (
        f"<div class='run-progress {state}'><div class='bar' style='width:{100 * share:.1f}%'></div></div>"
        f"<div class='run-progress-text'>{done} · {share:.0%} · elapsed {clock(p['elapsed'])}{left}</div>"
    )


def can_resume(status: str, run_dir: RunDir) -> bool:
    """Whether Resume can help: a stopped or interrupted run, or a failed one that has a checkpoint to go on
    from (one that failed before its first checkpoint would fail again: its settings or data need changing)."""
    return status in RESUMABLE_STATES and (status != "failed" or run_dir.resumable())


def state_text(p: dict[str, Any]) -> str:
    """The run's state badge, name and message, then its device and size."""
    text = f"<span class='state-badge {p['status']}'>{p['status']}</span> **{html.escape(p['run']['name'])}**"
    if p["message"]:
        text += f" — {html.escape(p['message'])}"
    start = p["metrics"].start
    if start:
        params, trainable = start.get("params", 0), start.get("trainable", 0)
        trained = f", {trainable:,} trained" if trainable and trainable != params else ""
        text += f"\n\n{start.get('device', '')} · {params:,} parameters{trained}"
    return text


@dataclass
class RunView:
    """A run tab's view of a run: the shared parts, and the tab's own."""

    hint: str  # shown when there is no run yet
    samples: Callable[[dict[str, Any] | None], Any]  # the samples part of jobs.progress() (None: no run)
    runs: Callable[[Any], list[dict[str, Any]]]  # the tab's runs, newest first, given the studio
    records: Callable[[dict[str, Any] | None], Any] | None = None  # the samples as data, for the API (progress)
    again: bool = False  # a cancelled run can start again: its Resume button reads "Start again"
    chosen: Callable[[Any, dict[str, Any] | None], dict[str, Any]] | None = None  # parts drawn once a run is chosen
    chosen_parts: tuple[str, ...] = ()  # the names chosen() returns

    def parts(self) -> tuple[str, ...]:
        """The names of every part refresh() may send."""
        return MONITOR + self.chosen_parts

    def refresh(self, studio: Any, run_id: str | None, last_seen: Any) -> dict[str, Any]:
        """The run's MONITOR parts that changed since last_seen, and whether the 1-second timer ticks (only
        while the run is queued or works: a page with nothing running sends nothing). The run's row and its
        files' times are compared before any file is read; while it works and they are unchanged, only the
        clock moves. When they changed, a part whose content is what the page drew (the probe answers between
        two evaluations, the state, the log) is not sent again."""
        run = studio.store.run(run_id) if run_id else None
        if run is None:
            if last_seen == NO_RUN:
                return {"timer": gr.Timer(active=False)}
            off = gr.Button(interactive=False)
            empty = {"state": self.hint, "bar": "", "curve": tabs.empty_loss_chart(), "log": ""}
            resume = gr.Button(value="Resume", interactive=False)
            return {**empty, **self.chosen_view(studio, None), "samples": self.samples(None), "stop": off,
                    "resume": resume, "seen": NO_RUN, "timer": gr.Timer(active=False)}  # fmt: skip
        seen = last_seen if isinstance(last_seen, dict) else {"run": None, "parts": {}}
        drawn = seen["run"]  # the run's signature when this page last drew it
        signature = (run_id, run["status"], run["message"], run["name"], *studio.jobs.file_times(run))
        if signature == drawn and run["status"] not in WORKING_STATES:  # a queued run keeps the timer going
            return {"timer": gr.Timer(active=run["status"] in ACTIVE_STATES)}
        p = studio.jobs.progress(run_id)
        if signature == drawn:  # working, files unchanged: only the clock moves
            return {"bar": progress_html(p), "timer": gr.Timer(active=True)}
        status = p["status"]
        again = self.again and status == "cancelled"
        contents = {
            "state": state_text(p),
            "curve": tabs.loss_chart(tabs.loss_frame(p["metrics"])),
            "samples": self.samples(p),
            "log": p["log"],
        }
        digests = {part: tabs.stamp_of(value) for part, value in contents.items()}
        same_run = drawn is not None and drawn[0] == run_id
        view = {part: contents[part] for part in tabs.changed_parts(digests, seen["parts"] if same_run else None)}
        view |= {
            "bar": progress_html(p),
            "stop": gr.Button(interactive=status in ACTIVE_STATES and status != "stopping"),
            "resume": gr.Button(
                value="Start again" if again else "Resume",
                interactive=again or can_resume(status, studio.jobs.run_dir(run)),
            ),
            "seen": {"run": signature, "parts": digests},
            "timer": gr.Timer(active=status in ACTIVE_STATES),
        }
        if drawn is None or drawn[1:4] != signature[1:4]:  # labels carry the runs' states
            view["run"] = gr.Dropdown(choices=run_choices(self.runs(studio)))  # only then: an open list would close
        return view | (self.chosen_view(studio, run) if not same_run else {})

    def chosen_view(self, studio: Any, run: dict[str, Any] | None) -> dict[str, Any]:
        return self.chosen(studio, run) if self.chosen else {}

    def tick(self, studio: Any, run_id: str | None, last_seen: Any = None, behind: bool = False) -> dict[str, Any]:
        """The timer's tick: refresh(); behind (set by the page, False from the API): the tab is behind another,
        and the timer stops instead (showing the tab starts it again)."""
        return {"timer": gr.Timer(active=False)} if behind else self.refresh(studio, run_id, last_seen)


def run_controls(ui: SimpleNamespace, prefix: str) -> None:
    """A run tab's watch column, top part: ui.run (the picker), ui.stop, ui.resume, ui.state, ui.bar (progress)
    and ui.curve (loss), with element ids <prefix>-run, <prefix>-stop and so on (ticks_while_shown reads
    <prefix>-state)."""
    ui.run = tabs.dropdown(label="Run", elem_id=f"{prefix}-run")
    with gr.Row():
        ui.stop = gr.Button("Stop", variant="stop", size="md", interactive=False, elem_id=f"{prefix}-stop")
        ui.resume = gr.Button("Resume", size="md", interactive=False, elem_id=f"{prefix}-resume")
    ui.state = gr.Markdown(elem_id=f"{prefix}-state")
    ui.bar = tabs.html_part(elem_id=f"{prefix}-progress")
    ui.curve = tabs.loss_plot(elem_id=f"{prefix}-loss")


def watch_state(ui: SimpleNamespace) -> None:
    """The watch column's hidden parts: ui.seen (what this page last drew, so an unchanged run sends nothing)
    and ui.behind (see ticks_while_shown). Its timer is run_page's."""
    ui.seen = gr.State(None)
    ui.behind = behind_flag()


def behind_flag() -> gr.Checkbox:
    """A hidden input that a timer's script fills (see ticks_while_shown): whether the timer's tab is behind."""
    return gr.Checkbox(False, visible=False, label="behind (set by the page: is the tab behind another?)")


def ticks_while_shown(element_id: str) -> str:
    """The script run before each tick of a timer whose inputs are (run, seen, behind): behind is set to
    whether element_id (a part of the timer's tab) is off screen. A Gradio timer ticks whatever tab is in
    front: showing another tab stops it (tabs.stop_timers_when_left), and a tick under way as that tab is
    shown stops it too. Showing the timer's tab starts it again."""
    return f"""(run, seen) => {{
  const shown = document.getElementById({element_id!r});
  return [run, seen, !(shown && shown.offsetParent)];
}}"""


def run_stamp(studio: Any, run_id: str | None, offered: Any) -> tuple[str, bool]:
    """A run tab's stamp (tabs.when_changed): what the tab offers and the state of the page's run, and whether
    that run works. The run's files are left out: while it works, the timer (set going by the stamp) redraws
    them."""
    run = studio.store.run(run_id) if run_id else None
    state = (run["status"], run["message"], run["name"]) if run else None
    return tabs.stamp_of(offered, run_id, state), state is not None and state[0] in ACTIVE_STATES


def stop_run(studio: Any, run_id: str | None) -> str:
    """Stop the run (a working one saves a checkpoint first; a queued one leaves the queue): what happened."""
    return studio.jobs.stop(run_id) if run_id else "Choose a run first."


def resume_run(studio: Any, run_id: str | None) -> str:
    """Queue a stopped, interrupted or cancelled run again (from its last checkpoint): what happened."""
    return studio.jobs.resume(run_id) if run_id else "Choose a run first."


def wire_watch(studio: Any, demo: Any, tab: Any, ui: SimpleNamespace, view: RunView, prefix: str) -> None:
    """The watch column's events: a run chosen or started is drawn (nothing is sent when the page drew it
    already); the timer redraws it while it works; Stop and Resume act on ui.run, say what happened in
    ui.start_status and draw the run at once (which also sets the timer going again after a resume: it stops
    itself while the run does not work). Their public endpoints are watch_api()'s."""
    monitor = tabs.outputs(ui, *view.parts())
    show = tabs.keyed(view.refresh, studio, ui)
    ui.run.change(show, [ui.run, ui.seen], monitor, **tabs.quiet(demo))
    ui.timer.tick(tabs.keyed(view.tick, studio, ui), [ui.run, ui.seen, ui.behind], monitor,
                  js=ticks_while_shown(f"{prefix}-state"), **tabs.quiet(demo))  # fmt: skip
    for button, act in ((ui.stop, stop_run), (ui.resume, resume_run)):
        clicked = button.click(tabs.bound(act, studio), ui.run, ui.start_status, **tabs.LIGHT)
        clicked.then(show, [ui.run, ui.seen], monitor, **tabs.quiet(demo))


def run_page(
    studio: Any,
    demo: Any,
    tab: tuple[str, str, str],
    layout: Callable,
    wire: Callable,
    view: RunView,
    first_view: Callable[..., dict[str, Any]],
    inputs: tuple = (),
):
    """A run tab (Fine-tune, Pretrain), built the first time a page shows it, already filled. tab: (label, key,
    the prefix of its element ids); layout(ui) lays it out; first_view(ui, *values of inputs) is the fill's
    answer for the first showing, which the body is made as (tabs.made_filled); wire(studio, demo, tab, ui)
    wires its form; its watch column is wired here."""
    label, key, prefix = tab

    def body(page_tab: Any, *values: Any) -> None:  # run by a page's render, after the timer below is made
        ui = tabs.laid_out(layout)
        ui.timer = timer
        tabs.made_filled(ui, lambda: first_view(ui, *values))
        wire(studio, demo, page_tab, ui)
        wire_watch(studio, demo, page_tab, ui, view, prefix)

    page_tab = tabs.lazy_page(demo, label, key, body, inputs)
    with page_tab:  # outside the body: another tab shown stops it in the page (tabs.stop_timers_when_left)
        timer = gr.Timer(1.0, active=False)  # set going by refresh() (or the stamp) while the run works
    demo.tab_timers.append((page_tab, timer))


def watch_api(studio: Any, view: RunView, prefix: str) -> dict[str, Callable]:
    """A run tab's tabs.plain API functions, named <prefix>progress, <prefix>stop and <prefix>resume."""

    def progress(run_id: str) -> dict[str, Any]:
        """A run's state as the tab shows it: status, message, step, max_steps, elapsed and remaining seconds,
        and the parts drawn (state, bar, curve, samples, log); an error for an unknown run."""
        if studio.store.run(run_id or "") is None:
            raise gr.Error(f"No run {run_id!r}.")
        p = studio.jobs.progress(run_id)
        facts = {k: p[k] for k in ("status", "message", "step", "max_steps", "elapsed", "remaining")}
        records = {"samples": view.records(p)} if view.records else {}
        return facts | tabs.plain(view.refresh(studio, run_id, None)) | records

    def stop(run_id: str) -> str:
        """Stop a run (a working one writes a last checkpoint first; a queued one leaves the queue)."""
        return stop_run(studio, run_id)

    def resume(run_id: str) -> str:
        """Queue a stopped, interrupted or failed run again, from its last checkpoint."""
        return resume_run(studio, run_id)

    return {f"{prefix}progress": progress, f"{prefix}stop": stop, f"{prefix}resume": resume}
