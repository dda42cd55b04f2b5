"""Scoring a text: every token predicted once, batching changes nothing, bits per byte follow from the loss."""

from __future__ import annotations

import math

import pytest
import torch

from llm.config import preset
from llm.errors import InputError
from llm.eval.perplexity import score_text, score_tokens
from llm.model.transformer import Transformer, causal_lm_loss


@pytest.fixture(scope="module")
def model(tok) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=16)).eval()


def test_short_text_score_is_the_plain_loss(model, tok):
    text = "Tom had a cat."
    ids = [tok.eos_id] + tok.encode(text)
    assert len(ids) <= 17
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    expected = causal_lm_loss(model(x), y).item()
    score = score_text(model, tok, text)
    assert score.tokens == len(ids) - 1
    assert score.loss == pytest.approx(expected, abs=1e-6)
    assert score.bytes == len(text.encode())
    assert score.bits_per_byte == pytest.approx(score.loss * score.tokens / math.log(2) / score.bytes)
    assert score.perplexity == pytest.approx(math.exp(score.loss))


def test_long_text_is_scored_in_windows_each_token_once(model, tok):
    ids = [tok.eos_id] + tok.encode("Once upon a time, Lily had a ball. 中文 😀 " * 6)
    assert len(ids) > 3 * 17  # several windows, the last one short
    total, count = score_tokens(model, ids, batch_size=8)
    assert count == len(ids) - 1
    manual = 0.0
    for start in range(0, len(ids) - 1, 16):
        window = torch.tensor([ids[start : start + 17]])
        logits = model(window[:, :-1])
        manual += causal_lm_loss(logits, window[:, 1:]).item() * (window.size(1) - 1)
    assert total == pytest.approx(manual, rel=1e-5)
    # A padded, batched last window scores the same as windows one at a time.
    assert score_tokens(model, ids, batch_size=1)[0] == pytest.approx(total, rel=1e-5)


def test_empty_text_is_refused(model, tok):
    with pytest.raises(InputError, match="empty"):
        score_text(model, tok, "")
