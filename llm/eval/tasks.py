"""Task evaluation: answer each example's prompt with each model and score the answer against the reference.

The prompt is the conversation up to its last assistant turn, rendered with the one chat template; the
reference is that last assistant turn. Every model answers the same rows with the same sampling (greedy by
default; with a temperature, row r is sampled with seed + r), so several models make a before/after table.
Scores: exact match and "contains" after normalisation (lowercase, no punctuation or articles, single spaces,
as in SQuAD), token F1, and ref_loss: the model's mean loss on the reference tokens (and <|end|>) given the
prompt, which moves even when no answer is exactly right yet.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from llm.config import SamplingConfig
from llm.data.chat import prompt_ids, render
from llm.data.tasks import Example, TaskData
from llm.data.tokenizer import Tokenizer
from llm.device import pick_device
from llm.errors import ConfigError
from llm.model.checkpoint import load_model, resolve
from llm.model.generate import stream_chat
from llm.model.transformer import Transformer

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    text = ARTICLES.sub(" ", text.lower().translate(PUNCTUATION))
    return " ".join(text.split())


def score(prediction: str, reference: str) -> dict[str, float | bool]:
    """exact: equal after normalisation; contains: the reference's words appear in order in the prediction;
    f1: harmonic mean of word precision and recall (SQuAD's token F1)."""
    pred, ref = normalise(prediction), normalise(reference)
    pred_words, ref_words = pred.split(), ref.split()
    overlap = sum((Counter(pred_words) & Counter(ref_words)).values())
    if not pred_words or not ref_words:
        f1 = float(pred_words == ref_words)
    elif overlap == 0:
        f1 = 0.0
    else:
        precision, recall = overlap / len(pred_words), overlap / len(ref_words)
        f1 = 2 * precision * recall / (precision + recall)
    return {"exact": pred == ref, "contains": f" {ref} " in f" {pred} ", "f1": f1}


def split_reference(example: Example) -> tuple[list[dict[str, str]], str]:
    """(the conversation before the last assistant turn, that turn's text)."""
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return example.messages[:last], example.messages[last]["content"]


def answer(model: Transformer, tokenizer: Tokenizer, messages: list[dict[str, str]], sampling: SamplingConfig) -> str:
    """The model's next assistant turn for a conversation, whole and stripped."""
    was_training = model.training
    model.eval()
    text = "".join(stream_chat(model, tokenizer, messages, sampling))
    model.train(was_training)
    return text.strip()


@torch.no_grad()
def reference_loss(
    model: Transformer, tokenizer: Tokenizer, messages: list[dict[str, str]], reference: str
) -> tuple[float, int]:
    """(mean loss in nats, token count) of the reference turn and its <|end|> after the prompt. A
    conversation longer than the context keeps its last context_length + 1 tokens."""
    prefix = len(prompt_ids(tokenizer, messages))
    ids, _ = render(tokenizer, messages + [{"role": "assistant", "content": reference}])
    keep = min(len(ids), model.cfg.context_length + 1)
    first_target = max(prefix - (len(ids) - keep), 1)  # index, in the kept window, of the first reference token
    window = torch.tensor(ids[-keep:], device=next(model.parameters()).device)
    logits = model(window[None, :-1])[0].float()  # (keep-1, V): position i predicts window[i+1]
    targets = window[first_target:]
    loss = F.cross_entropy(logits[first_target - 1 :], targets)
    return loss.item(), len(targets)


def pick_rows(data: TaskData, rows: int | None, seed: int) -> list[Example]:
    """All examples, or a seeded sample of `rows` of them in file order: the same for every model."""
    examples = data.examples
    if rows is not None and rows < len(examples):
        if rows <= 0:
            raise ConfigError(f"must be positive, got {rows}", field="rows")
        chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=rows, replace=False))
        examples = [examples[i] for i in chosen]
    return examples


def evaluate_models(
    model_dirs: list[str | Path],
    data: TaskData,
    rows: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    load: Callable[[str | Path], tuple] | None = None,
) -> pd.DataFrame:
    """One row per (model, example): model, row, prompt, reference, answer, exact, contains, f1, ref_loss,
    ref_tokens. progress(model, done, total) is called after each answer. load(model_dir) gives (model,
    tokenizer, info); by default each model is loaded on the device (a caller that holds models loaded, as the
    studio does, passes its own: no second copy)."""
    if not model_dirs:
        raise ValueError("evaluate_models needs at least one model")
    examples = pick_rows(data, rows, seed)
    target = pick_device(device)
    records = []
    for model_dir in model_dirs:
        resolve(model_dir)  # a clear error for a missing model before any work
        model, tokenizer, _ = load(model_dir) if load else load_model(model_dir, target)
        for done, example in enumerate(examples, 1):
            messages, reference = split_reference(example)
            sampling = SamplingConfig(max_new_tokens, temperature, seed=seed + example.row)
            reply = answer(model, tokenizer, messages, sampling)
            loss, count = reference_loss(model, tokenizer, messages, reference)
            prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            records.append(
                {
                    "model": str(model_dir),
                    "row": example.row,
                    "prompt": prompt,
                    "reference": reference,
                    "answer": reply,
                    **score(reply, reference),
                    "ref_loss": loss,
                    "ref_tokens": count,
                }
            )
            if progress:
                progress(str(model_dir), done, len(examples))
    return pd.DataFrame.from_records(records)


def totals(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, in the order first seen: rows, exact-match rate, contains rate, mean F1 and the perplexity
    of the reference answers (token-weighted)."""

    def one(group: pd.DataFrame) -> dict:
        nll = float((group["ref_loss"] * group["ref_tokens"]).sum() / group["ref_tokens"].sum())
        return {
            "rows": len(group),
            "exact_match": float(group["exact"].mean()),
            "contains": float(group["contains"].mean()),
            "f1": float(group["f1"].mean()),
            "ref_perplexity": math.exp(nll),
        }

    order = list(dict.fromkeys(df["model"]))
    return pd.DataFrame([{"model": m, **one(df[df["model"] == m])} for m in order])
