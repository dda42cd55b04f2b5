"""Data tab: upload a task dataset, check how it parses, and see the examples as the model will see them."""

from __future__ import annotations

import html
import inspect
import math
import os
import re
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from llm.data.tasks import SPREADSHEETS, file_type_problem
from llm.errors import LLMError
from studio.charts import bar_chart
from studio.context import DATA_SUFFIXES, Studio, plural, upload_limit
from studio.store import new_id
from studio.tabs import LIGHT, bound, dropdown

PREVIEW_EXAMPLES = 6
FORMAT_CHOICES = [
    ("detect automatically", "auto"),
    ("prompt / response pairs", "pairs"),
    ("alpaca", "alpaca"),
    ("chat messages", "messages"),
]
LENGTH_COLORS = {"fits the context": "#4f7cff", "cut by the context": "#e5484d"}
VIEWS = ["status", "fmt", "prompt_col", "response_col", "system_col", "preview", "hist", "problems"]
NONE = ""  # the "no column" choice of the mapping dropdowns
CANNOT_USE = "### ⚠ This file cannot be used\n"


def safe_filename(name: str) -> str:
    """A plain file name: no folders (../../x.csv -> x.csv), no odd characters, a known lower-case suffix."""
    name = unicodedata.normalize("NFKC", name.replace("\\", "/").split("/")[-1])
    stem, suffix = os.path.splitext(name)
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._-") or "dataset"
    return stem[:80] + suffix.lower()


def token_html(tokenizer: Any, ids: list[int], mask: list[bool]) -> str:
    """Token ids as text, the special tokens as badges, and the trained-on part highlighted."""
    names = {i: tokenizer.id_to_piece(i) for i in set(ids) if tokenizer.is_special(i)}
    if not tokenizer.chat_template:
        names[tokenizer.eos_id] = "<eos>"  # ours is written </s>
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
    one bin for anything longer. They depend on the context only, so two datasets' charts compare."""
    limit = context_length + 1  # ids a training sequence holds (context_length predictions)
    width = bin_width(2 * limit, bins=8)
    starts = range(0, 2 * limit, width)
    return width, [f"{s}–{s + width - 1}" for s in starts] + [f"{starts[-1] + width}+"]


def length_chart(lengths: list[int], context_length: int) -> str:
    """The length histogram as a stacked bar chart (red: examples the context would cut)."""
    frame = length_histogram(lengths, context_length)
    labels = length_bins(context_length)[1]
    stacks = {key: frame[frame["length"] == key]["examples"].tolist() for key in LENGTH_COLORS}
    return bar_chart(labels, stacks, LENGTH_COLORS, "Token lengths of the examples", "tokens", "examples")


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
        from llm.data import tasks

        self.name, self.stored = name, stored
        self.error = ""
        self.data = self.encoded = None
        self.columns_to_choose: list[str] = []  # set when the file reads fine but its columns need naming
        try:
            self.data = tasks.read_task_file(path, fmt, mapping or None, name=name)
        except tasks.TaskFileError as e:
            self.error = str(e)
            if e.kind == "columns":
                try:  # the file itself is fine (it reads, it has rows): offer its columns to choose from
                    frame = tasks.read_frame(path, name)[0]  # the library's own reader, so the columns match
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
                verb, whose = ("is", "its") if cut == 1 else ("are", "their")
                advice = " — consider shorter examples." if share > 0.1 else "."
                lines.append(
                    f"{context}{plural(cut, 'example')} ({share:.0%}) {verb} longer; training sees only {whose} "
                    f"start{advice}"
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
                gr.HTML(visible=False),
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
                gr.HTML(visible=False),
                gr.Dataframe(visible=False),
            ]
        data = self.data
        columns = [("(none)", NONE)] + [(c, c) for c in data.columns]
        pairs = data.format == "pairs"
        col = dict(data.mapping)
        hist = gr.HTML(visible=False)
        if self.encoded is not None:
            hist = gr.HTML(length_chart(self.encoded.lengths, self.context_length), visible=True)
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


def pick(studio: Studio, selected: str | None) -> str | None:
    keys = [k for _, k in studio.dataset_choices()]
    return selected if selected in keys else (keys[0] if keys else None)


def choices(studio: Studio, selected: str | None = None) -> gr.Dropdown:
    return gr.Dropdown(choices=studio.dataset_choices(), value=pick(studio, selected))


def nothing_shown(status: str) -> list:
    """Values for VIEWS with no dataset: the status only, nothing of another file left on the page."""
    return [status, gr.Radio(value="auto"), *[gr.Dropdown(visible=False)] * 3, "", gr.HTML(visible=False),
            gr.Dataframe(visible=False)]  # fmt: skip


def show(studio: Studio, dataset_id: str | None) -> list:
    """Values for VIEWS: a stored dataset with its stored settings."""
    row = studio.store.dataset(dataset_id) if dataset_id else None
    if row is None:
        return nothing_shown("Pick or upload a dataset.")
    return Inspection(studio, studio.store.abs(row["path"]), row["name"], row["format"], row["mapping"]).outputs()


def shown_signature(studio: Studio, dataset_id: str | None) -> tuple:
    """What the tab's view depends on: the choices, and the chosen dataset's settings and file."""
    row = studio.store.dataset(dataset_id) if dataset_id else None
    path = studio.store.abs(row["path"]) if row else None
    stamp = path.stat().st_mtime_ns if path and path.exists() else None
    settings = (row["format"], sorted(row["mapping"].items()), row["rows"]) if row else None
    return (tuple(studio.dataset_choices()), dataset_id, settings, stamp)


def on_load(studio: Studio, dataset_id: str | None, seen: tuple | None = None) -> list:
    """[dataset, *VIEWS, seen]: the chosen dataset (else the first) as stored. Showing the tab again sends
    nothing when nothing it shows changed (re-drawing a preview and a chart costs the browser more than any
    other part of a tab switch)."""
    chosen = pick(studio, dataset_id)
    signature = shown_signature(studio, chosen)
    if chosen == dataset_id and signature == seen:
        return [gr.skip()] * (1 + len(VIEWS)) + [seen]
    return [choices(studio, chosen), *show(studio, chosen), signature]


def store_upload(studio: Studio, source: Path, name: str, fmt_value: str, mapping: dict[str, str], kept: int) -> str:
    """Copy a checked upload into the workspace under a fresh id; returns the dataset id."""
    key = new_id()
    folder = studio.workspace / "datasets" / key
    target = folder / name
    assert target.resolve().is_relative_to(studio.workspace / "datasets"), target
    folder.mkdir(parents=True)
    part = folder / f".{name}.part"
    shutil.copyfile(source, part)
    os.replace(part, target)  # a half-copied file never carries the dataset's name
    return studio.store.add_dataset(name, target, "upload", fmt_value, mapping, kept, key=key)


def refused(message: str) -> list:
    """[dataset, upload, pending, *VIEWS] for a refused upload: the message, and nothing of the previous
    file left on the page (its preview, histogram or dropped rows would read as this file's)."""
    return [gr.Dropdown(), gr.File(value=None), None, *nothing_shown(f"{CANNOT_USE}{message}")]


def too_large(studio: Studio, name: str) -> list:
    """A file over the upload limit (Gradio refuses it in the browser before any upload; see UPLOAD_WATCH)."""
    return refused(f"{name or 'The file'} is larger than the upload limit of {upload_limit(studio.max_upload_bytes)}.")


def do_upload(studio: Studio, file: str | None, dataset_id: str | None) -> list:
    """Check an uploaded file. A usable one is copied into the workspace and listed; one whose columns
    need naming waits (outside the workspace) for Apply; anything else is explained and left out."""
    if not file:
        return [gr.Dropdown(), gr.File(), None, *show(studio, dataset_id)]
    source = Path(file)
    name = safe_filename(source.name)
    problem = file_type_problem(Path(name))
    if problem:
        return refused(problem)
    if source.stat().st_size > studio.max_upload_bytes:
        return too_large(studio, name)
    inspection = Inspection(studio, source, name, "auto", None, stored=False)
    if inspection.columns_to_choose:
        pending = {"path": str(source), "name": name}
        return [gr.Dropdown(), gr.File(), pending, *inspection.outputs()]
    if inspection.error:
        return [gr.Dropdown(), gr.File(value=None), None, *inspection.outputs()]
    key = store_upload(studio, source, name, "auto", {}, inspection.kept)
    return [choices(studio, key), gr.File(value=None), None, *inspection.outputs()]


def do_validate(studio: Studio, pending, dataset_id, format_choice: str, prompt: str, response: str, system: str):
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
        key = store_upload(studio, source, name, format_choice, mapping, inspection.kept)
        return [choices(studio, key), gr.File(value=None), None, *inspection.outputs()]
    row = studio.store.dataset(dataset_id) if dataset_id else None
    if row is None:
        return [gr.Dropdown(), gr.File(), None, "⚠ Pick or upload a dataset first.", *[gr.skip()] * 7]
    inspection = Inspection(studio, studio.store.abs(row["path"]), row["name"], format_choice, mapping)
    if inspection.error:
        return [gr.Dropdown(), gr.File(), None, *inspection.outputs()]
    studio.store.update_dataset(dataset_id, format=format_choice, mapping=mapping, rows=inspection.kept)
    return [choices(studio, dataset_id), gr.File(), None, *inspection.outputs()]


def show_page(studio: Studio, dataset_id: str | None, page_number: float) -> str:
    row = studio.store.dataset(dataset_id) if dataset_id else None
    if row is None:
        return ""
    inspection = Inspection(studio, studio.store.abs(row["path"]), row["name"], row["format"], row["mapping"])
    if inspection.error:
        return ""
    return preview_html(
        inspection.data, inspection.encoded, inspection.tokenizer, inspection.context_length, int(page_number or 1)
    )


def do_delete(studio: Studio, dataset_id: str | None) -> list:
    """[dataset, deleted, *VIEWS]: the upload deleted (not while a run uses it), the next dataset shown."""
    try:
        message = studio.delete_dataset(dataset_id)
    except LLMError as e:
        return [gr.Dropdown(), f"⚠ {e}", *[gr.skip()] * len(VIEWS)]
    chosen = pick(studio, None)
    return [choices(studio, chosen), message, *show(studio, chosen)]


# Gradio refuses a file over max_file_size in the browser, and no server event tells the tab: this watches
# the upload's file input and, for a file over the limit, presses a hidden button whose event clears the
# previous file's results and says why the file was refused.
UPLOAD_WATCH = """() => {
  if (window.studioUploadWatch) return;
  window.studioUploadWatch = true;
  document.addEventListener("change", (event) => {
    const input = event.target;
    if (!input.matches || !input.matches("#data-upload input[type=file]")) return;
    const big = [...input.files].find((file) => file.size > LIMIT);
    if (!big) return;
    window.studioRefusedUpload = big.name;
    document.querySelector("#data-upload-refused").click();
  }, true);
}"""


def source_row(studio: Studio, ui: SimpleNamespace) -> None:
    with gr.Row(equal_height=True):
        ui.dataset = dropdown(label="Dataset", scale=3, elem_id="data-dataset")
        ui.upload = gr.File(
            label=f"Upload a dataset (up to {upload_limit(studio.max_upload_bytes)})",
            # Spreadsheets too, only to be told how to save one as CSV: a picker that hides them leaves the
            # user looking for their file.
            file_types=[*DATA_SUFFIXES, *SPREADSHEETS],
            scale=2,
            height=120,
            elem_id="data-upload",
        )
    ui.refused = gr.Button(visible="hidden", elem_id="data-upload-refused")
    ui.refused_name = gr.Textbox(visible="hidden")


def format_row(ui: SimpleNamespace) -> None:
    with gr.Row():
        ui.fmt = gr.Radio(FORMAT_CHOICES, value="auto", label="Format", scale=3)
        ui.prompt_col = dropdown(label="Prompt column", visible=False, scale=1)
        ui.response_col = dropdown(label="Response column", visible=False, scale=1)
        ui.system_col = dropdown(label="System column (optional)", visible=False, scale=1)
        ui.apply = gr.Button("Apply", scale=0, min_width=120, elem_classes="inline-button", elem_id="data-apply")


def results(ui: SimpleNamespace) -> None:
    """Status, the preview, the length histogram, the dropped rows, paging and delete."""
    ui.status = gr.Markdown(elem_id="data-status")
    with gr.Row():
        with gr.Column(scale=3):
            ui.preview = gr.HTML(elem_classes="preview", elem_id="data-preview")
        with gr.Column(scale=2):
            ui.hist = gr.HTML(visible=False, elem_classes="chart-box", elem_id="data-hist")
    ui.problems = gr.Dataframe(label="Dropped rows", visible=False, interactive=False, wrap=True, max_height=300)
    with gr.Row():
        ui.page = gr.Number(value=1, precision=0, minimum=1, label="Preview page", scale=1, elem_id="data-page")
        ui.delete = gr.Button("Delete this upload", variant="stop", scale=0, elem_classes="inline-button")
        ui.deleted = gr.Markdown(elem_id="data-deleted")


def forgetting(handler: Callable[..., list], studio: Studio) -> Callable[..., list]:
    """The handler's outputs, then None for the tab's `seen` state."""

    def run(*args: Any) -> list:
        return [*handler(studio, *args), None]

    # The API page describes the endpoint by the handler's parameters and docstring.
    run.__signature__ = inspect.signature(bound(handler, studio))
    run.__doc__ = handler.__doc__
    return run


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    views = [getattr(ui, name) for name in VIEWS]
    loaded, uploaded = [ui.dataset, *views, ui.seen], [ui.dataset, ui.upload, ui.pending, *views, ui.seen]
    ui.page.change(bound(show_page, studio), [ui.dataset, ui.page], ui.preview, **LIGHT)
    # Every event that changes the view forgets what was last shown: the next tab switch draws it afresh.
    deleted = [ui.dataset, ui.deleted, *views, ui.seen]
    ui.delete.click(forgetting(do_delete, studio), ui.dataset, deleted, api_name="delete_dataset")
    # Gradio selects the first tab as the page opens: this fills the tab then, and when it is shown again.
    tab.select(bound(on_load, studio), [ui.dataset, ui.seen], loaded, **LIGHT)
    demo.load(None, js=UPLOAD_WATCH.replace("LIMIT", str(studio.max_upload_bytes)))
    shown = [ui.pending, *views, ui.seen]
    ui.dataset.input(lambda d: [None, *show(studio, d), None], ui.dataset, shown, api_name="dataset")
    ui.upload.upload(forgetting(do_upload, studio), [ui.upload, ui.dataset], uploaded, api_name="upload")
    watched = "() => [window.studioRefusedUpload || '']"
    ui.refused.click(forgetting(too_large, studio), ui.refused_name, uploaded, js=watched, **LIGHT)
    columns = [ui.prompt_col, ui.response_col, ui.system_col]
    validate_inputs = [ui.pending, ui.dataset, ui.fmt, *columns]
    ui.apply.click(forgetting(do_validate, studio), validate_inputs, uploaded, api_name="validate")
    ui.fmt.input(lambda f: [gr.Dropdown(visible=f == "pairs")] * 3, ui.fmt, columns, **LIGHT)


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name (none)."""
    ui = SimpleNamespace()
    with gr.Tab("1 · Data", id="data") as tab:
        gr.Markdown(
            "Pick a sample dataset or upload your own: a table of prompts and answers (CSV, TSV, JSON, JSONL or "
            "Parquet), alpaca-style instruction/input/output records, or chat conversations."
        )
        source_row(studio, ui)
        format_row(ui)
        results(ui)
        ui.pending = gr.State(None)  # an upload whose columns the user still has to name: {"path", "name"}
        ui.seen = gr.State(None)  # shown_signature() of what the view last drew on opening or showing the tab
    wire(studio, demo, tab, ui)
    return {}
