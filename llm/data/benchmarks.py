"""Benchmark task files, and the tasks that ship in datasets/benchmarks/: zero-shot multiple choice, each row's
prompts already built as lm-evaluation-harness builds them (datasets/benchmarks/MANIFEST.md says how and from
what), so scoring has no task-specific code.

A task file is JSONL, gzip'd or not, one row a line, in one of two shapes:
    {"id": str, "context": str, "choices": [str, ...], "label": int, "subtask": str (optional)}
        choice i is scored as the continuation DELIMITER + choices[i] after context
    {"id": str, "contexts": [str, ...], "continuation": str, "label": int}      (Winogrande: partial scoring)
        choice i is scored as the continuation DELIMITER + continuation after contexts[i]
label is the index of the right choice. A task whose rows name a subtask (BLiMP's 67 phenomena) is a group:
it is scored per subtask, its score is the mean of theirs, and a row limit applies to each subtask.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llm.errors import ConfigError, TaskFileError

BENCHMARK_DIR = Path(__file__).resolve().parents[2] / "datasets" / "benchmarks"
DELIMITER = " "  # lm-eval's target_delimiter: what goes between a context and each answer
TASK_FILE_SUFFIXES = (".jsonl", ".jsonl.gz")
NORM = ("acc", "acc_norm")


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark as lm-eval defines it: its data file, its task version and the metrics it reports."""

    name: str
    file: str  # a file name in BENCHMARK_DIR, or a path
    version: str  # lm-eval's version of the task's definition (prompts, metrics); "custom" for a user's file
    metrics: tuple[str, ...]  # "acc"; "acc_norm": the choice with the highest log-likelihood per character
    split: str
    about: str
    headline: str = "acc"  # the metric usually quoted for it (the Hugging Face model cards', lm-eval users')


TASKS = {
    spec.name: spec
    for spec in (
        TaskSpec("blimp", "blimp.jsonl.gz", "2.0", ("acc",), "all 67 x 1,000", "grammar: 67 kinds of minimal pair"),
        TaskSpec("hellaswag", "hellaswag.jsonl.gz", "1.0", NORM, "validation", "commonsense endings", "acc_norm"),
        TaskSpec("arc_easy", "arc_easy.jsonl.gz", "1.0", NORM, "test", "grade-school science"),
        TaskSpec("arc_challenge", "arc_challenge.jsonl.gz", "1.0", NORM, "test", "harder science", "acc_norm"),
        TaskSpec("piqa", "piqa.jsonl.gz", "1.0", NORM, "validation", "physical commonsense", "acc_norm"),
        TaskSpec("winogrande", "winogrande.jsonl.gz", "1.0", ("acc",), "validation (xl)", "pronoun resolution"),
        TaskSpec("boolq", "boolq.jsonl.gz", "2.0", ("acc",), "validation", "yes/no questions on a passage"),
    )
}


@dataclass(frozen=True)
class Row:
    """One question: each choice as (context, continuation) text, the right one's index, and each choice's
    length in characters (acc_norm divides by it, as lm-eval does: Python's len of the choice, no delimiter)."""

    id: str
    subtask: str | None
    pairs: tuple[tuple[str, str], ...]
    label: int
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class BenchTask:
    spec: TaskSpec
    path: Path
    sha256: str  # of the file as stored
    rows: tuple[Row, ...]
    rows_in_file: int
    limit: int  # the first `limit` rows (of each subtask) were kept; 0: all

    @property
    def subtasks(self) -> list[str]:
        """The subtasks in file order ([] when the task is not a group)."""
        return list(dict.fromkeys(r.subtask for r in self.rows if r.subtask is not None))

    @property
    def chance(self) -> float:
        """The accuracy of picking a choice at random: the mean of 1 / choices over the rows."""
        return sum(1 / len(r.pairs) for r in self.rows) / max(1, len(self.rows))


def task_names(tasks: list[str]) -> list[str]:
    """Task names and files as given, comma-separated lists split ("blimp,piqa" is two), each kept once."""
    names = [part.strip() for entry in tasks for part in entry.split(",") if part.strip()]
    return list(dict.fromkeys(names))


def find_spec(name: str) -> TaskSpec:
    """The registered task of that name, or a task file's own spec (named by its file's stem); a ConfigError
    naming the tasks that exist otherwise."""
    if name in TASKS:
        return TASKS[name]
    if name.endswith(TASK_FILE_SUFFIXES):
        stem = Path(name).name.removesuffix(".gz").removesuffix(".jsonl")
        return TaskSpec(stem, name, "custom", NORM, "all", f"the task file {name}")
    raise ConfigError(
        f"has no task {name!r}: choose from {', '.join(TASKS)}, or give a task file (.jsonl or .jsonl.gz)",
        field="tasks",
    )


def task_path(spec: TaskSpec) -> Path:
    """Where a task's file is: in datasets/benchmarks/ for a registered task, as given for a task file."""
    return Path(spec.file) if spec.version == "custom" else BENCHMARK_DIR / spec.file


def read_task(name: str, limit: int = 0) -> BenchTask:
    """A task (registered name or file path) with its rows checked; limit > 0 keeps the first `limit` rows,
    of each subtask in a group (lm-eval's --limit: each of BLiMP's 67 tasks is limited)."""
    if limit < 0:
        raise ConfigError(f"must be >= 0, got {limit}", field="limit")
    spec = find_spec(name)
    path = task_path(spec)
    raw = _read_bytes(path)
    rows = [parse_row(path, line_no, line) for line_no, line in _lines(path, raw)]
    if not rows:
        raise TaskFileError(f"{path}: the file holds no rows")
    if not all(r.lengths for r in rows):  # partial scoring: the choices are contexts, acc_norm is not defined
        spec = replace(spec, metrics=("acc",))
    taken: Counter[str | None] = Counter()
    kept = []
    for row in rows:
        taken[row.subtask] += 1
        if not limit or taken[row.subtask] <= limit:
            kept.append(row)
    return BenchTask(spec, path, hashlib.sha256(raw).hexdigest(), tuple(kept), len(rows), limit)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        where = "" if path.parent != BENCHMARK_DIR else " (datasets/benchmarks/make_benchmarks.py rebuilds it)"
        raise TaskFileError(f"{path}: no such task file{where}")
    return path.read_bytes()


def _lines(path: Path, raw: bytes) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line, gunzipped when the file is gzip'd."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise TaskFileError(f"{path}: a damaged gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def parse_row(path: Path, line_no: int, line: str) -> Row:
    """One line of a task file as a Row; a TaskFileError naming the file, the line and what is wrong."""

    def bad(message: str) -> TaskFileError:
        return TaskFileError(f"{path}, line {line_no}: {message}")

    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as e:
        raise bad(f"malformed JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
    if not isinstance(record, dict):
        raise bad(f"expected a JSON object, got {type(record).__name__}")
    if "choices" in record:
        context, choices = _field(record, "context", str, bad), _texts(record, "choices", bad)
        pairs = tuple((context, DELIMITER + c) for c in choices)
        lengths = tuple(len(c) for c in choices)
    elif "contexts" in record:
        continuation = _field(record, "continuation", str, bad)
        pairs = tuple((c, DELIMITER + continuation) for c in _texts(record, "contexts", bad))
        lengths = ()
    else:
        raise bad("has neither 'choices' (with a 'context') nor 'contexts' (with a 'continuation')")
    label = _field(record, "label", int, bad)
    if isinstance(label, bool) or not 0 <= label < len(pairs):
        raise bad(f"'label' must be the index of a choice, 0 to {len(pairs) - 1}, got {label!r}")
    subtask = record.get("subtask")
    if subtask is not None and not isinstance(subtask, str):
        raise bad(f"'subtask' must be text, got {type(subtask).__name__}")
    return Row(str(record.get("id", line_no)), subtask, pairs, label, lengths)


def _field(record: dict[str, Any], name: str, kind: type, bad) -> Any:
    if name not in record:
        raise bad(f"'{name}' is missing")
    if not isinstance(record[name], kind):
        raise bad(f"'{name}' must be {kind.__name__}, got {type(record[name]).__name__}")
    return record[name]


def _texts(record: dict[str, Any], name: str, bad) -> list[str]:
    values = _field(record, name, list, bad)
    if len(values) < 2 or not all(isinstance(v, str) for v in values):
        raise bad(f"'{name}' must be a list of two or more texts")
    return values
