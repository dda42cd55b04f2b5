"""Fine-tune tab: choose a base model, a dataset and a few settings, see the plan, start, and watch the run.

The run is a child process (studio.jobs); this tab only reads its state from SQLite and its files, every
second, so a reloaded page re-attaches to a running job.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from llm.errors import LLMError
from llm.run import Metrics, RunDir
from studio.context import Studio, human_size, plural
from studio.jobs import CHILD_THREADS, field_label
from studio.store import ACTIVE_STATES, RESUMABLE_STATES, WORKING_STATES
from studio.tabs import dropdown, loss_frame, loss_plot

METHOD_CHOICES = [("LoRA: small adapters, fast, little memory", "lora"), ("Full: every weight", "full")]
SAMPLE_COLUMNS = ["step", "prompt", "answer"]


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def progress_html(p: dict[str, Any]) -> str:
    step, total = p["step"], p["max_steps"]
    share = step / total if total else 0.0
    state = p["status"]
    left = f" · about {clock(p['remaining'])} left" if p["remaining"] is not None else ""
    return (
        f"<div class='run-progress {state}'><div class='bar' style='width:{100 * share:.1f}%'></div></div>"
        f"<div class='run-progress-text'>step <b>{step}</b> of {total or '?'} · {share:.0%} · "
        f"elapsed {clock(p['elapsed'])}{left}</div>"
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


def finetune_settings(method: str, epochs, max_steps, lr, batch_size, lora_rank, probes: str) -> dict[str, Any]:
    """The tab's values as FinetuneConfig fields; a value left at 0 or empty is left out, so the library's
    default applies (llm.finetune.FinetuneConfig is the one place the defaults live)."""
    settings: dict[str, Any] = {"method": method} if method else {}
    for key, value, kind in (
        ("epochs", epochs, int),
        ("max_steps", max_steps, int),
        ("lr", lr, float),
        ("batch_size", batch_size, int),
        ("lora_rank", lora_rank, int),
    ):
        if value:
            settings[key] = kind(value)
    settings["probes"] = [line.strip() for line in (probes or "").splitlines() if line.strip()][:5]
    return settings


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
            f"**Examples:** {plan['train_examples']} to train on, {plan['val_examples']} held out to validate",
            f"**Steps:** {plan['max_steps']} ({plan['epochs']:.1f} epochs of {plan['steps_per_epoch']}, "
            f"batch {plan['batch_size']}) · learning rate {plan['lr']:g}",
            f"**Estimated memory:** {human_size(plan['est_memory_bytes'])} · **estimated time:** "
            f"{clock(plan['est_seconds'])} (less if the validation loss stops improving and the run stops early)",
        ]
    )


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name."""
    with gr.Tab("2 · Fine-tune", id="finetune") as tab:
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                gr.Markdown("#### Settings")
                base = dropdown(label="Base model", elem_id="ft-base")
                dataset = dropdown(label="Dataset", elem_id="ft-dataset")
                method = gr.Radio(METHOD_CHOICES, label="Method", elem_id="ft-method")
                with gr.Row():
                    epochs = gr.Number(
                        value=0, precision=0, minimum=0, maximum=100, label="Epochs", elem_id="ft-epochs"
                    )
                    max_steps = gr.Number(
                        value=0, precision=0, minimum=0, label="Max steps (0: from epochs)", elem_id="ft-max-steps"
                    )
                with gr.Row():
                    lr = gr.Number(value=0, minimum=0, label="Learning rate (0: default)")
                    batch_size = gr.Number(
                        value=0, precision=0, minimum=0, label="Batch size (0: auto)", elem_id="ft-batch-size"
                    )
                    lora_rank = gr.Number(value=0, precision=0, minimum=0, maximum=256, label="LoRA rank")
                probes = gr.Textbox(
                    label="Probe prompts (one a line): answered at every evaluation",
                    lines=3,
                    elem_id="ft-probes",
                )
                name = gr.Textbox(label="Run name (optional)", placeholder="e.g. qa-lora-1", elem_id="ft-name")
                plan = gr.Markdown(elem_classes="plan", elem_id="ft-plan")
                start = gr.Button("Start fine-tuning", variant="primary", elem_id="ft-start")
                start_status = gr.Markdown(elem_id="ft-start-status")
            with gr.Column(scale=3, min_width=420):
                gr.Markdown("#### Run")
                run = dropdown(label="Run", elem_id="ft-run")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", size="md", interactive=False, elem_id="ft-stop")
                    resume = gr.Button("Resume", size="md", interactive=False, elem_id="ft-resume")
                state = gr.Markdown(elem_id="ft-state")
                bar = gr.HTML(elem_id="ft-progress")
                curve = loss_plot(elem_id="ft-loss")
                samples = gr.Dataframe(
                    headers=SAMPLE_COLUMNS,
                    label="Probe answers at the latest evaluations",
                    interactive=False,
                    wrap=True,
                    max_height=260,
                    column_widths=["10%", "35%", "55%"],
                )
                log = gr.Textbox(
                    label="Log", lines=8, max_lines=8, autoscroll=True, interactive=False, elem_id="ft-log"
                )
        timer = gr.Timer(1.0)
        seen = gr.State(None)  # what this page last drew, so an unchanged run sends nothing

    settings_inputs = [method, epochs, max_steps, lr, batch_size, lora_rank, probes]

    def choices(base_ref: str | None, dataset_id: str | None, run_id: str | None):
        """Fresh choices; the page's picks are kept, else those of the newest run, else the first."""
        bases, datasets, runs = studio.model_choices(), studio.dataset_choices(), run_choices(studio)
        latest = (studio.store.runs() or [{}])[0]

        def keep(value: str | None, options: list[tuple[str, str]], fallback: str | None) -> str | None:
            keys = [k for _, k in options]
            return value if value in keys else fallback if fallback in keys else (keys[0] if keys else None)

        return (
            gr.Dropdown(choices=bases, value=keep(base_ref, bases, latest.get("base_id"))),
            gr.Dropdown(choices=datasets, value=keep(dataset_id, datasets, latest.get("dataset_id"))),
            gr.Dropdown(choices=runs, value=keep(run_id, runs, default_run(studio))),
        )

    def default_probes(dataset_id: str | None) -> str:
        """The first prompts of the rows a run holds out: answers to them show what the model learned."""
        from llm import tasks

        row = studio.store.dataset(dataset_id) if dataset_id else None
        if row is None:
            return ""
        try:
            data = tasks.read_task_file(studio.store.abs(row["path"]), row["format"], row["mapping"] or None)
        except LLMError:
            return ""
        _, held_out = tasks.split_examples(data)
        prompts = [
            next(m["content"] for m in reversed(e.messages) if m["role"] == "user") for e in held_out.examples[:3]
        ]
        return "\n".join(p.replace("\n", " ") for p in prompts)

    def make_plan(base_ref, dataset_id, *values) -> str:
        """finetune.plan for the chosen settings, or what is wrong with them."""
        from llm import finetune

        if not base_ref:
            return f"⚠ {studio.base_missing() or 'Choose a base model.'}"
        if not dataset_id:
            return "⚠ Choose a dataset (Data tab: pick a sample or upload one)."
        try:
            cfg = studio.finetune_config(base_ref, dataset_id, finetune_settings(*values))
            return plan_text(finetune.plan(finetune.prepare(cfg, studio.task_data(cfg))))
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}"

    def do_start(base_ref, dataset_id, method_value, epochs_v, steps_v, lr_v, batch_v, rank_v, probes_v, name_v):
        """Create a run and start it (or queue it behind the run that holds the device)."""
        if not base_ref or not dataset_id:
            return "⚠ Choose a base model and a dataset first.", gr.Dropdown()
        try:  # bad settings are refused here, not in the child
            settings = finetune_settings(method_value, epochs_v, steps_v, lr_v, batch_v, rank_v, probes_v)
            run_id = studio.create_run(base_ref, dataset_id, settings, name_v or "")
        except LLMError as e:
            return f"⚠ {e.worded(field_label(e.field))}", gr.Dropdown()
        message = studio.jobs.submit(run_id)
        return message, gr.Dropdown(choices=run_choices(studio), value=run_id)

    def refresh(run_id: str | None, last_seen: Any):
        """The run's state, progress, loss curve, probe answers and log; nothing is sent if nothing changed."""
        if not run_id or studio.store.run(run_id) is None:
            hint = "No run yet: choose the settings on the left and press Start."
            empty = (hint, "", loss_frame(Metrics()), pd.DataFrame(columns=SAMPLE_COLUMNS), "")
            return *empty, gr.Button(interactive=False), gr.Button(interactive=False), gr.skip(), None
        run_dir = RunDir(studio.store.abs(studio.store.run(run_id)["dir"]))
        files = [run_dir.metrics, run_dir.log]
        p = studio.jobs.progress(run_id)
        signature = (run_id, p["status"], p["message"], *(f.stat().st_mtime if f.exists() else 0 for f in files))
        if signature == last_seen and p["status"] not in WORKING_STATES:
            return (*[gr.skip()] * 8, last_seen)
        run = p["run"]
        text = f"<span class='state-badge {p['status']}'>{p['status']}</span> **{html.escape(run['name'])}**"
        if p["message"]:
            text += f" — {p['message']}"
        start_record = p["metrics"].start
        if start_record:
            text += f"\n\n{start_record.get('device', '')} · {start_record.get('params', 0):,} parameters, {start_record.get('trainable', 0):,} trained"
        if signature == last_seen:  # running, files unchanged: only the clock moves
            return text, progress_html(p), *[gr.skip()] * 6, last_seen
        active = p["status"] in ACTIVE_STATES
        can_resume = p["status"] in RESUMABLE_STATES
        return (
            text,
            progress_html(p),
            loss_frame(p["metrics"]),
            samples_frame(p),
            p["log"],
            gr.Button(interactive=active and p["status"] != "stopping"),
            gr.Button(interactive=can_resume),
            # The labels carry each run's state; refreshed only when it changes (an open list would close).
            gr.Dropdown(choices=run_choices(studio)) if not last_seen or last_seen[1] != p["status"] else gr.skip(),
            signature,
        )

    def do_stop(run_id: str | None) -> str:
        return studio.jobs.stop(run_id) if run_id else "Choose a run first."

    def do_resume(run_id: str | None) -> str:
        return studio.jobs.resume(run_id) if run_id else "Choose a run first."

    def api_runs() -> list[dict[str, Any]]:
        """Every run: id, name, status, message, base, dataset and settings."""
        return [
            {
                k: r[k]
                for k in ("id", "name", "status", "message", "base_id", "dataset_id", "method", "config", "created")
            }
            for r in studio.store.runs()
        ]

    choice_outputs = [base, dataset, run]

    def library_defaults():
        """The library's defaults in the fields, when a page opens."""
        from llm.config import FinetuneConfig

        defaults = FinetuneConfig()
        rank = gr.Number(value=defaults.lora_rank, visible=defaults.method == "lora")
        return gr.Radio(value=defaults.method), gr.Number(value=defaults.epochs), rank

    demo.load(library_defaults, None, [method, epochs, lora_rank], api_visibility="private")
    for event in (tab.select, demo.load):
        event(choices, [base, dataset, run], choice_outputs, api_visibility="private").then(
            make_plan, [base, dataset, *settings_inputs], plan, api_visibility="private"
        )
    dataset.change(default_probes, dataset, probes, api_visibility="private")
    for component in (base, dataset, *settings_inputs):
        component.change(
            make_plan, [base, dataset, *settings_inputs], plan, trigger_mode="always_last", api_visibility="private"
        )
    method.change(lambda m: gr.Number(visible=m == "lora"), method, lora_rank, api_visibility="private")

    def api_plan(
        base_ref: str,
        dataset_id: str,
        method_value: str = "",
        epochs_v: int = 0,
        steps_v: int = 0,
        lr_v: float = 0.0,
        batch_v: int = 0,
        rank_v: int = 0,
        probes_v: str = "",
    ) -> str:
        """The plan (device, parameters, steps, memory and time estimates) for these settings, as Markdown;
        a setting left at 0 or empty takes the library's default."""
        return make_plan(base_ref, dataset_id, method_value, epochs_v, steps_v, lr_v, batch_v, rank_v, probes_v)

    start.click(do_start, [base, dataset, *settings_inputs, name], [start_status, run], api_name="start")
    monitor = [state, bar, curve, samples, log, stop, resume, run, seen]
    run.change(lambda r: refresh(r, None), run, monitor, api_visibility="private")
    # Reading a run's files is cheap: ticks from many open pages never wait for each other.
    timer.tick(refresh, [run, seen], monitor, show_progress="hidden", concurrency_limit=None, api_name="progress")
    stop.click(do_stop, run, start_status, api_name="stop")
    resume.click(do_resume, run, start_status, api_name="resume")
    return {"plan": api_plan, "runs": api_runs}
