"""Low-rank adapters (LoRA), written from scratch.

A frozen linear layer W (out, in) gets a trainable update  x -> W x + (alpha / r) * B A dropout(x),  with
A (r, in) random and B (out, r) zero, so training starts exactly at the base model. Only A and B learn: a
small fraction of the parameters, and an adapter file a small fraction of the model's. merge_lora folds
B A into W, giving back a plain model with the same outputs and no extra cost at inference.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

# Projection names in llm.model: attention (wq, wk, wv, wo) and MLP (w_gate, w_up, w_down).
ATTENTION = ("wq", "wk", "wv", "wo")
ALL_LINEAR = ATTENTION + ("w_gate", "w_up", "w_down")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        assert rank > 0, "LoRA rank must be positive"
        self.base = base
        self.base.weight.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., in) -> (..., r) -> (..., out)
        return self.base(x) + (self.dropout(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
        return linear.to(self.base.weight.device)


def apply_lora(
    model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0, targets: list[str] | None = None
) -> list[str]:
    """Freeze every parameter of model and wrap the target projections with adapters. Returns their names."""
    targets = list(targets or ATTENTION)
    unknown = set(targets) - set(ALL_LINEAR)
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {sorted(unknown)}; choose from {', '.join(ALL_LINEAR)}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{name}.{child_name}")
    assert wrapped, "no layer matched the LoRA targets"
    return wrapped


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if ".lora_a" in k or ".lora_b" in k}


def load_adapter(model: nn.Module, path: str | Path) -> None:
    tensors = load_file(str(path))
    own = adapter_tensors(model)
    if set(tensors) != set(own):
        raise ValueError(f"{path}: the adapter does not fit this model (different layers or targets)")
    model.load_state_dict(tensors, strict=False)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain linear layer holding W + scale * B A (in place)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
