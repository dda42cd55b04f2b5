"""Generation: the KV cache changes nothing but speed, sampling is seeded and filtered, stop strings never show."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.config import ModelConfig, preset
from llm.data.tokenizer import Tokenizer
from llm.model import generate
from llm.model.generate import SamplingConfig, generate_ids, next_token_distribution, stream_text
from llm.model.transformer import Transformer


@pytest.fixture(scope="module")
def short_model(tok) -> Transformer:
    """A random model with a 16-token window, so 60 new tokens restart the cache several times."""
    torch.manual_seed(0)
    return Transformer(preset("tiny", context_length=16, vocab_size=tok.vocab_size)).eval()


def run(model: nn.Module, prompt: list[int], cfg: SamplingConfig, use_cache: bool) -> tuple[list[int], list]:
    """Generated ids and the next-token logits (V,) the model produced at each step."""
    logits: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda m, args, out: logits.append(out[0, -1].clone()))
    try:
        ids = list(generate_ids(model, prompt, cfg, use_cache=use_cache))
    finally:
        hook.remove()
    return ids, logits


@pytest.mark.parametrize("prompt_len", [3, 16, 40])  # short, exactly the window, longer than the window
def test_cached_generation_equals_uncached(short_model, tok, prompt_len):
    prompt = (tok.encode("Once upon a time, Lily had a ball. ") * 10)[:prompt_len]
    cfg = SamplingConfig(max_new_tokens=60, temperature=0)
    cached_ids, cached_logits = run(short_model, prompt, cfg, use_cache=True)
    plain_ids, plain_logits = run(short_model, prompt, cfg, use_cache=False)
    assert len(cached_ids) == 60
    assert cached_ids == plain_ids
    assert len(cached_logits) == len(plain_logits) == 60
    for step, (a, b) in enumerate(zip(cached_logits, plain_logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m, s=step: f"step {s}: {m}")


def test_cached_sampling_equals_uncached(short_model, tok):
    prompt = tok.encode("Tom said")
    cfg = SamplingConfig(max_new_tokens=40, temperature=1.0, top_k=50, seed=7)
    assert run(short_model, prompt, cfg, True)[0] == run(short_model, prompt, cfg, False)[0]


def test_seeded_sampling_is_reproducible(short_model, tok):
    prompt = tok.encode("Once upon a time")

    def sample(seed):
        return list(generate_ids(short_model, prompt, SamplingConfig(max_new_tokens=30, temperature=1.0, seed=seed)))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_unseeded_sampling_leaves_the_global_rng_alone(short_model, tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(generate_ids(short_model, tok.encode("Tom"), SamplingConfig(max_new_tokens=5, temperature=1.0)))
    assert torch.equal(torch.rand(3), expected)


def test_top_k_keeps_exactly_k_tokens():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.0, 1.0, 0.5])
    out = next_token_distribution(logits, torch.tensor([], dtype=torch.long), SamplingConfig(temperature=1, top_k=3))
    assert torch.isfinite(out).nonzero().flatten().tolist() == [1, 3, 4]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    empty = torch.tensor([], dtype=torch.long)
    for top_p, kept in ((0.4, [1]), (0.6, [1, 3]), (0.9, [1, 2, 3]), (1.0, [0, 1, 2, 3])):
        out = next_token_distribution(probs.log(), empty, SamplingConfig(temperature=1, top_p=top_p))
        assert torch.isfinite(out).nonzero().flatten().tolist() == kept, top_p
        # The kept tokens keep their relative probabilities.
        torch.testing.assert_close(out.softmax(-1)[kept], probs[kept] / probs[kept].sum())


def test_repetition_penalty_shrinks_seen_tokens_only():
    logits = torch.tensor([2.0, -1.0, 1.0, 0.5])
    out = next_token_distribution(
        logits, torch.tensor([0, 1, 0]), SamplingConfig(temperature=0, repetition_penalty=2.0)
    )
    assert out.tolist() == [1.0, -2.0, 1.0, 0.5]


def test_temperature_sharpens(short_model, tok):
    """Near-zero temperature samples the greedy sequence."""
    prompt = tok.encode("Once upon a time")
    greedy = list(generate_ids(short_model, prompt, SamplingConfig(max_new_tokens=20, temperature=0)))
    cold = list(generate_ids(short_model, prompt, SamplingConfig(max_new_tokens=20, temperature=1e-4, seed=3)))
    assert cold == greedy


class ScriptedModel(nn.Module):
    """Stands in for a Transformer and emits a fixed token script, one token per forward call."""

    def __init__(self, script: list[int], vocab_size: int):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=vocab_size, context_length=256, n_layer=1, n_head=1, d_model=8)
        self.tok_emb = nn.Embedding(vocab_size, 8)
        self.script, self.calls = script, 0

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None:
            cache.length += idx.size(1)
        logits = torch.zeros(idx.size(0), idx.size(1), self.cfg.vocab_size)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 100.0
        self.calls += 1
        return logits


def pieces_of(tok: Tokenizer, *parts: str) -> list[int]:
    """Ids of each part encoded on its own, so the parts arrive as separate tokens."""
    return [i for p in parts for i in tok.encode(p)]


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    return [one_byte(tok, b) for b in text.encode()]


def stream(tok: Tokenizer, script: list[int], stop: list[str], stop_ids=()) -> list[str]:
    cfg = SamplingConfig(max_new_tokens=len(script), temperature=0, stop=stop)
    return list(stream_text(ScriptedModel(script, tok.vocab_size), tok, [tok.eos_id], cfg, stop_ids))


def test_stop_string_split_across_tokens_never_shows(tok):
    assert len(tok.encode(" sa")) == len(tok.encode("id")) == 1  # " said" arrives as two tokens
    script = pieces_of(tok, "Tom", " sa", "id", " hi")
    out = stream(tok, script, [" said"])
    assert "".join(out) == "Tom"
    assert not any("s" in piece for piece in out)  # the held-back " sa" was never shown


def test_stop_string_inside_one_token(tok):
    out = stream(tok, pieces_of(tok, "Tom", " said", " hi"), ["ai"])
    assert "".join(out) == "Tom s"


def test_earliest_of_several_stop_strings_wins(tok):
    out = stream(tok, pieces_of(tok, "Once", " upon", " a time"), ["pon", "upon"])  # both end with " upon"
    assert "".join(out) == "Once "


def test_held_back_prefix_is_released_when_no_stop_follows(tok):
    script = pieces_of(tok, "Tom", " sa", "w", " it")
    out = stream(tok, script, [" said"])
    assert out == ["T", "om", " saw", " it"]  # " sa" was held until "w" ruled the stop string out


def test_multibyte_characters_stream_whole(tok):
    script = pieces_of(tok, "Tom") + byte_ids(tok, "😀好") + pieces_of(tok, "!")
    out = stream(tok, script, [])
    assert "".join(out) == "Tom😀好!"
    assert not any("\ufffd" in piece for piece in out)


def one_byte(tok: Tokenizer, value: int) -> int:
    """The byte-fallback piece of one byte."""
    return next(i for i in range(tok.vocab_size) if tok.id_to_piece(i) == f"<0x{value:02X}>")


@pytest.mark.parametrize(
    "script, expected",
    [
        (lambda t: pieces_of(t, "Tom") + [one_byte(t, 0x80)] + pieces_of(t, " sat"), "Tom sat"),  # no lead byte
        (lambda t: pieces_of(t, "Tom") + byte_ids(t, "好")[:2] + pieces_of(t, " sat"), "Tom sat"),  # lead, then text
        (lambda t: byte_ids(t, "好")[:1] + byte_ids(t, "😀") + pieces_of(t, "!"), "😀!"),  # cut off by a new lead
        (lambda t: pieces_of(t, "Tom") + [one_byte(t, 0xFF), one_byte(t, 0xC0)] + pieces_of(t, "!"), "Tom!"),  # never
        (lambda t: pieces_of(t, "Tom") + byte_ids(t, "😀")[:3], "Tom"),  # a character left incomplete at the end
    ],
)
def test_invalid_byte_sequences_never_show_as_replacement_characters(tok, script, expected):
    """The rule: bytes of a character wait until it is whole; bytes that cannot become part of one are dropped."""
    ids = script(tok)
    assert "\ufffd" in tok.decode(ids)  # what a plain decode shows
    out = stream(tok, ids, [])
    assert "".join(out) == expected
    assert all(piece and "\ufffd" not in piece for piece in out)


def test_stop_string_made_of_byte_tokens(tok):
    out = stream(tok, pieces_of(tok, "Tom") + byte_ids(tok, "😀") + pieces_of(tok, "!"), ["😀"])
    assert "".join(out) == "Tom"


def test_stop_id_ends_the_stream_without_showing_it(tok):
    end = tok.special["<|end|>"]
    script = pieces_of(tok, "Tom", " said") + [end] + pieces_of(tok, " more")
    assert "".join(stream(tok, script, [], stop_ids=(end,))) == "Tom said"


def test_real_model_stream_never_contains_the_stop_string(tiny_model_dir):
    from llm.model.checkpoint import load_model

    model, tok, _ = load_model(tiny_model_dir)
    prompt = [tok.eos_id] + tok.encode("Once upon a time, Tom")
    full = "".join(stream_text(model, tok, prompt, SamplingConfig(max_new_tokens=40, temperature=0)))
    assert " said" in full  # the model learned the stories; otherwise this test proves nothing
    cut = "".join(stream_text(model, tok, prompt, SamplingConfig(max_new_tokens=40, temperature=0, stop=[" said"])))
    assert cut == full[: full.index(" said")]


class SizedCaches:
    """Records the (positions, dtype) of each KV cache generation makes."""

    def __init__(self, monkeypatch):
        self.made: list[tuple[int, torch.dtype]] = []
        original = generate.KVCache

        def record(*args, **kwargs):
            cache = original(*args, **kwargs)
            self.made.append((cache.keys[0].size(2), cache.keys[0].dtype))
            return cache

        monkeypatch.setattr(generate, "KVCache", record)


def test_the_kv_cache_holds_the_prompt_and_the_new_tokens_in_the_models_dtype(tok, monkeypatch):
    caches = SizedCaches(monkeypatch)
    torch.manual_seed(0)
    model = Transformer(preset("tiny", context_length=256, vocab_size=tok.vocab_size)).eval()
    prompt = tok.encode("Once upon a time")
    ids = list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=10, temperature=0)))
    assert len(ids) == 10 and caches.made == [(len(prompt) + 9, torch.float32)]  # the 10th is never fed back
    caches.made.clear()
    bf16 = list(generate_ids(model.to(torch.bfloat16), prompt, SamplingConfig(max_new_tokens=10, temperature=0)))
    assert len(bf16) == 10 and caches.made == [(len(prompt) + 9, torch.bfloat16)]


def test_a_cache_that_slides_is_at_most_the_context(short_model, tok, monkeypatch):
    caches = SizedCaches(monkeypatch)
    list(generate_ids(short_model, tok.encode("Tom said") * 2, SamplingConfig(max_new_tokens=60, temperature=0)))
    assert len(caches.made) > 1 and all(positions <= 16 for positions, _ in caches.made)


def test_decoding_asks_attention_for_no_mask_and_shares_kv_heads(tok, monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recorded(q, k, v, **kwargs):
        calls.append((q.size(1), k.size(1), q.size(2), kwargs))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorded)
    torch.manual_seed(0)
    model = Transformer(preset("tiny", context_length=32, vocab_size=tok.vocab_size, n_kv_head=1)).eval()
    list(generate_ids(model, tok.encode("Once upon a time"), SamplingConfig(max_new_tokens=3, temperature=0)))
    heads, kv_heads = model.cfg.n_head, 1
    assert {(h, kv) for h, kv, _, _ in calls} == {(heads, kv_heads)}  # keys and values never copied per head
    assert all(kwargs["enable_gqa"] for *_, kwargs in calls)
    decoding = [kwargs for _, _, t, kwargs in calls if t == 1]
    assert decoding and all("attn_mask" not in kwargs and not kwargs.get("is_causal") for kwargs in decoding)
