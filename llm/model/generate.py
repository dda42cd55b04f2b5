"""Sampling with a KV cache, streamed as text."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from typing import Any

import torch

from llm.config import SamplingConfig
from llm.data.chat import prompt_ids as chat_prompt_ids
from llm.data.chat import stop_ids as chat_stop_ids
from llm.data.chat import user_messages
from llm.data.tokenizer import Tokenizer
from llm.model.transformer import KVCache, Transformer


def next_token_distribution(logits: torch.Tensor, context: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Logits (V,) of the next token -> adjusted logits, -inf where sampling is ruled out."""
    logits = logits.float().clone()
    if cfg.repetition_penalty != 1.0 and context.numel():
        seen = torch.unique(context)
        scores = logits[seen]
        # CTRL's rule: shrink positive scores, push negative ones further down.
        logits[seen] = torch.where(scores > 0, scores / cfg.repetition_penalty, scores * cfg.repetition_penalty)
    if cfg.temperature == 0:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > cfg.top_p  # keep the first token always
        logits[order[drop]] = float("-inf")
    return logits


@torch.no_grad()
def generate_ids(
    model: Transformer,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    stop_ids: tuple[int, ...] = (),
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time. With use_cache=False every step re-runs the whole window.

    The model sees a window of the last tokens. When the window would exceed the context length T, it
    slides forward to keep only the last T//2 tokens (the cache is rebuilt from them), so a cache rebuild
    costs one forward pass per T//2 new tokens. Both paths use the same window, so they give the same tokens.
    The cache holds the window and the tokens still to come (at most T positions), in the model's dtype.

    A seed gives the same tokens on the same kind of device; a GPU's kernels round differently from a
    CPU's, so its tokens for a seed can differ.
    """
    assert prompt_ids, "generation needs at least one prompt token"
    device = next(model.parameters()).device
    T = model.cfg.context_length
    generator = torch.Generator(device=device)
    if cfg.seed is not None:
        generator.manual_seed(cfg.seed)
    else:
        generator.seed()  # a fresh random seed for this generator only; the global RNG is left alone
    ids = torch.tensor(prompt_ids[-T:], dtype=torch.long, device=device)
    start = 0  # ids[start:] is the window the model conditions on
    cache = None
    for made in range(cfg.max_new_tokens):
        if len(ids) - start > T:
            start = len(ids) - max(1, T // 2)
            cache = None
        if not use_cache:
            logits = model(ids[start:][None])[0, -1]
        elif cache is None:
            window = len(ids) - start
            # The window, and the new tokens after it: the last of them is never fed back in.
            positions = min(T, window + cfg.max_new_tokens - made - 1)
            cache = KVCache(model.cfg, 1, device, model.tok_emb.weight.dtype, positions)
            logits = model(ids[start:][None], cache)[0, -1]
        else:
            logits = model(ids[-1:][None], cache)[0, -1]  # only the newest token is not cached yet
        logits = next_token_distribution(logits, ids, cfg)
        if cfg.temperature == 0:
            token = int(torch.argmax(logits))
        else:
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token in stop_ids:
            return
        yield token
        ids = torch.cat([ids, torch.tensor([token], device=device)])


def stream_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    stop_ids: tuple[int, ...] = (),
    *,
    use_cache: bool = True,
) -> Iterator[str]:
    """Yield pieces of generated text as they become whole characters, ending at a stop string or id.

    Only valid characters are ever shown. Tokens are joined as bytes (byte-fallback tokens carry one byte of
    a character each) and decoded as UTF-8 incrementally: the bytes of a character still incomplete wait for
    the rest, and bytes that cannot be part of any character (a continuation byte with no lead byte, a lead
    byte followed by something else, a character cut off when generation ends) are dropped, never shown
    as U+FFFD.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    text = emitted = ""
    for token in generate_ids(model, prompt_ids, cfg, stop_ids, use_cache):
        piece = decoder.decode(tokenizer.token_bytes(token))
        if not piece:
            continue  # a multi-byte character is still incomplete (or the bytes were dropped)
        text += piece
        hits = [h for s in cfg.stop if s and (h := text.find(s, max(0, len(emitted) - len(s)))) >= 0]
        if hits:
            if min(hits) > len(emitted):
                yield text[len(emitted) : min(hits)]
            return
        # Hold back a tail that could be the start of a stop string, so no part of one is ever shown.
        hold = max((k for s in cfg.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if len(text) - hold > len(emitted):
            yield text[len(emitted) : len(text) - hold]
            emitted = text[: len(text) - hold]
    text += decoder.decode(b"", final=True)  # drops a character left incomplete
    if len(text) > len(emitted):
        yield text[len(emitted) :]


def stream_chat(
    model: Transformer, tokenizer: Tokenizer, messages: list[dict[str, str]], cfg: SamplingConfig
) -> Iterator[str]:
    """The model's next assistant turn in a conversation, streamed; it ends by the one chat stop rule."""
    yield from stream_text(model, tokenizer, chat_prompt_ids(tokenizer, messages), cfg, chat_stop_ids(tokenizer))


def sample_logger(
    tokenizer: Tokenizer, prompts: list[str], sampling: SamplingConfig, chat: bool = False
) -> Callable[[Transformer, int, dict[str, float]], dict[str, Any]]:
    """on_eval for the trainer: each prompt's continuation, logged as "samples": [{"prompt", "output"}].

    Plain prompts continue a document (after <eos>, as in pretraining, until the next <eos>); chat=True asks
    each prompt as a user turn and logs the answer, ending by the one chat stop rule. Set sampling.seed: every evaluation then
    draws the same random numbers, so the samples change only as the model learns (and torch's global RNG,
    which drives the training run's dropout, is left alone).
    """
    assert sampling.seed is not None, "samples along a run are comparable only with a fixed seed"

    def on_eval(model: Transformer, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        samples = []
        for prompt in prompts:
            if chat:
                text = "".join(stream_chat(model, tokenizer, user_messages(prompt), sampling))
            else:
                ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
                text = "".join(stream_text(model, tokenizer, ids, sampling, (tokenizer.eos_id,)))
            samples.append({"prompt": prompt, "output": text.strip() if chat else text})
        model.train(was_training)
        return {"samples": samples}

    return on_eval
