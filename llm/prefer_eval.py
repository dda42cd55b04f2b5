"""Did preference tuning teach what the votes preferred? A tuned model against its base on held-out prompts.

Both models answer each prompt (greedy by default, as in llm.task_eval); a rule the user gives decides which
answer it prefers. Rules are fixed forms, never code:
    shorter | longer                 fewer / more characters than the other model's answer
    ends-with-question               the answer's last character is "?"
    contains:TEXT | not-contains:TEXT | starts-with:TEXT | ends-with:TEXT    (case-sensitive, answer stripped)
    regex:PATTERN                    Python re.search finds PATTERN in the answer
For each prompt: the tuned model wins when its answer follows the rule and the base's does not, loses in the
opposite case, and ties otherwise. win_rate = (wins + ties / 2) / prompts, so 0.5 means no difference. Also
reported: how often each model's answer follows the rule, and the held-out reward accuracy (the share of the
held-out pairs whose chosen answer the tuned model prefers more than its base does: llm.prefer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from llm.checkpoint import load_model, resolve
from llm.config import PreferConfig, SamplingConfig
from llm.device import pick_device
from llm.errors import ConfigError
from llm.prefer import held_out_rewards
from llm.preferences import PreferenceData
from llm.task_eval import answer, pick_rows

RULES = (
    "shorter",
    "longer",
    "ends-with-question",
    "contains:",
    "not-contains:",
    "starts-with:",
    "ends-with:",
    "regex:",
)


@dataclass
class Rule:
    text: str  # as the user wrote it
    follows: Callable[[str, str], bool]  # (answer, the other model's answer) -> does the answer follow the rule

    def __str__(self) -> str:
        return self.text


def parse_rule(text: str) -> Rule:
    """A Rule from its written form (see the module docstring); a ConfigError on the field "rule" otherwise."""
    name, sep, arg = text.partition(":")
    fixed = {
        "shorter": lambda a, other: len(a) < len(other),
        "longer": lambda a, other: len(a) > len(other),
        "ends-with-question": lambda a, other: a.endswith("?"),
    }
    if not sep and name in fixed:
        return Rule(text, fixed[name])
    if sep and arg:
        if name == "contains":
            return Rule(text, lambda a, other: arg in a)
        if name == "not-contains":
            return Rule(text, lambda a, other: arg not in a)
        if name == "starts-with":
            return Rule(text, lambda a, other: a.startswith(arg))
        if name == "ends-with":
            return Rule(text, lambda a, other: a.endswith(arg))
        if name == "regex":
            try:
                pattern = re.compile(arg)
            except re.error as e:
                raise ConfigError(f"has an invalid regular expression {arg!r} ({e})", field="rule") from None
            return Rule(text, lambda a, other: pattern.search(a) is not None)
    raise ConfigError(f"must be one of {', '.join(RULES)} (TEXT after the colon), got {text!r}", field="rule")


def outcome(rule: Rule, tuned: str, base: str) -> str:
    """ "win", "loss" or "tie" of the tuned model's answer against the base's."""
    tuned_follows, base_follows = rule.follows(tuned, base), rule.follows(base, tuned)
    return "win" if tuned_follows and not base_follows else "loss" if base_follows and not tuned_follows else "tie"


def win_rate(
    tuned_dir: str | Path,
    base_dir: str | Path | None,
    data: PreferenceData,
    rule: Rule,
    rows: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 64,
    beta: float | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """(totals, one row per prompt: row, prompt, base, tuned, base_follows, tuned_follows, outcome) of the tuned
    model against the base on data's prompts (a seeded sample of `rows` of them). beta (for the reward
    margin; the accuracy does not depend on it): the tuned run's own, else PreferConfig's default. base_dir
    None: the base the tuned model records in its info.json."""
    target = pick_device(device)
    tuned, tokenizer, info = load_model(tuned_dir, target)
    if base_dir is None:
        if "base" not in info:
            raise ConfigError(f"{tuned_dir} does not record its base model; name the base", field="base")
        base_dir = info["base"]
    resolve(base_dir)
    base, _, _ = load_model(base_dir, target)
    beta = beta or info.get("prefer", {}).get("beta") or PreferConfig().beta
    examples = pick_rows(data, rows, seed)
    sampling = SamplingConfig(max_new_tokens, temperature=0.0, seed=seed)
    records = []
    for done, pair in enumerate(examples, 1):
        base_answer = answer(base, tokenizer, pair.prompt, sampling)
        tuned_answer = answer(tuned, tokenizer, pair.prompt, sampling)
        records.append(
            {
                "row": pair.row,
                "prompt": next(m["content"] for m in reversed(pair.prompt) if m["role"] == "user"),
                "base": base_answer,
                "tuned": tuned_answer,
                "base_follows": rule.follows(base_answer, tuned_answer),
                "tuned_follows": rule.follows(tuned_answer, base_answer),
                "outcome": outcome(rule, tuned_answer, base_answer),
            }
        )
        if progress:
            progress(done, len(examples))
    table = pd.DataFrame.from_records(records)
    counts = table["outcome"].value_counts()
    wins, ties, losses = (int(counts.get(k, 0)) for k in ("win", "tie", "loss"))
    rewards = held_out_rewards(tuned, base, tokenizer, PreferenceData(**{**vars(data), "examples": examples}), beta)
    totals = {
        "tuned": str(tuned_dir),
        "base": str(base_dir),
        "rule": str(rule),
        "prompts": len(table),
        "base_follows": float(table["base_follows"].mean()),
        "tuned_follows": float(table["tuned_follows"].mean()),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": (wins + ties / 2) / len(table),
        **rewards,
    }
    return totals, table
