"""Data tab: upload a task dataset, check how it parses, and see the examples as the model will see them."""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from llm.errors import LLMError
from studio.context import DATA_SUFFIXES, Studio, human_size, plural
from studio.store import new_id
from studio.tabs import dropdown

PREVIEW_EXAMPLES = 6
FORMAT_CHOICES = [
    ("detect automatically", "auto"),
    ("prompt / response pairs", "pairs"),
    ("alpaca", "alpaca"),
    ("chat messages", "messages"),
]
NONE = ""  # the "no column" choice of the mapping dropdowns
CANNOT_USE = "### ⚠ This file cannot be used\n"


def safe_filename(name: str) -> str:
    """A plain file name: no folders (../../x.csv -> x.csv), no odd characters, a known lower-case suffix."""
    name = unicodedata.normalize("NFKC", name.replace("\\", "/").split("/")[-1])
    stem, suffix = os.path.splitext(name)
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._-") or "dataset"
    return stem[:80] + suffix.lower()


def friendly(message: str, path: Path, name: str) -> str:
    """A library error with the temporary upload path replaced by the file's own name."""
    return message.replace(str(path), name)


def token_html(tokenizer: Any, ids: list[int], mask: list[bool]) -> str:
    """Token ids as text, the chat control tokens as badges, and the trained-on part highlighted."""
    names = {i: name for name, i in tokenizer.special.items()} | {tokenizer.eos_id: "<eos>"}
    parts: list[str] = []
    run: list[int] = []
    run_trained = False

    def flush() -> None:
        if run:
            # Whole characters only: a run may begin or end inside a character that byte-fallback pieces
            # spell (a cut row, a Chinese character split at the trained part's edge): its bytes are dropped.
            text = html.escape(b"".join(tokenizer.token_bytes(i) for i in run).decode("utf-8", errors="ignore"))
            parts.append(f"<span class='trained'>{text}</span>" if run_trained else f"<span>{text}</span>")
            run.clear()

    for token, trained in zip(ids, mask, strict=True):
        if token in names:
            flush()
            css = "tok-special trained" if trained else "tok-special"
            parts.append(f"<span class='{css}'>{html.escape(names[token])}</span>")
            continue
        if trained != run_trained:
            flush()
            run_trained = trained
        run.append(token)
    flush()
    return "".join(parts)


def messages_html(messages: list[dict[str, str]]) -> str:
    """Without a tokenizer: the conversation, the assistant's part highlighted."""
    return "".join(
        f"<span class='tok-special'>{m['role']}</span>"
        + (
            f"<span class='trained'>{html.escape(m['content'])}</span>"
            if m["role"] == "assistant"
            else html.escape(m["content"])
        )
        for m in messages
    )


def preview_html(data: Any, encoded: Any, tokenizer: Any, context_length: int | None, page: int = 1) -> str:
    """The examples of one page (PREVIEW_EXAMPLES a page), as the model sees them."""
    n = len(encoded.items) if encoded is not None else len(data.examples)
    pages = max(1, math.ceil(n / PREVIEW_EXAMPLES))
    page = min(max(1, int(page or 1)), pages)
    shown = slice((page - 1) * PREVIEW_EXAMPLES, page * PREVIEW_EXAMPLES)
    legend = (
        f"<div class='preview-legend'>Page {page} of {pages}. As the model sees them: "
        "<span class='tok-special'>control tokens</span> mark the turns; the <span class='trained'>highlighted "
        "part</span> is what it learns to write (the loss counts only there).</div>"
    )
    cards = []
    if encoded is None:
        for example in data.examples[shown]:
            cards.append(
                f"<div class='example'><div class='row-no'>row {example.row}</div>{messages_html(example.messages)}</div>"
            )
        return legend + "".join(cards)
    truncated = set(encoded.truncated)
    for (ids, mask), row, n in list(zip(encoded.items, encoded.rows, encoded.lengths, strict=True))[shown]:
        size = f"{n} tokens, cut to fit the context" if row in truncated else f"{n} tokens"
        cards.append(
            f"<div class='example'><div class='row-no'>row {row} · {size}</div>{token_html(tokenizer, ids, mask)}</div>"
        )
    return legend + "".join(cards)


def bin_width(top: int, bins: int = 16) -> int:
    """A round bin width (1, 2, 5 times a power of ten) giving at most `bins` bins up to `top`."""
    raw = max(1, math.ceil(top / bins))
    magnitude = 10 ** (len(str(raw)) - 1)
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def length_bins(context_length: int) -> tuple[int, list[str]]:
    """(bin width, bin labels) of the length histogram: round bins up to twice what the context holds, then
    one bin for anything longer. They depend on the context only, so the plot's category order is set once
    (Gradio 6 does not redraw a bar plot whose category order changes in an update)."""
    limit = context_length + 1  # ids a training sequence holds (context_length predictions)
    width = bin_width(2 * limit, bins=8)
    starts = range(0, 2 * limit, width)
    return width, [f"{s}–{s + width - 1}" for s in starts] + [f"{starts[-1] + width}+"]


def length_histogram(lengths: list[int], context_length: int) -> pd.DataFrame:
    """Examples per token-length bin, split into those that fit the context and those it would cut."""
    limit = context_length + 1
    width, labels = length_bins(context_length)
    fits, cut = [0] * len(labels), [0] * len(labels)
    for n in lengths:
        (fits if n <= limit else cut)[min(n // width, len(labels) - 1)] += 1
    records = [(label, count, "fits the context") for label, count in zip(labels, fits, strict=True)]
    records += [(label, count, "cut by the context") for label, count in zip(labels, cut, strict=True)]
    return pd.DataFrame(records, columns=["tokens", "examples", "length"])


class Inspection:
    """The result of reading a dataset file with given settings: what the tab shows."""

    def __init__(
        self, studio: Studio, path: Path, name: str, fmt: str, mapping: dict[str, str] | None, stored: bool = True
    ):
        from llm import tasks

        self.name, self.stored = name, stored
        self.error = ""
        self.data = self.encoded = None
        self.columns_to_choose: list[str] = []  # set when the file reads fine but its columns need naming
        try:
            self.data = tasks.read_task_file(path, fmt, mapping or None)
        except tasks.TaskFileError as e:
            self.error = friendly(str(e), path, name)
            if e.kind == "columns":
                try:  # the file itself is fine (it reads, it has rows): offer its columns to choose from
                    frame = tasks.read_frame(path)[0]  # the library's own reader, so the columns match
                    self.columns_to_choose = [str(c) for c in frame.columns] if len(frame) else []
                except tasks.TaskFileError:
                    pass
            return
        loaded = studio.preview_tokenizer()
        self.tokenizer, self.context_length = loaded if loaded else (None, None)
        if self.tokenizer is not None:
            self.encoded = tasks.encode_examples(self.data, self.tokenizer, self.context_length)

    @property
    def kept(self) -> int:
        return len(self.encoded.items) if self.encoded else len(self.data.examples)

    def status(self) -> str:
        if self.columns_to_choose:
            keep = (
                "Its settings were not changed."
                if self.stored
                else "The file is kept aside, not added, until it reads correctly."
            )
            return (
                f"### ⚠ {self.name}: which columns hold the prompts and the answers?\n{self.error}\n\n"
                f"Choose the format, the prompt column and the response column below, then press **Apply**. {keep}"
            )
        if self.error:
            return f"{CANNOT_USE}{self.error}" + ("\n\nIts settings were not changed." if self.stored else "")
        data, enc = self.data, self.encoded
        dropped = len(data.problems) + (len(enc.dropped) if enc else 0)
        kept = len(enc.items) if enc else len(data.examples)
        mapping = ", ".join(f"{col} → {key}" for key, col in data.mapping.items())
        lines = [
            f"### {self.name}: {plural(kept, 'example')} ready"
            + (f", {plural(dropped, 'row')} dropped (see the table below)" if dropped else ""),
            f"Format **{data.format}** · columns used: {mapping}",
        ]
        if enc is not None:
            cut, share = len(enc.truncated), len(enc.truncated) / max(1, len(enc.items))
            context = f"Context {self.context_length} tokens: "
            if cut == 0:
                lines.append(context + "every example fits.")
            else:
                lines.append(
                    context
                    + f"{plural(cut, 'example')} ({share:.0%}) are longer; training sees only their start"
                    + (" — consider shorter examples." if share > 0.1 else ".")
                )
        else:
            lines.append("⚠ No base model: token counts and the template preview need its tokenizer.")
        return "\n\n".join(lines)

    def problems(self) -> pd.DataFrame:
        rows = []
        if self.data is not None:
            for p in sorted(self.data.problems + (self.encoded.dropped if self.encoded else []), key=lambda p: p.row):
                rows.append({"row": p.row, "column": p.column or "", "reason": p.reason, "detail": p.detail})
        return pd.DataFrame(rows, columns=["row", "column", "reason", "detail"])

    def outputs(self) -> list:
        """Values for [status, format, prompt col, response col, system col, preview, histogram, problems]."""
        if self.columns_to_choose:
            columns = [("(none)", NONE)] + [(c, c) for c in self.columns_to_choose]
            return [
                self.status(),
                gr.Radio(value="pairs"),
                *[gr.Dropdown(choices=columns, value=NONE, visible=True)] * 3,
                "",
                gr.BarPlot(visible=False),
                gr.Dataframe(visible=False),
            ]
        if self.error:
            return [
                self.status(),
                gr.Radio(),
                gr.Dropdown(),
                gr.Dropdown(),
                gr.Dropdown(),
                "",
                gr.BarPlot(value=None),
                gr.Dataframe(visible=False),
            ]
        data = self.data
        columns = [("(none)", NONE)] + [(c, c) for c in data.columns]
        pairs = data.format == "pairs"
        col = dict(data.mapping)
        hist = gr.BarPlot(value=None, visible=False)
        if self.encoded is not None:
            hist = gr.BarPlot(value=length_histogram(self.encoded.lengths, self.context_length), visible=True)
        problems = self.problems()
        return [
            self.status(),
            gr.Radio(value=data.format),
            gr.Dropdown(choices=columns, value=col.get("prompt", NONE), visible=pairs),
            gr.Dropdown(choices=columns, value=col.get("response", NONE), visible=pairs),
            gr.Dropdown(choices=columns, value=col.get("system", NONE), visible=pairs),
            preview_html(data, self.encoded, self.tokenizer, self.context_length),
            hist,
            gr.Dataframe(value=problems, visible=len(problems) > 0),
        ]


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name (none)."""
    loaded = studio.preview_tokenizer()  # (tokenizer, context length) of the base model, or None
    with gr.Tab("1 · Data", id="data") as tab:
        gr.Markdown(
            "Pick a sample dataset or upload your own: a table of prompts and answers (CSV, TSV, JSON, JSONL or "
            "Parquet), alpaca-style instruction/input/output records, or chat conversations."
        )
        with gr.Row(equal_height=True):
            dataset = dropdown(label="Dataset", scale=3, elem_id="data-dataset")
            upload = gr.File(
                label=f"Upload a dataset (up to {human_size(studio.max_upload_bytes)})",
                file_types=list(DATA_SUFFIXES),
                scale=2,
                height=120,
                elem_id="data-upload",
            )
        with gr.Row():
            fmt = gr.Radio(FORMAT_CHOICES, value="auto", label="Format", scale=3)
            prompt_col = dropdown(label="Prompt column", visible=False, scale=1)
            response_col = dropdown(label="Response column", visible=False, scale=1)
            system_col = dropdown(label="System column (optional)", visible=False, scale=1)
            apply = gr.Button("Apply", scale=0, min_width=120, elem_classes="inline-button", elem_id="data-apply")
        status = gr.Markdown(elem_id="data-status")
        with gr.Row():
            with gr.Column(scale=3):
                preview = gr.HTML(elem_classes="preview", elem_id="data-preview")
            with gr.Column(scale=2):
                hist = gr.BarPlot(
                    x="tokens",
                    y="examples",
                    color="length",
                    color_map={"fits the context": "#4f7cff", "cut by the context": "#e5484d"},
                    label="Token lengths (red: longer than the context)",
                    colors_in_legend=[],  # Gradio cuts a legend below the plot off; the label says it
                    x_title="tokens",
                    sort=length_bins(loaded[1])[1] if loaded else None,
                    x_label_angle=-30,
                    height=320,
                    visible=False,
                    elem_id="data-hist",
                )
        problems = gr.Dataframe(label="Dropped rows", visible=False, interactive=False, wrap=True, max_height=300)
        with gr.Row():
            page = gr.Number(value=1, precision=0, minimum=1, label="Preview page", scale=1, elem_id="data-page")
            delete = gr.Button("Delete this upload", variant="stop", scale=0, elem_classes="inline-button")
            deleted = gr.Markdown(elem_id="data-deleted")
        pending = gr.State(None)  # an upload whose columns the user still has to name: {"path", "name"}

    views = [status, fmt, prompt_col, response_col, system_col, preview, hist, problems]

    def pick(selected: str | None) -> str | None:
        keys = [k for _, k in studio.dataset_choices()]
        return selected if selected in keys else (keys[0] if keys else None)

    def choices(selected: str | None = None):
        return gr.Dropdown(choices=studio.dataset_choices(), value=pick(selected))

    def show(dataset_id: str | None):
        """A stored dataset with its stored settings."""
        row = studio.store.dataset(dataset_id) if dataset_id else None
        if row is None:
            return [
                "Pick or upload a dataset.",
                gr.Radio(value="auto"),
                *[gr.Dropdown(visible=False)] * 3,
                "",
                gr.BarPlot(visible=False),
                gr.Dataframe(visible=False),
            ]
        return Inspection(studio, studio.store.abs(row["path"]), row["name"], row["format"], row["mapping"]).outputs()

    def on_load(dataset_id: str | None):
        chosen = pick(dataset_id)
        return [choices(chosen), *show(chosen)]

    def store_upload(source: Path, name: str, fmt_value: str, mapping: dict[str, str], kept: int) -> str:
        """Copy a checked upload into the workspace under a fresh id; returns the dataset id."""
        key = new_id()
        folder = studio.workspace / "datasets" / key
        target = folder / name
        assert target.resolve().is_relative_to(studio.workspace / "datasets"), target
        folder.mkdir(parents=True)
        partial = folder / f".{name}.part"
        shutil.copyfile(source, partial)
        os.replace(partial, target)  # a half-copied file never carries the dataset's name
        return studio.store.add_dataset(name, target, "upload", fmt_value, mapping, kept, key=key)

    def do_upload(file: str | None, dataset_id: str | None):
        """Check an uploaded file. A usable one is copied into the workspace and listed; one whose columns
        need naming waits (outside the workspace) for Apply; anything else is explained and left out."""
        if not file:
            return [gr.Dropdown(), gr.File(), None, *show(dataset_id)]
        source = Path(file)
        name = safe_filename(source.name)
        refused = [gr.Dropdown(), gr.File(value=None), None]
        if Path(name).suffix not in DATA_SUFFIXES:
            message = f"{name}: unsupported file type; use one of {', '.join(DATA_SUFFIXES)}."
            return [*refused, f"{CANNOT_USE}{message}", *[gr.skip()] * 7]
        if source.stat().st_size > studio.max_upload_bytes:
            message = f"{name} is larger than the upload limit of {human_size(studio.max_upload_bytes)}."
            return [*refused, f"{CANNOT_USE}{message}", *[gr.skip()] * 7]
        inspection = Inspection(studio, source, name, "auto", None, stored=False)
        if inspection.columns_to_choose:
            pending = {"path": str(source), "name": name}
            return [gr.Dropdown(), gr.File(), pending, *inspection.outputs()]
        if inspection.error:
            return [*refused, *inspection.outputs()]
        key = store_upload(source, name, "auto", {}, inspection.kept)
        return [choices(key), gr.File(value=None), None, *inspection.outputs()]

    def do_validate(pending, dataset_id: str | None, format_choice: str, prompt: str, response: str, system: str):
        """Read the waiting upload (else the chosen dataset) with the chosen format and columns; a waiting
        upload that now works is stored, a stored dataset keeps the settings."""
        mapping = {k: v for k, v in (("prompt", prompt), ("response", response), ("system", system)) if v}
        if format_choice != "pairs":
            mapping = {}
        if pending:
            source, name = Path(pending["path"]), pending["name"]
            inspection = Inspection(studio, source, name, format_choice, mapping, stored=False)
            if inspection.error:
                return [gr.Dropdown(), gr.File(), pending, *inspection.outputs()]
            key = store_upload(source, name, format_choice, mapping, inspection.kept)
            return [choices(key), gr.File(value=None), None, *inspection.outputs()]
        row = studio.store.dataset(dataset_id) if dataset_id else None
        if row is None:
            return [gr.Dropdown(), gr.File(), None, "⚠ Pick or upload a dataset first.", *[gr.skip()] * 7]
        inspection = Inspection(studio, studio.store.abs(row["path"]), row["name"], format_choice, mapping)
        if inspection.error:
            return [gr.Dropdown(), gr.File(), None, *inspection.outputs()]
        studio.store.update_dataset(dataset_id, format=format_choice, mapping=mapping, rows=inspection.kept)
        return [choices(dataset_id), gr.File(), None, *inspection.outputs()]

    def show_page(dataset_id: str | None, page_number: float) -> str:
        row = studio.store.dataset(dataset_id) if dataset_id else None
        if row is None:
            return ""
        inspection = Inspection(studio, studio.store.abs(row["path"]), row["name"], row["format"], row["mapping"])
        if inspection.error:
            return ""
        return preview_html(
            inspection.data, inspection.encoded, inspection.tokenizer, inspection.context_length, int(page_number or 1)
        )

    def do_delete(dataset_id: str | None):
        try:
            message = studio.delete_dataset(dataset_id)
        except LLMError as e:
            return gr.Dropdown(), f"⚠ {e}"
        return choices(None), message

    page.change(show_page, [dataset, page], preview, api_visibility="private", concurrency_limit=None)
    delete.click(do_delete, dataset, [dataset, deleted], api_name="delete_dataset")
    tab.select(on_load, dataset, [dataset, *views], api_visibility="private")
    demo.load(on_load, dataset, [dataset, *views], api_visibility="private")
    dataset.input(lambda d: [None, *show(d)], dataset, [pending, *views], api_name="dataset")
    upload.upload(do_upload, [upload, dataset], [dataset, upload, pending, *views], api_name="upload")
    apply.click(
        do_validate,
        [pending, dataset, fmt, prompt_col, response_col, system_col],
        [dataset, upload, pending, *views],
        api_name="validate",
    )
    fmt.input(
        lambda f: [gr.Dropdown(visible=f == "pairs")] * 3,
        fmt,
        [prompt_col, response_col, system_col],
        api_visibility="private",
    )
    return {}
