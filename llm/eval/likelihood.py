"""The log-likelihood of a continuation after a context, as lm-evaluation-harness (v0.4) computes it for
multiple-choice and log-likelihood tasks, without a KV cache.

The encoding is lm-eval's, to the token:
  - context and continuation are encoded together and the continuation is what follows the context's own
    tokens (a token may span the boundary); trailing spaces of the context move onto the continuation;
  - an empty context (BLiMP) is the model's start token (the tokenizer's start_id: EOS for ours, which
    separate documents with it; an imported tokenizer's BOS, or its end-of-text token when it adds none), as
    lm-eval conditions on BOS, or EOS for a tokenizer without one;
  - no start token before a non-empty context; a request longer than the context window keeps its end.
Requests of several rows are packed into one forward pass (sorted by length, so little is padding); the
batches run in a fixed shuffled order, so the rate so far predicts the time left.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from llm.data.benchmarks import BenchTask
from llm.data.tokenizer import Tokenizer
from llm.model.transformer import Transformer

Request = tuple[list[int], list[int]]  # (context token ids, continuation token ids)


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
    """A request's token ids as lm-eval encodes them (HFLM._encode_pair and the empty-context rule)."""
    if not context:
        ids = tokenizer.encode(continuation)
        start = tokenizer.start_id
        return ([start], ids) if ids[:1] != [start] else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def encode_task(tokenizer: Tokenizer, task: BenchTask) -> list[Request]:
    """Every choice of every row, in row order."""
    return [encode_pair(tokenizer, context, continuation) for row in task.rows for context, continuation in row.pairs]


def input_tokens(request: Request, context_length: int) -> int:
    """The tokens a request puts through the model: context and continuation but the last, at most the window
    (lm-eval keeps the end of a longer request)."""
    return min(len(request[0]) + len(request[1]), context_length + 1) - 1


def batches(lengths: list[int], batch_tokens: int, seed: int = 0) -> list[list[int]]:
    """Request indices grouped into batches of at most batch_tokens padded tokens (one request at least),
    similar lengths together; the batches in a fixed shuffled order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    random.Random(seed).shuffle(groups)
    return groups


@torch.no_grad()
def loglikelihoods(
    model: Transformer,
    requests: list[Request],
    batch_tokens: int = 4096,
    amp: torch.dtype | None = None,
    tick: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The log-likelihood of each request's continuation after its context (nats). tick(requests, tokens) is
    called after each batch with what it scored."""
    T = model.cfg.context_length
    device = next(model.parameters()).device
    lengths = [input_tokens(r, T) for r in requests]
    windows = [(ctx + cont)[-(n + 1) :] for (ctx, cont), n in zip(requests, lengths, strict=True)]  # keep the end
    counts = [min(len(cont), n) for (_, cont), n in zip(requests, lengths, strict=True)]
    lls = np.zeros(len(requests))
    for group in batches(lengths, batch_tokens):
        width = len(windows[group[0]]) - 1
        x = torch.zeros(len(group), width, dtype=torch.long)  # right-padded: padding sits after every real token
        rows, cols, targets = [], [], []
        for b, i in enumerate(group):
            w = windows[i]
            x[b, : len(w) - 1] = torch.tensor(w[:-1])
            first = len(w) - 1 - counts[i]  # the input position that predicts the continuation's first token
            rows += [b] * counts[i]
            cols += range(first, len(w) - 1)
            targets += w[first + 1 :]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x.to(device))  # (B, width, V)
        picked = logits[rows, cols].float()  # (continuation tokens, V)
        target = torch.tensor(targets, device=device)
        # log-softmax at the target only: its logit less the log-sum-exp of the row (one pass, no (N, V) copy)
        token_ll = (picked.gather(1, target[:, None])[:, 0] - picked.logsumexp(-1)).cpu().numpy()
        ends = np.cumsum([counts[i] for i in group])
        for i, end in zip(group, ends, strict=True):
            lls[i] = token_ll[end - counts[i] : end].sum()
        if tick:
            tick(len(group), sum(lengths[i] for i in group))
    return lls
