"""The votes cast in Compare, as preference pairs: what `python -m llm prefer` trains on.

A vote names the better of 2-4 answers to one prompt (same sampling settings and seed for every model). Each
vote gives one pair per losing answer: {"prompt", "chosen": the winner's answer, "rejected": the loser's}.
A tie ("both bad") gives no pair; ties are exported apart, so nothing a user said is lost. Two answers with
the same text make no pair either (there is nothing to prefer). Files (JSON Lines, UTF-8), in exports/:

    votes-<id>.jsonl         {"prompt", "chosen", "rejected"}                        (llm/data/preferences.py reads it)
    votes-<id>-chat.jsonl    {"chosen": [user, assistant], "rejected": [user, assistant]}  (conversational form)
    votes-<id>-ties.jsonl    {"prompt", "answers", "models"}                          (votes that prefer none)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.errors import LLMError
from studio.store import new_id

TIE = "tie"
MIN_PAIRS = 20  # below this, a preference run learns little (the sample of 360 pairs is measured in datasets/)


@dataclass
class VoteExport:
    pairs: Path
    conversations: Path
    ties: Path
    n_pairs: int
    n_ties: int


def preference_pairs(votes: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(pairs, ties) from the store's votes."""
    pairs, ties = [], []
    for vote in votes:
        answers = dict(zip(vote["models"], vote["answers"], strict=True))
        if vote["winner"] == TIE:
            ties.append({"prompt": vote["prompt"], "answers": vote["answers"], "models": vote["models"]})
            continue
        chosen = answers[vote["winner"]]
        for model, answer in answers.items():
            if model != vote["winner"] and answer.strip() != chosen.strip():
                pairs.append({"prompt": vote["prompt"], "chosen": chosen, "rejected": answer})
    return pairs, ties


def conversational(pair: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    user = {"role": "user", "content": pair["prompt"]}
    return {side: [user, {"role": "assistant", "content": pair[side]}] for side in ("chosen", "rejected")}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """A whole file or none: written aside, then renamed."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    partial.replace(path)


def export_votes(votes: list[dict[str, Any]], exports: Path) -> VoteExport:
    """Write the votes as preference pairs (two forms) and the ties, into exports/; LLMError (nothing written)
    when there is no vote."""
    if not votes:
        raise LLMError("There are no votes to export yet: vote in Compare first.")
    pairs, ties = preference_pairs(votes)
    stem = exports / f"votes-{new_id()}"
    files = VoteExport(
        Path(f"{stem}.jsonl"), Path(f"{stem}-chat.jsonl"), Path(f"{stem}-ties.jsonl"), len(pairs), len(ties)
    )
    write_jsonl(files.pairs, pairs)
    write_jsonl(files.conversations, [conversational(p) for p in pairs])
    write_jsonl(files.ties, ties)
    return files
