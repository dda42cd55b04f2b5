"""Task datasets for fine-tuning: read a file with pandas, detect its format, validate it row by row, and turn
each row into a conversation, then into token ids with a loss mask through the one chat template (llm.data.chat).

Files: .csv, .tsv, .json (an array of objects), .jsonl (one object a line), .parquet, chosen by extension.
Formats, detected from the column names or chosen by the caller:
  pairs     a prompt column and a response column (question/answer, input/output, prompt/completion,
            instruction/response, ... or any names through a mapping), optional system column
  alpaca    instruction, optional input (appended to the instruction), output, optional system
  messages  a column (messages / conversations) holding a list of turns, {role, content} with roles
            user/assistant/system or ShareGPT's {from, value} with human/gpt/system; one or many turns a row

Row numbers are 1-based: the n-th record of a CSV/TSV (the header is not a row), JSON array or Parquet file,
and the line number in a JSONL file. Problems that make the whole file unusable (unreadable, not UTF-8,
malformed JSON, no rows, missing columns, no usable row) raise TaskFileError; a bad row (empty or mistyped
field, unknown role, ...) is dropped and reported as a Problem with its row and column, never silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm.config import OVERFLOW, TASK_FORMATS, TASK_ROLES, FinetuneConfig
from llm.data.chat import render
from llm.data.text import wide_encoding
from llm.data.tokenizer import Tokenizer
from llm.errors import ConfigError, TaskFileError

READERS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
MAX_COLUMNS = 1_000  # a task file with more columns is a table of something else
# A cell longer than this is refused (its row dropped) before it is tokenized: no context this project trains
# holds more, so training would see only its start, and encoding 20 MB of text took a minute and a gigabyte.
MAX_CELL_CHARS = 1 << 17
SPREADSHEETS = (".xlsx", ".xls", ".ods", ".numbers")  # not read: saving as CSV is one step in each
BYTE_FALLBACK_WARNING = 0.5  # warn when more than this share of a dataset's tokens are byte-fallback pieces

# Column names recognised without a mapping, in order of preference (compared case-insensitively).
PROMPT_NAMES = ("prompt", "question", "input", "instruction", "query", "user")
RESPONSE_NAMES = ("response", "answer", "output", "completion", "target", "assistant")
SYSTEM_NAMES = ("system", "system_prompt")
MESSAGES_NAMES = ("messages", "conversations", "conversation")
# Which mapping keys each format accepts.
MAPPING_KEYS = {
    "pairs": TASK_ROLES,
    "alpaca": ("system",),
    "messages": ("messages", "system", "tools"),
}
# Turn roles: the chat template's own, ShareGPT's and OpenAI's (tool use included: see llm/data/chat.py).
ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "system": "system",
    "function_call": "assistant",  # ShareGPT tool use (glaive): the call is what the model learns to write
    "observation": "tool",  # ... and the tool's result, read, never trained on
    "tool": "tool",  # OpenAI's tool result
    "function": "tool",  # OpenAI's older name for it
}
TOOLS_NAMES = ("tools", "functions")  # a column of tool definitions: they join the system turn


@dataclass
class Problem:
    """A dropped row and why. reason is a short category (counted in summaries); detail says exactly what."""

    row: int
    column: str | None
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Example:
    row: int
    messages: list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": text}]


@dataclass
class TaskData:
    source: str  # the file it was read from
    format: str  # one of TASK_FORMATS
    columns: list[str]
    examples: list[Example]
    problems: list[Problem]
    content_hash: str  # sha256 of the file's bytes (first 16 hex digits): which data a run saw
    mapping: dict[str, str] = field(default_factory=dict)  # the columns used, e.g. {"prompt": "question", ...}


@dataclass
class EncodedExamples:
    items: list[tuple[list[int], list[bool]]]  # (token ids, trained-on mask) of each kept example
    rows: list[int]  # the file row of each item
    lengths: list[int]  # each item's full token length, before truncation
    truncated: list[int]  # rows cut to the context length (at the end, or at the start: see cut_start)
    dropped: list[Problem]  # rows left out here (too long, or nothing left to train on after truncation)
    byte_counts: list[int] = field(default_factory=list)  # each item's byte-fallback tokens, before truncation
    cut_start: list[int] = field(default_factory=list)  # truncated rows cut at the start (the prompt filled it)

    @property
    def byte_tokens(self) -> int:
        """Byte-fallback tokens among the kept items' tokens before truncation (see lengths)."""
        return sum(self.byte_counts)

    def combined(self, other: EncodedExamples) -> EncodedExamples:
        """Both sets as one (e.g. a run's train and validation rows, for one data summary)."""
        return EncodedExamples(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))  # all lists

    def select(self, examples: list[Example]) -> EncodedExamples:
        """The encoding of these examples (some of the ones encoded, e.g. a split of the file), in this order."""
        rows = {e.row for e in examples}
        kept = [i for i, row in enumerate(self.rows) if row in rows]
        return EncodedExamples(
            [self.items[i] for i in kept],
            [self.rows[i] for i in kept],
            [self.lengths[i] for i in kept],
            [row for row in self.truncated if row in rows],
            [p for p in self.dropped if p.row in rows],
            [self.byte_counts[i] for i in kept],
            [row for row in self.cut_start if row in rows],
        )


class _RowProblem(Exception):
    def __init__(self, column: str | None, reason: str, detail: str = ""):
        super().__init__(reason)
        self.column, self.reason, self.detail = column, reason, detail


# ----------------------------------------------------------------------------------------------------------
# Reading files


def _decode_utf8(path: Path, raw: bytes) -> str:
    wide = wide_encoding(raw)
    if wide:
        raise TaskFileError(f"{path}: the file is saved as {wide}: save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise TaskFileError(
            f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at byte offset {e.start}, line {line}); "
            "save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


class _Object(dict):
    """A parsed JSON object that remembers the first key it held twice (json keeps the last value silently)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        self.repeated = None
        if len(self) < len(pairs):  # the dict kept one value of a repeated key
            self.repeated = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)


class _Constant(str):
    """NaN, Infinity or -Infinity in a JSON text: Python's json module reads them, JSON has no such values."""


def _nested(value: Any) -> Iterator[Any]:
    """value and every value inside it, walked without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _repeated_key(value: Any) -> str | None:
    """The first key held twice by any object inside a parsed JSON value."""
    return next((v.repeated for v in _nested(value) if isinstance(v, _Object) and v.repeated is not None), None)


def _too_deep(text: str, limit: int = 500) -> tuple[int, int]:
    """(line, column) where brackets outside strings first nest deeper than limit (1-based)."""
    depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        token = match.group()
        depth += 1 if token in "[{" else -1 if token in "]}" else 0
        if depth > limit:
            start = match.start()
            line_start = text.rfind("\n", 0, start) + 1
            return text.count("\n", 0, start) + 1, start - line_start + 1
    return 1, 1


def _load_json(path: Path, text: str, line_no: int | None = None) -> Any:
    """json.loads with every failure as a TaskFileError naming the line and column (line_no: a JSONL line)."""
    try:
        return json.loads(text, object_pairs_hook=_Object, parse_constant=_Constant)
    except json.JSONDecodeError as e:
        line, column, message = line_no or e.lineno, e.colno, f"malformed JSON ({e.msg})"
    except RecursionError:
        (line, column), message = _too_deep(text), "JSON nested too deeply to read"
        line = line_no or line
    raise TaskFileError(f"{path}, line {line}, column {column}: {message}")


def _looks_like_jsonl(text: str) -> bool:
    """Whether text holds one JSON object a line (two or more of them)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    try:
        return len(lines) > 1 and all(isinstance(json.loads(ln), dict) for ln in lines)
    except (ValueError, RecursionError):
        return False


def _check_records(path: Path, records: list[Any], rows: list[int], row_word: str) -> None:
    """Each record must be an object that holds no key twice."""
    for row, record in zip(rows, records, strict=True):
        if not isinstance(record, dict):
            array = row_word == "line" and isinstance(record, list) and row == rows[0]
            hint = " (a JSON array of objects belongs in a .json file)" if array else ""
            raise TaskFileError(f"{path}, {row_word} {row}: expected a JSON object, got {_type_name(record)}{hint}")
        repeated = _repeated_key(record)
        if repeated is not None:
            raise TaskFileError(
                f"{path}, {row_word} {row}, column {repeated!r}: the key appears twice in one record; keep one"
            )
        for key, value in record.items():
            constant = next((v for v in _nested(value) if isinstance(v, _Constant)), None)
            if constant is not None:
                raise TaskFileError(
                    f"{path}, {row_word} {row}, column {key!r}: {constant} is not a JSON value (JSON has no NaN or "
                    "Infinity): write null for no value, or the text in quotes"
                )


def _check_json(path: Path, text: str, lines: bool) -> None:
    """Refuse a JSON / JSONL text that is not an array / lines of objects, naming the line and column (the json
    module's own reading: pandas accepts some shapes silently, such as a line holding an array or a key twice)."""
    header = first_line(text)
    if header[:1] not in ("{", "[", "") and len(next(csv.reader([header], delimiter=csv_separator(header)))) > 1:
        raise TaskFileError(f"{path}: this is a table (its first line is {header[:60]!r}), not JSON: rename it to .csv")
    if lines:
        numbered = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if len(numbered) > 1 and numbered[0][1].lstrip().startswith("["):
            try:
                json.loads(text)
            except (ValueError, RecursionError):
                pass  # not one JSON array either: report the first bad line below
            else:
                raise TaskFileError(
                    f"{path}: this is a JSON array, not JSON Lines (one object a line): rename it to .json"
                )
        records = [_load_json(path, ln, i) for i, ln in numbered]
        _check_records(path, records, [i for i, _ in numbered], "line")
        return
    try:
        records = _load_json(path, text)
    except TaskFileError:
        if _looks_like_jsonl(text):
            raise TaskFileError(
                f"{path}: this is JSON Lines (one object a line), not a JSON array: rename it to .jsonl"
            ) from None
        raise
    if not isinstance(records, list):
        raise TaskFileError(
            f"{path}: expected a JSON array of objects, got {_type_name(records)} (for one object a line use .jsonl)"
        )
    _check_records(path, records, list(range(1, len(records) + 1)), "row")


def _csv_header_error(path: Path, text: str, sep: str) -> str | None:
    """A column name used twice in the header (pandas would rename the second one silently)."""
    header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header, 1):
        if name.strip():
            positions.setdefault(name.strip(), []).append(i)
    for name, where in positions.items():
        if len(where) > 1:
            return (
                f"{path}, header, column {name!r}: the name is used {len(where)} times (columns "
                f"{', '.join(map(str, where))}); give each column its own name"
            )
    return None


CSV_SEPARATORS = (",", ";", "\t", "|")  # ";" is what spreadsheets write where "," is the decimal mark


def first_line(text: str) -> str:
    """The first line that holds something, without copying the rest of a large text."""
    return re.match(r"\s*([^\n]*)", text).group(1).rstrip()


def header_cells(header: str, sep: str) -> int:
    """How many cells the header line holds with this separator (one, when a cell is longer than the csv
    module reads: such a separator does not split this header)."""
    try:
        return len(next(csv.reader([header], delimiter=sep), []))
    except csv.Error:
        return 1


def csv_separator(header: str) -> str:
    """The separator of a .csv file: the one that splits its header line into the most columns ("," on a
    tie), so a spreadsheet's semicolon export reads as it looks rather than as one column."""
    counts = {sep: header_cells(header, sep) for sep in CSV_SEPARATORS}
    return max(CSV_SEPARATORS, key=lambda sep: counts[sep])  # max keeps the first of equals: ","


def file_type_problem(path: Path) -> str | None:
    """Why a file of this name cannot be read as a task file (its suffix), or None when it can."""
    suffix = path.suffix.lower()
    if suffix in READERS:
        return None
    hint = "; a spreadsheet saves one with Save as > CSV (UTF-8)" if suffix in SPREADSHEETS else ""
    return f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(READERS)}{hint}"


def read_frame(path: Path, name: str | None = None) -> tuple[pd.DataFrame, list[int], bytes]:
    """The file as a DataFrame, the row number of each of its rows, and the file's bytes. Any failure to
    read it (a parser's own, deep nesting, memory) is a TaskFileError about the file, never a traceback.
    name: how messages call the file and what its type is read from (an upload kept under a temporary name),
    default its path."""
    shown = Path(name) if name else path
    if path.is_dir():
        raise TaskFileError(f"{shown}: is a folder, not a file; give the task file itself")
    problem = file_type_problem(shown)
    if problem:
        raise TaskFileError(problem)
    if not path.is_file():
        what = "not a regular file (a device, a pipe or a socket)" if path.exists() else "no such file"
        raise TaskFileError(f"{shown}: {what}")
    suffix = shown.suffix.lower()
    try:
        raw = path.read_bytes()
        if suffix == ".parquet":
            frame, rows = _read_parquet(shown, raw)
        elif suffix in (".csv", ".tsv"):
            frame, rows = _read_delimited(shown, _decode_utf8(shown, raw), tsv=suffix == ".tsv")
        else:
            frame, rows = _read_json(shown, _decode_utf8(shown, raw), lines=suffix == ".jsonl")
    except TaskFileError:
        raise
    except MemoryError:
        raise TaskFileError(f"{shown}: too large to read with the memory available") from None
    except RecursionError:
        raise TaskFileError(f"{shown}: nested too deeply to read") from None
    except Exception as e:  # a parser's own failure: still a message about the file, never a traceback
        raise TaskFileError(f"{shown}: cannot read the file ({type(e).__name__}: {e})") from None
    _check_width(shown, len(frame.columns))
    return frame, rows, raw


def _check_width(path: Path, columns: int) -> None:
    """A task file holds a few columns; thousands mean a table of something else (or a wrong separator)."""
    if columns > MAX_COLUMNS:
        raise TaskFileError(
            f"{path}, header: {columns:,} columns; a task file holds a few (at most {MAX_COLUMNS:,}): is it a table "
            "of something else, or are its columns separated by another character?"
        )


def _read_parquet(path: Path, raw: bytes) -> tuple[pd.DataFrame, list[int]]:
    try:
        frame = pd.read_parquet(io.BytesIO(raw))
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise TaskFileError(f"{path}: not a readable Parquet file ({e})") from None
    return frame, list(range(1, len(frame) + 1))


def _read_delimited(path: Path, text: str, tsv: bool) -> tuple[pd.DataFrame, list[int]]:
    """A .csv or .tsv file (tsv): a tab separates a .tsv's columns, a .csv's the one its header says."""
    header = first_line(text)
    if header[:1] in ("{", "["):
        right = ".jsonl (one object a line)" if _looks_like_jsonl(text) else ".json (an array of objects)"
        raise TaskFileError(f"{path}: this is JSON, not a table: rename it to {right}")
    sep = "\t" if tsv else csv_separator(header)
    _check_width(path, header_cells(header, sep))
    try:
        # Every cell as text, empty cells as "": numbers and "NA" stay what the user wrote. index_col=False
        # and the warning as an error: pandas reads a first row with one cell too many as an index column
        # (the rows shift by a column) or, told not to, drops the cell with only a warning.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise TaskFileError(f"{path}: the file is empty (no header, no rows)") from None
    except pd.errors.ParserWarning:
        raise TaskFileError(_ragged(path, *_first_ragged_row(text, sep), sep)) from None
    except pd.errors.ParserError as e:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if found:
            header_n, line, cells = found.groups()
            raise TaskFileError(_ragged(path, int(line), int(cells), int(header_n), sep)) from None
        raise TaskFileError(f"{path}: malformed {path.suffix[1:].upper()} ({str(e).strip()})") from None
    error = _csv_header_error(path, text, sep)
    if error:
        raise TaskFileError(error)
    return frame, list(range(1, len(frame) + 1))


def _ragged(path: Path, line: int, cells: int, header: int, sep: str) -> str:
    return (
        f"{path}, line {line}: {cells} cells where the header has {header} (a cell that holds the separator "
        f"{sep!r} needs quotes around it)"
    )


def _first_ragged_row(text: str, sep: str) -> tuple[int, int, int]:
    """(line, cells, header cells) of the first record whose cells the header does not match."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    header = len(next(reader))
    for record in reader:
        if len(record) != header and any(record):
            return reader.line_num, len(record), header
    raise AssertionError("pandas found a ragged row that the csv module does not")


def _read_json(path: Path, text: str, lines: bool) -> tuple[pd.DataFrame, list[int]]:
    """A JSON array of objects, or JSONL (one object a line: the row number is the line number)."""
    _check_json(path, text, lines)
    try:
        frame = pd.read_json(io.StringIO(text), lines=lines, orient="records", dtype=False)
    except (ValueError, TypeError) as e:
        raise TaskFileError(f"{path}: unreadable JSON ({e})") from None
    rows = [i for i, ln in enumerate(text.splitlines(), 1) if ln.strip()] if lines else list(range(1, len(frame) + 1))
    assert len(rows) == len(frame), "JSONL rows and non-blank lines disagree"
    return frame, rows


# ----------------------------------------------------------------------------------------------------------
# Formats and columns


def _find(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {str(c).strip().lower(): c for c in columns}  # " Question " as written by some spreadsheets
    return next((lower[n] for n in names if n in lower), None)


def detect_format(columns: list[str], mapping: dict[str, str] | None = None) -> str | None:
    """The format the column names suggest, or None. A mapping of messages implies that format, one of the
    prompt or the response implies pairs (a system column alone says nothing)."""
    mapping = mapping or {}
    if "messages" in mapping:
        return "messages"
    if "prompt" in mapping or "response" in mapping:
        return "pairs"
    if _find(columns, MESSAGES_NAMES):
        return "messages"
    if _find(columns, ("instruction",)) and _find(columns, ("output",)):
        return "alpaca"
    if _find(columns, PROMPT_NAMES) and _find(columns, RESPONSE_NAMES):
        return "pairs"
    return None


def suggest_mapping(columns: list[str]) -> dict[str, str]:
    """{role: column} for the pairs roles whose column a name gives away (a file whose format cannot be told
    still has a "prompt" column, say): what a front end offers first when the user must choose."""
    found = {"prompt": _find(columns, PROMPT_NAMES), "response": _find(columns, RESPONSE_NAMES)}
    found["system"] = _find(columns, SYSTEM_NAMES)
    return {role: column for role, column in found.items() if column is not None}


def _columns_for(path: Path, fmt: str, columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """{field: column} for the format: required fields must exist, optional ones are taken when present."""
    unknown = sorted(set(mapping) - set(MAPPING_KEYS[fmt]))
    if unknown:
        raise TaskFileError(
            f"{path}: the {fmt} format takes a column mapping for {', '.join(MAPPING_KEYS[fmt])}, not {unknown}"
        )
    for key, column in mapping.items():
        if column not in columns:
            raise TaskFileError(
                f"{path}: no column {column!r} (for {key}); the file has columns {columns}", kind="columns"
            )
    wanted = {
        "pairs": {"prompt": PROMPT_NAMES, "response": RESPONSE_NAMES, "system": SYSTEM_NAMES},
        "alpaca": {"instruction": ("instruction",), "input": ("input",), "output": ("output",), "system": SYSTEM_NAMES},
        "messages": {"messages": MESSAGES_NAMES, "system": SYSTEM_NAMES, "tools": TOOLS_NAMES},
    }[fmt]
    optional = {"system", "input", "tools"}
    chosen = {}
    for key, names in wanted.items():
        column = mapping.get(key) or _find(columns, names)
        if column is None and key not in optional:
            hint = " (or name the prompt and response columns)" if fmt == "pairs" else ""
            raise TaskFileError(
                f"{path}: missing column for the {fmt} format's {key}: expected one of {list(names)}{hint}; "
                f"the file has columns {columns}",
                kind="columns",
            )
        if column is not None:
            chosen[key] = column
    return chosen


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"a number ({value})"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return value is pd.NA


def _text(value: Any, column: str, what: str, required: bool = True) -> str | None:
    """A field's text, stripped; a missing or empty field is a problem when required, else None."""
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        if required:
            raise _RowProblem(column, f"empty {what}")
        return None
    if not isinstance(value, str):
        raise _RowProblem(column, "wrong type", f"{what} should be text, got {_type_name(value)}")
    if len(value) > MAX_CELL_CHARS:
        raise _RowProblem(
            column, "too long", f"{what} has {len(value):,} characters; a cell holds at most {MAX_CELL_CHARS:,}"
        )
    if "\x00" in value:
        raise _RowProblem(
            column, "NUL character", f"{what} holds a NUL byte at character {value.index(chr(0))}; is it binary?"
        )
    return value.strip()


def _turn(turn: Any, i: int, column: str) -> dict[str, str]:
    """Turn i of a conversation, {role, content} or ShareGPT's {from, value}, with the role normalised."""
    if not isinstance(turn, dict):
        raise _RowProblem(column, "malformed turn", f"turn {i} is {_type_name(turn)}, not an object")
    role_key, content_key = ("role", "content") if "role" in turn else ("from", "value")
    if role_key not in turn or content_key not in turn:
        raise _RowProblem(column, "malformed turn", f"turn {i} needs role/content or from/value keys")
    role = turn[role_key]
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise _RowProblem(
            column,
            "unknown role",
            f"turn {i} has role {role!r}; expected user/assistant/system/tool (or ShareGPT's human/gpt/"
            "function_call/observation)",
        )
    role = ROLE_ALIASES[role.lower()]
    calls = turn.get("tool_calls") if role == "assistant" else None
    if calls:  # OpenAI's tool calls: the model learns to write them, as JSON after any text
        text = _text(turn[content_key], column, f"turn {i} content", required=False)
        return {"role": role, "content": "\n".join(filter(None, [text, json.dumps(calls, ensure_ascii=False)]))}
    return {"role": role, "content": _text(turn[content_key], column, f"turn {i} content")}


def _json_cell(text: str, column: str) -> Any:
    """A CSV cell holding JSON (a conversation), read; plain text there is a wrong type, not malformed JSON."""
    if text.strip() and text.lstrip()[0] not in "[{":
        raise _RowProblem(column, "wrong type", f"expected a list of turns, got text ({text[:40]!r})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _RowProblem(column, "malformed JSON", f"{e.msg} at character {e.pos}") from None
    except RecursionError:
        raise _RowProblem(column, "malformed JSON", "nested too deeply to read") from None


def _turns(value: Any, column: str, need_answer: bool = True) -> list[dict[str, str]]:
    """A messages cell (a list of turns; a JSON string in CSV) -> [{"role", "content"}]. need_answer: a row
    without an assistant turn is a problem (a prompt conversation may have none)."""
    if isinstance(value, str):
        value = _json_cell(value, column)
    if _is_missing(value):
        raise _RowProblem(column, "empty conversation")
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise _RowProblem(column, "wrong type", f"expected a list of turns, got {_type_name(value)}")
    if len(value) == 0:
        raise _RowProblem(column, "empty conversation")
    turns = [_turn(turn, i, column) for i, turn in enumerate(value, 1)]
    roles = [t["role"] for t in turns]
    if need_answer and "assistant" not in roles:
        raise _RowProblem(column, "no assistant turn", "nothing to learn from this row")
    # An answer needs a question: training on an assistant turn that answers nothing teaches the model to
    # talk without being asked, and generation always asks with a user turn (llm.data.chat.prompt_ids).
    if "user" not in roles:
        raise _RowProblem(column, "no user turn", "the conversation holds only assistant (and system) turns")
    first_answer = roles.index("assistant") if "assistant" in roles else len(roles)
    if roles.index("user") > first_answer:
        raise _RowProblem(column, "assistant turn first", f"turn {first_answer + 1} answers before any user turn asks")
    return turns


def _row_messages(fmt: str, record: dict[str, Any], cols: dict[str, str]) -> list[dict[str, str]]:
    system = (
        _text(record[cols["system"]], cols["system"], "system prompt", required=False) if "system" in cols else None
    )
    if fmt == "pairs":
        prompt = _text(record[cols["prompt"]], cols["prompt"], "prompt")
        response = _text(record[cols["response"]], cols["response"], "response")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    elif fmt == "alpaca":
        instruction = _text(record[cols["instruction"]], cols["instruction"], "instruction")
        extra = _text(record[cols["input"]], cols["input"], "input", required=False) if "input" in cols else None
        output = _text(record[cols["output"]], cols["output"], "output")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    else:
        messages = _turns(record[cols["messages"]], cols["messages"])
        if messages[0]["role"] == "system":
            system = None  # the conversation brings its own
        tools = _tools(record[cols["tools"]], cols["tools"]) if "tools" in cols else None
        if tools and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n{tools}"}
        elif tools:
            system = f"{system}\n{tools}" if system else tools
    return ([{"role": "system", "content": system}] if system else []) + messages


def _tools(value: Any, column: str) -> str | None:
    """A tools cell (JSON text or a list of tool definitions) as the system turn's text, or None."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    text = _text(value, column, "tools", required=False)
    return f"Tools you can call: {text}" if text and text not in ("[]", "{}") else None


def parse_rows(
    path: Path, row_numbers: list[int], frame: pd.DataFrame, parse: Callable[[int, dict], Any]
) -> tuple[list, list[Problem]]:
    """(parse(row, record) for each usable row, a Problem for each row parse refuses with a _RowProblem); a
    TaskFileError naming the first problems when no row is usable. The one row loop of every table reader."""
    items, problems = [], []
    for row, record in zip(row_numbers, frame.to_dict("records"), strict=True):
        try:
            items.append(parse(row, record))
        except _RowProblem as p:
            problems.append(Problem(row, p.column, p.reason, p.detail))
    if not items:
        shown = "; ".join(str(p) for p in problems[:5])
        raise TaskFileError(f"{path}: no usable rows, all {len(problems)} were dropped: {shown}")
    return items, problems


def read_task_file(
    path: str | Path, format: str = "auto", mapping: dict[str, str] | None = None, name: str | None = None
) -> TaskData:
    """Read and validate a task dataset. See the module docstring for files, formats and row numbers. name:
    how messages call the file (default its path; see read_frame)."""
    source = Path(path)
    if format != "auto" and format not in TASK_FORMATS:
        raise TaskFileError(f"unknown task format {format!r}; choose auto or one of {', '.join(TASK_FORMATS)}")
    mapping = {k: v for k, v in (mapping or {}).items() if v}
    frame, row_numbers, raw = read_frame(source, name)
    path = Path(name) if name else source  # as messages call it
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if len(frame) == 0:
        raise TaskFileError(f"{path}: no rows" + (f" (only the columns {columns})" if columns else ""))
    fmt = format if format != "auto" else detect_format(columns, mapping)
    if fmt is None:
        raise TaskFileError(
            f"{path}: cannot tell the format from the columns {columns}. Expected a prompt column "
            f"({'/'.join(PROMPT_NAMES)}) and a response column ({'/'.join(RESPONSE_NAMES)}), alpaca's "
            f"instruction/output, or a {'/'.join(MESSAGES_NAMES)} column; or name the prompt and response columns",
            kind="columns",
        )
    cols = _columns_for(path, fmt, columns, mapping)
    examples, problems = parse_rows(
        path, row_numbers, frame, lambda row, record: Example(row, _row_messages(fmt, record, cols))
    )
    content_hash = hashlib.sha256(raw).hexdigest()[:16]
    return TaskData(str(source), fmt, columns, examples, problems, content_hash, cols)


# ----------------------------------------------------------------------------------------------------------
# Tokens, splits, summaries


def encode_examples(
    data: TaskData, tokenizer: Tokenizer, context_length: int, overflow: str = "truncate"
) -> EncodedExamples:
    """Render each example with the chat template. A sequence of n ids trains on n-1 predictions, so up to
    context_length + 1 ids fit; a longer one is cut to that (overflow="truncate") or dropped ("drop").

    Truncation keeps the start and cuts the end, so a long answer is learnt from its beginning. When the prompt
    alone fills the context (nothing of the answer would be left), the start is cut instead: the row keeps
    the end of its prompt and its whole last answer, as generation sees a long prompt (its last
    context_length tokens). A row whose last answer alone does not fit either is dropped."""
    if overflow not in OVERFLOW:
        raise ConfigError(f"must be one of {OVERFLOW}, got {overflow!r}", field="overflow")
    limit = context_length + 1
    out = EncodedExamples([], [], [], [], [])
    for example in data.examples:
        ids, mask = render(tokenizer, example.messages)
        full_ids, n = ids, len(ids)
        if n > limit:
            if overflow == "drop":
                detail = f"{n} tokens; the context holds {context_length}"
                out.dropped.append(Problem(example.row, None, "too long", detail))
                continue
            if any(mask[1:limit]):
                ids, mask = ids[:limit], mask[:limit]
            else:
                answer = n - last_answer_start(mask) + 1  # the last answer and the token before it (its marker)
                if answer > limit:
                    detail = (
                        f"the prompt fills the context of {context_length} tokens, and the answer alone takes {answer}"
                    )
                    out.dropped.append(Problem(example.row, None, "too long", detail))
                    continue
                ids, mask = ids[-limit:], mask[-limit:]
                out.cut_start.append(example.row)
            out.truncated.append(example.row)
        out.items.append((ids, mask))
        out.rows.append(example.row)
        out.lengths.append(n)
        out.byte_counts.append(int(tokenizer.byte_ids[full_ids].sum()))
    return out


def last_answer_start(mask: list[bool]) -> int:
    """Where the last trained-on run of a rendered conversation begins."""
    end = max(i for i, trained in enumerate(mask) if trained)
    while end > 0 and mask[end - 1]:
        end -= 1
    return end


def split_examples(
    data: TaskData, val_fraction: float | None = None, seed: int | None = None
) -> tuple[TaskData, TaskData]:
    """A seeded (train, validation) split of the examples, each keeping file order; problems stay with train.
    The one held-out split: fine-tuning, its probes, Compare's batch scoring and eval-task all use it, with
    FinetuneConfig's val_fraction and seed unless told otherwise."""
    defaults = FinetuneConfig()
    val_fraction = defaults.val_fraction if val_fraction is None else val_fraction
    seed = defaults.seed if seed is None else seed
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"must be in [0, 1), got {val_fraction}", field="val_fraction")
    n = len(data.examples)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    held_out = set(order[:n_val].tolist())
    train = [e for i, e in enumerate(data.examples) if i not in held_out]
    val = [e for i, e in enumerate(data.examples) if i in held_out]
    return replace(data, examples=train), replace(data, examples=val, problems=[])


def summary(data: TaskData, encoded: EncodedExamples) -> dict[str, Any]:
    """Rows kept and dropped (with reasons), truncations, token length statistics, and warnings about the data
    as the model's tokenizer sees it."""
    dropped = data.problems + encoded.dropped
    lengths = np.array(encoded.lengths or [0])
    trained = sum(sum(mask[1:]) for _, mask in encoded.items)
    byte_share = encoded.byte_tokens / max(1, int(lengths.sum()))
    warnings = []
    if byte_share > BYTE_FALLBACK_WARNING:
        warnings.append(
            f"{byte_share:.0%} of the tokens are single bytes (byte fallback): the model's tokenizer has no pieces "
            f"for most of this text's characters (a language or script it was not trained on), so examples are "
            f"long (median {np.median(lengths):.0f} tokens) and made of tokens the model has hardly seen; "
            "expect poor answers, or use a base model whose tokenizer knows this text"
        )
    return {
        "source": data.source,
        "format": data.format,
        "columns": data.columns,
        "mapping": data.mapping,
        "content_hash": data.content_hash,
        "rows": len(data.examples) + len(data.problems),
        "kept": len(encoded.items),
        "dropped": len(dropped),
        "drop_reasons": dict(Counter(p.reason for p in dropped).most_common()),
        "problems": [str(p) for p in sorted(dropped, key=lambda p: p.row)],
        "truncated": len(encoded.truncated),
        "tokens": {
            "min": int(lengths.min()),
            "mean": round(float(lengths.mean()), 1),
            "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "total": int(lengths.sum()),
            "trained": int(trained),
        },
        "byte_fallback_share": round(byte_share, 3),
        "warnings": warnings,
    }
