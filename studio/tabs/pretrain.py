"""Pretrain tab: a model from raw text. Pick the sample book or upload a text, choose the tokenizer, the model
size and a budget (steps or minutes), see the plan, start, and watch it learn to write.

The run is `python -m llm pretrain --config <run>/pretrain.json --out <run>` through the same job runner and
queue as fine-tunes (studio.jobs): stop, resume and re-attach after a reload work the same. Each evaluation's
samples (fixed prompts, fixed seed) make the timeline; the finished run is a model like any other (the
Fine-tune tab's base picker, Compare, Models, Inside).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from llm.config import PRESETS, PretrainConfig
from llm.errors import LLMError
from llm.run import Metrics, RunDir
from studio.context import Studio, StudioError, human_size, upload_limit
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
from studio.tabs.data import safe_filename
from studio.tabs.finetune import NO_RUN, clock, device_text, progress_html
from studio.texts import TEXT_SUFFIXES, store_text, text_choices, text_path

COMMAND = "pretrain"
TAB_LABEL = "2 · Pretrain"
NEW_TOKENIZER = "new"
PRESET_HELP = {
    "tiny": "tiny: 2 layers × 64 (seconds; for trying the steps)",
    "micro": "micro: 4 layers × 128 (a book in minutes on a CPU)",
    "mini": "mini: 4 layers × 256",
    "small": "small: 6 layers × 384",
    "gpt2": "gpt2: 12 layers × 768 (a GPU)",
}
BUDGETS = [("Time (minutes)", "time"), ("Steps", "steps")]
VALIDATION_LABEL = "Held out to validate (%)"
TIMELINE_EVALS = 12  # evaluations shown in the timeline, newest first


def presets(cuda: bool) -> list[tuple[str, str]]:
    """The model sizes offered: the large ones only when there is a GPU."""
    return [(PRESET_HELP.get(name, name), name) for name in PRESETS if cuda or name != "gpt2"]


def tokenizer_choices(studio: Studio) -> list[tuple[str, str]]:
    return [("Train a new one on this text", NEW_TOKENIZER)] + [
        (f"Reuse the tokenizer of {label}", ref) for label, ref in studio.model_choices()
    ]


def pretrain_config(
    studio: Studio,
    text_key: str | None,
    tokenizer_ref: str | None,
    vocab_size: float | None,
    preset: str | None,
    budget: str | None,
    minutes: float | None,
    steps: float | None,
    prompts: str | None,
    validation: float | None = None,
) -> PretrainConfig:
    """The form's values as a PretrainConfig; a value left empty takes the library's default. validation: the
    share held out, in percent. StudioError or ConfigError (naming the field) when something cannot be used."""
    settings: dict[str, Any] = {"inputs": [str(text_path(studio, text_key))]}
    if validation is not None:
        if not 0 <= validation < 100:
            raise StudioError(f"{VALIDATION_LABEL} must be from 0 to under 100 (percent), got {validation:g}.")
        settings["val_fraction"] = validation / 100
    if tokenizer_ref and tokenizer_ref != NEW_TOKENIZER:
        settings["tokenizer"] = str(studio.model_dir(tokenizer_ref))
    elif vocab_size:
        settings["vocab_size"] = int(vocab_size)
    if preset:
        settings["preset"] = preset
    settings.update(budget_settings(budget, minutes, steps))
    lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()][:5]
    if lines:
        settings["sample_prompts"] = lines
    return PretrainConfig(**settings)


def budget_settings(budget: str | None, minutes: float | None, steps: float | None) -> dict[str, Any]:
    """max_steps and max_time of the chosen budget: steps, or minutes (a run by the clock); {} for the default."""
    if budget == "steps":
        if not steps or steps <= 0:
            raise StudioError("Steps must be a positive number.")
        return {"max_steps": int(steps), "max_time": 0.0}
    if minutes:
        if minutes <= 0:
            raise StudioError("Minutes must be a positive number.")
        return {"max_time": float(minutes) * 60, "max_steps": 0}
    return {}


def plan_text(plan: dict[str, Any]) -> str:
    shape = plan["shape"]
    budget = f"{plan['max_steps']:,} steps"
    evaluations = f"{plan['evaluations']} evaluations with samples"
    if plan["steps_from_time"]:  # the run follows the clock: its schedule and evaluations go by the time
        budget = f"{clock(plan['max_time'])} of training: about {plan['max_steps']:,} steps"
        evaluations += f", one every {clock(plan['max_time'] / plan['evaluations'])}"
    elif plan["max_time"]:
        budget += f", at most {clock(plan['max_time'])}"
    epochs = f" · about {plan['est_epochs']:.1f} passes over the text" if plan["est_epochs"] else ""
    text = f"{human_size(plan['text_bytes'])} of text" if plan["text_bytes"] else "compressed text"
    return "\n".join(
        f"- {line}"
        for line in [
            f"**Device:** {device_text(plan['device'])}",
            f"**Model:** {plan['params']:,} parameters ({plan['preset']}: {shape['n_layer']} layers × "
            f"{shape['d_model']}, {shape['n_head']} heads, context {shape['context_length']} tokens)",
            f"**Tokenizer:** {html.escape(plan['tokenizer'])} · vocabulary {plan['vocab_size']:,}",
            f"**Text:** {text}, about {plan['est_text_tokens'] or 0:,} tokens; {plan['val_fraction']:.0%} held out to validate",
            f"**Budget:** {budget} of {plan['tokens_per_step']:,} tokens (batch {plan['batch_size']}){epochs} · "
            f"learning rate {plan['lr']:g} · {evaluations}",
            f"**Estimated memory:** {human_size(plan['est_memory_bytes'])} · **estimated time:** "
            f"{clock(plan['est_seconds'])} (about {plan['est_tokens_per_s']:,} tokens/s: {plan['step_seconds']:.2g} s "
            "a step, timed here)",
        ]
    )


def timeline(metrics: Metrics, evals: int = TIMELINE_EVALS) -> list[dict[str, Any]]:
    """The evaluations' samples, newest first: step, losses, bits per byte, and each prompt's text."""
    return [
        {
            "step": r["step"],
            "val_loss": r.get("val_loss"),
            "train_loss": r.get("train_eval_loss"),
            "val_bits_per_byte": r.get("val_bits_per_byte"),
            "samples": [{"prompt": s["prompt"], "text": s["output"]} for s in r.get("samples", [])],
        }
        for r in reversed(metrics.evals[-evals:])
    ]


def timeline_html(entries: list[dict[str, Any]]) -> str:
    """Sample cards, newest first: the prompt in bold, the model's continuation after it (all text escaped)."""
    if not entries:
        return "<div class='pt-empty'>The samples appear here at each evaluation: gibberish first, then words.</div>"

    def number(value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    cards = []
    for e in entries:
        head = (
            f"step <b>{e['step']}</b> · val loss {number(e['val_loss'])} · train loss {number(e['train_loss'])} · "
            f"<b>{number(e['val_bits_per_byte'])}</b> bits per byte"
        )
        texts = "".join(
            "<div class='pt-sample' style='white-space:pre-wrap;margin:2px 0'>"
            f"<b>{html.escape(s['prompt'])}</b>{html.escape(s['text'])}</div>"
            for s in e["samples"]
        )
        cards.append(
            "<div class='pt-card' style='border:1px solid var(--border-color-primary);border-radius:8px;"
            f"padding:6px 10px;margin-bottom:6px'><div class='pt-head' style='font-size:12px;"
            f"color:var(--body-text-color-subdued)'>{head}</div>{texts}</div>"
        )
    return "".join(cards)


def run_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(f"{r['name']} · {r['status']}", r["id"]) for r in studio.store.runs() if r["command"] == COMMAND]


def default_run(studio: Studio) -> str | None:
    runs = [r for r in studio.store.runs() if r["command"] == COMMAND]
    active = [r for r in runs if r["status"] in ACTIVE_STATES and r["status"] != "queued"]
    return (active or runs or [{"id": None}])[0]["id"]


DEFAULTS = PretrainConfig(inputs=["-"])  # the library's defaults, shown in a new form


def show_tab(studio: Studio, *values: Any):
    """The tab is shown, in one event. values: the form (text, tokenizer, vocab, preset, budget, minutes, steps,
    prompts), the run and what the monitor last drew. Returns [text, tokenizer, run, preset, vocab, plan,
    *monitor]: the texts, tokenizers, runs and model sizes as they are now (the page's values kept), the
    plan, and refresh()'s monitor less the run list (it starts the timer again if the run works)."""
    import torch  # whether there is a GPU: torch is imported on first use, not when the studio starts

    *form, run_id, last_seen = values
    texts, tokenizers, runs = text_choices(studio), tokenizer_choices(studio), run_choices(studio)
    form[0], form[1] = keep(form[0], texts), keep(form[1], tokenizers)
    run_id = keep(run_id, runs, default_run(studio))
    state, bar, curve, samples, log, stop, resume, _, seen, timer = refresh(studio, run_id, last_seen)
    return (
        chosen(texts, form[0]),
        chosen(tokenizers, form[1]),
        chosen(runs, run_id),
        gr.Radio(choices=presets(torch.cuda.is_available())),
        gr.Number(visible=form[1] == NEW_TOKENIZER),
        make_plan(studio, *form),
        *(state, bar, curve, samples, log, stop, resume, seen, timer),
    )


def make_plan(studio: Studio, *values) -> str:
    """llm.train.pretrain.plan for the chosen settings, or what is wrong with them."""
    from llm.train import pretrain

    try:
        return plan_text(pretrain.plan(pretrain_config(studio, *values), threads=CHILD_THREADS))
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"


def do_upload(studio: Studio, file: str | None):
    """Check an uploaded text; a usable one is kept in the workspace and chosen."""
    if not file:
        return gr.Dropdown(), gr.File(value=None), ""
    source = Path(file)
    name = safe_filename(source.name)
    try:
        info = store_text(studio, source, name)
    except LLMError as e:
        return gr.Dropdown(), gr.File(value=None), f"⚠ This text cannot be used: {e.message}"
    return (
        gr.Dropdown(choices=text_choices(studio), value=info.key),
        gr.File(value=None),
        f"✓ {html.escape(info.describe())}",
    )


def do_start(studio: Studio, *values):
    """Create a pretraining run and start it (or queue it behind the run that holds the device). values: the
    form as pretrain_config takes it, with the run's name before the validation share (the API's order, so a
    call made before the share existed still names its run)."""
    *settings, name_value, validation = values
    try:
        cfg = pretrain_config(studio, *settings, validation)
        text_name = Path(cfg.inputs[0]).name
        default_name = f"{Path(text_name).stem}-{cfg.preset}-{len(studio.store.runs()) + 1}"
        run_name = (name_value or "").strip()[:80] or default_name
        base_ref = settings[1] if cfg.tokenizer else ""
        run_id = studio.add_run(COMMAND, cfg, run_name, base_ref, f"text:{text_name}", COMMAND)
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}", gr.Dropdown()
    return studio.jobs.submit(run_id), gr.Dropdown(choices=run_choices(studio), value=run_id)


def state_text(p: dict[str, Any]) -> str:
    """The run's state badge, name, message, device and size."""
    text = f"<span class='state-badge {p['status']}'>{p['status']}</span> **{html.escape(p['run']['name'])}**"
    if p["message"]:
        text += f" — {html.escape(p['message'])}"
    start_record = p["metrics"].start
    if start_record:
        text += f"\n\n{start_record.get('device', '')} · {start_record.get('params', 0):,} parameters"
    return text


def refresh(studio: Studio, run_id: str | None, last_seen: Any):
    """The run's state, progress, loss curve, sample timeline and log, and whether the 1-second timer ticks
    (only while the run is queued or works); nothing is sent if nothing changed."""
    if not run_id or studio.store.run(run_id) is None:
        if last_seen == NO_RUN:
            return (*[gr.skip()] * 8, last_seen, gr.Timer(active=False))
        hint = "No pretraining run yet: choose a text and press Start."
        empty = (hint, "", loss_chart(loss_frame(Metrics())), timeline_html([]), "")
        off = gr.Button(interactive=False)
        return *empty, off, off, gr.skip(), NO_RUN, gr.Timer(active=False)
    p = studio.jobs.progress(run_id)
    run_dir = studio.jobs.run_dir(p["run"])
    files = [run_dir.metrics, run_dir.log]
    signature = (run_id, p["status"], p["message"], *(f.stat().st_mtime if f.exists() else 0 for f in files))
    ticking = gr.Timer(active=p["status"] in ACTIVE_STATES)
    if signature == last_seen and p["status"] not in WORKING_STATES:
        return (*[gr.skip()] * 8, last_seen, ticking)
    if signature == last_seen:  # running, files unchanged: only the clock moves
        return state_text(p), progress_html(p), *[gr.skip()] * 6, last_seen, gr.Timer(active=True)
    return (
        state_text(p),
        progress_html(p),
        loss_chart(loss_frame(p["metrics"])),
        timeline_html(timeline(p["metrics"])),
        p["log"],
        gr.Button(interactive=p["status"] in ACTIVE_STATES and p["status"] != "stopping"),
        gr.Button(interactive=can_resume(p["status"], run_dir)),
        gr.Dropdown(choices=run_choices(studio)) if not last_seen or last_seen[1] != p["status"] else gr.skip(),
        signature,
        ticking,
    )


def can_resume(status: str, run_dir: RunDir) -> bool:
    """Whether Resume can help: a stopped or interrupted run, or a failed one that has a checkpoint to go on
    from (one that failed before its first checkpoint would fail again: its settings or text need changing)."""
    return status in RESUMABLE_STATES and (status != "failed" or run_dir.resumable())


tick = timer_tick(refresh)


def layout_form(studio: Studio, ui: SimpleNamespace) -> None:
    """The text, tokenizer, size, budget and prompts; the plan and the start button."""
    gr.Markdown("#### Text and settings")
    ui.text = dropdown(label="Text", elem_id="pt-text")
    ui.upload = gr.File(
        label=f"Upload a text ({', '.join(TEXT_SUFFIXES)}, UTF-8, up to {upload_limit(studio.max_upload_bytes)})",
        file_types=[".txt", ".gz", ".jsonl"],
        height=110,
        elem_id="pt-upload",
    )
    ui.text_status = gr.Markdown(elem_id="pt-text-status")
    ui.tokenizer = dropdown(label="Tokenizer", elem_id="pt-tokenizer")
    ui.vocab = gr.Number(
        DEFAULTS.vocab_size, precision=0, label="Vocabulary size (a new tokenizer)", elem_id="pt-vocab"
    )
    # Every size, narrowed when the tab is shown (whether there is a GPU needs torch imported).
    ui.preset = gr.Radio(presets(cuda=True), value=DEFAULTS.preset, label="Model size", elem_id="pt-preset")
    ui.budget = gr.Radio(BUDGETS, value="time", label="Budget", elem_id="pt-budget")
    with gr.Row():
        ui.minutes = gr.Number(DEFAULTS.max_time / 60, minimum=0, label="Minutes", elem_id="pt-minutes")
        ui.steps = gr.Number(value=300, precision=0, label="Steps", visible=False, elem_id="pt-steps")
    ui.prompts = gr.Textbox(
        "\n".join(DEFAULTS.sample_prompts),
        label="Sample prompts (one a line): continued at every evaluation",
        lines=2,
        elem_id="pt-prompts",
    )
    ui.validation = gr.Number(
        DEFAULTS.val_fraction * 100, label=VALIDATION_LABEL, info="paragraphs kept out of training to score it",
        elem_id="pt-validation",
    )  # fmt: skip
    ui.name = gr.Textbox(label="Run name (optional)", placeholder="e.g. oz-micro", elem_id="pt-name")
    ui.plan = gr.Markdown(elem_classes="plan", elem_id="pt-plan")
    ui.start = gr.Button("Start pretraining", variant="primary", elem_id="pt-start")
    ui.start_status = gr.Markdown(elem_id="pt-start-status")


def layout_run(ui: SimpleNamespace) -> None:
    """The run picker, stop/resume, progress, loss chart, sample timeline and log."""
    gr.Markdown("#### Watch it learn to write")
    run_controls(ui, "pt")
    ui.samples = gr.HTML(elem_id="pt-timeline")
    ui.log = gr.Textbox(label="Log", lines=6, max_lines=6, autoscroll=True, interactive=False, elem_id="pt-log")


def wire(studio: Studio, tab: gr.Tab, ui: SimpleNamespace) -> None:
    form = [ui.text, ui.tokenizer, ui.vocab, ui.preset, ui.budget, ui.minutes, ui.steps, ui.prompts, ui.validation]
    plan = bound(make_plan, studio)
    monitor = [ui.state, ui.bar, ui.curve, ui.samples, ui.log, ui.stop, ui.resume, ui.run, ui.seen, ui.timer]
    # Filled when the tab is shown, not when a page opens (a page that never shows it costs nothing), in one
    # event: every event costs the browser a pass over the whole page's state.
    shown = [ui.text, ui.tokenizer, ui.run, ui.preset, ui.vocab, ui.plan, *[c for c in monitor if c is not ui.run]]
    tab.select(bound(show_tab, studio), [*form, ui.run, ui.seen], shown, show_progress="hidden", **LIGHT)
    # .input (the user's changes), not .change: filling the form asks for one plan, not one a field.
    gr.on([component.input for component in form], plan, form, ui.plan, trigger_mode="always_last", **LIGHT)
    ui.budget.input(
        lambda b: (gr.Number(visible=b == "time"), gr.Number(visible=b == "steps")),
        ui.budget,
        [ui.minutes, ui.steps],
        **LIGHT,
    )
    ui.tokenizer.input(lambda t: gr.Number(visible=t == NEW_TOKENIZER), ui.tokenizer, ui.vocab, **LIGHT)
    uploaded = [ui.text, ui.upload, ui.text_status]
    ui.upload.upload(bound(do_upload, studio), ui.upload, uploaded, api_name="pretrain_upload").then(
        plan, form, ui.plan, **LIGHT
    )
    start = [*form[:-1], ui.name, ui.validation]  # the share last: API calls from before it keep their order
    ui.start.click(bound(do_start, studio), start, [ui.start_status, ui.run], api_name="pretrain_start")
    show = bound(refresh, studio)
    # A run chosen or started: drawn (nothing is sent when the tab's opening drew it already).
    ui.run.change(show, [ui.run, ui.seen], monitor, **LIGHT)
    ui.timer.tick(
        bound(tick, studio),
        [ui.run, ui.seen, ui.behind],
        monitor,
        js=ticks_while_shown("pt-state"),
        show_progress="hidden",
        concurrency_limit=None,
        api_name="pretrain_progress",
    )
    wire_stop_resume(studio, ui, show, monitor, api_prefix=None)


def api_functions(studio: Studio) -> dict[str, Callable]:
    """The tab's plain API functions, registered by name."""

    def api_plan(
        text_key: str,
        tokenizer_ref: str = NEW_TOKENIZER,
        vocab_size: int = 0,
        preset_name: str = "",
        budget_kind: str = "time",
        minutes_value: float = 0.0,
        steps_value: int = 0,
        sample_prompts: str = "",
        validation_percent: float | None = None,
    ) -> str:
        """The plan (device, parameters, tokens per step, steps, memory and time) of a pretraining run, as
        Markdown; a value left at 0 or empty (validation_percent: None) takes the library's default."""
        values = (text_key, tokenizer_ref, vocab_size, preset_name, budget_kind, minutes_value, steps_value)
        return make_plan(studio, *values, sample_prompts, validation_percent)

    def api_timeline(run_id: str) -> list[dict[str, Any]]:
        """A pretraining run's evaluations, newest first: step, val_loss, train_loss, val_bits_per_byte and
        samples (prompt, text)."""
        run = studio.store.run(run_id)
        if run is None:
            raise gr.Error(f"No run {run_id!r}.")
        return timeline(studio.jobs.run_dir(run).read_metrics(), evals=10**6)

    def api_texts() -> list[dict[str, str]]:
        """The texts to pretrain on: key and label."""
        return [{"key": key, "label": label} for label, key in text_choices(studio)]

    return {"pretrain_plan": api_plan, "pretrain_timeline": api_timeline, "pretrain_texts": api_texts}


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name."""
    ui = SimpleNamespace()
    with gr.Tab(TAB_LABEL, id="pretrain") as tab:
        gr.Markdown(
            "Train a model **from scratch** on a text: it learns to write like it. Start with the sample book "
            "(5 minutes on a laptop CPU gives words), or upload your own text."
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                layout_form(studio, ui)
            with gr.Column(scale=3, min_width=420):
                layout_run(ui)
        ui.timer = gr.Timer(1.0, active=False)  # set going by refresh() while the shown run is queued or works
        ui.seen = gr.State(None)  # what this page last drew, so an unchanged run sends nothing
        ui.behind = behind_flag()
    wire(studio, tab, ui)
    return api_functions(studio)
