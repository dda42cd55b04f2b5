"""Language-model evaluation on a text: loss, perplexity and bits per byte.

Bits per byte divides the total negative log-likelihood (in bits) by the UTF-8 bytes of the text, so it
compares models with different tokenizers (a model with bigger tokens has a higher loss per token but not
a higher loss per byte).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from llm.data.tokenizer import Tokenizer
from llm.errors import InputError
from llm.model.transformer import Transformer


@dataclass
class TextScore:
    loss: float  # mean nats per predicted token
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def score_tokens(model: Transformer, ids: list[int], batch_size: int = 8) -> tuple[float, int]:
    """Total NLL (nats) of ids[1:] given their prefixes, in non-overlapping context-length windows."""
    T = model.cfg.context_length
    device = next(model.parameters()).device
    data = torch.tensor(ids, dtype=torch.long)
    # Windows of T+1 tokens that overlap by one, so each token after the first is predicted exactly once.
    starts = list(range(0, max(len(ids) - 1, 0), T))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        chunk = [data[s : s + T + 1] for s in starts[i : i + batch_size]]
        width = max(len(c) for c in chunk)
        x = torch.zeros(len(chunk), width - 1, dtype=torch.long)
        y = torch.full((len(chunk), width - 1), -1, dtype=torch.long)
        for row, c in enumerate(chunk):
            x[row, : len(c) - 1], y[row, : len(c) - 1] = c[:-1], c[1:]
        logits = model(x.to(device)).float()
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), y.to(device).view(-1), ignore_index=-1, reduction="sum")
        total += nll.item()
        count += int((y >= 0).sum())
    return total, count


def score_text(model: Transformer, tokenizer: Tokenizer, text: str, batch_size: int = 8) -> TextScore:
    """Score a text. The first token is conditioned on the start token (EOS for ours), so every token is counted."""
    if not text:
        raise InputError("cannot evaluate an empty text")
    ids = [tokenizer.start_id] + tokenizer.encode(text)
    total, count = score_tokens(model, ids, batch_size)
    n_bytes = len(text.encode("utf-8"))
    loss = total / count
    return TextScore(loss, math.exp(loss), total / math.log(2) / n_bytes, count, n_bytes)
