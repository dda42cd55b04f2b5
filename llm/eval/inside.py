"""Look inside a model: the tokens it reads, how surprised it is by each one, what it would write next, and
where it attends. The studio's Inside view and `python -m llm inspect` call these functions.

    tokens = tokenize(tokenizer, text="Once upon a time")              # or prompt=..., answer=... (chat)
    bits = surprise(model, tokens)                                       # bits per token, one per row
    next_token(model, tokenizer, tokens, position=-1, top_k=10, temperature=0.8, top_p=0.95)
    attention(model, tokens, layer=0, head=None)                         # head None: the mean over heads
    report(load_models(["models/base", "runs/tuned"]), tokens)           # all of it, JSON-ready

The model reads a text the way pretraining showed it documents: after its start token (<eos> for ours, <s> for
Llama's). So the first token of the text is predicted from the start token alone and every token has a
surprise. A prompt and an answer are rendered with the chat template (llm/data/chat.py), whose first token
opens the conversation; their summary counts the answer's tokens and the end token after it, the tokens
fine-tuning trains on.

A text longer than the context length is scored in sliding windows that move by half a context, so every
token after the first window is predicted from at least half a context of the tokens before it. The next
token is predicted from the last context-length tokens before it. Attention is shown for texts that fit in
one context only (a clear error otherwise): a larger map would not be readable anyway.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llm.config import SamplingConfig
from llm.data.chat import render
from llm.data.tokenizer import Tokenizer
from llm.errors import InputError
from llm.model.checkpoint import load_model, resolve
from llm.model.generate import next_token_distribution
from llm.model.transformer import Transformer


class InspectError(InputError):
    """The text, the models or the settings given to inspect cannot be used; the message says which."""


@dataclass
class Token:
    index: int  # row number: 0 is the first token after the one that opens every text
    id: int
    piece: str  # its name (Tokenizer.id_to_piece): "▁the", "<0xE2>" (one byte of a character), "<|user|>"
    text: str  # Tokens.text[start:end]; a character split into byte tokens is the text of each of them
    start: int  # character span in Tokens.text
    end: int
    part: str  # "text", or in a conversation "prompt" / "answer"
    special: bool  # a control token (<|user|>, <|end|>, ...): no text of its own, its name is shown
    scored: bool  # counted in the summary: every token of a text, the answer (and its <|end|>) of a conversation


@dataclass
class Tokens:
    text: str  # what the spans index: the text, or the conversation with its control tokens written out
    ids: list[int]  # what the model reads: the opening token, then one id per row
    rows: list[Token]
    mode: str  # "text" or "chat"
    start: str  # the opening token's name (<eos> for ours)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spans(tokenizer: Tokenizer, ids: list[int], offset: int) -> tuple[str, list[tuple[int, int]]]:
    """(the text of ordinary (non-special) tokens, each token's character span in it, shifted by offset).

    A token's span covers the characters its bytes belong to: a piece of whole characters spans them; tokens
    that each hold part of a character (byte-fallback pieces, byte-level fragments) share its span.
    """
    data = [tokenizer.token_bytes(i) for i in ids]
    # A byte that is not part of a whole character (a cut text) decodes as one surrogate, shown as U+FFFD.
    chars = b"".join(data).decode("utf-8", errors="surrogateescape")
    owner = []  # owner[k]: the character that byte k of the joined bytes belongs to
    for c, char in enumerate(chars):
        owner += [c] * (1 if 0xDC80 <= ord(char) <= 0xDCFF else len(char.encode("utf-8")))
    owner.append(len(chars))  # where a token with no bytes after the last one sits
    spans, pos = [], 0
    for piece in data:
        first = owner[pos]
        spans.append((offset + first, offset + (owner[pos + len(piece) - 1] + 1 if piece else first)))
        pos += len(piece)
    return "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in chars), spans


def _rows(tokenizer: Tokenizer, ids: list[int], mask: list[bool], mode: str) -> tuple[str, list[Token]]:
    """The display text and one Token per id after the first (the start token the text follows).

    Runs of ordinary tokens are decoded together (a character may take several byte tokens); a special token
    (<|user|>, <|end|>, ...) is written out as its name.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length, run = 0, []

    def flush() -> None:
        nonlocal length
        if run:
            piece_text, run_spans = _spans(tokenizer, run, length)
            spans.extend(run_spans)
            parts.append(piece_text)
            length += len(piece_text)
            run.clear()

    for i in ids[1:]:
        if tokenizer.is_special(i):
            flush()
            name = tokenizer.id_to_piece(i)
            spans.append((length, length + len(name)))
            parts.append(name)
            length += len(name)
        else:
            run.append(i)
    flush()
    text = "".join(parts)
    rows = [
        Token(
            index=r,
            id=i,
            piece=tokenizer.id_to_piece(i),
            text=text[start:end],
            start=start,
            end=end,
            part="text" if mode == "text" else ("answer" if scored else "prompt"),
            special=tokenizer.is_special(i),
            scored=scored,
        )
        for r, (i, (start, end), scored) in enumerate(zip(ids[1:], spans, mask[1:], strict=True))
    ]
    return text, rows


def tokenize(
    tokenizer: Tokenizer,
    text: str | None = None,
    prompt: str | None = None,
    answer: str | None = None,
    system: str | None = None,
) -> Tokens:
    """A text, or a conversation (prompt and answer, optionally a system message), as the model reads it."""
    if text is not None and (prompt is not None or answer is not None):
        raise InspectError("give either a text or a prompt and an answer, not both")
    if text is not None:
        if not text:
            raise InspectError("the text is empty: there is nothing to inspect")
        ids = [tokenizer.start_id] + tokenizer.encode(text)
        shown, rows = _rows(tokenizer, ids, [True] * len(ids), "text")
        start = _start_name(tokenizer, ids[0])
        if len(shown) != len(text):  # a tokenizer that puts a space before the text (Llama's): show it
            return Tokens(shown, ids, rows, "text", start)
        # the same characters, but a "▁" typed in the text decodes as a space: show the text as typed
        return Tokens(text, ids, [replace(r, text=text[r.start : r.end]) for r in rows], "text", start)
    if not prompt or not answer:
        raise InspectError("a conversation needs both a prompt and an answer (or give a text instead)")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
    ]
    ids, mask = render(tokenizer, messages)
    shown, rows = _rows(tokenizer, ids, mask, "chat")
    return Tokens(shown, ids, rows, "chat", _start_name(tokenizer, ids[0]))


def _start_name(tokenizer: Tokenizer, i: int) -> str:
    """The opening token's name: <eos> for ours (written </s>), else as the tokenizer spells it."""
    return "<eos>" if i == tokenizer.eos_id and not tokenizer.chat_template else tokenizer.id_to_piece(i)


@torch.no_grad()
def token_losses(model: Transformer, ids: list[int]) -> torch.Tensor:
    """Loss in nats of each ids[i+1] given the ids before it: a (len(ids) - 1,) tensor, on the CPU.

    Up to context_length + 1 ids take one forward pass. Longer sequences are read in windows of the context
    length that start every half context; each window keeps the predictions of the tokens the previous one
    did not reach, so each of those is predicted from at least half a context.
    """
    assert len(ids) >= 2, "nothing to predict"
    T = model.cfg.context_length
    stride = max(1, T // 2)
    device = next(model.parameters()).device
    data = torch.tensor(ids, dtype=torch.long, device=device)
    n_targets = len(ids) - 1
    losses = torch.empty(n_targets)
    done, start = 0, 0  # targets scored so far; the window's first input position
    while done < n_targets:
        x = data[start : start + T]  # inputs at positions start..; they predict the ids one further on
        y = data[start + 1 : start + 1 + len(x)]
        x = x[: len(y)]
        logits = model(x[None])[0].float()  # (len(x), V)
        nll = F.cross_entropy(logits, y, reduction="none").cpu()
        skip = done - start  # targets of this window that an earlier window already scored
        losses[done : start + len(y)] = nll[skip:]
        done, start = start + len(y), start + stride
    return losses


def surprise(model: Transformer, tokens: Tokens) -> list[float]:
    """Bits of surprise of each row: -log2 p(token | the tokens before it)."""
    return (token_losses(model, tokens.ids) / math.log(2)).tolist()


def summary(tokens: Tokens, bits: list[float]) -> dict[str, Any]:
    """Totals over the scored rows: token count, total and mean bits, mean loss in nats, and bits per byte of
    their text (control tokens have no text; a character split into byte tokens counts once)."""
    scored = [r for r in tokens.rows if r.scored]
    total = sum(bits[r.index] for r in scored)
    chars = {c for r in scored if not r.special for c in range(r.start, r.end)}
    n_bytes = sum(len(tokens.text[c].encode("utf-8")) for c in chars)
    return {
        "scored_tokens": len(scored),
        "total_bits": total,
        "mean_bits": total / len(scored) if scored else None,
        "loss": total * math.log(2) / len(scored) if scored else None,  # mean nats per token, as in training
        "bits_per_byte": total / n_bytes if n_bytes else None,
    }


def _row(tokens: Tokens, position: int) -> Token:
    """The row at position (negative counts from the end), or a clear error."""
    n = len(tokens.rows)
    if not -n <= position < n:
        raise InspectError(f"{position} is outside the {n} tokens (0..{n - 1}, or -1 for the last)", field="position")
    return tokens.rows[position]


@torch.no_grad()
def next_token(
    model: Transformer,
    tokenizer: Tokenizer,
    tokens: Tokens,
    position: int = -1,
    top_k: int = 10,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> dict[str, Any]:
    """What the model would write after row `position`: its top_k next tokens by probability, each with its
    probability before and after temperature and top-p (the sampler's own rule, llm.model.generate), and where the
    text's actual next token stands (None after the last row).

    Temperature 0 is greedy sampling: the most likely token gets probability 1.
    """
    if top_k <= 0:
        raise InspectError(f"must be positive, got {top_k}", field="top_k")
    row = _row(tokens, position)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p)  # checks both (a ConfigError naming each)
    device = next(model.parameters()).device
    context = torch.tensor(tokens.ids[: row.index + 2][-model.cfg.context_length :], device=device)
    logits = model(context[None])[0, -1].float()  # (V,)
    before = torch.softmax(logits, dim=-1)
    adjusted = next_token_distribution(logits, context, sampling)
    if sampling.temperature == 0:
        after = F.one_hot(adjusted.argmax(), adjusted.numel()).float()
    else:
        after = torch.softmax(adjusted, dim=-1)
    top = torch.topk(before, min(top_k, before.numel()))
    candidates = [
        {
            "rank": rank,
            "id": int(i),
            "piece": tokenizer.id_to_piece(int(i)),
            "text": tokenizer.decode([int(i)]),
            "probability": float(p),
            "sampled_probability": float(after[i]),
        }
        for rank, (p, i) in enumerate(zip(top.values, top.indices, strict=True), 1)
    ]
    actual = None
    if row.index + 1 < len(tokens.rows):
        i = tokens.rows[row.index + 1].id
        actual = {
            "id": i,
            "piece": tokenizer.id_to_piece(i),
            "probability": float(before[i]),
            "sampled_probability": float(after[i]),
            "rank": int((before > before[i]).sum()) + 1,
        }
    return {
        "position": row.index,
        "after": row.piece,
        "context_tokens": len(context),
        "temperature": temperature,
        "top_p": top_p,
        "kept": int((after > 0).sum()),  # tokens the sampler could still draw
        "candidates": candidates,
        "actual": actual,
    }


@torch.no_grad()
def attention_weights(model: Transformer, ids: list[int]) -> torch.Tensor:
    """Attention weights of every layer and head over ids: (n_layer, n_head, T, T), row q the weights query
    position q gives to positions 0..q. The model runs its explicit attention path for this one call."""
    if len(ids) > model.cfg.context_length:
        raise InspectError(
            f"attention is shown for at most the context length, {model.cfg.context_length} tokens (with the "
            f"opening token); this text has {len(ids)}: inspect a shorter part of it"
        )
    layers = [block.attn for block in model.blocks]
    device = next(model.parameters()).device
    try:
        for attn in layers:
            attn.keep_weights = True
        model(torch.tensor(ids, device=device)[None])
        return torch.stack([attn.weights[0].cpu() for attn in layers])
    finally:
        for attn in layers:
            attn.keep_weights, attn.weights = False, None


def attention(model: Transformer, tokens: Tokens, layer: int = 0, head: int | None = None) -> dict[str, Any]:
    """One layer's attention over the tokens (the opening token first), of one head or (head None) the mean over heads:
    {"layer", "head", "labels" (one per position), "weights" (rows: queries, columns: keys; rows sum to 1)}."""
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layer:
        raise InspectError(f"{layer}: the model has layers 0..{cfg.n_layer - 1}", field="layer")
    if head is not None and not 0 <= head < cfg.n_head:
        raise InspectError(f"{head}: the model has heads 0..{cfg.n_head - 1} (or none for their mean)", field="head")
    weights = attention_weights(model, tokens.ids)[layer]  # (H, T, T)
    chosen = weights.mean(0) if head is None else weights[head]
    return {
        "layer": layer,
        "head": head,
        "labels": [tokens.start] + [r.text for r in tokens.rows],
        "weights": chosen.tolist(),
    }


@dataclass
class Loaded:
    name: str  # as the user gave it
    model: Transformer
    tokenizer: Tokenizer


def load_models(paths: list[str | Path], device: str | torch.device = "cpu") -> list[Loaded]:
    """One or two models (model or run folders). Two must share their tokenizer, so that their tokens are
    the same and their surprise can be compared token by token."""
    if not 1 <= len(paths) <= 2:
        raise InspectError(f"inspect takes one or two models, got {len(paths)}")
    for path in paths:
        resolve(path)  # a clear error for a missing model before loading any
    loaded = [Loaded(str(p), *load_model(p, device)[:2]) for p in paths]
    if len(loaded) == 2 and not loaded[0].tokenizer.same_vocabulary(loaded[1].tokenizer):
        raise InspectError(
            f"{loaded[0].name} and {loaded[1].name} use different tokenizers, so their tokens cannot be compared "
            "one by one: compare a model with another trained from it (a fine-tune and its base)"
        )
    return loaded


def report(
    loaded: list[Loaded],
    tokens: Tokens,
    position: int | None = None,
    top_k: int = 10,
    temperature: float = 1.0,
    top_p: float = 1.0,
    layer: int | None = None,
    head: int | None = None,
) -> dict[str, Any]:
    """Everything about the tokens under each model, as plain JSON-ready data:

    text, mode, models, characters, tokens (count), summary (one per model, see summary()), rows (each token
    with "bits" under the first model and, with two models, "bits_2" and "delta_bits" = bits_2 - bits:
    negative where the second model finds the token more likely), next_token (one per model, when position
    is given) and attention (one per model, when layer is given).
    """
    bits = [surprise(m.model, tokens) for m in loaded]
    rows = []
    for row in tokens.rows:
        record = {**asdict(row), "bits": bits[0][row.index]}
        if len(loaded) == 2:
            record["bits_2"] = bits[1][row.index]
            record["delta_bits"] = bits[1][row.index] - bits[0][row.index]
        rows.append(record)
    result: dict[str, Any] = {
        "text": tokens.text,
        "mode": tokens.mode,
        "models": [m.name for m in loaded],
        "characters": len(tokens.text),
        "tokens": len(tokens.rows),
        "summary": [{"model": m.name, **summary(tokens, b)} for m, b in zip(loaded, bits, strict=True)],
        "rows": rows,
    }
    if position is not None:
        result["next_token"] = [
            {"model": m.name, **next_token(m.model, m.tokenizer, tokens, position, top_k, temperature, top_p)}
            for m in loaded
        ]
    if layer is not None:
        result["attention"] = [{"model": m.name, **attention(m.model, tokens, layer, head)} for m in loaded]
    return result


def inspect_text(
    models: list[str | Path],
    text: str | None = None,
    prompt: str | None = None,
    answer: str | None = None,
    system: str | None = None,
    device: str | torch.device = "cpu",
    **settings: Any,
) -> dict[str, Any]:
    """load_models + tokenize + report in one call; settings are report()'s (position, top_k, ...)."""
    loaded = load_models(models, device)
    return report(loaded, tokenize(loaded[0].tokenizer, text, prompt, answer, system), **settings)


def format_report(result: dict[str, Any]) -> str:
    """The report as readable tables: a summary line per model, one line per token, then the next-token and
    attention views when present."""

    def shown(piece: str) -> str:
        return repr(piece)[1:-1]  # newlines and tabs visible, no quotes

    lines = []
    for s in result["summary"]:
        scored = "" if result["mode"] == "text" else f"; on the answer's {s['scored_tokens']} tokens"
        bpb = f", {s['bits_per_byte']:.3f} bits per byte" if s["bits_per_byte"] is not None else ""
        lines.append(
            f"{s['model']}: {result['tokens']} tokens for {result['characters']} characters "
            f"({result['characters'] / max(result['tokens'], 1):.2f} per token){scored}: "
            f"mean surprise {s['mean_bits']:.3f} bits per token{bpb}"
        )
    two = len(result["models"]) == 2
    header = f"{'#':>5} {'id':>6}  {'piece':<16} {'part':<6} {'bits':>7}" + (
        f" {'bits_2':>7} {'delta':>7}" if two else ""
    )
    lines += ["", header]
    for r in result["rows"]:
        mark = "" if r["scored"] else "  (not scored)"
        line = f"{r['index']:>5} {r['id']:>6}  {shown(r['piece']):<16} {r['part']:<6} {r['bits']:>7.3f}"
        if two:
            line += f" {r['bits_2']:>7.3f} {r['delta_bits']:>+7.3f}"
        lines.append(line + mark)
    for view in result.get("next_token", []):
        actual = view["actual"]
        lines += [
            "",
            f"{view['model']}: next token after #{view['position']} {shown(view['after'])!r} "
            f"({view['context_tokens']} tokens of context; temperature {view['temperature']:g}, top-p "
            f"{view['top_p']:g}; tokens that can be drawn: {view['kept']})",
            f"{'rank':>5}  {'piece':<16} {'p':>7} {'sampled':>8}",
        ]
        for c in view["candidates"]:
            lines.append(
                f"{c['rank']:>5}  {shown(c['piece']):<16} {c['probability']:>7.4f} {c['sampled_probability']:>8.4f}"
            )
        if actual:
            lines.append(
                f"the text goes on with {shown(actual['piece'])!r}: rank {actual['rank']}, p "
                f"{actual['probability']:.4f}, sampled {actual['sampled_probability']:.4f}"
            )
    for view in result.get("attention", []):
        head = "mean over heads" if view["head"] is None else f"head {view['head']}"
        lines += ["", f"{view['model']}: attention of layer {view['layer']}, {head}: each token's 3 strongest keys"]
        # Position k holds the opening token (k = 0) or token #k-1.
        name = [f"#{k - 1} {shown(label)!r}" if k else label for k, label in enumerate(view["labels"])]
        for q, weights in enumerate(view["weights"]):
            best = sorted(range(q + 1), key=lambda k: -weights[k])[:3]
            lines.append(f"{name[q]:<20} -> " + ", ".join(f"{name[k]} {weights[k]:.2f}" for k in best))
    return "\n".join(lines)
