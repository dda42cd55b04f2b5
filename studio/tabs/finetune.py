"""Fine-tune tab: choose a base model, a dataset and the settings, see the plan, start, and watch the run.

The run is a child process (studio.jobs); this tab only reads its state from SQLite and its files, every
second, so a reloaded page re-attaches to a running job. The form's fields are FinetuneConfig's fields (its
defaults and help text: studio.tabs.form); the page keeps the unsaved form in the browser (gr.BrowserState), so
a reload does not lose it. Every handler returns {part: value} (studio.tabs.keyed); the form's events take it as
one {field: value}.
"""

from __future__ import annotations

import html
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from llm.config import FinetuneConfig
from llm.errors import LLMError
from llm.run import info_version
from studio.context import Studio, human_size, memory_now, plural
from studio.datasets import file_version
from studio.jobs import CHILD_THREADS, field_label
from studio.tabs import (
    EDIT,
    LIGHT,
    bound,
    chosen,
    dropdown,
    folded,
    html_part,
    keep,
    keyed,
    newest,
    outputs,
    quiet,
    when_changed,
)
from studio.tabs import runs as run_tab
from studio.tabs.form import (
    ADVANCED_FIELDS,
    BASIC_FIELDS,
    FORM_FIELDS,
    beyond_form,
    checked,
    field_component,
    form_settings,
    form_values,
    parse_settings,
)

SAMPLE_COLUMNS = ["step", "prompt", "answer"]
TAB_LABEL = "3 · Fine-tune"
PLAN_KIND = "finetune plan"  # the kind of the tab's plans (tabs.newest)
FORM_STORAGE_KEY = "studio-finetune-form"  # the browser's localStorage key of the unsaved form
FORM = ("base", "dataset", *FORM_FIELDS, "name", "extra")  # what the form's events read


def probe_answers(p: dict[str, Any] | None, evals: int = 3) -> list[dict[str, Any]]:
    """The probe prompts' answers at the last few evaluations, newest first: step, prompt, answer (none
    without a run)."""
    return [
        {"step": record["step"], "prompt": sample["prompt"], "answer": sample["output"]}
        for record in reversed(p["metrics"].evals[-evals:] if p else [])
        for sample in record.get("samples", [])
    ]


def probe_answers_html(p: dict[str, Any] | None) -> str:
    """probe_answers(p) as the tab shows them: a table (every text escaped), under a title."""
    rows = probe_answers(p)
    title = "<div class='chart-title'>Probe answers at the latest evaluations</div>"
    if not rows:
        return f"{title}<div class='chart-empty'>The probe prompts' answers appear here at each evaluation.</div>"
    head = "".join(f"<th>{name}</th>" for name in SAMPLE_COLUMNS)
    cells = ["".join(f"<td>{html.escape(str(row[name]))}</td>" for name in SAMPLE_COLUMNS) for row in rows]
    body = "".join(f"<tr>{row}</tr>" for row in cells)
    return f"{title}<div class='probe-answers'><table><tr>{head}</tr>{body}</table></div>"


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


def device_text(device: str) -> str:
    """The plan's device as the child will use it: on a CPU, the threads it gets (the studio keeps the rest)."""
    if device.startswith("cpu"):
        return f"cpu ({plural(CHILD_THREADS, 'thread')} for training, the rest kept for the studio)"
    return device


def step_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"


def plan_text(plan: dict[str, Any]) -> str:
    share = plan["trainable_fraction"]
    scored = plan["eval_rows"] < plan["val_examples"]
    return "\n".join(
        f"- {line}"
        for line in [
            f"**Device:** {device_text(plan['device'])}",
            f"**Parameters:** {plan['params']:,} · trained: {plan['trainable_params']:,} ({share:.1%})",
            f"**Examples:** {plan['train_examples']} to train on, {plan['val_examples']} held out to validate"
            + (f" (each evaluation scores {plan['eval_rows']} of them)" if scored else ""),
            f"**Steps:** {plan['max_steps']} ({plan['epochs']:.1f} epochs of {plan['steps_per_epoch']}, "
            f"batch {plan['batch_size']}) · learning rate {plan['lr']:g}",
            f"**Estimated memory:** {human_size(plan['est_memory_bytes'])} · **estimated time:** "
            f"{run_tab.clock(plan['est_seconds'])} ({step_text(plan['est_step_seconds'])} a step, timed on this "
            "device, plus the evaluations; less if the validation loss stops improving and the run stops early)",
        ]
    )


def settings_table(studio: Studio, run: dict[str, Any] | None) -> dict[str, str]:
    """{run_settings}: the settings a run was started with (its FinetuneConfig), as a Markdown table."""
    if run is None:
        return {"run_settings": ""}
    config = run["config"]
    dataset = studio.store.dataset(run["dataset_id"])
    rows = [
        ("Base model", studio.model_label(run["base_id"])),
        ("Dataset", dataset["name"] if dataset else f"{Path(config.get('data', '')).name} (deleted)"),
    ]
    rows += [(field_label(name), config.get(name, "default")) for name in FORM_FIELDS if name != "probes"]
    rows.append(("Probe prompts", " · ".join(config.get("probes", [])) or "none"))
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {label} | {html.escape(str('default' if v is None else v))} |" for label, v in rows]
    return {"run_settings": "\n".join(lines)}


VIEW = run_tab.RunView(
    hint="No run yet: choose the settings on the left and press Start.",
    samples=probe_answers_html,
    records=probe_answers,
    runs=lambda studio: studio.store.runs(),
    again=True,
    chosen=settings_table,
    chosen_parts=("run_settings",),
)


class PlanCache:
    """Plans by (settings, file versions): the plan is redrawn at every change of a field, and four open
    pages ask for the same plan. A new combination of settings reads and encodes nothing: the dataset cache
    (studio.datasets) keeps the file's encoding for the base. One plan is computed at a time: pages opening
    together wait for the first one's plan instead of each computing it (on a busy CPU, in parallel, they all
    took as long as the four together)."""

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

        versions = (file_version(cfg.data), info_version(Path(cfg.base)))
        key = json.dumps(cfg.to_dict(), sort_keys=True) + str(versions)
        if (text := self.cached(key)) is not None:
            return text
        with self.computing:
            if (text := self.cached(key)) is not None:  # another page computed it while this one waited
                return text
            prep = finetune.prepare(cfg, *studio.task_files.encoded(cfg))
            text = plan_text(finetune.plan(prep, threads=CHILD_THREADS))
            with self.lock:
                self.plans[key] = text
                while len(self.plans) > self.size:
                    self.plans.popitem(last=False)
        return text


PLANS = PlanCache()


def plan_markdown(studio: Studio, base_ref: str | None, dataset_id: str | None, settings: dict[str, Any]) -> str:
    """The plan for these settings, or what is wrong with them; then what the device has in use now."""
    if not base_ref:
        return f"⚠ {studio.base_missing() or 'Choose a base model.'}"
    if not dataset_id:
        return "⚠ Choose a dataset (Data tab: pick a sample or upload one)."
    try:
        text = PLANS.get(studio, studio.finetune_config(base_ref, dataset_id, checked(settings)))
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"
    return f"{text}\n- **In use now:** {memory_now()}"


def form_plan(studio: Studio, form: dict[str, Any]) -> dict[str, str]:
    """{plan} for the form as it is."""
    try:
        settings = form["extra"] | form_settings(form)
    except LLMError as e:
        return {"plan": f"⚠ {e.worded(field_label(e.field))}"}
    return {"plan": plan_markdown(studio, form["base"], form["dataset"], settings)}


def default_probes(studio: Studio, dataset_id: str | None) -> str:
    """The first distinct prompts of the rows a run holds out: answers to them show what the model learned."""
    from llm.data import tasks

    row = studio.store.dataset(dataset_id) if dataset_id else None
    if row is None:
        return ""
    try:
        data = studio.task_files.read(studio.store.abs(row["path"]), row["format"], row["mapping"])
    except LLMError:
        return ""
    return "\n".join(probe_prompts(tasks.split_examples(data)[1].examples))


def filled(studio: Studio, base_ref: str | None, dataset_id: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The form filled with these settings (the fields they give, the others at their defaults, the rest riding
    along in extra) and its plan."""
    values = form_values(settings)
    return {**values, "extra": beyond_form(settings), "plan": plan_markdown(studio, base_ref, dataset_id, settings)}


def form_choices(studio: Studio) -> tuple[list, list, list, list]:
    """What the tab's four dropdowns offer: base models, datasets, runs, presets."""
    return (
        studio.model_choices(),
        studio.dataset_choices(),
        run_tab.run_choices(studio.store.runs()),
        list(studio.store.presets()),
    )


def open_form(studio: Studio, saved: Any, run_id: str | None, choices: tuple[list, list, list, list]):
    """The tab is first shown: these choices (form_choices()) with run_id chosen, and the form as this browser
    left it (else the defaults and the newest run's base and dataset) with its plan."""
    saved = saved if isinstance(saved, dict) else {}
    bases, datasets, runs, presets = choices
    latest = (studio.store.runs() or [{}])[0]
    base_ref = keep(saved.get("base"), bases, latest.get("base_id"))
    dataset_id = keep(saved.get("dataset"), datasets, latest.get("dataset_id"))
    settings = saved_settings(saved)
    form = filled(studio, base_ref, dataset_id, settings)
    if "probes" not in settings:
        form["probes"] = default_probes(studio, dataset_id)
    return {
        **form,
        "base": gr.Dropdown(choices=bases, value=base_ref),
        "dataset": gr.Dropdown(choices=datasets, value=dataset_id),
        "run": chosen(runs, run_id),
        "name": saved.get("name", ""),
        "preset": gr.Dropdown(choices=presets),
    }


def show_tab(studio: Studio, saved: Any, run_id: str | None, offered: tuple | None, last_seen: Any):
    """The tab is shown. The first time (offered is None: the render that builds the body, which is made as
    this answer): the form as this browser left it and its run. After that only the choices, and only those
    that changed since they were last offered (nothing of the form: an answer that arrives late must not
    overwrite what the user typed meanwhile). Then the run's view (nothing when unchanged; it starts the timer
    again if the run works) and what was offered."""
    choices = form_choices(studio)
    if offered is None:
        run_id = keep(run_id, choices[2], run_tab.default_run(studio.store.runs()))
        shown = open_form(studio, saved, run_id, choices)
    else:
        names = ("base", "dataset", "run", "preset")
        shown = {n: gr.Dropdown(choices=c) for n, c, o in zip(names, choices, offered, strict=True) if c != o}
    view = VIEW.refresh(studio, run_id, last_seen)
    view.pop("run", None)  # the run picker is the form's to set
    return {**view, **shown, "offered": choices}


def first_showing(studio: Studio, saved: Any) -> dict[str, Any]:
    """show_tab() for a page that first shows the tab (saved: the form this browser kept): what the body is
    made as when the page builds it."""
    return show_tab(studio, saved, None, None, None)


def stamp(studio: Studio, run_id: str | None) -> tuple[str, bool]:
    """The tab's stamp (tabs.when_changed) for the page's run: the form's choices and the run's state."""
    return run_tab.run_stamp(studio, run_id, form_choices(studio))


def warm_up(studio: Studio) -> None:
    """Import torch and compute the plan a fresh page opens with, once, before the pages ask for it."""
    open_form(studio, {}, None, form_choices(studio))


def from_run(studio: Studio, run_id: str | None):
    """'Start a new run from these': the selected run's base, dataset and settings in the form (a base model
    or dataset that is gone is not put in the form: the status says so)."""
    run = studio.store.run(run_id) if run_id else None
    if run is None:
        return {"start_status": "Choose a run first."}
    bases, datasets = form_choices(studio)[:2]
    base_ok, data_ok = run["base_id"] in [r for _, r in bases], run["dataset_id"] in [d for _, d in datasets]
    settings = {k: v for k, v in run["config"].items() if k in FinetuneConfig.__dataclass_fields__}
    form = filled(studio, run["base_id"] if base_ok else None, run["dataset_id"] if data_ok else None, settings)
    note = f"The form holds **{html.escape(run['name'])}**'s settings: change what you like, then press Start."
    gone = [what for what, ok in (("base model", base_ok), ("dataset", data_ok)) if not ok]
    if gone:
        form.pop("plan")
        note += f" Its {' and '.join(gone)} no longer exist{'s' if len(gone) == 1 else ''}: choose another."
    picked = {"base": gr.Dropdown(value=run["base_id"])} if base_ok else {}
    picked |= {"dataset": gr.Dropdown(value=run["dataset_id"])} if data_ok else {}
    return {**form, **picked, "name": "", "start_status": note}


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
    try:
        return form_settings(fields) if isinstance(fields, dict) else {}
    except LLMError:
        return {}


def start_run(studio: Studio, base_ref: str | None, dataset_id: str | None, settings: dict, name: str):
    """Create a run and start it (or queue it behind the run that holds the device): (what happened, the
    run's id or None)."""
    if not base_ref or not dataset_id:
        return "⚠ Choose a base model and a dataset first.", None
    try:  # bad settings are refused here, not in the child
        run_id = studio.create_run(base_ref, dataset_id, checked(settings), name or "")
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}", None
    return studio.jobs.submit(run_id), run_id


def form_start(studio: Studio, form: dict[str, Any]):
    """{start_status, run}: Start pressed: a run with the form's settings, chosen in the run picker."""
    try:
        settings = form["extra"] | form_settings(form)
    except LLMError as e:
        return {"start_status": f"⚠ {e.worded(field_label(e.field))}"}
    message, run_id = start_run(studio, form["base"], form["dataset"], settings, form["name"])
    picked = {"run": gr.Dropdown(choices=run_tab.run_choices(studio.store.runs()), value=run_id)} if run_id else {}
    return {"start_status": message, **picked}


def store_preset(studio: Studio, preset_name: str, settings: dict[str, Any]) -> str:
    """Save settings (checked by FinetuneConfig, every key kept) as a preset named preset_name (the same name
    replaces it)."""
    name = (preset_name or "").strip()
    if not name or not name.isprintable() or len(name) > 80:
        return "⚠ A preset needs a name: printable, at most 80 characters."
    try:
        studio.store.save_preset(name, checked(settings))
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"
    return f"Saved the preset **{html.escape(name)}**."


def save_preset(studio: Studio, form: dict[str, Any]):
    """{start_status, preset}: the form's settings (and those riding along) saved as a preset."""
    try:
        message = store_preset(studio, form["preset_name"], form["extra"] | form_settings(form))
    except LLMError as e:
        return {"start_status": f"⚠ {e.worded(field_label(e.field))}"}
    name, presets = (form["preset_name"] or "").strip(), studio.store.presets()
    return {
        "start_status": message,
        "preset": gr.Dropdown(choices=list(presets), value=name if name in presets else None),
    }


def load_preset(studio: Studio, form: dict[str, Any]):
    """The form filled from the saved preset, with its plan. The probe prompts stay the chosen dataset's: a
    preset saved beside another dataset holds that one's."""
    settings = studio.store.presets().get(form["preset"] or "")
    if settings is None:
        return {"start_status": "⚠ Choose a saved preset."}
    shown = filled(studio, form["base"], form["dataset"], settings)
    note = f"Loaded the preset **{html.escape(form['preset'])}**."
    if shown["extra"]:
        note += f" It also sets {html.escape(', '.join(f'{k} = {v}' for k, v in shown['extra'].items()))}."
    return {**shown, "probes": default_probes(studio, form["dataset"]), "start_status": note}


# Every answer that draws the plan is one of the page's plans (tabs.newest): one asked first but answered after a
# newer one (a plan after a dataset pick waits for its probes) draws no plan.
asked_plan = newest(form_plan, PLAN_KIND, ("plan",))
filled_from_run = newest(from_run, PLAN_KIND, ("plan",))
filled_from_preset = newest(load_preset, PLAN_KIND, ("plan",))


# Layout
def layout_form(ui: SimpleNamespace) -> None:
    gr.Markdown("#### Settings")
    ui.base = dropdown(label="Base model", elem_id="ft-base")
    ui.dataset = dropdown(label="Dataset", elem_id="ft-dataset")
    ui.fields = {name: field_component(name) for name in BASIC_FIELDS}
    with folded("Advanced settings", elem_id="ft-advanced"):
        for name in ADVANCED_FIELDS:
            ui.fields[name] = field_component(name)
    with folded("Presets", elem_id="ft-presets"):
        with gr.Row():
            ui.preset = dropdown(label="Saved presets", scale=3, elem_id="ft-preset")
            ui.preset_load = gr.Button("Fill the form", scale=1, elem_classes="inline-button")
        with gr.Row():
            ui.preset_name = gr.Textbox(label="Save these settings as", scale=3, elem_id="ft-preset-name", **EDIT)
            ui.preset_save = gr.Button("Save preset", scale=1, elem_classes="inline-button", elem_id="ft-preset-save")
    ui.name = gr.Textbox(label="Run name (optional)", placeholder="e.g. qa-lora-1", elem_id="ft-name", **EDIT)
    ui.plan = gr.Markdown(elem_classes="plan", elem_id="ft-plan")
    ui.start = gr.Button("Start fine-tuning", variant="primary", elem_id="ft-start")
    ui.start_status = gr.Markdown(elem_id="ft-start-status")
    ui.extra = gr.State({})  # settings the form has no field for (from a preset or a run): they ride along


def layout_run(ui: SimpleNamespace) -> None:
    gr.Markdown("#### Run")
    run_tab.run_controls(ui, "ft")
    with folded("Settings of this run", elem_id="ft-run-settings"):
        ui.run_settings = gr.Markdown(elem_id="ft-run-settings-table")
        ui.reuse = gr.Button("Start a new run from these", size="sm", elem_id="ft-reuse")
    ui.samples = html_part(probe_answers_html(None), elem_id="ft-samples")
    ui.log = gr.Textbox(label="Log", lines=8, max_lines=8, autoscroll=True, interactive=False, elem_id="ft-log")


def layout(ui: SimpleNamespace, demo: gr.Blocks) -> None:
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            layout_form(ui)
        with gr.Column(scale=3, min_width=420):
            layout_run(ui)
    run_tab.watch_state(ui)
    ui.offered = gr.State(None)  # the choices show_tab() last sent (None: the tab was never shown)
    ui.saved = demo.kept_form  # outside the tabs: a tab's components load only when it is first shown


# Events
def kept_form(ui: SimpleNamespace) -> list[gr.components.Component]:
    """SAVE_FORM_JS's inputs: the kept form, then what it keeps."""
    return [ui.saved, ui.base, ui.dataset, *[ui.fields[name] for name in FORM_FIELDS], ui.name]


def keep_form(event: Any, ui: SimpleNamespace) -> None:
    """After event (a handler that fills the form), the browser keeps the form as it now is."""
    event.then(None, kept_form(ui), ui.saved, js=SAVE_FORM_JS)


def wire_form(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    fields = [ui.fields[name] for name in FORM_FIELDS]
    form = set(outputs(ui, *FORM))
    # The body is built already filled (show_tab's first showing): the form as this browser left it, so saving
    # starts once it is drawn. Showing the tab again (when its stamp changed) only refreshes the choices, so an
    # answer that arrives late never overwrites what the user typed meanwhile.
    demo.load(None, None, None, js=RESTORED_JS)
    shown = outputs(ui, *FORM, "plan", "preset", "offered", *VIEW.parts())
    opened = [ui.saved, ui.run, ui.offered, ui.seen]
    shown_again = when_changed(demo, tab, "finetune", [ui.run], built=True, timer=ui.timer).change
    shown_again(keyed(show_tab, studio, ui), opened, shown, **quiet(demo))
    plan = keyed(asked_plan, studio, ui)
    # .input (the user's changes), not .change: a handler that fills the form returns its plan itself, so
    # filling 20 fields does not ask for 20 plans.
    user_edits = [c.input for c in (ui.base, ui.dataset, *fields)]
    gr.on(user_edits, plan, form, ui.plan, trigger_mode="always_last", **quiet(demo))
    # The unsaved form lives in the browser: a script keeps it, no server round trip, after each user edit
    # and after each handler that fills the form (a script on every field's .change would run once a field
    # as the form is filled). A text box's .input misses text entered at once (as the browser test's fill
    # enters it), so text boxes save on .change.
    kept = kept_form(ui)
    gr.on([c.change if isinstance(c, gr.Textbox) else c.input for c in kept[1:]], None, kept, ui.saved, js=SAVE_FORM_JS)
    probes = ui.dataset.input(lambda d: default_probes(studio, d), ui.dataset, ui.fields["probes"], **LIGHT)
    keep_form(probes.then(plan, form, ui.plan, **quiet(demo)), ui)
    method, rank = ui.fields["method"], ui.fields["lora_rank"]
    method.input(lambda m: gr.Number(visible=m == "lora"), method, rank, **LIGHT)
    filled_form = outputs(ui, *FORM, "plan", "start_status")
    keep_form(ui.reuse.click(keyed(filled_from_run, studio, ui), ui.run, filled_form, **LIGHT), ui)
    ui.preset_save.click(keyed(save_preset, studio, ui), form | {ui.preset_name}, [ui.start_status, ui.preset], **LIGHT)
    loaded = ui.preset_load.click(keyed(filled_from_preset, studio, ui), form | {ui.preset}, filled_form, **LIGHT)
    keep_form(loaded, ui)
    ui.start.click(keyed(form_start, studio, ui), form, [ui.start_status, ui.run], **LIGHT)


def api_functions(studio: Studio) -> dict[str, Callable]:
    """The tab's plain API functions by endpoint name (typed signatures: gradio_client shows them)."""

    def presets() -> dict[str, dict[str, Any]]:
        """Every saved preset: its FinetuneConfig settings by name."""
        return studio.store.presets()

    def runs() -> list[dict[str, Any]]:
        """Every run: id, name, status, message, base, dataset and settings."""
        keys = ("id", "name", "status", "message", "base_id", "dataset_id", "method", "config", "created")
        return [{k: r[k] for k in keys} for r in studio.store.runs()]

    def plan(base_ref: str, dataset_id: str, settings: str = "{}") -> str:
        """The plan (device, parameters, steps, memory and time estimates, and the memory in use now) as
        Markdown. settings: one JSON object of FinetuneConfig fields, e.g. {"epochs": 2, "lr": 0.001} (a field
        left out takes the library's default; the base model and the dataset are chosen by the first two)."""
        try:
            return plan_markdown(studio, base_ref, dataset_id, parse_settings(settings))
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}"

    def start(base_ref: str, dataset_id: str, settings: str = "{}", name: str = "") -> tuple[str, str | None]:
        """Start a run with these settings (as /plan; name: optional, unique): (what happened, the run's id)."""
        try:
            return start_run(studio, base_ref, dataset_id, parse_settings(settings), name)
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}", None

    def save_preset_api(name: str, settings: str) -> str:
        """Save settings (one JSON object of FinetuneConfig fields, e.g. {"epochs": 2}; every one is kept) as
        the preset name."""
        try:
            return store_preset(studio, name, parse_settings(settings))
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}"

    return {"plan": plan, "start": start, "runs": runs, "presets": presets, "save_preset": save_preset_api}


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab (once shown) and wire its events; returns the plain API functions to register by name."""
    demo.stamps["finetune"] = bound(stamp, studio)
    tab, first_view = (TAB_LABEL, "finetune", "ft"), lambda ui, saved: first_showing(studio, saved)
    run_tab.run_page(studio, demo, tab, lambda ui: layout(ui, demo), wire_form, VIEW, first_view, (demo.kept_form,))
    return api_functions(studio) | run_tab.watch_api(studio, VIEW, "")
