"""Preference datasets: pairs of a better and a worse answer to the same prompt, for preference tuning (DPO).

Files are read like task files (llm.data.tasks.read_frame: .csv .tsv .json .jsonl .parquet, UTF-8 checks, 1-based
row numbers, JSONL rows numbered by line). Each row needs a `chosen` and a `rejected` column and one prompt:
  prompt                  text, or a conversation (a list of {role, content} / ShareGPT {from, value} turns)
  instruction [+ input]   LLaMA-Factory's ranking form (input appended to the instruction, as for Alpaca)
  messages/conversations  the conversation so far, a list of turns
  (none)                  chosen and rejected are whole conversations that share everything but the last turn
`chosen` and `rejected` are the answer's text, one assistant turn ({role, content}), or a list of turns ending
with the assistant's answer (the turns before it extend the prompt and must be the same in both). An optional
`system` column adds a system prompt. A bad row is dropped and reported with its row and column (a
llm.data.tasks.Problem), never silently; a file with no usable row raises TaskFileError.

Encoding renders prompt + answer with the one chat template (llm.data.chat); only the answer's tokens and its
<|end|> are marked, the tokens whose log-probability DPO compares.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm.config import OVERFLOW
from llm.data.chat import prompt_ids, render
from llm.data.tasks import (
    MESSAGES_NAMES,
    SYSTEM_NAMES,
    Problem,
    _find,
    _is_missing,
    _RowProblem,
    _text,
    _turn,
    _turns,
    parse_rows,
    read_frame,
)
from llm.data.tokenizer import Tokenizer
from llm.errors import ConfigError, TaskFileError

Messages = list[dict[str, str]]
Encoded = tuple[list[int], list[bool]]  # (token ids, answer mask) of one prompt + answer


@dataclass
class Pair:
    row: int
    prompt: Messages  # the conversation the two answers reply to (system, user, earlier turns)
    chosen: str
    rejected: str


@dataclass
class PreferenceData:
    source: str
    form: str  # where the prompt came from: "prompt", "instruction", "messages" or "conversations"
    columns: list[str]
    examples: list[Pair]  # named as TaskData's, so llm.data.tasks.split_examples splits these too
    problems: list[Problem]
    content_hash: str  # sha256 of the file's bytes (first 16 hex digits)
    mapping: dict[str, str] = field(default_factory=dict)  # the columns used, by role


@dataclass
class EncodedPairs:
    items: list[tuple[Encoded, Encoded]]  # (chosen, rejected) of each kept pair
    rows: list[int]
    truncated: list[int]  # rows with an answer cut to the context length
    dropped: list[Problem]


def _columns(path: Path, columns: list[str]) -> tuple[str, dict[str, str]]:
    """(the prompt's form, {role: column}) for a preference file's columns."""
    cols = {key: _find(columns, (key,)) for key in ("chosen", "rejected")}
    missing = [key for key, column in cols.items() if column is None]
    if missing:
        raise TaskFileError(
            f"{path}: missing column(s) {missing}: a preference file needs chosen and rejected answers (and a "
            f"prompt, instruction or messages column); the file has columns {columns}"
        )
    form = "none"
    for key, names in (("prompt", ("prompt",)), ("instruction", ("instruction",)), ("messages", MESSAGES_NAMES)):
        column = _find(columns, names)
        if column is not None:
            form, cols[key] = key, column
            break
    for key, names in (("input", ("input",)), ("system", SYSTEM_NAMES)):
        column = _find(columns, names)
        if column is not None and (key != "input" or form == "instruction"):
            cols[key] = column
    return form, cols


def _prompt(record: dict[str, Any], form: str, cols: dict[str, str]) -> Messages:
    """The row's prompt conversation (without the answers), possibly empty when the answers bring it."""
    if form == "none":
        return []
    column = cols[form]
    value = record[column]
    if _is_missing(value) or (isinstance(value, (str, list, tuple, np.ndarray)) and len(value) == 0):
        return []  # the answers may bring the conversation; a pair with no user turn at all is refused later
    if form == "instruction":
        instruction = _text(value, column, "instruction")
        extra = _text(record[cols["input"]], cols["input"], "input", required=False) if "input" in cols else None
        return [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction}]
    if form == "prompt" and not isinstance(value, (list, tuple, np.ndarray)):
        return [{"role": "user", "content": _text(value, column, "prompt")}]
    return _turns(value, column, need_answer=False)


def _answer(value: Any, column: str) -> tuple[Messages, str]:
    """(turns before the answer, the answer's text) of a chosen/rejected cell: text, one assistant turn, or a
    list of turns ending with the assistant's."""
    if isinstance(value, dict):
        turns = [_turn(value, 1, column)]
    elif isinstance(value, (list, tuple, np.ndarray)):
        turns = _turns(value, column)
    else:
        return [], _text(value, column, "answer")
    if turns[-1]["role"] != "assistant":
        raise _RowProblem(column, "no answer", f"the last turn is the {turns[-1]['role']}'s, not the assistant's")
    return turns[:-1], turns[-1]["content"]


def _pair(row: int, record: dict[str, Any], form: str, cols: dict[str, str]) -> Pair:
    prompt = _prompt(record, form, cols)
    chosen_context, chosen = _answer(record[cols["chosen"]], cols["chosen"])
    rejected_context, rejected = _answer(record[cols["rejected"]], cols["rejected"])
    if chosen_context != rejected_context:
        raise _RowProblem(cols["rejected"], "different prompts", "chosen and rejected must answer the same turns")
    prompt = prompt + chosen_context
    if not any(m["role"] == "user" for m in prompt):
        raise _RowProblem(cols.get(form), "no prompt", "nothing asks for the answers (no user turn)")
    if chosen == rejected:
        raise _RowProblem(cols["rejected"], "same answer", "chosen and rejected are equal: nothing to prefer")
    if "system" in cols and prompt[0]["role"] != "system":
        system = _text(record[cols["system"]], cols["system"], "system prompt", required=False)
        prompt = ([{"role": "system", "content": system}] if system else []) + prompt
    return Pair(row, prompt, chosen, rejected)


def read_preference_file(path: str | Path) -> PreferenceData:
    """Read and validate a preference dataset (the forms in the module docstring)."""
    path = Path(path)
    frame, row_numbers, raw = read_frame(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if len(frame) == 0:
        raise TaskFileError(f"{path}: no rows" + (f" (only the columns {columns})" if columns else ""))
    form, cols = _columns(path, columns)
    pairs, problems = parse_rows(path, row_numbers, frame, lambda row, record: _pair(row, record, form, cols))
    content_hash = hashlib.sha256(raw).hexdigest()[:16]
    return PreferenceData(str(path), form, columns, pairs, problems, content_hash, cols)


def encode_answer(tokenizer: Tokenizer, prompt: Messages, answer: str) -> Encoded:
    """prompt + answer through the chat template; the mask marks the answer and its <|end|> only."""
    ids, _ = render(tokenizer, prompt + [{"role": "assistant", "content": answer}])
    start = len(prompt_ids(tokenizer, prompt))  # the ids up to and including <|assistant|>
    return ids, [i >= start for i in range(len(ids))]


def encode_pairs(
    data: PreferenceData, tokenizer: Tokenizer, context_length: int, overflow: str = "truncate"
) -> EncodedPairs:
    """Each pair's chosen and rejected sequences. As for task rows, up to context_length + 1 ids fit; a longer
    answer is cut there (overflow="truncate") or its pair dropped ("drop"), as is a pair with an answer that
    has no token left inside the context."""
    if overflow not in OVERFLOW:
        raise ConfigError(f"must be one of {OVERFLOW}, got {overflow!r}", field="overflow")
    limit = context_length + 1
    out = EncodedPairs([], [], [], [])
    for pair in data.examples:
        sides = [encode_answer(tokenizer, pair.prompt, answer) for answer in (pair.chosen, pair.rejected)]
        longest = max(len(ids) for ids, _ in sides)
        if longest > limit:
            if overflow == "drop":
                out.dropped.append(Problem(pair.row, None, "too long", f"{longest} tokens; the context holds {limit}"))
                continue
            sides = [(ids[:limit], mask[:limit]) for ids, mask in sides]
            if not all(any(mask[1:]) for _, mask in sides):
                out.dropped.append(
                    Problem(pair.row, None, "too long", f"the prompt alone fills the context of {limit} tokens")
                )
                continue
            out.truncated.append(pair.row)
        out.items.append((sides[0], sides[1]))
        out.rows.append(pair.row)
    return out
