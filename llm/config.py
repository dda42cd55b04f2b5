"""Every setting as data: configuration dataclasses that round-trip through JSON, and the model presets.

Each field carries its help text (`setting(default, help)`); the CLI's flags are generated from the fields
(llm/cli/flags.py), and the studio writes a config file that the CLI reads (`finetune --config`), so a
setting has one name, one default and one check, here. Errors name the field (ConfigError.field); each
front end words it (the CLI as --flag, the studio as its form label).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llm.errors import ConfigError

# The base model the project ships; the default of `generate`, `eval`, `finetune` and the studio.
DEFAULT_BASE_MODEL = Path(__file__).resolve().parent.parent / "models" / "base"
# Projection names in llm.model.transformer: attention (wq, wk, wv, wo) and MLP (w_gate, w_up, w_down): LoRA targets.
ATTENTION_PROJECTIONS = ("wq", "wk", "wv", "wo")
ALL_PROJECTIONS = ATTENTION_PROJECTIONS + ("w_gate", "w_up", "w_down")
METHODS = ("lora", "full")
OVERFLOW = ("truncate", "drop")  # what to do with a task row longer than the context
TASK_FORMATS = ("pairs", "alpaca", "messages")
TASK_ROLES = ("prompt", "response", "system")  # the columns of a pairs file, by role (FinetuneConfig.mapping)
DEFAULT_PRESET = "micro"  # the model shape of a pretraining run that names none
SAMPLE_PROMPTS = ("Once upon a time", "The")  # continued at each evaluation of a pretraining run


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _type_ok(value: Any, hint: Any) -> bool:
    """Does a JSON value fit a field's type hint? JSON has one number type, so any number fits int or float
    (ranges are checked in __post_init__); bool is not a number here."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_type_ok(k, key) and _type_ok(v, item) for k, v in value.items())
    if hint is Any:
        return True
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """A field's type in words: "a number", "a number or null", "of type list[str]"."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return f"{_describe(args[0])} or null"
    return "a number" if hint in (int, float) else f"of type {getattr(hint, '__name__', str(hint))}"


def from_dict(cls, data: dict[str, Any], source: str | None = None):
    """An instance of the dataclass cls from a JSON object, every field's type checked first. With a source
    (a file), every error message starts with it; without, a range error keeps its field for a front end."""
    where = source or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} field(s): {', '.join(unknown)}")
    for name, value in data.items():
        if not _type_ok(value, hints[name]):
            raise ConfigError(f"{where}: {name} must be {_describe(hints[name])}, got {value!r}")
    if source is None:
        return cls(**data)
    try:
        return cls(**data)
    except ConfigError as e:  # a file's value: say which file
        raise ConfigError(f"{source}: {e}") from None


MAX_SIZE = 2**31 - 1  # any size field above this is a mistake (and would overflow tensor sizes)


def _check_model_fields(cfg: ModelConfig) -> None:
    """Every ModelConfig field's type and range, so a wrong config.json is refused before a model is built."""
    sizes = {name: 1 for name in ("vocab_size", "context_length", "n_layer", "n_head", "d_model")}
    for name, low in {**sizes, "mlp_hidden": 0}.items():  # mlp_hidden 0: the default width
        value = getattr(cfg, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ConfigError(f"must be a whole number, got {value!r}", field=name)
        if not low <= value <= MAX_SIZE:
            raise ConfigError(f"must be in [{low}, {MAX_SIZE}], got {value}", field=name)
    if not isinstance(cfg.tie_embeddings, bool):
        raise ConfigError(f"must be true or false, got {cfg.tie_embeddings!r}", field="tie_embeddings")
    ranges = {"rope_theta": (0.0, math.inf), "norm_eps": (0.0, 1.0), "dropout": (0.0, 1.0)}
    for name, (low, high) in ranges.items():
        value = getattr(cfg, name)
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise ConfigError(f"must be a number, got {value!r}", field=name)
        # dropout may be 0; the others must be above 0. NaN fails every comparison, so it lands here too.
        above_low = value >= low if name == "dropout" else value > low
        if not (above_low and value < high and math.isfinite(value)):
            bracket = "[" if name == "dropout" else "("
            raise ConfigError(f"must be in {bracket}{low:g}, {high:g}), got {value}", field=name)


ROPE_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_context_length")


def _check_rope_scaling(scaling: dict[str, float]) -> None:
    """Empty, or Llama 3's four numbers: factor >= 1, 0 < low_freq_factor < high_freq_factor, a whole
    original_context_length."""
    if not scaling:
        return
    if sorted(scaling) != sorted(ROPE_SCALING):
        raise ConfigError(
            f"must give exactly {', '.join(ROPE_SCALING)} (Llama 3's), got {sorted(scaling)}", "rope_scaling"
        )
    values = [scaling[k] for k in ROPE_SCALING]
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ConfigError(f"must be finite numbers, got {scaling}", field="rope_scaling")
    factor, low, high, original = values
    if not (factor >= 1 and 0 < low < high and original >= 1 and float(original).is_integer()):
        raise ConfigError(
            "needs factor >= 1, 0 < low_freq_factor < high_freq_factor and a whole original_context_length, got "
            f"{scaling}",
            field="rope_scaling",
        )


def load_json(cls, path: str | Path):
    """cls from a JSON file; any way the file can be wrong is a ConfigError naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    return from_dict(cls, data, str(path))


class Config:
    """JSON round trip shared by the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None):
        return from_dict(cls, data, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path):
        return load_json(cls, path)


def check_positive(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"must be positive, got {getattr(cfg, name)}", field=name)


def check_not_negative(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"must be >= 0, got {getattr(cfg, name)}", field=name)


PRECISIONS = ("auto", "fp32", "bf16")
EARLY_STOP_METRICS = ("loss", "exact")
EXACT_MATCH_ROWS = 64  # held-out rows answered at each evaluation when early stopping follows exact match


def check_choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in choices:
        raise ConfigError(f"must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}", field=name)


@dataclass
class ModelConfig(Config):
    """Shape of a Llama-style decoder-only transformer."""

    vocab_size: int = setting(4096, "tokens in the vocabulary (training: from the data)")
    context_length: int = setting(256, "tokens the model sees at once")
    n_layer: int = setting(4, "transformer blocks")
    n_head: int = setting(4, "attention heads")
    n_kv_head: int = setting(0, "key/value heads (grouped-query attention); 0 or n_head: ordinary multi-head")
    d_model: int = setting(256, "width of the residual stream")
    mlp_hidden: int = setting(0, "SwiGLU hidden width (0: 8/3 d_model, rounded up to a multiple of 64)")
    tie_embeddings: bool = setting(True, "share the input embedding with the output layer")
    rope_theta: float = setting(10000.0, "rotary embedding base")
    norm_eps: float = setting(1e-5, "RMSNorm epsilon")
    dropout: float = setting(0.0, "dropout rate while training")
    rope_scaling: dict[str, float] = setting(
        {},
        "Llama 3's rotary scaling (rope_type llama3): factor, low_freq_factor, high_freq_factor and "
        "original_context_length; empty: none",
    )

    # Fields a model directory's config.json must give: they decide the weights' shapes and the model's
    # arithmetic. Older files may lack n_kv_head (multi-head attention), rope_scaling and dropout.
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "vocab_size", "context_length", "n_layer", "n_head", "d_model", "mlp_hidden", "tie_embeddings",
        "rope_theta", "norm_eps",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_model_fields(self)
        _check_rope_scaling(self.rope_scaling)
        if self.d_model % self.n_head:
            raise ConfigError(f"must be divisible by n_head={self.n_head}, got {self.d_model}", field="d_model")
        if self.n_kv_head < 0 or self.n_head % (self.n_kv_head or self.n_head):
            raise ConfigError(f"must divide n_head={self.n_head}, got {self.n_kv_head}", field="n_kv_head")
        if (self.d_model // self.n_head) % 2:
            raise ConfigError("the head size d_model/n_head must be even for rotary embeddings", field="n_head")
        if self.mlp_hidden == 0:
            self.mlp_hidden = 64 * ((8 * self.d_model // 3 + 63) // 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when it is 0."""
        return self.n_kv_head or self.n_head


# Named model shapes. vocab_size and context_length come from the data / flags when training.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, d_model=64, context_length=128),  # tests: ~0.3M params at vocab 1k
    "micro": dict(n_layer=4, n_head=4, d_model=128, context_length=128),  # ~1M params at vocab 2k: a book on a CPU
    "mini": dict(n_layer=4, n_head=4, d_model=256, context_length=256),  # ~4M params at vocab 4k
    "small": dict(n_layer=6, n_head=6, d_model=384, context_length=256),  # ~12M params at vocab 4k
    "gpt2": dict(n_layer=12, n_head=12, d_model=768, context_length=1024, mlp_hidden=2048),  # ~124M at 50k
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}", field="preset")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(**values)


@dataclass
class TrainConfig(Config):
    """Everything the one training loop needs; saved beside each checkpoint so a run can resume."""

    max_steps: int = setting(
        1000,
        "optimizer steps in the whole run; 0 with a max_time: as many as fit in it (the learning rate, evaluations "
        "and checkpoints then follow the clock)",
    )
    max_time: float = setting(0.0, "stop (with a checkpoint) after this many seconds of training; 0: no limit")
    batch_size: int = setting(16, "sequences per micro-batch per process")
    grad_accum: int = setting(1, "micro-batches per optimizer step, summed over all processes")
    lr: float = setting(1e-3, "peak learning rate")
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = setting(100, "steps of linear warmup")
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: off)")
    eval_interval: int = setting(100, "steps between evaluations")
    eval_batches: int = setting(20, "batches per evaluation")
    ckpt_interval: int = setting(100, "steps between checkpoints")
    ckpt_seconds: float = setting(300.0, "also checkpoint when this many seconds passed since the last one; 0: off")
    log_interval: int = setting(10, "steps between log lines")
    seed: int = setting(1337, "random seed")
    device: str = setting("auto", "auto, cpu, cuda or mps")
    compile: bool = setting(False, "torch.compile the model (worth it on a GPU)")
    precision: str = setting(
        "auto", "auto (bf16 autocast on a GPU, fp32 on a CPU), fp32, or bf16 (a GPU or a CPU with bf16 units)"
    )
    early_stop_patience: int = setting(0, "evaluations without a better val loss before stopping; 0: never")
    select_metric: str = setting(
        "val_loss",
        "what picks the best checkpoint and early stopping: val_loss (lower is better) or a value an evaluation "
        "hook logs, higher is better (fine-tuning's val_exact)",
    )
    keep_best: bool = setting(False, "also keep the checkpoint with the lowest val loss in <out>/best")
    extra: dict[str, Any] = setting({}, "recorded with the run (e.g. dataset, method)")

    def __post_init__(self) -> None:
        check_positive(self, "batch_size", "grad_accum", "eval_interval", "ckpt_interval", "log_interval")
        check_positive(self, "lr")
        check_not_negative(
            self, "max_steps", "warmup_steps", "max_time", "ckpt_seconds", "min_lr", "early_stop_patience"
        )
        if not self.max_steps and not self.max_time:
            raise ConfigError("must be positive when there is no max_time, got 0", field="max_steps")
        if self.min_lr > self.lr:
            raise ConfigError(f"must not exceed lr ({self.lr}), got {self.min_lr}", field="min_lr")
        check_choice(self, "precision", PRECISIONS)


@dataclass
class SamplingConfig(Config):
    """How to pick each next token when generating."""

    max_new_tokens: int = setting(200, "tokens to generate at most")
    temperature: float = setting(0.8, "0 means greedy")
    top_k: int = setting(0, "keep the k most likely tokens (0: off)")
    top_p: float = setting(0.95, "keep the smallest set of tokens whose probability reaches p (1: off)")
    repetition_penalty: float = setting(1.0, ">1 makes tokens already in the context less likely (1: off)")
    stop: list[str] = setting([], "stop at any of these strings")
    seed: int | None = setting(
        None,
        "sampling seed (default: a fresh random one); a seed repeats its tokens on the same kind of device (a "
        "GPU's tokens differ from a CPU's)",
    )

    def __post_init__(self) -> None:
        check_not_negative(self, "max_new_tokens", "temperature", "top_k")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.top_p}", field="top_p")
        check_positive(self, "repetition_penalty")


@dataclass
class TuningConfig(Config):
    """What fine-tuning and preference tuning share: the model to tune, the data, and how (LoRA or every
    weight, the schedule, evaluations and probes). Each subclass sets default_lr and adds its own fields."""

    default_lr: ClassVar[dict[str, float]]

    base: str = setting(str(DEFAULT_BASE_MODEL), "base model or run folder")
    data: str = setting("", "the training file")
    method: str = setting("lora", "lora (small adapters) or full (every weight)")
    epochs: int = setting(10, "passes over the training examples")
    max_steps: int = setting(0, "optimizer steps (0: from epochs)")
    lr: float | None = setting(None, "learning rate (default: the method's)")
    batch_size: int = setting(0, "examples per step (0: from the context length, at most a quarter of them)")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    warmup_steps: int | None = setting(None, "learning-rate warmup steps (default: a tenth of the steps, at most 100)")
    weight_decay: float = setting(0.0, "AdamW weight decay (0: none; the pretrained weights are the anchor)")
    lora_rank: int = setting(8, "LoRA rank")
    lora_alpha: float = setting(16.0, "LoRA scale numerator (the update is alpha/rank * B A)")
    lora_dropout: float = setting(0.05, "dropout on the LoRA input")
    lora_targets: list[str] = setting(list(ALL_PROJECTIONS), f"projections to adapt, of {' '.join(ALL_PROJECTIONS)}")
    val_fraction: float = setting(0.1, "share of the rows held out for validation")
    seed: int = setting(1337, "split, shuffle and initialisation seed")
    device: str = setting("auto", "auto, cpu, cuda or mps")
    early_stop_patience: int = setting(6, "evaluations without a lower validation loss before stopping; 0: never")
    evals_per_epoch: int = setting(2, "evaluations per epoch")
    max_eval_rows: int = setting(256, "validation rows scored at each evaluation, at most (0: all)")
    overflow: str = setting("truncate", "rows longer than the context: truncate or drop")
    probes: list[str] = setting([], "prompts answered (greedy) at every evaluation")
    probe_tokens: int = setting(48, "tokens of each probe answer")
    merge: bool = setting(False, "LoRA: store the best model as merged full weights instead of an adapter")

    def __post_init__(self) -> None:
        check_choice(self, "method", METHODS)
        check_choice(self, "overflow", OVERFLOW)
        check_positive(self, "epochs", "grad_accum", "lora_rank", "evals_per_epoch", "probe_tokens")
        check_not_negative(self, "max_steps", "batch_size", "early_stop_patience", "max_eval_rows", "weight_decay")
        if self.warmup_steps is not None:
            check_not_negative(self, "warmup_steps")
        if self.lr is not None:
            check_positive(self, "lr")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.lora_dropout}", field="lora_dropout")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.val_fraction}", field="val_fraction")
        unknown = sorted(set(self.lora_targets) - set(ALL_PROJECTIONS))
        if unknown or not self.lora_targets:
            raise ConfigError(f"unknown {unknown}; choose from {', '.join(ALL_PROJECTIONS)}", field="lora_targets")
        if self.merge and self.method != "lora":
            raise ConfigError("applies to LoRA runs only (a full tune already stores full weights)", field="merge")

    @property
    def learning_rate(self) -> float:
        """lr, or the method's default (default_lr)."""
        return self.lr if self.lr is not None else self.default_lr[self.method]


@dataclass
class FinetuneConfig(TuningConfig):
    """A fine-tuning run, whole: what to tune, on which data, and how. The studio writes it to
    <run>/finetune.json and starts `python -m llm finetune --config <run>/finetune.json --out <run>`.

    The default learning rates: LoRA trains few parameters from zero and takes a larger step; full
    fine-tuning moves every pretrained weight and wants a smaller one (datasets/README.md)."""

    default_lr: ClassVar[dict[str, float]] = {"lora": 3e-3, "full": 1e-3}

    data: str = setting("", "task file: .csv .tsv .json .jsonl .parquet")
    lr: float | None = setting(None, "learning rate (default: 3e-3 for LoRA, 1e-3 for full)")
    format: str = setting("auto", "pairs, alpaca or messages (auto: detected from the columns)")
    mapping: dict[str, str] = setting({}, "columns by role: prompt, response, system, messages")
    val_data: str = setting("", "a validation file (default: hold out val_fraction of the data)")

    early_stop_metric: str = setting(
        "loss",
        "what picks the best checkpoint and stops early: loss (validation loss) or exact (exact match of greedy "
        f"answers to up to {EXACT_MATCH_ROWS} held-out rows, ties broken by loss)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "format", ("auto", *TASK_FORMATS))
        check_choice(self, "early_stop_metric", EARLY_STOP_METRICS)


@dataclass
class PreferConfig(TuningConfig):
    """A preference-tuning run (DPO), whole: the model to tune, the preference pairs, and how. Like a
    fine-tune, it is written to <run>/prefer.json and run as `python -m llm prefer --config <run>/prefer.json
    --out <run>`.

    The default learning rates are lower than fine-tuning's: DPO's gradient grows with the margin it has not
    reached yet and a large step overshoots into degenerate answers (datasets/README.md)."""

    default_lr: ClassVar[dict[str, float]] = {"lora": 1e-3, "full": 1e-4}

    base: str = setting(str(DEFAULT_BASE_MODEL), "model to tune (and the frozen reference): a model or run folder")
    data: str = setting("", "preference pairs: prompt/chosen/rejected or instruction/input/chosen/rejected")
    method: str = setting("lora", "lora (small adapters; the reference is the model without them) or full")
    epochs: int = setting(3, "passes over the training pairs")
    lr: float | None = setting(None, "learning rate (default: 1e-3 for LoRA, 1e-4 for full)")
    batch_size: int = setting(0, "pairs per step (0: from the context length, at most a quarter of them)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA input")
    val_fraction: float = setting(0.1, "share of the pairs held out (validation loss, reward accuracy)")
    early_stop_patience: int = setting(0, "evaluations without a lower validation loss before stopping; 0: never")
    max_eval_rows: int = setting(256, "held-out pairs scored at each evaluation, at most (0: all)")
    overflow: str = setting("truncate", "pairs longer than the context: truncate or drop")
    beta: float = setting(0.1, "DPO beta: how far the tuned model may move from the reference (larger: less)")
    sft_weight: float = setting(
        1.0, "weight of an added next-token loss on the chosen answers (0: pure DPO; a base model needs it)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "beta")
        check_not_negative(self, "sft_weight")


BUDGETS = ("max_steps", "max_time")  # PretrainConfig's own fields, not in its train dict


@dataclass
class PretrainConfig(Config):
    """A pretraining run from raw text, whole: the text, the tokenizer, the model shape and the budget. The
    studio writes it to <run>/pretrain.json and starts `python -m llm pretrain --config <run>/pretrain.json
    --out <run>`; the tokenizer and the token shards are made once, in <run>/data.

    The model shape is a preset with `model` overriding ModelConfig fields; `train` holds any other
    TrainConfig field (checked by TrainConfig). What is not given is derived from the budget (llm.train.pretrain.
    training_settings): about ten evaluations, a checkpoint at each, a warmup of a tenth of the run."""

    inputs: list[str] = setting([], "text files, folders or globs: .txt .txt.gz .txt.xz .jsonl")
    text_field: str = setting("text", "the field of .jsonl records holding the text")
    tokenizer: str = setting("", "reuse the tokenizer of this model or run folder (empty: train a new one)")
    vocab_size: int = setting(2048, "vocabulary of the new tokenizer")
    val_fraction: float = setting(0.05, "share of the documents (paragraphs) held out for validation")
    preset: str = setting(DEFAULT_PRESET, f"model shape: {', '.join(PRESETS)}")
    model: dict[str, Any] = setting({}, "ModelConfig fields overriding the preset's (n_layer, d_model, ...)")
    max_steps: int = setting(0, "optimizer steps (0: as many as the plan expects in max_time; without one, 1000)")
    max_time: float = setting(300.0, "stop (with a checkpoint) after this many seconds of training; 0: no limit")
    train: dict[str, Any] = setting({}, "other TrainConfig fields (batch_size, lr, ...)")
    sample_prompts: list[str] = setting(list(SAMPLE_PROMPTS), "continued at every evaluation (fixed seed)")
    sample_tokens: int = setting(48, "tokens sampled per prompt at every evaluation; 0: no samples")

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("is required: the text to pretrain on", field="inputs")
        check_positive(self, "vocab_size")
        check_not_negative(self, "max_steps", "max_time", "sample_tokens")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.val_fraction}", field="val_fraction")
        shape = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}  # vocab_size: the tokenizer's
        unknown = sorted(set(self.model) - shape)
        if unknown:
            raise ConfigError(f"has unknown ModelConfig field(s): {', '.join(unknown)}", field="model")
        preset(self.preset, **self.model)  # a ConfigError naming the preset or the shape field
        both = sorted(set(BUDGETS) & set(self.train))
        if both:
            raise ConfigError(f"{', '.join(both)} belong in the config itself, not in train", field="train")
        TrainConfig.from_dict(self.train)  # each field's type and range (errors keep their field)


@dataclass
class BenchConfig(Config):
    """A benchmark run (llm/eval/bench.py): zero-shot multiple choice scored by log-likelihood as
    lm-evaluation-harness scores it. The studio writes it to <run>/bench.json and starts `python -m llm bench
    --config <run>/bench.json --out <run>`; the results go into each model's directory."""

    models: list[str] = setting([str(DEFAULT_BASE_MODEL)], "model or run folders to score")
    tasks: list[str] = setting([], "task names (blimp, hellaswag, arc_easy, ...; comma-separated) or task files")
    limit: int = setting(0, "score the first N rows of each task (of each BLiMP phenomenon); 0: all")
    batch_tokens: int = setting(4096, "tokens in one forward pass (the choices of several rows, padded)")
    device: str = setting("auto", "auto, cpu, cuda or mps")
    precision: str = setting("auto", "auto (bf16 autocast on a GPU, fp32 on a CPU), fp32, or bf16")
    save_results: bool = setting(True, "write the results into each model's directory")

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("is required: one or more model or run folders", field="models")
        if not self.tasks:
            raise ConfigError("is required: one or more task names or task files", field="tasks")
        check_not_negative(self, "limit")
        check_positive(self, "batch_tokens")
        check_choice(self, "precision", PRECISIONS)


# Every config dataclass, for whoever names their fields (the CLI's flags, the studio's labels).
CONFIGS = (FinetuneConfig, PreferConfig, TrainConfig, ModelConfig, SamplingConfig, PretrainConfig, BenchConfig)
