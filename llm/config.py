"""Configuration dataclasses that round-trip through JSON, and the named model presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The base model the project ships; the default of `generate`, `eval`, `finetune` and the studio.
DEFAULT_BASE_MODEL = Path(__file__).resolve().parent.parent / "models" / "base"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the parameter."""


def _from_dict(cls, data: dict[str, Any], source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown {cls.__name__} field(s): {', '.join(unknown)}")
    for name, value in data.items():
        default = fields[name].default
        kind = dict if default is dataclasses.MISSING else type(default)  # only `extra` has a default factory
        # JSON has one number type, so any number passes for a number field (__post_init__ checks ranges).
        allowed = (int, float) if kind in (int, float) else (kind,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and kind is not bool):
            what = "a number" if kind in (int, float) else f"of type {kind.__name__}"
            raise ConfigError(f"{source}: {name} must be {what}, got {value!r}")
    return cls(**data)


@dataclass
class ModelConfig:
    """Shape of a Llama-style decoder-only transformer."""

    vocab_size: int = 4096
    context_length: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0 or n_head: ordinary multi-head attention
    d_model: int = 256
    mlp_hidden: int = 0  # 0: SwiGLU's usual 8/3 * d_model, rounded up to a multiple of 64
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "d_model"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ConfigError(f"model config: d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.n_kv_head < 0 or self.n_head % (self.n_kv_head or self.n_head):
            raise ConfigError(f"model config: n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if (self.d_model // self.n_head) % 2:
            raise ConfigError("model config: the head size d_model/n_head must be even for rotary embeddings")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_hidden == 0:
            self.mlp_hidden = 64 * ((8 * self.d_model // 3 + 63) // 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when it is 0."""
        return self.n_kv_head or self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        return _from_dict(cls, data, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, str(path))


# Named model shapes. vocab_size and context_length come from the data / flags when training.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, d_model=64, context_length=128),  # tests: ~0.3M params at vocab 1k
    "mini": dict(n_layer=4, n_head=4, d_model=256, context_length=256),  # ~4M params at vocab 4k
    "small": dict(n_layer=6, n_head=6, d_model=384, context_length=256),  # ~12M params at vocab 4k
    "gpt2": dict(n_layer=12, n_head=12, d_model=768, context_length=1024, mlp_hidden=2048),  # ~124M at 50k
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(**values)


@dataclass
class TrainConfig:
    """Everything the one training loop needs; saved beside each checkpoint so a run can resume."""

    max_steps: int = 1000
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step, summed over all processes
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    ckpt_interval: int = 100
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"
    compile: bool = False
    early_stop_patience: int = 0  # evaluations without a better val loss before stopping; 0: never
    keep_best: bool = False  # also keep the checkpoint with the lowest val loss in <out>/best
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with the run (e.g. dataset, method)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "ckpt_interval", "log_interval"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"learning rates must satisfy 0 <= min_lr <= lr, 0 < lr (lr={self.lr})")
        if self.warmup_steps < 0:
            raise ConfigError("--warmup-steps must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> TrainConfig:
        return _from_dict(cls, data, source)
