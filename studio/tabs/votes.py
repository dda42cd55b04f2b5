"""Votes tab: every vote cast in Compare, their export as preference pairs, and "Tune on my votes": a
preference run (`python -m llm prefer`, DPO) on them, through the same queue as fine-tunes."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from llm.config import PreferConfig
from llm.errors import LLMError
from studio.context import Studio, plural
from studio.jobs import field_label
from studio.tabs import EDIT, LIGHT, dropdown, finished_run, keyed, laid_out, lazy_page, on_show, quiet
from studio.votes import MIN_PAIRS, TIE, export_votes, preference_pairs

VOTE_COLUMNS = ["when", "prompt", "models", "better", "answers", "seed"]
PROBES = 3  # voted prompts answered at every evaluation of a preference run


def vote_rows(studio: Studio) -> pd.DataFrame:
    names = {ref: name for name, ref in studio.model_choices()}  # read once, not once a vote and model

    def label(ref: str) -> str:
        return names.get(ref, "(a deleted model)")

    rows = []
    for vote in reversed(studio.store.votes()):
        labels = [label(m) for m in vote["models"]]
        rows.append(
            {
                "when": datetime.datetime.fromtimestamp(vote["created"]).strftime("%Y-%m-%d %H:%M"),
                "prompt": vote["prompt"],
                "models": " | ".join(labels),
                "better": "tie / both bad" if vote["winner"] == TIE else label(vote["winner"]),
                "answers": "\n---\n".join(vote["answers"]),
                "seed": vote["settings"].get("seed"),
            }
        )
    return pd.DataFrame(rows, columns=VOTE_COLUMNS)


def summary(studio: Studio) -> str:
    votes = studio.store.votes()
    pairs, ties = preference_pairs(votes)
    text = f"**{plural(len(votes), 'vote')}**: {plural(len(pairs), 'preference pair')}, {plural(len(ties), 'tie')}."
    if len(pairs) < MIN_PAIRS:
        text += (
            f" ⚠ A preference run learns little from fewer than {MIN_PAIRS} pairs: vote on more comparisons in "
            "Compare (each vote between n answers gives n-1 pairs)."
        )
    return text


def tune_on_votes(studio: Studio, base_ref: str | None, max_steps: float, name: str) -> tuple[str, str | None]:
    """Export the votes and queue a preference run on them; (message, run id)."""
    votes = studio.store.votes()
    if not base_ref:
        return "⚠ Choose the model to tune.", None
    if not preference_pairs(votes)[0]:  # checked before anything is written
        return "⚠ No preference pairs yet: vote in Compare (a tie gives none).", None
    exported = export_votes(votes, studio.workspace / "exports")
    try:
        probes = list(dict.fromkeys(v["prompt"] for v in votes))[:PROBES]
        cfg = PreferConfig(
            base=str(studio.model_dir(base_ref)), data=str(exported.pairs), max_steps=int(max_steps or 0), probes=probes
        )
        label = studio.check_name(name) if (name or "").strip() else studio.free_name("votes-dpo")
        run_id = studio.add_run("prefer", cfg, label, base_ref, "votes", cfg.method)
    except LLMError as e:
        return f"⚠ {e.worded(field_label(e.field))}", None
    queued = studio.jobs.submit(run_id)
    warning = (
        f" (only {plural(exported.n_pairs, 'pair')}: expect a small change)" if exported.n_pairs < MIN_PAIRS else ""
    )
    return f"{queued} Preference run on {plural(exported.n_pairs, 'pair')}{warning}; follow it in Fine-tune.", run_id


INTRO = (
    "The votes you cast in **Compare**. Export them as preference pairs, or tune a model on them: it "
    "learns to prefer the answers you preferred (DPO), and appears in Compare when it is done."
)


def layout(ui: SimpleNamespace) -> None:
    gr.Markdown(INTRO)
    ui.counts = gr.Markdown(elem_id="votes-summary")
    ui.table = gr.Dataframe(headers=VOTE_COLUMNS, interactive=False, wrap=True, max_height=360, elem_id="votes-table")
    with gr.Row():
        ui.export = gr.Button("Export as preference pairs (JSONL)", elem_id="votes-export")
        ui.files = gr.File(label="Pairs, conversational pairs and ties", file_count="multiple", visible=False)
    with gr.Row():
        ui.base = dropdown(label="Model to tune (and the reference it must not drift far from)", scale=3)
        ui.max_steps = gr.Number(value=0, precision=0, label="Max steps (0: from epochs)", scale=1,
                                 elem_id="votes-max-steps", **EDIT)  # fmt: skip
        ui.name = gr.Textbox(label="Run name (optional)", scale=2, **EDIT)
    ui.tune = gr.Button("Tune on my votes", variant="primary", elem_id="votes-tune")
    ui.status = gr.Markdown(elem_id="votes-status")


def show(studio: Studio) -> dict[str, Any]:
    """{counts, table, base}: the votes, and the models to tune (the newest finished run first)."""
    choices = studio.model_choices()
    default = finished_run(studio, choices) or next((ref for _, ref in choices), None)
    return {"counts": summary(studio), "table": vote_rows(studio), "base": gr.Dropdown(choices=choices, value=default)}


def do_export(studio: Studio) -> dict[str, Any]:
    """{files, status}: the votes written as preference pairs (nothing when there is no vote)."""
    try:
        exported = export_votes(studio.store.votes(), studio.workspace / "exports")
    except LLMError as e:
        return {"files": gr.File(visible=False), "status": f"⚠ {e}"}
    paths = [str(p) for p in (exported.pairs, exported.conversations, exported.ties)]
    note = f"Exported {plural(exported.n_pairs, 'pair')} and {plural(exported.n_ties, 'tie')}."
    return {"files": gr.File(value=paths, visible=True), "status": note}


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    gr.on(on_show(demo, tab), keyed(show, studio, ui), None, [ui.counts, ui.table, ui.base], **quiet(demo))
    ui.export.click(keyed(do_export, studio, ui), None, [ui.files, ui.status], **LIGHT)
    tuned = [ui.base, ui.max_steps, ui.name]
    ui.tune.click(lambda b, m, n: tune_on_votes(studio, b, m, n)[0], tuned, ui.status, **LIGHT)


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab (once shown) and wire its events; returns the plain API functions to register by name."""
    lazy_page(demo, "6 · Votes", "votes", lambda tab: wire(studio, demo, tab, laid_out(layout)))

    def api_export_votes() -> dict[str, Any]:
        """Write the votes as preference pairs; the files' paths and counts (an error when there is no vote)."""
        try:
            exported = export_votes(studio.store.votes(), studio.workspace / "exports")
        except LLMError as e:
            raise gr.Error(str(e)) from None
        return {k: str(v) if hasattr(v, "name") else v for k, v in vars(exported).items()}

    def api_votes() -> list[dict[str, Any]]:
        """Every vote: prompt, models, answers, settings (seed included), winner."""
        return studio.store.votes()

    def api_tune(base_ref: str, max_steps: int = 0, name: str = "") -> tuple[str, str | None]:
        """Export the votes and queue a preference run (DPO) on them from base_ref: (what happened, its id)."""
        return tune_on_votes(studio, base_ref, max_steps, name)

    return {"export_votes": api_export_votes, "votes": api_votes, "tune_on_votes": api_tune}
