"""Fine-tune tab: choose a base model, a dataset and the settings, see the plan, start, and watch the run.

The run is a child process (studio.jobs); this tab only reads its state from SQLite and its files, every
second, so a reloaded page re-attaches to a running job. The form's fields are FinetuneConfig's fields (its
defaults and help text); the page keeps the unsaved form in the browser (gr.BrowserState), so a reload does
not lose it.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import threading
import typing
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from llm.config import ALL_PROJECTIONS, EARLY_STOP_METRICS, OVERFLOW, FinetuneConfig
from llm.errors import LLMError
from llm.run import Metrics, info_version
from studio.context import Studio, StudioError, human_size, memory_now, plural
from studio.jobs import CHILD_THREADS, field_label
from studio.store import ACTIVE_STATES, RESUMABLE_STATES, WORKING_STATES
from studio.tabs import (
    LIGHT,
    behind_flag,
    bound,
    chosen,
    dropdown,
    keep,
    loss_chart,
    loss_frame,
    run_controls,
    ticks_while_shown,
    timer_tick,
    wire_stop_resume,
)

METHOD_CHOICES = [("LoRA: small adapters, fast, little memory", "lora"), ("Full: every weight", "full")]
SAMPLE_COLUMNS = ["step", "prompt", "answer"]
# The form: FinetuneConfig fields, the first always in view, the others under "Advanced settings".
BASIC_FIELDS = ("method", "epochs", "max_steps", "lr", "batch_size", "lora_rank", "probes")
ADVANCED_FIELDS = (
    "grad_accum", "warmup_steps", "weight_decay", "lora_alpha", "lora_dropout", "lora_targets",
    "val_fraction", "evals_per_epoch", "max_eval_rows", "early_stop_patience", "early_stop_metric", "seed",
    "overflow", "probe_tokens",
)  # fmt: skip
FORM_FIELDS = BASIC_FIELDS + ADVANCED_FIELDS
TAB_LABEL = "3 · Fine-tune"
MAX_PROBES = 5
FORM_STORAGE_KEY = "studio-finetune-form"  # the browser's localStorage key of the unsaved form
NO_RUN = "no run"  # what a page without a run last drew


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


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


def samples_frame(p: dict[str, Any], evals: int = 3) -> pd.DataFrame:
    """The probe prompts' answers at the last few evaluations, newest first."""
    rows = []
    for record in reversed(p["metrics"].evals[-evals:]):
        for sample in record.get("samples", []):
            rows.append({"step": record["step"], "prompt": sample["prompt"], "answer": sample["output"]})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def run_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(f"{r['name']} · {r['status']}", r["id"]) for r in studio.store.runs()]


def default_run(studio: Studio) -> str | None:
    """The run to show when a page opens: an active one, else the newest."""
    runs = studio.store.runs()
    active = [r for r in runs if r["status"] in ACTIVE_STATES and r["status"] != "queued"]
    return (active or runs or [{"id": None}])[0]["id"]


def probe_prompts(examples: list[Any], n: int = 3) -> list[str]:
    """The first n distinct last user turns of examples, on one line each (rows often share an instruction,
    e.g. "Give the story a title.", and the same probe twice shows nothing new)."""
    prompts: list[str] = []
    for example in examples:
        prompt = next(m["content"] for m in reversed(example.messages) if m["role"] == "user").replace("\n", " ")
        if prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == n:
            break
    return prompts


# The form, built from FinetuneConfig's fields
def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def field_component(name: str) -> gr.components.Component:
    """The form's input for a FinetuneConfig field: its label, its help text and its default."""
    f = config_fields()[name]
    default, hint = field_default(f), typing.get_type_hints(FinetuneConfig)[name]
    common = {"label": field_label(name), "info": f.metadata["help"], "elem_id": f"ft-{name.replace('_', '-')}"}
    if name == "method":
        return gr.Radio(METHOD_CHOICES, value=default, **common)
    if name == "overflow":
        return gr.Radio(list(OVERFLOW), value=default, **common)
    if name == "early_stop_metric":
        return gr.Radio(list(EARLY_STOP_METRICS), value=default, **common)
    if name == "lora_targets":
        return gr.CheckboxGroup(list(ALL_PROJECTIONS), value=default, **common)
    if name == "probes":
        common["label"] = "Probe prompts (one a line): answered at every evaluation"
        return gr.Textbox(value="\n".join(default), lines=3, **common)
    if hint is bool:
        return gr.Checkbox(value=default, **common)
    integer = int in typing.get_args(hint) or hint is int
    # No minimum: FinetuneConfig says what a value must be, naming the field (Gradio's own check would not).
    return gr.Number(value=default, precision=0 if integer else None, **common)


def form_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The form's values as FinetuneConfig fields. An empty value is left out (the library's default applies,
    FinetuneConfig being the one place the defaults live); so is a learning rate of 0 (its default depends
    on the method)."""
    hints = typing.get_type_hints(FinetuneConfig)
    settings: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == "" or (name == "lr" and not value):
            continue
        if name == "probes":
            settings[name] = [line.strip() for line in str(value).splitlines() if line.strip()][:MAX_PROBES]
        elif hints[name] in (int, int | None):
            settings[name] = int(value)
        elif hints[name] in (float, float | None):
            settings[name] = float(value)
        else:
            settings[name] = value
    return settings


def form_values(settings: dict[str, Any]) -> list[Any]:
    """FinetuneConfig fields (a run's config, a preset) as the form's values, in FORM_FIELDS order; a field
    not given shows its default."""
    fields, values = config_fields(), []
    for name in FORM_FIELDS:
        value = settings.get(name, field_default(fields[name]))
        values.append("\n".join(value) if name == "probes" else value)
    return values


def device_text(device: str) -> str:
    """The plan's device as the child will use it: on a CPU, the threads it gets (the studio keeps the rest)."""
    if device.startswith("cpu"):
        return f"cpu ({plural(CHILD_THREADS, 'thread')} for training, the rest kept for the studio)"
    return device


def plan_text(plan: dict[str, Any]) -> str:
    share = plan["trainable_fraction"]
    return "\n".join(
        f"- {line}"
        for line in [
            f"**Device:** {device_text(plan['device'])}",
            f"**Parameters:** {plan['params']:,} · trained: {plan['trainable_params']:,} ({share:.1%})",
            f"**Examples:** {plan['train_examples']} to train on, {plan['val_examples']} held out to validate"
            + (
                f" (each evaluation scores {plan['eval_rows']} of them)"
                if plan["eval_rows"] < plan["val_examples"]
                else ""
            ),
            f"**Steps:** {plan['max_steps']} ({plan['epochs']:.1f} epochs of {plan['steps_per_epoch']}, "
            f"batch {plan['batch_size']}) · learning rate {plan['lr']:g}",
            f"**Estimated memory:** {human_size(plan['est_memory_bytes'])} · **estimated time:** "
            f"{clock(plan['est_seconds'])} (less if the validation loss stops improving and the run stops early)",
        ]
    )


def settings_table(studio: Studio, run: dict[str, Any]) -> str:
    """The settings a run was started with (its FinetuneConfig), as a Markdown table."""
    config = run["config"]
    dataset = studio.store.dataset(run["dataset_id"])
    rows = [
        ("Base model", studio.model_label(run["base_id"])),
        ("Dataset", dataset["name"] if dataset else f"{config.get('data', '')} (deleted)"),
    ]
    rows += [(field_label(name), config.get(name, "default")) for name in FORM_FIELDS if name != "probes"]
    rows.append(("Probe prompts", " · ".join(config.get("probes", [])) or "none"))
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {label} | {html.escape(str('default' if v is None else v))} |" for label, v in rows]
    return "\n".join(lines)


class PlanCache:
    """Plans by (settings, file versions): the plan is redrawn at every change of a field, and four open
    pages ask for the same plan; reading and encoding the data once per version keeps that cheap. One plan is
    computed at a time: pages opening together wait for the first one's plan instead of each computing it (on
    a busy CPU, in parallel, they all took as long as the four together)."""

    def __init__(self, size: int = 32):
        self.size, self.plans = size, OrderedDict()
        self.lock, self.computing = threading.Lock(), threading.Lock()

    def cached(self, key: str) -> str | None:
        with self.lock:
            if key in self.plans:
                self.plans.move_to_end(key)
            return self.plans.get(key)

    def get(self, studio: Studio, cfg: FinetuneConfig) -> str:
        from llm.train import finetune

        key = json.dumps(cfg.to_dict(), sort_keys=True) + str(version(cfg.data)) + str(version(cfg.base))
        if (text := self.cached(key)) is not None:
            return text
        with self.computing:
            if (text := self.cached(key)) is not None:  # another page computed it while this one waited
                return text
            text = plan_text(finetune.plan(finetune.prepare(cfg, studio.task_data(cfg))))
            with self.lock:
                self.plans[key] = text
                while len(self.plans) > self.size:
                    self.plans.popitem(last=False)
        return text


def version(path: str) -> tuple:
    """A file's or folder's (modification time, size), to notice a changed file."""

    p = Path(path)
    if p.is_dir():
        return info_version(p)
    stat = p.stat() if p.exists() else None
    return (stat.st_mtime_ns, stat.st_size) if stat else ()


PLANS = PlanCache()


def make_plan(studio: Studio, base_ref: str | None, dataset_id: str | None, *values: Any) -> str:
    """The plan for the chosen settings, or what is wrong with them; then what the device has in use now."""
    if not base_ref:
        return f"⚠ {studio.base_missing() or 'Choose a base model.'}"
    if not dataset_id:
        return "⚠ Choose a dataset (Data tab: pick a sample or upload one)."
    try:
        cfg = studio.finetune_config(base_ref, dataset_id, form_settings(dict(zip(FORM_FIELDS, values, strict=True))))
        text = PLANS.get(studio, cfg)
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"
    return f"{text}\n- **In use now:** {memory_now()}"


def default_probes(studio: Studio, dataset_id: str | None) -> str:
    """The first distinct prompts of the rows a run holds out: answers to them show what the model learned."""
    row = studio.store.dataset(dataset_id) if dataset_id else None
    if row is None:
        return ""
    path = studio.store.abs(row["path"])
    return held_out_prompts(str(path), version(str(path)), row["format"], json.dumps(row["mapping"] or {}))


@functools.lru_cache(maxsize=16)
def held_out_prompts(path: str, file_version: tuple, fmt: str, mapping: str) -> str:
    """default_probes for one version of a file (file_version is part of the cache key only)."""
    from llm.data import tasks

    try:
        data = tasks.read_task_file(Path(path), fmt, json.loads(mapping) or None)
    except LLMError:
        return ""
    _, held_out = tasks.split_examples(data)
    return "\n".join(probe_prompts(held_out.examples))


def form_choices(studio: Studio) -> tuple[list, list, list, list]:
    """What the tab's four dropdowns offer: base models, datasets, runs, presets."""
    return studio.model_choices(), studio.dataset_choices(), run_choices(studio), list(studio.store.presets())


def open_form(studio: Studio, saved: Any, run_id: str | None, choices: tuple[list, list, list, list]):
    """The tab is first shown: these choices (form_choices()) with run_id chosen, the form as this browser
    left it (else the defaults and the newest run's base and dataset), and its plan."""
    saved = saved if isinstance(saved, dict) else {}
    bases, datasets, runs, _ = choices
    latest = (studio.store.runs() or [{}])[0]
    base_ref = keep(saved.get("base"), bases, latest.get("base_id"))
    dataset_id = keep(saved.get("dataset"), datasets, latest.get("dataset_id"))
    settings = saved_settings(saved)
    values = form_values(settings)
    if "probes" not in settings:
        values[FORM_FIELDS.index("probes")] = default_probes(studio, dataset_id)
    return (
        gr.Dropdown(choices=bases, value=base_ref),
        gr.Dropdown(choices=datasets, value=dataset_id),
        chosen(runs, run_id),
        *values,
        saved.get("name", ""),
        make_plan(studio, base_ref, dataset_id, *values),
    )


def show_tab(studio: Studio, saved: Any, run_id: str | None, offered: tuple | None, last_seen: Any):
    """The tab is shown, in one event: [base, dataset, run, *fields, name, plan, offered, presets, *monitor]
    (monitor as refresh() returns it, less the run list). The first time (offered is None), the form as this
    browser left it and its run; after that only the choices, and only if they changed since they were last
    offered (nothing of the form: an answer that arrives late must not overwrite what the user typed
    meanwhile). The monitor draws the run (nothing when unchanged) and starts the timer again if the run
    works."""
    choices = form_choices(studio)
    if offered is None:
        run_id = keep(run_id, choices[2], default_run(studio))
        form = open_form(studio, saved, run_id, choices)
    elif choices == offered:
        form = [gr.skip()] * (len(FORM_FIELDS) + 5)
    else:
        form = (*[gr.Dropdown(choices=c) for c in choices[:3]], *[gr.skip()] * (len(FORM_FIELDS) + 2))
    presets = gr.skip() if choices == offered else gr.Dropdown(choices=choices[3])
    state, bar, curve, samples, log, stop, resume, _, seen, timer = refresh(studio, run_id, last_seen)
    return (*form, choices, presets, state, bar, curve, samples, log, stop, resume, seen, timer)


def warm_up(studio: Studio) -> None:
    """Import torch and compute the plan a fresh page opens with, once, before the pages ask for it."""
    open_form(studio, {}, None, form_choices(studio))


def from_run(studio: Studio, run_id: str | None):
    """'Start a new run from these': the selected run's base, dataset and settings in the form."""
    run = studio.store.run(run_id) if run_id else None
    if run is None:
        return *[gr.skip()] * (len(FORM_FIELDS) + 4), "Choose a run first."
    values = form_values(run["config"])
    return (
        gr.Dropdown(value=run["base_id"]),
        gr.Dropdown(value=run["dataset_id"]),
        *values,
        "",
        make_plan(studio, run["base_id"], run["dataset_id"], *values),
        f"The form holds **{html.escape(run['name'])}**'s settings: change what you like, then press Start.",
    )


# The form as the browser keeps it: a script (no server round trip) writes {base, dataset, fields, name} on
# every change, once the page has read the kept form back (before that, a reloaded page's fields start at
# the defaults, and keeping those would lose the user's form).
SAVE_FORM_JS = f"""(kept, base, dataset, ...rest) => {{
  if (!window.studioFormRestored) return kept;
  const names = {json.dumps(list(FORM_FIELDS))};
  return {{base, dataset, fields: Object.fromEntries(names.map((n, i) => [n, rest[i]])), name: rest[names.length]}};
}}"""
RESTORED_JS = "() => { window.studioFormRestored = true; }"


def saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """The settings of a form the browser kept; {} if it cannot be read (e.g. kept by an older studio)."""
    fields = saved.get("fields")
    if not isinstance(fields, dict):
        return {}
    try:
        return form_settings({k: v for k, v in fields.items() if k in FORM_FIELDS})
    except (TypeError, ValueError):
        return {}


def start_run(studio: Studio, base_ref: str | None, dataset_id: str | None, settings: dict, name: str):
    """Create a run and start it (or queue it behind the run that holds the device): (what happened, the
    run's id or None)."""
    if not base_ref or not dataset_id:
        return "⚠ Choose a base model and a dataset first.", None
    try:  # bad settings are refused here, not in the child
        run_id = studio.create_run(base_ref, dataset_id, settings, name or "")
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}", None
    return studio.jobs.submit(run_id), run_id


def form_start(studio: Studio, base_ref: str | None, dataset_id: str | None, *values: Any):
    """Start: values are the form's fields in FORM_FIELDS order, then the run's name."""
    try:
        settings = form_settings(dict(zip(FORM_FIELDS, values[:-1], strict=True)))
    except (TypeError, ValueError) as e:
        return f"⚠ {e}", gr.Dropdown()
    message, run_id = start_run(studio, base_ref, dataset_id, settings, values[-1])
    return message, gr.Dropdown(choices=run_choices(studio), value=run_id) if run_id else gr.Dropdown()


def api_values(basic: tuple, advanced: str) -> dict[str, Any]:
    """The form's values from an API call: basic holds BASIC_FIELDS' values (0 for epochs or LoRA rank: the
    default), advanced more FinetuneConfig fields as a JSON object. StudioError if advanced is not one."""
    try:
        extra = json.loads(advanced) if advanced else {}
    except json.JSONDecodeError:
        extra = None
    if not isinstance(extra, dict) or not set(extra) <= set(FORM_FIELDS):
        raise StudioError(f"must be a JSON object of the settings {', '.join(FORM_FIELDS)}", field="advanced")
    given = dict(zip(BASIC_FIELDS, basic, strict=True))
    given |= {name: given[name] or None for name in ("epochs", "lora_rank")}
    return given | extra


def run_state_text(p: dict[str, Any]) -> str:
    text = f"<span class='state-badge {p['status']}'>{p['status']}</span> **{html.escape(p['run']['name'])}**"
    if p["message"]:
        text += f" — {p['message']}"
    start = p["metrics"].start
    if start:
        text += f"\n\n{start.get('device', '')} · {start.get('params', 0):,} parameters, {start.get('trainable', 0):,} trained"
    return text


def refresh(studio: Studio, run_id: str | None, last_seen: Any):
    """The run's state, progress, loss curve, probe answers, log and buttons, and whether the 1-second timer
    ticks (only while the run works: a page with nothing running sends nothing). Nothing is sent when
    nothing changed (the run's row and its files' times are compared before any file is read); while the run
    works and its files are unchanged, only the clock moves."""
    run = studio.store.run(run_id) if run_id else None
    if run is None and last_seen == NO_RUN:
        return (*[gr.skip()] * 8, last_seen, gr.Timer(active=False))
    if run is None:
        hint = "No run yet: choose the settings on the left and press Start."
        empty = (hint, "", loss_chart(loss_frame(Metrics())), pd.DataFrame(columns=SAMPLE_COLUMNS), "")
        off = gr.Button(interactive=False)
        return *empty, off, gr.Button(value="Resume", interactive=False), gr.skip(), NO_RUN, gr.Timer(active=False)
    signature = (run_id, run["status"], run["message"], run["name"], *studio.jobs.file_times(run))
    if signature == last_seen and run["status"] not in WORKING_STATES:  # a queued run keeps the timer going
        return (*[gr.skip()] * 8, last_seen, gr.Timer(active=run["status"] in ACTIVE_STATES))
    p = studio.jobs.progress(run_id)
    if signature == last_seen:  # working, files unchanged: only the clock moves
        return gr.skip(), progress_html(p), *[gr.skip()] * 6, last_seen, gr.Timer(active=True)
    active = p["status"] in ACTIVE_STATES
    again = p["status"] == "cancelled"
    return (
        run_state_text(p),
        progress_html(p),
        loss_chart(loss_frame(p["metrics"])),
        samples_frame(p),
        p["log"],
        gr.Button(interactive=active and p["status"] != "stopping"),
        gr.Button(value="Start again" if again else "Resume", interactive=again or p["status"] in RESUMABLE_STATES),
        # The labels carry each run's state; refreshed only when it changes (an open list would close).
        gr.Dropdown(choices=run_choices(studio)) if not last_seen or last_seen[1:4] != signature[1:4] else gr.skip(),
        signature,
        gr.Timer(active=active),
    )


tick = timer_tick(refresh)


def run_chosen(studio: Studio, run_id: str | None, last_seen: Any):
    """A run is chosen or started: refresh()'s monitor (nothing when this page drew it already) and the
    settings it was started with."""
    run = studio.store.run(run_id) if run_id else None
    return (*refresh(studio, run_id, last_seen), settings_table(studio, run) if run else "")


def api_plan(studio: Studio, base_ref: str, dataset_id: str, basic: tuple, advanced: str) -> str:
    """The /plan endpoint (see api_values)."""
    try:
        given = api_values(basic, advanced)
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"
    return make_plan(studio, base_ref, dataset_id, *[given.get(name) for name in FORM_FIELDS])


def api_runs(studio: Studio) -> list[dict[str, Any]]:
    """Every run: id, name, status, message, base, dataset and settings."""
    keys = ("id", "name", "status", "message", "base_id", "dataset_id", "method", "config", "created")
    return [{k: r[k] for k in keys} for r in studio.store.runs()]


def store_preset(studio: Studio, preset_name: str, settings: dict[str, Any]) -> str:
    """Save settings (FinetuneConfig fields) as a preset named preset_name (the same name replaces it)."""
    name = (preset_name or "").strip()
    if not name or not name.isprintable() or len(name) > 80:
        return "⚠ A preset needs a name: printable, at most 80 characters."
    try:
        FinetuneConfig(**settings)
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"
    studio.store.save_preset(name, settings)
    return f"Saved the preset **{html.escape(name)}**."


def save_preset(studio: Studio, preset_name: str, *values: Any):
    """The form's settings saved as a preset; the presets offered again."""
    message = store_preset(studio, preset_name, form_settings(dict(zip(FORM_FIELDS, values, strict=True))))
    name = (preset_name or "").strip()
    return message, gr.Dropdown(
        choices=list(studio.store.presets()), value=name if name in studio.store.presets() else None
    )


def load_preset(studio: Studio, preset_name: str | None, base_ref: str | None, dataset_id: str | None):
    """The form filled from a saved preset, with its plan. The probe prompts stay the chosen dataset's: a
    preset saved beside another dataset holds that one's."""
    settings = studio.store.presets().get(preset_name or "")
    if settings is None:
        return *[gr.skip()] * (len(FORM_FIELDS) + 1), "⚠ Choose a saved preset."
    values = form_values(settings)
    values[FORM_FIELDS.index("probes")] = default_probes(studio, dataset_id)
    return (
        *values,
        make_plan(studio, base_ref, dataset_id, *values),
        f"Loaded the preset **{html.escape(preset_name)}**.",
    )


# Layout
def layout_form(ui: SimpleNamespace) -> None:
    gr.Markdown("#### Settings")
    ui.base = dropdown(label="Base model", elem_id="ft-base")
    ui.dataset = dropdown(label="Dataset", elem_id="ft-dataset")
    ui.fields = {name: field_component(name) for name in BASIC_FIELDS}
    with gr.Accordion("Advanced settings", open=False, elem_id="ft-advanced"):
        for name in ADVANCED_FIELDS:
            ui.fields[name] = field_component(name)
    with gr.Accordion("Presets", open=False, elem_id="ft-presets"):
        with gr.Row():
            ui.preset = dropdown(label="Saved presets", scale=3, elem_id="ft-preset")
            ui.preset_load = gr.Button("Fill the form", scale=1, elem_classes="inline-button")
        with gr.Row():
            ui.preset_name = gr.Textbox(label="Save these settings as", scale=3, elem_id="ft-preset-name")
            ui.preset_save = gr.Button("Save preset", scale=1, elem_classes="inline-button", elem_id="ft-preset-save")
    ui.name = gr.Textbox(label="Run name (optional)", placeholder="e.g. qa-lora-1", elem_id="ft-name")
    ui.plan = gr.Markdown(elem_classes="plan", elem_id="ft-plan")
    ui.start = gr.Button("Start fine-tuning", variant="primary", elem_id="ft-start")
    ui.start_status = gr.Markdown(elem_id="ft-start-status")


def layout_run(ui: SimpleNamespace) -> None:
    gr.Markdown("#### Run")
    run_controls(ui, "ft")
    with gr.Accordion("Settings of this run", open=False, elem_id="ft-run-settings"):
        ui.run_settings = gr.Markdown(elem_id="ft-run-settings-table")
        ui.reuse = gr.Button("Start a new run from these", size="sm", elem_id="ft-reuse")
    ui.samples = gr.Dataframe(
        headers=SAMPLE_COLUMNS,
        label="Probe answers at the latest evaluations",
        interactive=False,
        wrap=True,
        max_height=260,
        column_widths=["10%", "35%", "55%"],
    )
    ui.log = gr.Textbox(label="Log", lines=8, max_lines=8, autoscroll=True, interactive=False, elem_id="ft-log")


def layout(ui: SimpleNamespace, demo: gr.Blocks) -> None:
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            layout_form(ui)
        with gr.Column(scale=3, min_width=420):
            layout_run(ui)
    ui.timer = gr.Timer(1.0, active=False)  # set going by refresh() while the shown run works
    ui.seen = gr.State(None)  # what this page last drew, so an unchanged run sends nothing
    ui.behind = behind_flag()
    ui.offered = gr.State(None)  # the choices show_tab() last sent (None: the tab was never shown)
    ui.saved = demo.kept_form  # outside the tabs: a tab's components load only when it is first shown


# Events
def kept_form(ui: SimpleNamespace) -> list[gr.components.Component]:
    """SAVE_FORM_JS's inputs: the kept form, then what it keeps."""
    return [ui.saved, ui.base, ui.dataset, *[ui.fields[name] for name in FORM_FIELDS], ui.name]


def keep_form(event: Any, ui: SimpleNamespace) -> None:
    """After event (a handler that fills the form), the browser keeps the form as it now is."""
    event.then(None, kept_form(ui), ui.saved, js=SAVE_FORM_JS)


def wire_form(studio: Studio, tab: gr.Tab, ui: SimpleNamespace) -> None:
    fields = [ui.fields[name] for name in FORM_FIELDS]
    opened = [ui.base, ui.dataset, ui.run, *fields, ui.name, ui.plan]
    # The tab is first shown: the form as this browser left it, then saving starts (a page that never shows
    # the tab costs nothing). Showing it again only refreshes the choices, so an answer that arrives late
    # never overwrites what the user typed meanwhile.
    monitor = [ui.state, ui.bar, ui.curve, ui.samples, ui.log, ui.stop, ui.resume, ui.seen, ui.timer]
    shown = tab.select(
        bound(show_tab, studio),
        [ui.saved, ui.run, ui.offered, ui.seen],
        [*opened, ui.offered, ui.preset, *monitor],
        show_progress="hidden",
        **LIGHT,
    )
    shown.then(None, None, None, js=RESTORED_JS)
    plan = bound(make_plan, studio)
    # .input (the user's changes), not .change: a handler that fills the form returns its plan itself, so
    # filling 20 fields does not ask for 20 plans.
    user_edits = [c.input for c in (ui.base, ui.dataset, *fields)]
    gr.on(user_edits, plan, [ui.base, ui.dataset, *fields], ui.plan, trigger_mode="always_last", **LIGHT)
    # The unsaved form lives in the browser: a script keeps it, no server round trip, after each user edit
    # and after each handler that fills the form (a script on every field's .change would run once a field
    # as the form is filled). A text box's .input misses text entered at once (as the browser test's fill
    # enters it), so text boxes save on .change.
    form = kept_form(ui)
    edits = [c.change if isinstance(c, gr.Textbox) else c.input for c in form[1:]]
    gr.on(edits, None, form, ui.saved, js=SAVE_FORM_JS)
    probes = ui.dataset.input(bound(default_probes, studio), ui.dataset, ui.fields["probes"], **LIGHT)
    keep_form(probes.then(plan, [ui.base, ui.dataset, *fields], ui.plan, **LIGHT), ui)
    ui.fields["method"].input(
        lambda m: gr.Number(visible=m == "lora"), ui.fields["method"], ui.fields["lora_rank"], **LIGHT
    )
    reused = ui.reuse.click(
        bound(from_run, studio),
        ui.run,
        [ui.base, ui.dataset, *fields, ui.name, ui.plan, ui.start_status],
        **LIGHT,
    )
    keep_form(reused, ui)


def wire_presets(studio: Studio, ui: SimpleNamespace) -> None:
    fields = [ui.fields[name] for name in FORM_FIELDS]
    ui.preset_save.click(
        bound(save_preset, studio),
        [ui.preset_name, *fields],
        [ui.start_status, ui.preset],
        **LIGHT,
    )
    loaded = ui.preset_load.click(
        bound(load_preset, studio),
        [ui.preset, ui.base, ui.dataset],
        [*fields, ui.plan, ui.start_status],
        **LIGHT,
    )
    keep_form(loaded, ui)


def wire_run(studio: Studio, ui: SimpleNamespace) -> None:
    fields = [ui.fields[name] for name in FORM_FIELDS]
    ui.start.click(
        bound(form_start, studio),
        [ui.base, ui.dataset, *fields, ui.name],
        [ui.start_status, ui.run],
        **LIGHT,
    )
    monitor = [ui.state, ui.bar, ui.curve, ui.samples, ui.log, ui.stop, ui.resume, ui.run, ui.seen, ui.timer]
    ui.run.change(bound(run_chosen, studio), [ui.run, ui.seen], [*monitor, ui.run_settings], **LIGHT)
    # Reading a run's files is cheap: ticks from many open pages never wait for each other.
    ui.timer.tick(
        bound(tick, studio),
        [ui.run, ui.seen, ui.behind],
        monitor,
        js=ticks_while_shown("ft-state"),
        show_progress="hidden",
        concurrency_limit=None,
        api_name="progress",
    )
    wire_stop_resume(studio, ui, bound(refresh, studio), monitor, api_prefix="")


def api_functions(studio: Studio) -> dict[str, Callable]:
    """The tab's plain API functions by endpoint name (typed signatures: gradio_client shows them)."""

    def presets() -> dict[str, dict[str, Any]]:
        """Every saved preset: its FinetuneConfig settings by name."""
        return studio.store.presets()

    def runs() -> list[dict[str, Any]]:
        """Every run: id, name, status, message, base, dataset and settings."""
        return api_runs(studio)

    def plan(
        base_ref: str,
        dataset_id: str,
        method_value: str = "",
        epochs_v: int = 0,
        steps_v: int = 0,
        lr_v: float = 0.0,
        batch_v: int = 0,
        rank_v: int = 0,
        probes_v: str = "",
        advanced: str = "",
    ) -> str:
        """The plan (device, parameters, steps, memory and time estimates, and the memory in use now) for these
        settings, as Markdown; a setting left at 0 or empty takes the library's default. advanced: more
        FinetuneConfig fields as a JSON object, e.g. {"grad_accum": 2}."""
        basic = (method_value, epochs_v, steps_v, lr_v, batch_v, rank_v, probes_v)
        return api_plan(studio, base_ref, dataset_id, basic, advanced)

    def start(
        base_ref: str,
        dataset_id: str,
        method_value: str = "",
        epochs_v: int = 0,
        steps_v: int = 0,
        lr_v: float = 0.0,
        batch_v: int = 0,
        rank_v: int = 0,
        probes_v: str = "",
        name: str = "",
        advanced: str = "",
    ) -> tuple[str, str | None]:
        """Start a run with these settings (as /plan; name: optional, unique): (what happened, the run's id)."""
        try:
            given = api_values((method_value, epochs_v, steps_v, lr_v, batch_v, rank_v, probes_v), advanced)
            settings = form_settings({k: v for k, v in given.items() if v is not None})
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}", None
        return start_run(studio, base_ref, dataset_id, settings, name)

    def save_preset_api(name: str, settings: str) -> str:
        """Save settings (a JSON object of FinetuneConfig fields, e.g. {"epochs": 2}) as the preset name."""
        try:
            values = json.loads(settings)
            assert isinstance(values, dict)
            chosen = form_settings({k: v for k, v in values.items() if k in FORM_FIELDS})
        except (json.JSONDecodeError, AssertionError, TypeError, ValueError):
            return "⚠ The settings must be a JSON object of FinetuneConfig fields."
        return store_preset(studio, name, chosen)

    return {"plan": plan, "start": start, "runs": runs, "presets": presets, "save_preset": save_preset_api}


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name."""
    ui = SimpleNamespace()
    with gr.Tab(TAB_LABEL, id="finetune") as tab:
        layout(ui, demo)
    ui.tab = tab
    wire_form(studio, tab, ui)
    wire_presets(studio, ui)
    wire_run(studio, ui)
    return api_functions(studio)
