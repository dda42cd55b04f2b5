"""Looking inside a model (llm/eval/inside.py, `python -m llm inspect`): token spans, per-token surprise that adds
up to the model's loss, next-token choices through the sampler's own rule, attention weights that match the
fused kernel, two-model differences, and clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from llm_cli import run_llm

from llm.config import preset
from llm.data.chat import render
from llm.data.tokenizer import train_tokenizer
from llm.errors import CheckpointError
from llm.eval import inside as inspect
from llm.eval.perplexity import score_tokens
from llm.model.checkpoint import load_model, save_checkpoint
from llm.model.transformer import Transformer, attention_with_weights, causal_lm_loss

TEXT = 'Once upon a time, Lily had a ball. Tom said, "Can I play with the ball?" Lily said, "Yes!"'


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok, _ = load_model(tiny_model_dir)
    return model, tok


def test_tokens_carry_ids_and_character_spans_that_cover_the_text(tok):
    text = "Lily's café — naïve 😀 ball\n\nend"  # byte-fallback characters, a newline token
    tokens = inspect.tokenize(tok, text=text)
    assert tokens.ids == [tok.eos_id] + tok.encode(text) and tokens.text == text
    assert [r.id for r in tokens.rows] == tokens.ids[1:] and [r.index for r in tokens.rows] == list(
        range(len(tokens.rows))
    )
    # Each character is covered, in order; the byte tokens of one character share its span.
    covered = []
    for r in tokens.rows:
        assert r.text == text[r.start : r.end] and r.scored and r.part == "text" and not r.special
        if not covered or (r.start, r.end) != covered[-1]:
            covered.append((r.start, r.end))
    assert "".join(text[s:e] for s, e in covered) == text
    assert [s for s, _ in covered] == sorted(s for s, _ in covered)
    emoji = [r for r in tokens.rows if r.text == "😀"]
    assert len(emoji) == 4 and all(r.piece.startswith("<0x") for r in emoji)  # four UTF-8 bytes


def test_a_conversation_is_rendered_with_the_chat_template_and_scores_the_answer(tok):
    tokens = inspect.tokenize(tok, prompt="What does Lily like?", answer="The ball.", system="Be brief.")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does Lily like?"},
        {"role": "assistant", "content": "The ball."},
    ]
    ids, mask = render(tok, messages)
    assert tokens.ids == ids and [r.scored for r in tokens.rows] == mask[1:]
    assert (
        tokens.text == "<|system|> Be brief.<|end|><|user|> What does Lily like?<|end|><|assistant|> The ball.<|end|>"
    )
    answer = [r for r in tokens.rows if r.part == "answer"]
    assert "".join(r.text for r in answer) == " The ball.<|end|>" and answer[-1].special
    assert all(tokens.text[r.start : r.end] == r.text for r in tokens.rows)


def test_surprise_adds_up_to_the_models_loss_on_the_text(tiny, tok):
    model, _ = tiny
    tokens = inspect.tokenize(tok, text=TEXT)
    assert len(tokens.ids) <= model.cfg.context_length + 1  # one window: the plain loss applies
    bits = inspect.surprise(model, tokens)
    ids = torch.tensor(tokens.ids)
    with torch.no_grad():
        loss = causal_lm_loss(model(ids[None, :-1]), ids[None, 1:]).item()  # mean nats per token
    nats = sum(bits) * math.log(2)
    assert nats == pytest.approx(loss * len(bits), abs=1e-4)
    total, count = score_tokens(model, tokens.ids)  # llm/eval/perplexity.py's scoring: the same tokens, the same loss
    assert count == len(bits) and nats == pytest.approx(total, abs=1e-4)
    s = inspect.summary(tokens, bits)
    assert s["scored_tokens"] == len(bits) and s["loss"] == pytest.approx(loss, abs=1e-5)
    assert s["bits_per_byte"] == pytest.approx(sum(bits) / len(TEXT.encode()), rel=1e-9)


def test_a_conversations_summary_is_the_answers_training_loss(tiny, tok):
    model, _ = tiny
    tokens = inspect.tokenize(tok, prompt="What does Lily like?", answer="Lily likes the ball.")
    s = inspect.summary(tokens, inspect.surprise(model, tokens))
    ids = torch.tensor(tokens.ids)
    mask = torch.tensor([r.scored for r in tokens.rows])
    targets = torch.where(mask, ids[1:], -1)  # the fine-tuning loss mask
    with torch.no_grad():
        loss = causal_lm_loss(model(ids[None, :-1]), targets[None]).item()
    assert s["loss"] == pytest.approx(loss, abs=1e-5) and s["scored_tokens"] == int(mask.sum())


def test_a_text_longer_than_the_context_is_scored_in_half_context_sliding_windows(tiny, tok):
    model, _ = tiny
    T, stride = model.cfg.context_length, model.cfg.context_length // 2
    tokens = inspect.tokenize(tok, text=" ".join([TEXT] * 8))
    n = len(tokens.ids) - 1
    assert n > 3 * T
    losses = inspect.token_losses(model, tokens.ids)
    assert losses.shape == (n,)
    ids = torch.tensor(tokens.ids)
    with torch.no_grad():
        for j in [0, T // 2, T - 1, T, T + 1, T + stride, 2 * T + 5, n - 1]:
            # Target j (ids[j+1]) belongs to the first window that reaches it: start s, a multiple of the stride.
            s = max(0, math.ceil((j + 1 - T) / stride)) * stride
            assert j - s >= (stride - 1 if s else 0)  # at least half a context before it (after the first window)
            expected = F.cross_entropy(model(ids[None, s : j + 1])[0, -1], ids[j + 1])
            assert losses[j].item() == pytest.approx(expected.item(), abs=1e-4), j


def test_explicit_attention_equals_the_fused_kernel_with_and_without_a_cache(tiny, tok):
    model, _ = tiny
    ids = torch.tensor([tok.eos_id] + tok.encode(TEXT))[None]
    with torch.no_grad():
        fused = model(ids)
        for block in model.blocks:
            block.attn.keep_weights = True
        try:
            explicit = model(ids)
            assert all(block.attn.weights is not None for block in model.blocks)
        finally:
            for block in model.blocks:
                block.attn.keep_weights, block.attn.weights = False, None
    assert torch.allclose(explicit, fused, atol=1e-5)
    # The cached path: 5 new queries after 7 cached positions, and keys/values shared by pairs of query heads.
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    out, weights = attention_with_weights(q, k, v, past=7)
    mask = torch.ones(5, 12, dtype=torch.bool).tril(diagonal=7)
    k4, v4 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k4, v4, attn_mask=mask), atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 5), atol=1e-6) and (weights[..., ~mask] == 0).all()


def test_attention_rows_sum_to_one_and_never_look_ahead(tiny, tok):
    model, _ = tiny
    tokens = inspect.tokenize(tok, text=TEXT)
    weights = inspect.attention_weights(model, tokens.ids)
    T = len(tokens.ids)
    assert weights.shape == (model.cfg.n_layer, model.cfg.n_head, T, T)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
    assert (weights.triu(diagonal=1) == 0).all() and (weights >= 0).all()
    assert all(not block.attn.keep_weights and block.attn.weights is None for block in model.blocks)  # fast path again
    view = inspect.attention(model, tokens, layer=1)
    assert view["labels"][0] == "<eos>" and len(view["labels"]) == T
    assert torch.allclose(torch.tensor(view["weights"]), weights[1].mean(0), atol=1e-6)
    assert torch.allclose(torch.tensor(inspect.attention(model, tokens, 0, head=1)["weights"]), weights[0, 1])
    with pytest.raises(inspect.InspectError, match="layer 2"):
        inspect.attention(model, tokens, layer=2)
    with pytest.raises(inspect.InspectError, match="at most the context length"):
        inspect.attention(model, inspect.tokenize(tok, text=" ".join([TEXT] * 4)), 0)


def test_next_token_choices_before_and_after_temperature_and_top_p(tiny, tok):
    model, _ = tiny
    tokens = inspect.tokenize(tok, text=TEXT)
    position = 3  # after "Once upon a time"
    with torch.no_grad():
        logits = model(torch.tensor(tokens.ids[: position + 2])[None])[0, -1]
    probs = torch.softmax(logits, -1)
    plain = inspect.next_token(model, tok, tokens, position, top_k=5)
    assert [c["id"] for c in plain["candidates"]] == torch.topk(probs, 5).indices.tolist()
    assert all(c["probability"] == pytest.approx(c["sampled_probability"]) for c in plain["candidates"])
    assert plain["kept"] == tok.vocab_size and plain["context_tokens"] == position + 2
    actual = tokens.rows[position + 1]
    assert plain["actual"]["id"] == actual.id and plain["actual"]["probability"] == pytest.approx(
        probs[actual.id].item()
    )
    assert plain["actual"]["rank"] == int((probs > probs[actual.id]).sum()) + 1
    cool = inspect.next_token(model, tok, tokens, position, top_k=5, temperature=0.5)
    top = cool["candidates"][0]
    assert top["sampled_probability"] == pytest.approx(torch.softmax(logits / 0.5, -1).max().item(), abs=1e-6)
    assert top["sampled_probability"] > top["probability"]  # a low temperature sharpens the distribution
    nucleus = inspect.next_token(model, tok, tokens, position, top_k=5, top_p=0.5)
    assert 1 <= nucleus["kept"] < tok.vocab_size
    assert sum(c["sampled_probability"] for c in nucleus["candidates"]) == pytest.approx(1.0, abs=1e-5)
    greedy = inspect.next_token(model, tok, tokens, -1, top_k=3, temperature=0)
    assert greedy["position"] == len(tokens.rows) - 1 and greedy["actual"] is None and greedy["kept"] == 1
    assert greedy["candidates"][0]["sampled_probability"] == 1.0
    with pytest.raises(inspect.InspectError, match="position 999"):
        inspect.next_token(model, tok, tokens, 999)


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory, story_file):
    """An (untrained) model with a tokenizer of its own: its tokens are not the tiny model's."""
    out = tmp_path_factory.mktemp("other")
    other_tok = train_tokenizer([story_file], out / "tok", vocab_size=350)
    model = Transformer(preset("tiny", context_length=64, vocab_size=other_tok.vocab_size))
    return save_checkpoint(out / "model", model, other_tok)


def test_two_models_give_per_token_differences(tiny_model_dir):
    same = inspect.inspect_text([tiny_model_dir, tiny_model_dir], text=TEXT)
    assert same["models"] == [str(tiny_model_dir)] * 2 and len(same["summary"]) == 2
    assert all(r["delta_bits"] == 0.0 and r["bits_2"] == r["bits"] for r in same["rows"])
    one = inspect.inspect_text([tiny_model_dir], text=TEXT)
    assert [r["bits"] for r in one["rows"]] == [r["bits"] for r in same["rows"]] and "delta_bits" not in one["rows"][0]


def test_models_with_different_tokenizers_or_missing_are_refused(tmp_path, tiny_model_dir, other_tokenizer_model):
    with pytest.raises(inspect.InspectError, match="different tokenizers"):
        inspect.load_models([tiny_model_dir, other_tokenizer_model])
    with pytest.raises(CheckpointError, match="no such model directory"):
        inspect.load_models([tmp_path / "nope"])
    with pytest.raises(inspect.InspectError, match="not both"):
        inspect.inspect_text([tiny_model_dir], text="hi", prompt="hi", answer="there")


def test_cli_json_round_trip(tiny_model_dir):
    result = run_llm(
        "inspect", "--model", tiny_model_dir, "--text", TEXT, "--position", "2", "--layer", "0", "--json",
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    direct = inspect.inspect_text([tiny_model_dir], text=TEXT, position=2, layer=0)
    assert printed["text"] == TEXT and printed["tokens"] == len(printed["rows"]) == direct["tokens"]
    assert [r["id"] for r in printed["rows"]] == [r["id"] for r in direct["rows"]]
    assert [r["bits"] for r in printed["rows"]] == pytest.approx([r["bits"] for r in direct["rows"]], abs=1e-5)
    assert printed["next_token"][0]["candidates"][0]["id"] == direct["next_token"][0]["candidates"][0]["id"]
    assert len(printed["attention"][0]["weights"]) == len(printed["rows"]) + 1


def test_cli_table_and_clear_errors(tmp_path, tiny_model_dir, other_tokenizer_model):
    table = run_llm("inspect", "--model", tiny_model_dir, "--model", tiny_model_dir, "--text", "Lily had a ball.")
    assert table.returncode == 0, table.stderr
    assert "bits_2" in table.stdout and "▁ball" in table.stdout and "mean surprise" in table.stdout
    for args, fragment in (
        (["--model", tmp_path / "nope", "--text", "hi"], "no such model directory"),
        (["--model", tiny_model_dir, "--model", other_tokenizer_model, "--text", "hi"], "different tokenizers"),
        (["--model", tiny_model_dir, "--prompt", "hi"], "both a prompt and an answer"),
    ):
        result = run_llm("inspect", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and fragment in result.stderr, result.stderr
