"""Did preference tuning teach what the votes preferred? A tuned model against its base on held-out prompts.

Both models answer each prompt (greedy by default, as in llm.eval.tasks); a rule the user gives decides which
answer it prefers. Rules are fixed forms, never code:
    shorter | longer                 fewer / more characters than the other model's answer
    ends-with-question               the answer's last character is "?"
    contains:TEXT | not-contains:TEXT | starts-with:TEXT | ends-with:TEXT    (case-sensitive, answer stripped)
    regex:PATTERN                    Python re.search finds PATTERN in the answer
For each prompt: the tuned model wins when its answer follows the rule and the base's does not, loses in the
opposite case, and ties otherwise. win_rate = (wins + ties / 2) / prompts, so 0.5 means no difference. Also
reported: how often each model's answer follows the rule, and the held-out reward accuracy (the share of the
held-out pairs whose chosen answer the tuned model prefers more than its base does: the implicit reward of DPO,
llm.train.prefer, scored here).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from llm.config import PreferConfig, SamplingConfig
from llm.data.batches import PairBatches
from llm.data.preferences import PreferenceData, encode_pairs
from llm.data.tokenizer import Tokenizer
from llm.device import pick_device
from llm.errors import ConfigError
from llm.eval.tasks import answer, pick_rows
from llm.model.checkpoint import load_model, resolve
from llm.model.transformer import Transformer

# ----------------------------------------------------------------------------------------------------------
# Implicit rewards (DPO's): how much more a tuned model prefers the chosen answer than its reference does


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (N, T, V), targets (N, T) with -1 where there is no answer token -> (N,) summed log-probs of
    each sequence's answer tokens."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-1, reduction="none")  # (N, T)
    return -nll.sum(-1)


def reward_margins(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Summed answer log-probs, each (B,) -> margins (B,): beta * ((pi_c - ref_c) - (pi_r - ref_r)), the chosen
    answer's implicit reward minus the rejected one's."""
    return beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))


def reward_stats(margins: torch.Tensor) -> dict[str, float]:
    """Reward margin (mean) and reward accuracy (share of margins > 0)."""
    return {"reward_margin": margins.mean().item(), "reward_accuracy": (margins > 0).float().mean().item()}


@torch.no_grad()
def held_out_rewards(
    policy: Transformer,
    reference: Transformer,
    tokenizer: Tokenizer,
    pairs: PreferenceData,
    beta: float,
    batch_size: int = 8,
) -> dict[str, float]:
    """Reward margin and accuracy of a tuned model (policy) over its reference on a set of pairs."""
    encoded = encode_pairs(pairs, tokenizer, policy.cfg.context_length)
    if not encoded.items:
        return {"reward_margin": math.nan, "reward_accuracy": math.nan}
    device = next(policy.parameters()).device
    reference.to(device)
    margins = []
    for x, y in PairBatches(encoded, encoded, batch_size, 1, 0, tokenizer.pad_id).eval_batches("val", 0):
        x, y = x.to(device), y.to(device)
        policy_logps, reference_logps = sequence_logps(policy(x), y), sequence_logps(reference(x), y)
        B = x.size(0) // 2  # chosen sequences, then their rejected ones
        margins.append(
            reward_margins(policy_logps[:B], policy_logps[B:], reference_logps[:B], reference_logps[B:], beta).float()
        )
    return reward_stats(torch.cat(margins))


# ----------------------------------------------------------------------------------------------------------
# Win rate under a rule


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


def answer_row(pair, rule: Rule, base: Transformer, tuned: Transformer, tokenizer: Tokenizer, sampling) -> dict:
    """Both models' answers to one prompt, and which follows the rule."""
    base_answer = answer(base, tokenizer, pair.prompt, sampling)
    tuned_answer = answer(tuned, tokenizer, pair.prompt, sampling)
    return {
        "row": pair.row,
        "prompt": next(m["content"] for m in reversed(pair.prompt) if m["role"] == "user"),
        "base": base_answer,
        "tuned": tuned_answer,
        "base_follows": rule.follows(base_answer, tuned_answer),
        "tuned_follows": rule.follows(tuned_answer, base_answer),
        "outcome": outcome(rule, tuned_answer, base_answer),
    }


def outcome_totals(table: pd.DataFrame) -> dict[str, Any]:
    """How often each model follows the rule, wins, ties and losses, and the win rate (ties count half)."""
    counts = table["outcome"].value_counts()
    wins, ties, losses = (int(counts.get(k, 0)) for k in ("win", "tie", "loss"))
    return {
        "prompts": len(table),
        "base_follows": float(table["base_follows"].mean()),
        "tuned_follows": float(table["tuned_follows"].mean()),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": (wins + ties / 2) / len(table),
    }


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
        records.append(answer_row(pair, rule, base, tuned, tokenizer, sampling))
        if progress:
            progress(done, len(examples))
    table = pd.DataFrame.from_records(records)
    rewards = held_out_rewards(tuned, base, tokenizer, PreferenceData(**{**vars(data), "examples": examples}), beta)
    totals = {"tuned": str(tuned_dir), "base": str(base_dir), "rule": str(rule), **outcome_totals(table), **rewards}
    return totals, table
