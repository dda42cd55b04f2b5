"""Compare tab: one prompt to 2-4 models side by side, a word diff, votes, and a batch score on held-out rows."""

from __future__ import annotations

import difflib
import html
import os
import re
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import gradio as gr

from llm.config import SamplingConfig
from llm.errors import LLMError
from studio.context import Studio, spreadsheet_safe
from studio.jobs import CHILD_THREADS, field_label
from studio.store import LAUNCHED_STATES, new_id
from studio.tabs import (
    EDIT,
    LIGHT,
    NEWEST,
    bound,
    dropdown,
    finished_run,
    folded,
    html_part,
    keyed,
    laid_out,
    lazy_page,
    on_show,
    outputs,
    page_of,
    plain,
    quiet,
)
from studio.votes import TIE

MAX_MODELS = 4


INTRO = (
    "Ask several models the same question with the same sampling settings and seed, and see how their "
    "answers differ. Pick the base model and your fine-tuned model to see what fine-tuning changed."
)


def word_diff_html(reference: str, other: str) -> str:
    """`other` with the words it adds marked <ins> and the reference words it lacks marked <del>."""
    a, b = re.findall(r"\S+|\s+", reference), re.findall(r"\S+|\s+", other)
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("delete", "replace") and "".join(a[i1:i2]).strip():
            parts.append(f"<del>{html.escape(''.join(a[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            text = html.escape("".join(b[j1:j2]))
            parts.append(f"<ins>{text}</ins>" if text.strip() else text)
        if op == "equal":
            parts.append(html.escape("".join(b[j1:j2])))
    return "".join(parts)


def diff_panel(labels: list[str], answers: list[str]) -> str:
    """HTML: each answer after the first as a word diff against the first."""
    if len(answers) < 2:
        return ""
    blocks = []
    for label, answer in zip(labels[1:], answers[1:], strict=True):
        shared = difflib.SequenceMatcher(None, answers[0].split(), answer.split(), autojunk=False).ratio()
        # Answers with little in common read better whole than as a page of crossed-out words.
        body = word_diff_html(answers[0], answer) if shared >= 0.2 else html.escape(answer)
        note = "" if shared >= 0.2 else " (too different for a word diff: shown whole)"
        blocks.append(
            f"<div class='diff-block'><div class='diff-head'>{html.escape(label)} vs {html.escape(labels[0])}"
            f" · {shared:.0%} of words shared{note}</div>"
            f"<div class='diff-body'>{body or '<em>(empty answer)</em>'}</div></div>"
        )
    legend = "<div class='diff-legend'><ins>added</ins> <del>missing</del> relative to the first model</div>"
    return legend + "".join(blocks)


def generation_threads(studio: Studio) -> int:
    """Torch threads for generating in the studio: all cores, or those a running fine-tune leaves free."""
    import torch

    cores = os.cpu_count() or 2
    training = bool(studio.store.runs(LAUNCHED_STATES, None))  # any job on the device, benchmarks too
    # Batch-1 generation of a small model gains little past a few threads, and idle threads spin.
    threads = max(1, cores - CHILD_THREADS) if training else min(cores, 4)
    torch.set_num_threads(threads)
    return threads


def stream_answers(studio: Studio, refs: list[str], prompt: str, sampling: Any) -> Iterator[list[str]]:
    """Answers of all models, growing together: one piece from each model in turn."""
    from llm.data.chat import user_messages
    from llm.model.generate import stream_chat

    streams = []
    for ref in refs:
        model, tok, _ = studio.load(ref)
        streams.append(stream_chat(model, tok, user_messages(prompt), sampling))
    answers = [""] * len(refs)
    live = list(range(len(refs)))
    while live:
        for i in list(live):
            piece = next(streams[i], None)
            if piece is None:
                live.remove(i)
            else:
                answers[i] += piece
        yield list(answers)


def choices(studio: Studio) -> dict[str, Any]:
    """The models (the newest finished run and the model it was tuned from chosen: what the tuning changed), the
    datasets (the newest run's chosen) and the votes."""
    model_list = studio.model_choices()
    refs = [v for _, v in model_list]
    run = finished_run(studio, model_list)
    tuned_from = studio.store.run(run.removeprefix("run:"))["base_id"] if run else None
    base = tuned_from if tuned_from in refs else refs[0] if refs else None
    default = [base, run] if run and base != run else refs[:2]
    datasets = studio.dataset_choices()
    keys = [k for _, k in datasets]
    latest = (studio.store.runs() or [{}])[0].get("dataset_id")
    return {
        "models": gr.Dropdown(choices=model_list, value=default, multiselect=True),
        "batch_data": gr.Dropdown(choices=datasets, value=latest if latest in keys else (keys[0] if keys else None)),
        "tally": tally_text(studio),
    }


def tally_text(studio: Studio) -> str:
    votes = studio.store.votes()
    if not votes:
        return ""
    wins: dict[str, int] = {}
    for v in votes:
        label = "tie" if v["winner"] == TIE else studio.model_label(v["winner"])
        wins[label] = wins.get(label, 0) + 1
    return f"**Votes so far ({len(votes)}):** " + ", ".join(f"{k}: {n}" for k, n in sorted(wins.items()))


def answer_boxes(labels: list[str], texts: list[str]) -> list:
    """The answer boxes' updates: one a chosen model, the rest hidden."""
    return [
        gr.Textbox(value=texts[i], label=labels[i], visible=True)
        if i < len(labels)
        else gr.Textbox(visible=False, value="")
        for i in range(MAX_MODELS)
    ]


def asked_settings(refs: list[str], text: str, temp: float, p: float, tokens: float, seed_value: float):
    """(the sampling settings as SamplingConfig fields, what is wrong with the question or '')."""
    if not 2 <= len(refs) <= MAX_MODELS:
        return {}, "Choose 2 to 4 models."
    if not (text or "").strip():
        return {}, "Write a prompt first."
    settings = {
        "temperature": float(temp),
        "top_p": float(p),
        "max_new_tokens": int(tokens),
        "seed": int(seed_value or 0),
    }
    try:
        SamplingConfig(**settings)  # one config, so every model samples alike
    except LLMError as e:
        return {}, e.worded(field_label(e.field))
    return settings, ""


def compare(studio: Studio, refs: list[str], text: str, temp: float, p: float, tokens: float, seed_value: float,
            request: gr.Request = None):  # fmt: skip
    """{answers, diff, status, vote, last}, streamed: every chosen model answers the prompt with the same
    sampling settings and seed; then the word diff and the vote's choices. Asking again from the same page
    while this one generates replaces it (see tabs.Newest)."""
    refs = list(refs or [])
    settings, problem = asked_settings(refs, text, temp, p, tokens, seed_value)
    cleared = {"diff": "", "vote": gr.Radio(choices=[], value=None), "last": {}}
    if problem:
        yield {"answers": [gr.Textbox(visible=i < 2) for i in range(MAX_MODELS)], "status": f"⚠ {problem}", **cleared}
        return
    page = page_of(request) or new_id()  # no page (the API): a comparison of its own
    token = NEWEST.begin(page)
    labels = [studio.model_label(r) for r in refs]
    quoted = html.escape(text.strip()[:80])
    yield {"answers": answer_boxes(labels, [""] * len(refs)), "status": f"Loading models for «{quoted}»...", **cleared}
    try:
        threads = generation_threads(studio)
        texts = [""] * len(refs)
        for texts in stream_answers(studio, refs, text, SamplingConfig(**settings)):
            if not NEWEST.current(page, token):
                return  # a newer prompt from this page took over
            note = f"Generating answers to «{quoted}» (a new prompt replaces them)..."
            yield {"answers": answer_boxes(labels, texts), "status": note}
    except LLMError as e:  # a model went missing or is unreadable
        yield {"answers": answer_boxes(labels, [""] * len(refs)), "status": f"⚠ {e}"}
        return
    finally:
        NEWEST.end(page, token)
    result = {"id": new_id(), "prompt": text, "models": refs, "labels": labels, "answers": texts, "settings": settings}
    vote_choices = [(label, ref) for label, ref in zip(labels, refs, strict=True)] + [("Tie / both bad", TIE)]
    device = next(studio.load(refs[0])[0].parameters()).device
    where = f"{threads} CPU threads" if device.type == "cpu" else device.type
    yield {
        "answers": answer_boxes(labels, texts),
        "diff": diff_panel(labels, texts),
        "status": f"Done: answers to «{quoted}», with the same seed ({settings['seed']}) and settings for every "
        f"model ({where}).",
        "vote": gr.Radio(vote_choices, value=None),
        "last": result,
    }


def record_vote(studio: Studio, result: dict, winner: str | None) -> str:
    """Record the vote on the answers shown (result: the comparison they came from, with its prompt)."""
    if not result:
        return "⚠ Generate answers first, then vote."
    if winner not in result["models"] + [TIE]:
        return "⚠ Pick the better answer first."
    studio.store.add_vote(
        result["prompt"], result["models"], result["answers"], result["settings"], winner, result["id"]
    )
    return f"Vote saved for «{html.escape(result['prompt'].strip()[:80])}». " + tally_text(studio)


def batch(
    studio: Studio,
    refs: list[str],
    dataset_id: str,
    rows: float,
    tokens: float,
    seed_value: float,
    progress=gr.Progress(),  # noqa: B008 (Gradio's way of asking for a progress bar)
):
    """{batch_status, batch_totals, batch_table, batch_file}: every chosen model answers the dataset's held-out
    rows (read through the studio's dataset cache); a table of answers, scores and totals, and its CSV."""
    from llm.data import tasks
    from llm.eval import tasks as task_eval

    refs, nothing = list(refs or []), {"batch_totals": None, "batch_table": None, "batch_file": gr.File(visible=False)}
    if not refs or not dataset_id:
        return {**nothing, "batch_status": "⚠ Choose at least one model and a dataset."}
    row = studio.store.dataset(dataset_id)
    try:
        dirs = [studio.model_dir(r) for r in refs]
        data = studio.task_files.read(studio.dataset_path(dataset_id), row["format"], row["mapping"])
    except LLMError as e:
        return {**nothing, "batch_status": f"⚠ {e}"}
    _, held_out = tasks.split_examples(data)  # the rows a fine-tune with the default settings keeps aside
    labels = {str(d): studio.model_label(r) for d, r in zip(dirs, refs, strict=True)}
    order = list(labels)

    def report(model: str, done: int, total: int) -> None:
        step = order.index(model) * total + done
        progress(step / (total * len(order)), desc=f"{labels[model]}: row {done} of {total}")

    generation_threads(studio)
    refs_by_dir = {str(d): r for d, r in zip(dirs, refs, strict=True)}
    table = task_eval.evaluate_models(
        order, held_out, rows=int(rows), seed=int(seed_value or 0), max_new_tokens=int(tokens), progress=report,
        load=lambda model_dir: studio.load(refs_by_dir[str(model_dir)]),  # the models Compare holds: no second copy
    )  # fmt: skip
    totals = task_eval.totals(table)
    table["model"] = table["model"].map(labels)
    totals["model"] = totals["model"].map(labels)
    path = studio.workspace / "compare" / f"batch-{new_id()}.csv"
    spreadsheet_safe(table).to_csv(path, index=False)
    note = f"Scored {table['row'].nunique()} held-out rows of {row['name']} with {len(order)} models (greedy answers)."
    return {
        "batch_status": note,
        "batch_totals": totals.round(3),
        "batch_table": table.drop(columns=["ref_tokens"]).round({"f1": 3, "ref_loss": 3}),
        "batch_file": gr.File(value=str(path), visible=True),
    }


def sampling_sliders(temperature: float) -> tuple[gr.Slider, gr.Slider, gr.Slider, gr.Number]:
    """Temperature, top-p, max new tokens and seed in one row (Compare's and Chat's sampling settings)."""
    with gr.Row():
        return (
            gr.Slider(0, 1.5, value=temperature, step=0.05, label="Temperature (0 = greedy)", **EDIT),
            gr.Slider(0.05, 1, value=SamplingConfig().top_p, step=0.05, label="Top-p", **EDIT),
            gr.Slider(8, 512, value=128, step=8, label="Max new tokens", **EDIT),
            gr.Number(value=0, precision=0, label="Seed", **EDIT),
        )


def layout_question(ui: SimpleNamespace) -> None:
    """The models, the prompt, the sampling settings, the answers side by side, their diff and the vote."""
    gr.Markdown(INTRO)
    with gr.Row():
        ui.models = dropdown(
            label="Models (2 to 4)", multiselect=True, max_choices=MAX_MODELS, scale=4, elem_id="compare-models"
        )
        ui.refresh = gr.Button("↻ Refresh list", scale=0, min_width=140, size="sm", elem_classes="inline-button")
    # One line that grows: Enter generates (as in Chat), Shift+Enter starts a new line.
    ui.prompt = gr.Textbox(
        label="Prompt",
        lines=1,
        max_lines=8,
        placeholder="Ask something... (Enter: generate, Shift+Enter: a new line)",
        elem_id="compare-prompt",
        **EDIT,
    )
    ui.temperature, ui.top_p, ui.max_new, ui.seed = sampling_sliders(0.0)
    ui.go = gr.Button("Generate side by side", variant="primary", elem_id="compare-go")
    ui.status = gr.Markdown(elem_id="compare-status")
    with gr.Row(equal_height=True):
        ui.answers = [
            gr.Textbox(
                label=f"Model {i + 1}",
                lines=8,
                max_lines=20,
                interactive=False,
                buttons=["copy"],
                visible=i < 2,
                autoscroll=False,  # an answer is read from its first words
                elem_classes="answer",
                elem_id=f"compare-answer-{i}",
            )
            for i in range(MAX_MODELS)
        ]
    ui.diff = html_part(elem_classes="diff", elem_id="compare-diff")
    ui.last = gr.State({})
    with gr.Row():
        ui.vote = gr.Radio(label="Which answer is better?", choices=[], scale=4, elem_id="compare-vote", **EDIT)
        ui.save_vote = gr.Button("Save vote", scale=0, min_width=140, elem_classes="inline-button")
    ui.tally = gr.Markdown(elem_id="compare-tally")


def layout_batch(ui: SimpleNamespace) -> None:
    with folded("Batch: score every chosen model on a dataset's held-out rows"):
        gr.Markdown(
            "Runs the held-out rows of a dataset (the rows a fine-tune keeps aside for validation) through "
            "every chosen model, greedily, and scores each answer against the reference."
        )
        with gr.Row():
            ui.batch_data = dropdown(label="Dataset", scale=3)
            ui.batch_rows = gr.Slider(1, 200, value=20, step=1, label="Rows (at most)", **EDIT)
            ui.batch_tokens = gr.Slider(8, 512, value=64, step=8, label="Max new tokens", **EDIT)
        ui.batch_go = gr.Button("Run batch comparison")
        ui.batch_status = gr.Markdown(elem_id="compare-batch-status")
        ui.batch_totals = gr.Dataframe(label="Totals per model", interactive=False, elem_id="compare-batch-totals")
        ui.batch_table = gr.Dataframe(
            label="Answers and scores", interactive=False, wrap=True, max_height=420, elem_id="compare-batch-table"
        )
        ui.batch_file = gr.File(label="Download CSV", interactive=False, visible=False, elem_id="compare-batch-file")


def layout(ui: SimpleNamespace) -> None:
    layout_question(ui)
    layout_batch(ui)


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    filled = outputs(ui, "models", "batch_data", "tally")
    gr.on([*on_show(demo, tab), ui.refresh.click], keyed(choices, studio, ui), None, filled, **quiet(demo))
    asked = [ui.models, ui.prompt, ui.temperature, ui.top_p, ui.max_new, ui.seed]
    answered = outputs(ui, "answers", "diff", "status", "vote", "last")
    # One function for the button and Enter: Gradio queues by function, so both share one concurrency limit.
    # Each press is sent ("multiple": Gradio's default drops a press while the last one runs, silently); the
    # newest replaces an older one still generating (see Newest).
    ask = keyed(compare, studio, ui)
    for trigger in (ui.go.click, ui.prompt.submit):
        trigger(ask, asked, answered, api_visibility="private", trigger_mode="multiple")
    ui.save_vote.click(bound(record_vote, studio), [ui.last, ui.vote], ui.tally, **LIGHT)
    scored = outputs(ui, "batch_status", "batch_totals", "batch_table", "batch_file")
    batch_inputs = [ui.models, ui.batch_data, ui.batch_rows, ui.batch_tokens, ui.seed]
    ui.batch_go.click(keyed(batch, studio, ui), batch_inputs, scored, api_visibility="private")


def api_functions(studio: Studio) -> dict[str, Callable]:
    """The tab's plain API functions by endpoint name."""

    def api_compare(
        refs: list[str], prompt: str, temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 128,
        seed: int = 0,
    ) -> dict[str, Any]:  # fmt: skip
        """Every model (2 to 4 refs) answers the prompt with the same sampling settings and seed: {answers (in
        the order of refs), diff (HTML), status, comparison}; /vote takes the comparison."""
        *_, last = compare(studio, refs, prompt, temperature, top_p, max_new_tokens, seed)
        out = plain(last)
        return {"answers": out["answers"][: len(refs or [])], "diff": out.get("diff", ""), "status": out["status"],
                "comparison": out.get("last", {})}  # fmt: skip

    def api_vote(comparison: dict[str, Any], winner: str) -> str:
        """Record which answer of a comparison (/compare's) is better: a model ref of it, or "tie"."""
        return record_vote(studio, comparison, winner)

    def api_batch(
        refs: list[str], dataset_id: str, rows: int = 20, max_new_tokens: int = 64, seed: int = 0
    ) -> dict[str, Any]:
        """Every model answers a dataset's held-out rows (greedy), scored: {batch_status, batch_totals,
        batch_table (records), batch_file (the CSV's path on the server)}."""
        return plain(batch(studio, refs, dataset_id, rows, max_new_tokens, seed, progress=lambda *a, **k: None))

    return {"compare": api_compare, "vote": api_vote, "batch_compare": api_batch}


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab (once shown) and wire its events; returns the plain API functions to register by name."""
    lazy_page(demo, "4 · Compare", "compare", lambda tab: wire(studio, demo, tab, laid_out(layout)))
    return api_functions(studio)
