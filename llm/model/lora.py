"""Low-rank adapters (LoRA), written from scratch.

A frozen linear layer W (out, in) gets a trainable update  x -> W x + (alpha / r) * B A dropout(x),  with
A (r, in) random and B (out, r) zero, so training starts exactly at the base model. Only A and B learn: a
small fraction of the parameters, and an adapter file a small fraction of the model's. merge_lora folds
B A into W, giving back a plain model with the same outputs and no extra cost at inference. Inside
`with disabled(model):` the adapters add nothing, so the model computes its base model's outputs (preference
tuning's frozen reference, without a second copy of the weights).

The embeddings stay frozen, but a few tokens may get trainable rows (apply_lora's tokens): the chat control
tokens never occur in pretraining text, so their embeddings carry nothing a model could use to begin a turn or
to end an answer with <|end|>. A delta on those rows is trained and stored with the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from llm.config import ALL_PROJECTIONS
from llm.errors import CheckpointError, ConfigError


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        assert rank > 0, "LoRA rank must be positive"
        self.base = base
        self.base.weight.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        # On the base layer's device: adapters are added to a model already on its GPU.
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)
        self.enabled = True  # False inside disabled(): the base layer alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        # x (..., in) -> (..., r) -> (..., out)
        return self.base(x) + (self.dropout(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
        return linear.to(self.base.weight.device)


class TokenRows(nn.Module):
    """A trainable delta (k, C) for the embedding rows of k tokens, zero at the start."""

    def __init__(self, tokens: list[int], dim: int, device: torch.device):
        super().__init__()
        self.register_buffer("tokens", torch.tensor(tokens, dtype=torch.long, device=device), persistent=False)
        self.lora_rows = nn.Parameter(torch.zeros(len(tokens), dim, device=device))
        self.enabled = True  # False inside disabled(): no delta

    def added_to(self, weight: torch.Tensor) -> torch.Tensor:
        """weight (V, C) with the delta added to the rows of the tokens (a new tensor)."""
        return weight.detach().index_add(0, self.tokens, self.lora_rows.detach().to(weight.dtype))


class EmbeddingWithRows(nn.Module):
    def __init__(self, base: nn.Embedding, rows: TokenRows):
        super().__init__()
        self.base, self.rows = base, rows

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.rows.enabled:
            return self.base(idx)
        # idx (B, T) -> (B, T, C); (B, T, k) one-hot matches of the chosen tokens pick their delta rows.
        match = (idx[..., None] == self.rows.tokens).to(self.rows.lora_rows.dtype)
        return self.base(idx) + match @ self.rows.lora_rows


class HeadWithRows(nn.Module):
    def __init__(self, base: nn.Linear, rows: TokenRows):
        super().__init__()
        self.base, self.rows = base, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rows.enabled:
            return self.base(x)
        # x (B, T, C) -> logits (B, T, V); the chosen tokens' logits get x . delta added.
        return self.base(x).index_add(-1, self.rows.tokens, x @ self.rows.lora_rows.t())


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    tokens: list[int] | None = None,
) -> list[str]:
    """Freeze every parameter of model and wrap the target projections with adapters. Returns their names.
    With tokens, those tokens' rows of the embedding and of the LM head (one delta when tied) also train.
    The settings come from one place: llm.train.tuning.lora_settings (a FinetuneConfig) or a saved adapter.json."""
    unknown = set(targets) - set(ALL_PROJECTIONS)
    if unknown:
        raise ConfigError(f"unknown {sorted(unknown)}; choose from {', '.join(ALL_PROJECTIONS)}", field="lora_targets")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{name}.{child_name}")
    assert wrapped, "no layer matched the LoRA targets"
    if tokens:
        embedding, head = model.tok_emb, model.lm_head
        device = embedding.weight.device
        rows = TokenRows(tokens, embedding.embedding_dim, device)
        tied = head.weight is embedding.weight
        model.tok_emb = EmbeddingWithRows(embedding, rows)
        model.lm_head = HeadWithRows(head, rows if tied else TokenRows(tokens, embedding.embedding_dim, device))
        wrapped += ["tok_emb", "lm_head"]
    return wrapped


@contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Switch every adapter of model off for the duration (its outputs are then exactly the base model's),
    and back to what each was after. A model without adapters is unchanged."""
    adapters = [m for m in model.modules() if isinstance(m, (LoRALinear, TokenRows))]
    before = [m.enabled for m in adapters]
    for m in adapters:
        m.enabled = False
    try:
        yield model
    finally:
        for m, enabled in zip(adapters, before, strict=True):
            m.enabled = enabled


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors by name; a delta shared by tied embeddings is stored once (under tok_emb)."""
    tensors, seen = {}, set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if any(key in name for key in (".lora_a", ".lora_b", ".lora_rows")) and id(param) not in seen:
            seen.add(id(param))
            tensors[name] = param.detach().cpu()
    return tensors


def load_adapter(model: nn.Module, path: str | Path) -> None:
    tensors = load_file(str(path))
    own = adapter_tensors(model)
    if set(tensors) != set(own):
        raise CheckpointError(f"{path}: the adapter does not fit this model (different layers or targets)")
    model.load_state_dict(tensors, strict=False)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain linear layer holding W + scale * B A, and token rows by plain
    embedding and head layers holding W + delta, keeping tied weights tied (in place)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    if isinstance(model.tok_emb, EmbeddingWithRows):
        embedding, head = model.tok_emb, model.lm_head
        tied = head.rows is embedding.rows
        model.tok_emb = nn.Embedding.from_pretrained(embedding.rows.added_to(embedding.base.weight), freeze=False)
        model.lm_head = nn.Linear(embedding.base.embedding_dim, embedding.base.num_embeddings, bias=False)
        if tied:
            model.lm_head.weight = model.tok_emb.weight
        else:
            model.lm_head.weight = nn.Parameter(head.rows.added_to(head.base.weight))
        model.lm_head.to(model.tok_emb.weight.device)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
