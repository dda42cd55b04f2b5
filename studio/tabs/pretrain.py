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
from gradio.data_classes import FileData

from llm.config import PRESETS, PretrainConfig
from llm.errors import ConfigError, LLMError
from llm.run import Metrics
from studio.context import Studio, human_size, upload_limit
from studio.jobs import CHILD_THREADS, field_label
from studio.tabs import (
    EDIT,
    LIGHT,
    bound,
    chosen,
    component,
    dropdown,
    html_part,
    json_object,
    keep,
    keyed,
    newest,
    number,
    outputs,
    plain,
    quiet,
    when_changed,
)
from studio.tabs import runs as run_tab
from studio.tabs.data import safe_filename
from studio.tabs.finetune import device_text
from studio.texts import TEXT_SUFFIXES, store_text, text_choices, text_path

PLAN_KIND = "pretrain plan"  # the kind of the tab's plans (tabs.newest)
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
TIMELINE_EVALS = 12  # evaluations shown in the timeline, newest first


INTRO = (
    "Train a model **from scratch** on a text: it learns to write like it. Start with the sample book "
    "(5 minutes on a laptop CPU gives words), or upload your own text."
)


def presets(cuda: bool) -> list[tuple[str, str]]:
    """The model sizes offered: the large ones only when there is a GPU."""
    return [(PRESET_HELP.get(name, name), name) for name in PRESETS if cuda or name != "gpt2"]


def tokenizer_choices(studio: Studio) -> list[tuple[str, str]]:
    return [("Train a new one on this text", NEW_TOKENIZER)] + [
        (f"Reuse the tokenizer of {label}", ref) for label, ref in studio.model_choices()
    ]


def form_settings(form: dict[str, Any]) -> dict[str, Any]:
    """The form's values (by name) as PretrainConfig fields, less the text and the tokenizer: the vocabulary
    (for a new tokenizer), the model size, the budget (steps, or minutes: a run by the run_tab.clock), the held-out
    share and the sample prompts. A value left empty takes the library's default; PretrainConfig checks the
    rest."""
    settings: dict[str, Any] = {"preset": form["preset"]} if form["preset"] else {}
    if form["tokenizer"] in (None, NEW_TOKENIZER) and form["vocab"]:
        settings["vocab_size"] = number(form["vocab"], int, "vocab_size")
    if form["budget"] == "steps":
        settings.update(max_steps=number(form["steps"] or 0, int, "max_steps"), max_time=0.0)
    elif form["minutes"]:
        settings.update(max_time=number(form["minutes"], float, "max_time") * 60, max_steps=0)
    if form["validation"] is not None:
        settings["val_fraction"] = number(form["validation"], float, "val_fraction")
    lines = [line.strip() for line in (form["prompts"] or "").splitlines() if line.strip()][:5]
    return settings | ({"sample_prompts": lines} if lines else {})


def pretrain_config(studio: Studio, text_key: str | None, tokenizer_ref: str | None, settings: dict[str, Any]):
    """The PretrainConfig of a text, a tokenizer (a model ref, or NEW_TOKENIZER) and settings (PretrainConfig
    fields; from_dict checks each one's type and range). StudioError or ConfigError, naming the field, when
    something cannot be used."""
    if {"inputs", "tokenizer"} & set(settings):
        raise ConfigError("are chosen in the studio (the text and the tokenizer), not in the settings")
    chosen = {"inputs": [str(text_path(studio, text_key))]}
    if tokenizer_ref and tokenizer_ref != NEW_TOKENIZER:
        chosen["tokenizer"] = str(studio.model_dir(tokenizer_ref))
    return PretrainConfig.from_dict({**settings, **chosen})


def plan_text(plan: dict[str, Any]) -> str:
    shape = plan["shape"]
    budget = f"{plan['max_steps']:,} steps"
    evaluations = f"{plan['evaluations']} evaluations with samples"
    if plan["steps_from_time"]:  # the run follows the run_tab.clock: its schedule and evaluations go by the time
        budget = f"{run_tab.clock(plan['max_time'])} of training: about {plan['max_steps']:,} steps"
        evaluations += f", one every {run_tab.clock(plan['max_time'] / plan['evaluations'])}"
    elif plan["max_time"]:
        budget += f", at most {run_tab.clock(plan['max_time'])}"
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
            f"{run_tab.clock(plan['est_seconds'])} (about {plan['est_tokens_per_s']:,} tokens/s: {plan['step_seconds']:.2g} s "
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


def pretrain_runs(studio: Studio) -> list[dict[str, Any]]:
    return [r for r in studio.store.runs() if r["command"] == COMMAND]


DEFAULTS = PretrainConfig(inputs=["-"])  # the library's defaults, shown in a new form


FORM = ("text", "tokenizer", "vocab", "preset", "budget", "minutes", "steps", "prompts", "validation")  # the form


def samples_html(p: dict[str, Any] | None) -> str:
    """The timeline of a run's samples (jobs.progress() p; None: no run yet)."""
    return timeline_html(timeline(p["metrics"]) if p else [])


VIEW = run_tab.RunView(
    hint="No pretraining run yet: choose a text and press Start.",
    samples=samples_html,
    runs=pretrain_runs,
)


def stamp(studio: Studio, run_id: str | None) -> tuple[str, bool]:
    """The tab's stamp (tabs.when_changed) for the page's run: the texts, tokenizers and runs offered and the
    run's state."""
    offered = (text_choices(studio), tokenizer_choices(studio), run_tab.run_choices(pretrain_runs(studio)))
    return run_tab.run_stamp(studio, run_id, offered)


def first_view(studio: Studio, ui: SimpleNamespace) -> dict[str, Any]:
    """show_tab() for the form as laid out: what the body is made as when a page first builds it."""
    return show_tab(studio, {name: component(ui, name).value for name in (*FORM, "run", "seen")})


def show_tab(studio: Studio, form: dict[str, Any]):
    """The tab is shown, in one event: the texts, tokenizers, runs and model sizes as they are now (the page's
    choices kept), the plan, and the run's view (it starts the timer again if the run works)."""
    import torch  # whether there is a GPU: torch is imported on first use, not when the studio starts

    texts, tokenizers, runs = (
        text_choices(studio),
        tokenizer_choices(studio),
        run_tab.run_choices(pretrain_runs(studio)),
    )
    form = form | {"text": keep(form["text"], texts), "tokenizer": keep(form["tokenizer"], tokenizers)}
    run_id = keep(form["run"], runs, run_tab.default_run(pretrain_runs(studio)))
    view = VIEW.refresh(studio, run_id, form["seen"])
    return {
        **view,
        "text": chosen(texts, form["text"]),
        "tokenizer": chosen(tokenizers, form["tokenizer"]),
        "run": chosen(runs, run_id),
        "preset": gr.Radio(choices=presets(torch.cuda.is_available())),
        "vocab": gr.Number(visible=form["tokenizer"] == NEW_TOKENIZER),
        **make_plan(studio, form),
    }


def plan_markdown(studio: Studio, text_key: str | None, tokenizer_ref: str | None, settings: dict[str, Any]) -> str:
    """llm.train.pretrain.plan for these settings, or what is wrong with them."""
    from llm.train import pretrain

    try:
        return plan_text(
            pretrain.plan(pretrain_config(studio, text_key, tokenizer_ref, settings), threads=CHILD_THREADS)
        )
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}"


def make_plan(studio: Studio, form: dict[str, Any]) -> dict[str, str]:
    """{plan} of the form as it is."""
    try:
        settings = form_settings(form)
    except LLMError as e:
        return {"plan": f"⚠ {e.worded(field_label(e.field))}"}
    return {"plan": plan_markdown(studio, form["text"], form["tokenizer"], settings)}


# Every answer that draws the plan is one of the page's plans (tabs.newest): one asked first but answered after a
# newer one (a plan times a training step: seconds on a busy machine) draws none of the form it was asked with.
# A refill so overtaken clears the stamp instead, so the page sends it again with the form as it is now.
FORM_SHOWN = ("text", "tokenizer", "preset", "vocab", "plan")  # the parts of the form a refill draws
asked_plan = newest(make_plan, PLAN_KIND, ("plan",))
refill = newest(show_tab, PLAN_KIND, FORM_SHOWN, {"stamp": ""})


def do_upload(studio: Studio, file: str | None):
    """{text, upload, text_status}: an uploaded text checked; a usable one is kept in the workspace and chosen."""
    if not file:
        return {"text_status": ""}
    source = Path(file)
    try:
        info = store_text(studio, source, safe_filename(source.name))
    except LLMError as e:
        return {"upload": gr.File(value=None), "text_status": f"⚠ This text cannot be used: {html.escape(str(e))}"}
    return {
        "text": gr.Dropdown(choices=text_choices(studio), value=info.key),
        "upload": gr.File(value=None),
        "text_status": f"✓ {html.escape(info.describe())}",
    }


def start_run(studio: Studio, text_key: str | None, tokenizer_ref: str | None, settings: dict, name: str):
    """Create a pretraining run and start it (or queue it behind the run that holds the device): (what
    happened, the run's id or None)."""
    try:
        cfg = pretrain_config(studio, text_key, tokenizer_ref, settings)
        text_name = Path(cfg.inputs[0]).name
        stem = f"{Path(text_name).stem}-{cfg.preset}"
        run_name = studio.check_name(name) if (name or "").strip() else studio.free_name(stem)
        base_ref = tokenizer_ref if cfg.tokenizer else ""
        run_id = studio.add_run(COMMAND, cfg, run_name, base_ref, f"text:{text_name}", COMMAND)
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}", None
    return studio.jobs.submit(run_id), run_id


def do_start(studio: Studio, form: dict[str, Any]):
    """{start_status, run}: Start pressed: a run of the form's settings, chosen in the run picker."""
    try:
        settings = form_settings(form)
    except LLMError as e:
        return {"start_status": f"⚠ {e.worded(field_label(e.field))}"}
    message, run_id = start_run(studio, form["text"], form["tokenizer"], settings, form["name"])
    picked = {"run": gr.Dropdown(choices=run_tab.run_choices(pretrain_runs(studio)), value=run_id)} if run_id else {}
    return {"start_status": message, **picked}


def layout_form(studio: Studio, ui: SimpleNamespace) -> None:
    """The text, tokenizer, size, budget and prompts; the plan and the start button."""
    gr.Markdown("#### Text and settings")
    ui.text = dropdown(label="Text", elem_id="pt-text")
    ui.upload = gr.File(
        label=f"Upload a text ({', '.join(TEXT_SUFFIXES)}, UTF-8, up to {upload_limit(studio.max_upload_bytes)})",
        file_types=[".txt", ".gz", ".jsonl"],
        height=110,
        elem_id="pt-upload",
        **EDIT,
    )
    ui.text_status = gr.Markdown(elem_id="pt-text-status")
    ui.tokenizer = dropdown(label="Tokenizer", elem_id="pt-tokenizer")
    ui.vocab = gr.Number(
        DEFAULTS.vocab_size, precision=0, label="Vocabulary size (a new tokenizer)", elem_id="pt-vocab", **EDIT
    )
    # Every size, narrowed when the tab is shown (whether there is a GPU needs torch imported).
    ui.preset = gr.Radio(presets(cuda=True), value=DEFAULTS.preset, label="Model size", elem_id="pt-preset", **EDIT)
    ui.budget = gr.Radio(BUDGETS, value="time", label="Budget", elem_id="pt-budget", **EDIT)
    with gr.Row():
        ui.minutes = gr.Number(DEFAULTS.max_time / 60, label="Minutes", elem_id="pt-minutes", **EDIT)
        ui.steps = gr.Number(value=300, precision=0, label="Steps", visible=False, elem_id="pt-steps", **EDIT)
    ui.prompts = gr.Textbox(
        "\n".join(DEFAULTS.sample_prompts),
        label="Sample prompts (one a line): continued at every evaluation",
        lines=2,
        elem_id="pt-prompts",
        **EDIT,
    )
    ui.validation = gr.Number(
        DEFAULTS.val_fraction, label=field_label("val_fraction"), info=PretrainConfig.__dataclass_fields__[
            "val_fraction"].metadata["help"], elem_id="pt-validation", **EDIT)  # fmt: skip
    ui.name = gr.Textbox(label="Run name (optional)", placeholder="e.g. oz-micro", elem_id="pt-name", **EDIT)
    ui.plan = gr.Markdown(elem_classes="plan", elem_id="pt-plan")
    ui.start = gr.Button("Start pretraining", variant="primary", elem_id="pt-start")
    ui.start_status = gr.Markdown(elem_id="pt-start-status")


def layout_run(ui: SimpleNamespace) -> None:
    """The run picker, stop/resume, progress, loss chart, sample timeline and log."""
    gr.Markdown("#### Watch it learn to write")
    run_tab.run_controls(ui, "pt")
    ui.samples = html_part(elem_id="pt-timeline")
    ui.log = gr.Textbox(label="Log", lines=6, max_lines=6, autoscroll=True, interactive=False, elem_id="pt-log")


def layout(studio: Studio, ui: SimpleNamespace) -> None:
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            layout_form(studio, ui)
        with gr.Column(scale=3, min_width=420):
            layout_run(ui)
    run_tab.watch_state(ui)


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    form = set(outputs(ui, *FORM))
    plan = keyed(asked_plan, studio, ui)
    # Built filled (first_view); filled again when the tab is shown and its stamp changed, in one event: every
    # event costs the browser a pass over the page's state.
    ui.stamp = when_changed(demo, tab, "pretrain", [ui.run], built=True, timer=ui.timer)
    shown = outputs(ui, *FORM_SHOWN, "stamp", *VIEW.parts())
    ui.stamp.change(keyed(refill, studio, ui), form | {ui.run, ui.seen}, shown, **quiet(demo))
    # .input (the user's changes), not .change: filling the form asks for one plan, not one a field.
    gr.on([c.input for c in outputs(ui, *FORM)], plan, form, ui.plan, trigger_mode="always_last", **quiet(demo))
    budget = (ui.minutes, ui.steps)
    ui.budget.input(lambda b: (gr.Number(visible=b == "time"), gr.Number(visible=b == "steps")), ui.budget, budget)
    ui.tokenizer.input(lambda t: gr.Number(visible=t == NEW_TOKENIZER), ui.tokenizer, ui.vocab, **LIGHT)
    uploaded = [ui.text, ui.upload, ui.text_status]
    ui.upload.upload(keyed(do_upload, studio, ui), ui.upload, uploaded, **LIGHT).then(
        plan, form, ui.plan, **quiet(demo)
    )
    ui.start.click(keyed(do_start, studio, ui), form | {ui.name}, [ui.start_status, ui.run], **LIGHT)


def api_functions(studio: Studio) -> dict[str, Callable]:
    """The tab's plain API functions, registered by name."""

    def api_plan(text_key: str, tokenizer_ref: str = NEW_TOKENIZER, settings: str = "{}") -> str:
        """The plan (device, parameters, tokens per step, steps, memory and time) of a pretraining run on a text
        (see /pretrain_texts), as Markdown. tokenizer_ref: "new", or a model whose tokenizer to reuse.
        settings: one JSON object of PretrainConfig fields, e.g. {"preset": "tiny", "max_steps": 30} (a field
        left out takes the library's default)."""
        try:
            return plan_markdown(studio, text_key, tokenizer_ref, json_object(settings, "PretrainConfig"))
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}"

    def api_start(
        text_key: str, tokenizer_ref: str = NEW_TOKENIZER, settings: str = "{}", name: str = ""
    ) -> tuple[str, str | None]:
        """Start a pretraining run (as /pretrain_plan; name: optional, unique): (what happened, the run's id)."""
        try:
            return start_run(studio, text_key, tokenizer_ref, json_object(settings, "PretrainConfig"), name)
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}", None

    def api_timeline(run_id: str) -> list[dict[str, Any]]:
        """A pretraining run's evaluations, newest first: step, val_loss, train_loss, val_bits_per_byte and
        samples (prompt, text)."""
        run = studio.store.run(run_id)
        if run is None:
            raise gr.Error(f"No run {run_id!r}.")
        return timeline(studio.jobs.run_dir(run).read_metrics(), evals=10**6)

    def api_upload(file: FileData) -> dict[str, Any]:
        """Check a text to pretrain on (.txt, .txt.gz, .jsonl) and keep it: {text (its key), text_status}."""
        return plain(do_upload(studio, file["path"] if isinstance(file, dict) else file.path))

    def api_texts() -> list[dict[str, str]]:
        """The texts to pretrain on: key and label."""
        return [{"key": key, "label": label} for label, key in text_choices(studio)]

    return {"pretrain_plan": api_plan, "pretrain_start": api_start, "pretrain_timeline": api_timeline,
            "pretrain_texts": api_texts, "pretrain_upload": api_upload}  # fmt: skip


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab (once shown) and wire its events; returns the plain API functions to register by name."""
    demo.stamps["pretrain"] = bound(stamp, studio)
    tab = (TAB_LABEL, "pretrain", "pt")
    run_tab.run_page(studio, demo, tab, lambda ui: layout(studio, ui), wire, VIEW, lambda ui: first_view(studio, ui))
    return api_functions(studio) | run_tab.watch_api(studio, VIEW, "pretrain_")
