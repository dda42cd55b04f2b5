"""The shipped base model loads, has the shape its card states, and still predicts unseen text well.

The passage below was written for this test (it is in no training file), in the style of the corpus. A
corrupted weight file, a changed format or a mismatched tokenizer would push its loss far above the bound.
"""

from __future__ import annotations

import json

import pytest

from llm.config import DEFAULT_BASE_MODEL
from llm.eval.perplexity import score_text
from llm.model.checkpoint import load_model
from llm.model.generate import SamplingConfig, stream_text

HELD_OUT = (
    "Once upon a time, there was a little bird named Pip. Pip lived in a tall tree near a big red house. "
    "Every morning, Pip sang a happy song for the girl who lived in the house. Her name was Mia.\n\n"
    'One day, Mia did not come to the window. Pip was sad. He flew to the door and said, "Mia, where are '
    'you?" Mia opened the door and smiled. "I was sick, but now I feel better," she said. Pip sang his '
    "best song, and Mia laughed. They were friends forever."
)
# Measured: loss 2.22 nats/token on this passage (2.58 and 2.99 for the two bases before); an untrained model
# scores about ln 4096 = 8.3.
LOSS_BOUND = 3.4


@pytest.fixture(scope="module")
def base():
    if not (DEFAULT_BASE_MODEL / "config.json").is_file():
        pytest.fail(f"the shipped base model is missing from {DEFAULT_BASE_MODEL}")
    return load_model(DEFAULT_BASE_MODEL)


def test_config_and_tokenizer_match_the_model_card(base):
    model, tok, info = base
    cfg = model.cfg
    assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.context_length, cfg.vocab_size) == (6, 4, 256, 256, 4096)
    assert tok.vocab_size == cfg.vocab_size
    assert set(tok.special) == {"<|system|>", "<|user|>", "<|assistant|>", "<|end|>"}
    assert tok.decode(tok.encode('Lily said, "Hi!" 😀')) == 'Lily said, "Hi!" 😀'
    assert 5.5e6 < model.num_params() < 6.5e6
    assert info["kind"] == "pretrained"


def test_size_on_disk_is_within_the_limit():
    size = sum(f.stat().st_size for f in DEFAULT_BASE_MODEL.iterdir() if f.is_file())
    assert size < 25e6
    assert not (DEFAULT_BASE_MODEL / "trainer_state.pt").exists()
    assert json.loads((DEFAULT_BASE_MODEL / "config.json").read_text())["vocab_size"] == 4096


def test_held_out_passage_loss_is_below_the_bound(base):
    model, tok, _ = base
    score = score_text(model, tok, HELD_OUT)
    assert score.loss < LOSS_BOUND, f"loss {score.loss:.3f} on the held-out passage (bound {LOSS_BOUND})"


def test_generates_words_not_bytes(base):
    model, tok, _ = base
    text = "".join(
        stream_text(
            model,
            tok,
            [tok.eos_id] + tok.encode("Once upon a time"),
            SamplingConfig(max_new_tokens=40, temperature=0.0),
        )
    )
    words = text.split()
    assert len(words) >= 15
    assert sum(w.strip('.,!?"').isalpha() for w in words) / len(words) > 0.8
