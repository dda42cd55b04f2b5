"""The one chat template, used by fine-tuning, generation and evaluation alike.

A conversation is rendered as token ids:
    <eos> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...
It opens with the end-of-text token, as every document does in pretraining. The role and end tokens are
inserted by id (they are control symbols: no text encodes to them). Training counts the loss only on
assistant text and the <|end|> after it, so the model learns to answer and to stop, not to write prompts.

Each text is encoded with a space in front, the way words appear in running text: the tokenizer adds no
such prefix itself, and without it a message's first word becomes rare fragments ("small" -> s, m, all
instead of "▁small") that a fine-tune must learn from scratch (LoRA on datasets/samples/opposites.csv: 88%
exact match without the space, 100% with it). Generated answers therefore begin with a space.
"""

from __future__ import annotations

from llm.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


def render(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Messages [{"role", "content"}] -> (token ids, trained-on mask of the same length)."""
    ids, mask = [tokenizer.eos_id], [False]
    end = tokenizer.special["<|end|>"]
    for message in messages:
        role = message["role"]
        assert role in ROLES, f"unknown role {role!r}"
        body = tokenizer.encode(" " + message["content"]) + [end]
        trained = role == "assistant"
        ids += [tokenizer.special[f"<|{role}|>"]] + body
        mask += [False] + [trained] * len(body)
    return ids, mask


def prompt_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The ids that ask the model for the next assistant turn."""
    ids, _ = render(tokenizer, messages)
    return ids + [tokenizer.special["<|assistant|>"]]


def user_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """A one-question conversation, with an optional system prompt."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Where an answer ends: at <|end|>, or at <eos> for a model that never learned <|end|> (a base model
    writes <eos> where a story ends). The one rule for chat, comparisons and task scoring alike."""
    return (tokenizer.special["<|end|>"], tokenizer.eos_id)
