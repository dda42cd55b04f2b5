"""Data tab: upload a task dataset, check how it parses, and see the examples as the model will see them."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from llm.config import FinetuneConfig
from llm.data.tasks import SPREADSHEETS, TaskFileError, file_type_problem, suggest_mapping
from studio.charts import bar_chart
from studio.context import BASE_ID, DATA_SUFFIXES, Studio, StudioError, plural, upload_limit
from studio.store import new_id
from studio.tabs import (
    LIGHT,
    bound,
    dropdown,
    html_part,
    keyed,
    outputs,
    page,
    page_of,
    quiet,
    stamp_of,
    when_changed,
    with_request,
)

PREVIEW_EXAMPLES = 6
FORMAT_CHOICES = [
    ("detect automatically", "auto"),
    ("prompt / response pairs", "pairs"),
    ("alpaca", "alpaca"),
    ("chat messages", "messages"),
]
LENGTH_COLORS = {"fits the context": "#4f7cff", "cut by the context": "#e5484d"}
VIEWS = ("status", "fmt", "prompt_col", "response_col", "system_col", "preview", "hist", "problems")  # a dataset's view
COLUMNS = ("prompt_col", "response_col", "system_col")  # the pairs format's column choices, by role
NONE = ""  # the "no column" choice of the mapping dropdowns
CANNOT_USE = "### ⚠ This file cannot be used\n"


INTRO = (
    "Pick a sample dataset or upload your own: a table of prompts and answers (CSV, TSV, JSON, JSONL or "
    "Parquet), alpaca-style instruction/input/output records, or chat conversations."
)


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
    truncated, cut_start = set(encoded.truncated), set(encoded.cut_start)
    for (ids, mask), row, n in list(zip(encoded.items, encoded.rows, encoded.lengths, strict=True))[shown]:
        size = f"{n} tokens"
        if row in truncated:
            at_start = row in cut_start
            size += ", cut at the start: the prompt alone fills the context" if at_start else ", cut at the end"
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


def cut_text(enc: Any, context_length: int) -> str:
    """The status line on examples longer than the context: how many, which end of them training sees, and,
    when many are, the settings that help."""
    context = f"Context {context_length} tokens: "
    cut, start = len(enc.truncated), len(enc.cut_start)
    if cut == 0:
        return context + "every example fits."
    share = cut / max(1, len(enc.items))
    one = cut == 1
    head = f"{context}{plural(cut, 'example')} ({share:.0%}) {'is' if one else 'are'} longer; training sees only "
    if start == 0:
        text = head + f"{'its' if one else 'their'} start."
    elif start == cut:
        text = head + f"{'its' if one else 'their'} end (the prompt alone fills the context)."
    else:
        text = head + f"the start of {cut - start} and the end of {start} (whose prompt alone fills the context)."
    if share > 0.1:
        text += (
            " So many cut rows teach little: shorten them, choose a base model with a longer context, or leave "
            "them out (Fine-tune › Advanced settings › Overflow: drop)."
        )
    return text


class Inspection:
    """A dataset file read with given settings (through the studio's dataset cache): what the tab shows."""

    def __init__(
        self,
        studio: Studio,
        path: Path,
        name: str,
        fmt: str,
        mapping: dict[str, str] | None,
        stored: bool = True,
        base_ref: str | None = None,
    ):
        from llm.data import tasks

        self.name, self.stored = name, stored
        self.error = ""
        self.data = self.encoded = None
        self.columns_to_choose: list[str] = []  # set when the file reads fine but its columns need naming
        loaded = studio.preview_tokenizer(base_ref)  # the tokens as the base chosen in "Tokens as read by" sees them
        self.tokenizer, self.context_length, base = loaded if loaded else (None, None, None)
        try:
            if self.tokenizer is None:
                self.data = studio.task_files.read(path, fmt, mapping, name)
            else:
                cfg = FinetuneConfig(base=str(base), data=str(path), format=fmt, mapping=mapping or {})
                self.data, self.encoded = studio.task_files.encoded(cfg, name)
        except TaskFileError as e:
            self.error = str(e)
            if e.kind == "columns":
                try:  # the file itself is fine (it reads, it has rows): offer its columns to choose from
                    frame = tasks.read_frame(path, name)[0]  # the library's own reader, so the columns match
                    self.columns_to_choose = [str(c) for c in frame.columns] if len(frame) else []
                except TaskFileError:
                    pass

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
        mapping = ", ".join(f"{col} → {key}" for key, col in data.mapping.items())
        lines = [
            f"### {self.name}: {plural(self.kept, 'example')} ready"
            + (f", {plural(dropped, 'row')} dropped (see the table below)" if dropped else ""),
            f"Format **{data.format}** · columns used: {mapping}",
        ]
        if enc is not None:
            lines.append(cut_text(enc, self.context_length))
        else:
            lines.append("⚠ No base model: token counts and the template preview need its tokenizer.")
        return "\n\n".join(lines)

    def problems(self) -> pd.DataFrame:
        rows = []
        if self.data is not None:
            for p in sorted(self.data.problems + (self.encoded.dropped if self.encoded else []), key=lambda p: p.row):
                rows.append({"row": p.row, "column": p.column or "", "reason": p.reason, "detail": p.detail})
        return pd.DataFrame(rows, columns=["row", "column", "reason", "detail"])

    def views(self) -> dict[str, Any]:
        """{VIEWS}: the status, the format and columns chosen, the preview, the length histogram, the dropped rows."""
        hidden = {"preview": "", "hist": html_part(visible=False), "problems": gr.Dataframe(visible=False)}
        if self.columns_to_choose:
            columns = [("(none)", NONE)] + [(c, c) for c in self.columns_to_choose]
            guess = suggest_mapping(self.columns_to_choose)
            picks = {f"{role}_col": gr.Dropdown(choices=columns, value=guess.get(role, NONE), visible=True)
                     for role in ("prompt", "response", "system")}  # fmt: skip
            return {"status": self.status(), "fmt": gr.Radio(value="pairs"), **picks, **hidden}
        if self.error:
            return {"status": self.status(), **hidden}
        data = self.data
        columns = [("(none)", NONE)] + [(c, c) for c in data.columns]
        pairs, col = data.format == "pairs", dict(data.mapping)
        picks = {f"{role}_col": gr.Dropdown(choices=columns, value=col.get(role, NONE), visible=pairs)
                 for role in ("prompt", "response", "system")}  # fmt: skip
        chart = length_chart(self.encoded.lengths, self.context_length) if self.encoded is not None else None
        problems = self.problems()
        return {
            "status": self.status(),
            "fmt": gr.Radio(value=data.format),
            **picks,
            "preview": preview_html(data, self.encoded, self.tokenizer, self.context_length),
            "hist": html_part(chart, visible=True) if chart else html_part(visible=False),
            "problems": gr.Dataframe(value=problems, visible=len(problems) > 0),
        }


def pick(studio: Studio, selected: str | None) -> str | None:
    keys = [k for _, k in studio.dataset_choices()]
    return selected if selected in keys else (keys[0] if keys else None)


def choices(studio: Studio, selected: str | None = None) -> gr.Dropdown:
    return gr.Dropdown(choices=studio.dataset_choices(), value=pick(studio, selected))


def base_pick(studio: Studio, base_ref: str | None) -> str:
    """The base model whose tokenizer reads the data: the one chosen if it is still there, else the studio's own."""
    refs = [ref for _, ref in studio.base_choices()]
    return base_ref if base_ref in refs else f"base:{BASE_ID}"


def nothing_shown(status: str) -> dict[str, Any]:
    """{VIEWS} with no dataset: the status only, nothing of another file left on the page."""
    hidden = {name: gr.Dropdown(visible=False) for name in COLUMNS}
    return {"status": status, "fmt": gr.Radio(value="auto"), **hidden, "preview": "", "hist": html_part(visible=False),
            "problems": gr.Dataframe(visible=False)}  # fmt: skip


def inspect_stored(
    studio: Studio,
    row: dict[str, Any],
    fmt: str | None = None,
    mapping: dict | None = None,
    base_ref: str | None = None,
):
    """An Inspection of a stored dataset, with its stored settings unless others are given."""
    fmt, mapping = (row["format"], row["mapping"]) if fmt is None else (fmt, mapping)
    return Inspection(studio, studio.store.abs(row["path"]), row["name"], fmt, mapping, base_ref=base_ref)


def show(studio: Studio, dataset_id: str | None, base_ref: str | None = None) -> dict[str, Any]:
    """{VIEWS}: a stored dataset with its stored settings, in the tokens of base_ref (default: the studio's base)."""
    row = studio.store.dataset(dataset_id) if dataset_id else None
    return inspect_stored(studio, row, base_ref=base_ref).views() if row else nothing_shown("Pick or upload a dataset.")


def shown_signature(studio: Studio, dataset_id: str | None, base_ref: str | None = None) -> tuple:
    """What the tab's view depends on: the choices, the chosen dataset's settings and file, and the base."""
    row = studio.store.dataset(dataset_id) if dataset_id else None
    path = studio.store.abs(row["path"]) if row else None
    stamp = path.stat().st_mtime_ns if path and path.exists() else None
    settings = (row["format"], sorted(row["mapping"].items()), row["rows"]) if row else None
    return (tuple(studio.dataset_choices()), dataset_id, settings, stamp, tuple(studio.base_choices()), base_ref)


def stamp(studio: Studio, dataset_id: str | None, base_ref: str | None) -> tuple[str, bool]:
    """The tab's stamp (tabs.when_changed) for the page's dataset and base: on_load's signature of them."""
    return stamp_of(shown_signature(studio, pick(studio, dataset_id), base_pick(studio, base_ref))), False


class PageEvents:
    """The tab's own events (an upload, a pick, Apply, Delete) that each page (session) began, and how many of
    them are still running. The tab's fill, sent as it is shown again, is made from the page's values as they
    were when it was sent: an own event begun before its answer (an upload while the fill waits for a core)
    would see its answer drawn over by the fill's, the previous dataset shown again. The page keeps the number
    of its last own event answered (ui.edits); a fill that finds an own event running, or answered since the
    fill was sent, draws nothing (see on_load)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.begun: dict[str | None, int] = {}  # page -> how many own events it began
        self.running: dict[str | None, int] = {}  # page -> how many of them have not answered yet

    @contextmanager
    def event(self, page: str | None) -> Iterator[int]:
        """An own event of page while it runs; gives its number (1, 2, ...: the page's ui.edits once answered)."""
        with self.lock:
            number = self.begun[page] = self.begun.get(page, 0) + 1
            self.running[page] = self.running.get(page, 0) + 1
        try:
            yield number
        finally:
            with self.lock:
                left = self.running.get(page, 0) - 1  # none when the page closed meanwhile (forget)
                if left > 0:
                    self.running[page] = left
                else:
                    self.running.pop(page, None)

    def state(self, page: str | None) -> tuple[int, bool]:
        """(how many own events page began, whether one is running)."""
        with self.lock:
            return self.begun.get(page, 0), page in self.running

    def forget(self, page: str | None) -> None:
        """A page closed (or reloaded: a new page): nothing of it is kept."""
        with self.lock:
            self.begun.pop(page, None)
            self.running.pop(page, None)


EVENTS = PageEvents()


def forget_page(request: gr.Request) -> None:
    """Gradio's unload: the page closed or reloaded, so its count of own events goes (see PageEvents)."""
    EVENTS.forget(page_of(request))


def own_event(handler: Callable) -> Callable:
    """handler(studio, *inputs) -> {name: value}, wired as an own event of the page that sends it (PageEvents):
    counted while it runs, and its answer gives the page its number (edits)."""

    def run(studio: Studio, *values: Any) -> dict[str, Any]:
        *values, request = values
        with EVENTS.event(page_of(request)) as number:
            return handler(studio, *values) | {"edits": number}

    return with_request(run, handler)


def on_load(
    studio: Studio,
    dataset_id: str | None,
    seen: tuple | None = None,
    pending: dict | None = None,
    base_ref: str | None = None,
    edits: int = 0,
    request: gr.Request = None,
) -> dict[str, Any]:
    """{dataset, tokens_of, *VIEWS, seen}: the chosen dataset (else the first) as stored, in the tokens of the
    chosen base model. Showing the tab again sends nothing when nothing it shows changed (re-drawing a preview
    and a chart costs the browser more than any other part of a tab switch), nor while an upload waits for its
    columns. edits: the number of the page's last own event answered when this fill was sent (PageEvents).
    With an own event of the page running, or answered since, the values this fill was sent with may be old:
    it draws nothing and clears the stamp (the tab is filled afresh when next shown); only answered since, it
    also gives the page that event's number, so the fill the cleared stamp sends at once draws the page as the
    event left it."""
    chosen, base = pick(studio, dataset_id), base_pick(studio, base_ref)
    signature = shown_signature(studio, chosen, base)
    if pending or (chosen == dataset_id and signature == seen):
        return {}
    bases = gr.Dropdown(choices=studio.base_choices(), value=base)
    view = {"dataset": choices(studio, chosen), "tokens_of": bases, **show(studio, chosen, base), "seen": signature}
    begun, running = EVENTS.state(page_of(request))
    if running:
        return {"stamp": ""}
    if begun != edits:
        return {"stamp": "", "edits": begun}
    return view


def pick_dataset(studio: Studio, dataset_id: str | None, base_ref: str | None = None) -> dict[str, Any]:
    """{pending, *VIEWS, ...}: a dataset picked: shown with its settings (an upload that waited for its
    columns is dropped; an open delete box is closed)."""
    return {"pending": None, **show(studio, dataset_id, base_ref), "seen": None, **closed_box()}


def pick_base(studio: Studio, dataset_id: str | None, pending: dict | None, base_ref: str | None) -> dict[str, Any]:
    """{*VIEWS, seen}: the data again in the tokens of another base model (its tokenizer and context: the
    lengths, the cuts and the template preview change with it); an upload waiting for its columns stays."""
    if pending:
        return {}
    return {**show(studio, dataset_id, base_ref), "seen": None}


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


def refused(message: str) -> dict[str, Any]:
    """A refused upload: the message, and nothing of the previous file left on the page (its preview,
    histogram or dropped rows would read as this file's)."""
    return {"upload": gr.File(value=None), "pending": None, **nothing_shown(f"{CANNOT_USE}{message}"), "seen": None}


def refused_upload(studio: Studio, name: str) -> dict[str, Any]:
    """A file the browser refused before any upload (see UPLOAD_WATCH): of a type the tab does not take, or
    over the upload limit. No server event would tell the tab, so the page says why here."""
    name = safe_filename(name or "the file")
    too_big = f"{name} is larger than the upload limit of {upload_limit(studio.max_upload_bytes)}."
    return refused(file_type_problem(Path(name)) or too_big)


def do_upload(studio: Studio, file: str | None, dataset_id: str | None, base_ref: str | None = None) -> dict[str, Any]:
    """Check an uploaded file. A usable one is copied into the workspace and listed; one whose columns need
    naming waits (outside the workspace) for Apply, shown as itself (the Dataset box names no other file
    meanwhile); anything else is explained and left out."""
    if not file:
        return {}
    source = Path(file)
    name = safe_filename(source.name)
    if file_type_problem(Path(name)) or source.stat().st_size > studio.max_upload_bytes:
        return refused_upload(studio, name)
    inspection = Inspection(studio, source, name, "auto", None, stored=False, base_ref=base_ref)
    shown = {**inspection.views(), "seen": None, **closed_box()}
    if inspection.columns_to_choose:
        return {**shown, "dataset": gr.Dropdown(value=None), "pending": {"path": str(source), "name": name}}
    if inspection.error:
        return {**shown, "upload": gr.File(value=None), "pending": None}
    key = store_upload(studio, source, name, "auto", {}, inspection.kept)
    return {**shown, "dataset": choices(studio, key), "upload": gr.File(value=None), "pending": None}


def do_validate(
    studio: Studio, pending, dataset_id, format_choice: str, prompt: str, response: str, system: str, base_ref=None
):
    """Read the waiting upload (else the chosen dataset) with the chosen format and columns; a waiting
    upload that now works is stored, a stored dataset keeps the settings."""
    mapping = {k: v for k, v in (("prompt", prompt), ("response", response), ("system", system)) if v}
    mapping = mapping if format_choice == "pairs" else {}
    if pending:
        source, name = Path(pending["path"]), pending["name"]
        inspection = Inspection(studio, source, name, format_choice, mapping, stored=False, base_ref=base_ref)
        if inspection.error:
            return {**inspection.views(), "seen": None}
        key = store_upload(studio, source, name, format_choice, mapping, inspection.kept)
        return {**inspection.views(), "dataset": choices(studio, key), "upload": gr.File(value=None), "pending": None,
                "seen": None}  # fmt: skip
    row = studio.store.dataset(dataset_id) if dataset_id else None
    if row is None:
        return {"status": "⚠ Pick or upload a dataset first."}
    inspection = inspect_stored(studio, row, format_choice, mapping, base_ref)
    if not inspection.error:
        studio.store.update_dataset(dataset_id, format=format_choice, mapping=mapping, rows=inspection.kept)
    return {**inspection.views(), "dataset": choices(studio, dataset_id), "seen": None}


def show_page(studio: Studio, dataset_id: str | None, page_number: float, base_ref: str | None = None) -> str:
    """One page of the chosen dataset's preview (the file is neither read nor encoded again: see
    studio.datasets)."""
    row = studio.store.dataset(dataset_id) if dataset_id else None
    inspection = inspect_stored(studio, row, base_ref=base_ref) if row else None
    if inspection is None or inspection.error:
        return ""
    return preview_html(
        inspection.data, inspection.encoded, inspection.tokenizer, inspection.context_length, int(page_number or 1)
    )


def turn_page(studio: Studio, dataset_id: str | None, page_number: float, base_ref: str | None = None):
    """{preview}: show_page() as the tab draws it."""
    return {"preview": show_page(studio, dataset_id, page_number, base_ref)}


def closed_box() -> dict[str, Any]:
    return {"confirm_row": gr.Row(visible=False), "doomed": None}


def ask_delete(studio: Studio, dataset_id: str | None, pending: dict | None = None) -> dict[str, Any]:
    """{confirm_row, confirm_text, deleted, doomed}: the box that asks to confirm, naming the dataset as the
    picker does (with when it came, if another shares its name), and the id it names; or why nothing may be
    deleted (a sample, a dataset a run uses, an upload still waiting for its columns: it is not stored)."""
    if pending:
        why = f"{pending['name']} waits for its columns and is not stored: there is nothing to delete."
        return {**closed_box(), "deleted": f"⚠ {html.escape(why)} Pick another dataset to leave it."}
    try:
        row = studio.deletable_dataset(dataset_id)
    except StudioError as e:
        return {**closed_box(), "deleted": f"⚠ {html.escape(str(e))}"}
    label = dict((key, label) for label, key in studio.dataset_choices()).get(row["id"], row["name"])
    text = f"Delete **{html.escape(label)}**? Its file leaves the workspace; models trained on it keep working."
    return {"confirm_row": gr.Row(visible=True), "confirm_text": text, "deleted": "", "doomed": row["id"]}


def delete(studio: Studio, dataset_id: str | None, doomed: str | None = None, base_ref=None) -> dict[str, Any]:
    """Delete the dataset dataset_id names, then show the next one. doomed: the id the confirmation box named
    (the page sends it; None from the API): the pick may have changed since, and then nothing is deleted."""
    if doomed is not None and doomed != dataset_id:
        return {**closed_box(), "deleted": "⚠ The pick changed after Delete… was pressed: nothing was deleted."}
    try:
        message = studio.delete_dataset(dataset_id)
    except StudioError as e:
        return {**closed_box(), "deleted": f"⚠ {html.escape(str(e))}"}
    chosen = pick(studio, None)
    return {**closed_box(), "dataset": choices(studio, chosen), "deleted": html.escape(message),
            **show(studio, chosen, base_ref), "seen": None}  # fmt: skip


# Gradio refuses a file over max_file_size, or of a type not offered, in the browser, and no server event tells
# the tab: this watches the upload's file input and, for such a file, presses a hidden button whose event
# clears the previous file's results and says why the file was refused.
UPLOAD_WATCH = """() => {
  if (window.studioUploadWatch) return;
  window.studioUploadWatch = true;
  document.addEventListener("change", (event) => {
    const input = event.target;
    if (!input.matches || !input.matches("#data-upload input[type=file]")) return;
    const taken = (file) => SUFFIXES.some((suffix) => file.name.toLowerCase().endsWith(suffix));
    const refused = [...input.files].find((file) => file.size > LIMIT || !taken(file));
    if (!refused) return;
    window.studioRefusedUpload = refused.name;
    document.querySelector("#data-upload-refused").click();
  }, true);
}"""


def source_row(studio: Studio, ui: SimpleNamespace) -> None:
    gr.Markdown(INTRO)
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
        ui.tokens_of = dropdown(
            label="Tokens as read by",
            info="the base model whose tokenizer and context the preview and lengths use",
            scale=2,
            elem_id="data-tokens-of",
        )
    ui.refused = gr.Button(visible="hidden", elem_id="data-upload-refused")
    ui.refused_name = gr.Textbox(visible="hidden")


def format_row(ui: SimpleNamespace) -> None:
    with gr.Row():
        ui.fmt = gr.Radio(FORMAT_CHOICES, value="auto", label="Format", scale=3, elem_id="data-format")
        ui.prompt_col = dropdown(label="Prompt column", visible=False, scale=1, elem_id="data-prompt-col")
        ui.response_col = dropdown(label="Response column", visible=False, scale=1, elem_id="data-response-col")
        ui.system_col = dropdown(label="System column (optional)", visible=False, scale=1, elem_id="data-system-col")
        ui.apply = gr.Button("Apply", scale=0, min_width=120, elem_classes="inline-button", elem_id="data-apply")


def results(ui: SimpleNamespace) -> None:
    """Status, the preview, the length histogram, the dropped rows, paging and delete."""
    ui.status = gr.Markdown(elem_id="data-status")
    with gr.Row():
        with gr.Column(scale=3):
            ui.preview = html_part(elem_classes="preview", elem_id="data-preview")
        with gr.Column(scale=2):
            ui.hist = html_part(visible=False, elem_classes="chart-box", elem_id="data-hist")
    ui.problems = gr.Dataframe(
        label="Dropped rows", visible=False, interactive=False, wrap=True, max_height=300, elem_id="data-problems"
    )
    with gr.Row():
        ui.page = gr.Number(value=1, precision=0, minimum=1, label="Preview page", scale=1, elem_id="data-page")
        ui.delete = gr.Button("Delete this dataset…", variant="stop", scale=0, elem_classes="inline-button",
                              elem_id="data-delete")  # fmt: skip
        ui.deleted = gr.Markdown(elem_id="data-deleted")
    with gr.Row(visible=False, elem_id="data-confirm") as ui.confirm_row:
        ui.confirm_text = gr.Markdown(elem_id="data-confirm-text")
        ui.confirm = gr.Button("Yes, delete it", variant="stop", scale=0, elem_id="data-confirm-delete")
        ui.cancel = gr.Button("Cancel", scale=0, elem_id="data-confirm-cancel")


def layout(studio: Studio, ui: SimpleNamespace) -> None:
    source_row(studio, ui)
    format_row(ui)
    results(ui)
    ui.pending = gr.State(None)  # an upload whose columns the user still has to name: {"path", "name"}
    ui.seen = gr.State(None)  # shown_signature() of what the view last drew on opening or showing the tab
    ui.doomed = gr.State(None)  # the dataset the open "Yes, delete it" box names
    ui.edits = gr.State(0)  # the number of the page's last own event answered (see PageEvents)


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    views = outputs(ui, *VIEWS)
    # Gradio selects the first tab as the page opens: its stamp is asked for then (and the tab filled), and each
    # time it is shown again (filled only when the stamp changed).
    ui.stamp = when_changed(demo, tab, "data", [ui.dataset, ui.tokens_of], built=False)
    loaded = [ui.dataset, ui.tokens_of, *views, ui.seen, ui.stamp, ui.edits]
    fill_inputs = [ui.dataset, ui.seen, ui.pending, ui.tokens_of, ui.edits]
    ui.stamp.change(keyed(on_load, studio, ui), fill_inputs, loaded, **quiet(demo))
    demo.load(None, js=UPLOAD_WATCH.replace("LIMIT", str(studio.max_upload_bytes)).replace(
        "SUFFIXES", json.dumps([*DATA_SUFFIXES, *SPREADSHEETS])))  # fmt: skip
    demo.unload(forget_page)
    # The page's own events (PageEvents) each give the page their number (edits). Every event that changes
    # the view forgets what was last shown (seen): the next tab switch draws it afresh.
    turned = keyed(own_event(turn_page), studio, ui)
    ui.page.change(turned, [ui.dataset, ui.page, ui.tokens_of], [ui.preview, ui.edits], **LIGHT)
    based = keyed(own_event(pick_base), studio, ui)
    ui.tokens_of.input(based, [ui.dataset, ui.pending, ui.tokens_of], [*views, ui.seen, ui.edits], **LIGHT)
    box = [ui.confirm_row, ui.doomed]
    picked = [ui.pending, *views, ui.seen, *box, ui.edits]
    ui.dataset.input(keyed(own_event(pick_dataset), studio, ui), [ui.dataset, ui.tokens_of], picked, api_name="dataset")
    uploaded = [ui.dataset, ui.upload, ui.pending, *views, ui.seen, *box, ui.edits]
    upload_inputs = [ui.upload, ui.dataset, ui.tokens_of]
    ui.upload.upload(keyed(own_event(do_upload), studio, ui), upload_inputs, uploaded, api_name="upload")
    watched = "() => [window.studioRefusedUpload || '']"
    ui.refused.click(keyed(own_event(refused_upload), studio, ui), ui.refused_name, uploaded, js=watched, **LIGHT)
    validate_inputs = [ui.pending, ui.dataset, ui.fmt, ui.prompt_col, ui.response_col, ui.system_col, ui.tokens_of]
    ui.apply.click(keyed(own_event(do_validate), studio, ui), validate_inputs, uploaded, api_name="validate")
    columns = outputs(ui, *COLUMNS)
    ui.fmt.input(lambda f: [gr.Dropdown(visible=f == "pairs")] * 3, ui.fmt, columns, **LIGHT)
    asked = [ui.confirm_row, ui.confirm_text, ui.deleted, ui.doomed]
    ui.delete.click(keyed(ask_delete, studio, ui), [ui.dataset, ui.pending], asked, **LIGHT)
    ui.cancel.click(lambda: (gr.Row(visible=False), None), None, box, **LIGHT)
    deleted = [ui.dataset, ui.deleted, *views, ui.seen, *box, ui.edits]
    delete_inputs = [ui.dataset, ui.doomed, ui.tokens_of]
    ui.confirm.click(keyed(own_event(delete), studio, ui), delete_inputs, deleted, api_name="delete_dataset")


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name (none)."""
    demo.stamps["data"] = bound(stamp, studio)
    tab, ui = page("1 · Data", "data", lambda ui: layout(studio, ui))
    wire(studio, demo, tab, ui)
    return {}
