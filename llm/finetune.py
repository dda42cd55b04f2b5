"""Supervised fine-tuning on a task dataset, full or LoRA, through the one training loop (llm.trainer.train).

    data file -> tasks.read_task_file -> split (seeded, or a validation file) -> chat template + loss mask
    -> TaskBatches -> trainer.train (checkpoints, resume, metrics, SIGTERM, early stopping, best/)

A LoRA run stores only its adapter in each checkpoint (adapter.safetensors + adapter.json naming the base);
llm.checkpoint.load_model merges it onto the base when loading. With merge=True the best checkpoint is
rewritten at the end as full merged weights that need no base. A checkpoint's info.json records the base
model, the dataset (name and content hash), the method, the hyperparameters and the metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm import checkpoint, lora
from llm.checkpoint import CheckpointError, load_model, resolve
from llm.config import DEFAULT_BASE_MODEL, ConfigError, ModelConfig, TrainConfig
from llm.device import describe, measure_matmul_flops, peak_flops, pick_device
from llm.generate import SamplingConfig, sample_logger
from llm.model import Transformer
from llm.tasks import EncodedExamples, TaskData, TaskFileError, encode_examples, read_task_file, split_examples
from llm.tokenizer import MODEL_FILE, Tokenizer
from llm.trainer import METRICS_FILE, TrainResult, train

METHODS = ("lora", "full")
# The defaults were tuned on datasets/samples/opposites.csv with the 6-layer base model (datasets/README.md):
# such a task takes about 10 epochs (LoRA: 70% held-out exact match after 5, 100% after 10). LoRA trains
# few parameters from zero and takes a larger step; full fine-tuning moves every pretrained weight and wants
# a smaller one (in earlier trials on a half-trained base, 3e-4 learnt far too slowly and 2e-3 worse than
# 1e-3). Both reach 100% there; LoRA is the default for its small files.
DEFAULT_LR = {"lora": 3e-3, "full": 1e-3}
TOKENS_PER_BATCH = 2048  # token positions per micro-batch at full context: sets the default batch size
# Share of a device's matrix-product rate that fine-tuning reaches (short sequences, small matrices), for the
# time estimate in plan() only. CPU: measured (0.5 on the opposites sample, 6-layer base, 2-core CPU);
# GPUs: a guess, unmeasured here (no GPU), where small batches of short rows leave the chip mostly idle.
EFFICIENCY = {"cpu": 0.5, "cuda": 0.25, "mps": 0.25}
DECODE_SLOWDOWN = 20  # generating one token at a time: tiny matrix products, far below the device's rate


@dataclass
class FinetuneConfig:
    method: str = "lora"  # "lora" or "full"
    epochs: int = 10
    max_steps: int = 0  # 0: from epochs
    lr: float | None = None  # None: DEFAULT_LR[method]
    batch_size: int = 0  # 0: from the context length (TOKENS_PER_BATCH), at most a quarter of the examples
    grad_accum: int = 1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(lora.ALL_LINEAR))
    val_fraction: float = 0.1
    seed: int = 1337
    device: str = "auto"
    early_stop_patience: int = 3  # evaluations without a lower validation loss before stopping; 0: never
    evals_per_epoch: int = 2
    overflow: str = "truncate"  # rows longer than the context: "truncate" or "drop"
    probes: list[str] = field(default_factory=list)  # prompts answered (greedy) at every evaluation
    probe_tokens: int = 48
    merge: bool = False  # LoRA: store the best model as merged full weights instead of an adapter

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("epochs", "grad_accum", "lora_rank", "evals_per_epoch", "probe_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "batch_size", "early_stop_patience"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        unknown = sorted(set(self.lora_targets) - set(lora.ALL_LINEAR))
        if unknown or not self.lora_targets:
            raise ConfigError(f"--lora-targets: unknown {unknown}; choose from {', '.join(lora.ALL_LINEAR)}")
        if self.merge and self.method != "lora":
            raise ConfigError("--merge applies to LoRA runs only (a full fine-tune already stores full weights)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def lora_config(self, tokenizer: Tokenizer) -> dict[str, Any]:
        """lora.apply_lora's arguments (stored in adapter.json). The chat control tokens' embedding rows train
        too: pretraining never saw those tokens, and without them a LoRA model cannot learn to stop."""
        return {
            "rank": self.lora_rank,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "targets": self.lora_targets,
            "tokens": sorted(tokenizer.special.values()),
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return cls(**data)


class TaskBatches:
    """Batches of encoded examples for the trainer, padded to the longest in the batch (targets -1).

    Training walks the examples epoch by epoch, each epoch in its own permutation seeded by (seed, epoch). The
    i-th sequence of micro-batch `micro` at step `step` is example number (step * grad_accum + micro) *
    batch_size + i of that endless walk, so a batch depends only on (seed, step, micro): a resumed run and a
    data-parallel run see exactly the batches of one uninterrupted run.
    """

    def __init__(
        self, train: EncodedExamples, val: EncodedExamples, batch_size: int, grad_accum: int, seed: int, pad_id: int
    ):
        assert train.items, "no training examples"
        self.train, self.val = train.items, val.items
        self.batch_size, self.grad_accum, self.seed, self.pad_id = batch_size, grad_accum, seed, pad_id
        self.orders: dict[int, np.ndarray] = {}  # the current epoch's permutation

    def collate(self, items: list[tuple[list[int], list[bool]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) pairs -> x (B, T) inputs and y (B, T) next-token targets, -1 where there is no loss."""
        width = max(len(ids) for ids, _ in items) - 1
        x = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(items), width), -1, dtype=torch.long)
        for row, (ids, mask) in enumerate(items):
            n = len(ids) - 1
            tokens = torch.tensor(ids, dtype=torch.long)
            x[row, :n] = tokens[:-1]
            # Position i predicts ids[i+1]: it has a loss only where ids[i+1] is assistant text or its <|end|>.
            y[row, :n] = torch.where(torch.tensor(mask[1:]), tokens[1:], -1)
        return x, y

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self.orders:
            self.orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.train))}
        return self.orders[epoch]

    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = (step * self.grad_accum + micro) * self.batch_size
        picks = []
        for k in range(first, first + self.batch_size):
            epoch, position = divmod(k, len(self.train))
            picks.append(self.train[self.epoch_order(epoch)[position]])
        return self.collate(picks)

    def eval_batches(self, split: str, count: int):
        """ "val": the whole validation set in fixed batches. "train": a fixed sample of the training examples
        as large as the validation set (count batches when there is none), to compare the two losses."""
        if split == "val":
            items = self.val
        else:
            size = len(self.val) or count * self.batch_size
            order = np.random.default_rng([self.seed, 10**9]).permutation(len(self.train))[:size]
            items = [self.train[i] for i in np.sort(order)]
        for start in range(0, len(items), self.batch_size):
            yield self.collate(items[start : start + self.batch_size])


@dataclass
class Prepared:
    """Everything a run needs, checked before anything is written."""

    base_dir: Path
    model_cfg: ModelConfig
    tokenizer: Tokenizer
    train_data: TaskData
    val_data: TaskData
    train: EncodedExamples
    val: EncodedExamples
    train_cfg: TrainConfig
    steps_per_epoch: int


def base_directory(base: str | Path) -> Path:
    """The base model's directory, with a clear message when the shipped base model is not there yet."""
    try:
        return resolve(base)
    except CheckpointError:
        if Path(base).resolve() == DEFAULT_BASE_MODEL.resolve():
            raise CheckpointError(
                f"the shipped base model is not in {DEFAULT_BASE_MODEL} yet; pass --base <model or run folder>"
            ) from None
        raise


def prepare(base: str | Path, data: TaskData, cfg: FinetuneConfig, val_data: TaskData | None = None) -> Prepared:
    """Split and encode the data for the base model and derive the training settings. Writes nothing."""
    base_dir = base_directory(base)
    model_cfg = ModelConfig.load(base_dir / checkpoint.CONFIG)
    tokenizer = Tokenizer.load(base_dir / MODEL_FILE)
    if val_data is None:
        train_data, val_data = split_examples(data, cfg.val_fraction, cfg.seed)
    else:
        train_data = data
    T = model_cfg.context_length
    train_enc = encode_examples(train_data, tokenizer, T, cfg.overflow)
    val_enc = encode_examples(val_data, tokenizer, T, cfg.overflow)
    if not train_enc.items:
        raise TaskFileError(f"{data.source}: no training example is left after dropping rows longer than the context")
    batch_size = cfg.batch_size or max(1, min(TOKENS_PER_BATCH // T, len(train_enc.items) // 4))
    steps_per_epoch = math.ceil(len(train_enc.items) / (batch_size * cfg.grad_accum))
    max_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_interval = max(1, min(steps_per_epoch // cfg.evals_per_epoch, max_steps))
    lr = cfg.learning_rate
    train_cfg = TrainConfig(
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=cfg.grad_accum,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=min(100, max_steps // 10),
        weight_decay=0.0,  # no pull towards zero: the pretrained weights (or a zero adapter) are the anchor
        eval_interval=eval_interval,
        eval_batches=max(1, math.ceil(len(val_enc.items) / batch_size)),
        ckpt_interval=eval_interval,
        log_interval=max(1, min(10, eval_interval)),
        seed=cfg.seed,
        device=cfg.device,
        early_stop_patience=cfg.early_stop_patience if val_enc.items else 0,
        keep_best=True,
    )
    return Prepared(
        base_dir, model_cfg, tokenizer, train_data, val_data, train_enc, val_enc, train_cfg, steps_per_epoch
    )


def parameter_counts(model_cfg: ModelConfig, cfg: FinetuneConfig, tokenizer: Tokenizer) -> tuple[int, int]:
    """(all parameters, trained parameters), from a model built without memory (meta device)."""
    with torch.device("meta"):
        model = Transformer(model_cfg)
        total = model.num_params()
        if cfg.method == "lora":
            lora.apply_lora(model, **cfg.lora_config(tokenizer))
            return total, sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, total


@functools.cache
def device_rate(device_type: str) -> float:
    """FLOP/s that fine-tuning reaches on this kind of device (for estimates)."""
    device = torch.device(device_type)
    rate = peak_flops(device) if device_type == "cuda" else measure_matmul_flops(device)
    return rate * EFFICIENCY.get(device_type, 0.25)


def plan(base: str | Path, data: TaskData, cfg: FinetuneConfig, val_data: TaskData | None = None) -> dict[str, Any]:
    """What a run would do, before starting it: sizes, steps, device, and rough memory and time estimates.

    Time: training FLOPs (6 per parameter and token, forward and backward; LoRA skips the frozen weights'
    gradients, but on small models its adapter products and dropout copies cost that back: 60 s against 66 s
    for full on the opposites sample) plus evaluation forward passes (2) plus probe generation, over the
    measured rate of the device. Memory: fp32 weights, gradients and AdamW moments of the trained parameters,
    and the activations and logits of the longest batch (not the Python and torch overhead, ~0.4 GB).
    """
    prep = prepare(base, data, cfg, val_data)
    mc, tc = prep.model_cfg, prep.train_cfg
    total, trainable = parameter_counts(mc, cfg, prep.tokenizer)
    # Matrix FLOPs per token: every weight once (the tied LM head included), plus attention over the sequence.
    mean_len = float(np.mean(prep.train.lengths))
    # The embedding lookup costs no FLOPs, the LM head does; tied, they are one matrix counted once in total.
    compute_params = total if mc.tie_embeddings else total - mc.vocab_size * mc.d_model
    attention = 4 * mc.n_layer * mc.d_model * min(mean_len, mc.context_length)
    forward = 2 * compute_params + attention
    train_tokens = tc.max_steps * tc.batch_size * tc.grad_accum * mean_len
    n_evals = tc.max_steps // tc.eval_interval + (tc.max_steps % tc.eval_interval > 0)
    eval_tokens = n_evals * 2 * sum(prep.val.lengths)  # validation set and an equal train sample
    probe_tokens = n_evals * len(cfg.probes) * cfg.probe_tokens
    per_train_token = 3 * forward
    flops = train_tokens * per_train_token + eval_tokens * forward + probe_tokens * forward * DECODE_SLOWDOWN
    device = pick_device(cfg.device)
    longest = max(len(ids) for ids, _ in prep.train.items)
    activations = tc.batch_size * longest * (mc.n_layer * (14 * mc.d_model + 3 * mc.mlp_hidden + mc.n_head * longest))
    logits = 3 * tc.batch_size * longest * mc.vocab_size  # logits, their softmax and gradient
    memory = 4 * (total + 3 * trainable + activations + logits)
    return {
        "base": str(prep.base_dir),
        "method": cfg.method,
        "device": describe(device),
        "params": total,
        "trainable_params": trainable,
        "trainable_fraction": trainable / total,
        "train_examples": len(prep.train.items),
        "val_examples": len(prep.val.items),
        "batch_size": tc.batch_size,
        "grad_accum": tc.grad_accum,
        "steps_per_epoch": prep.steps_per_epoch,
        "epochs": tc.max_steps / prep.steps_per_epoch,
        "max_steps": tc.max_steps,
        "lr": tc.lr,
        "evaluations": n_evals,
        "est_memory_bytes": int(memory),
        "est_seconds": round(flops / device_rate(device.type), 1),
    }


def dataset_info(data: TaskData, train: EncodedExamples, val: EncodedExamples, val_source: str) -> dict[str, Any]:
    return {
        "name": Path(data.source).name,
        "path": str(Path(data.source).resolve()),
        "content_hash": data.content_hash,
        "format": data.format,
        "mapping": data.mapping,
        "rows": len(data.examples) + len(data.problems),
        "dropped": len(data.problems) + len(train.dropped) + len(val.dropped),
        "truncated": len(train.truncated) + len(val.truncated),
        "train_examples": len(train.items),
        "val_examples": len(val.items),
        "validation": val_source,
    }


def merge_best(out_dir: Path) -> Path:
    """Rewrite out_dir/best (or, with no validation, the final model in latest) as merged full weights in best."""
    source = out_dir / "best" if (out_dir / "best" / checkpoint.CONFIG).is_file() else out_dir / "latest"
    if not (source / checkpoint.ADAPTER_CONFIG).is_file():
        return source  # already merged (a resumed run whose best did not change)
    model, tokenizer, info = load_model(source)
    info = {**info, "merged": True, "merged_from": source.name}
    return checkpoint.save_checkpoint(out_dir / "best", model, tokenizer, info)


def finetune(
    base: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    format: str = "auto",
    mapping: dict[str, str] | None = None,
    val_path: str | Path | None = None,
    metrics_path: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune base on a task file into out_dir (latest/, best/, metrics.jsonl by default).

    Everything (data, base model, settings) is checked before the first file is written, so bad input never
    leaves a half-made run. resume continues out_dir/latest with the run's saved settings (only the device and
    a larger max_steps may change) and refuses a dataset whose content changed.
    """
    out_dir = Path(out_dir)
    saved: dict[str, Any] = {}
    if resume:
        latest = resolve(out_dir / "latest")
        saved = checkpoint.read_info(latest)
        if saved.get("kind") != "finetuned":
            raise ConfigError(f"{latest} is not a fine-tuning checkpoint; cannot resume it with finetune")
        cfg = FinetuneConfig.from_dict(
            {**saved["finetune"], "device": cfg.device, "max_steps": cfg.max_steps or saved["finetune"]["max_steps"]}
        )
        base, format, mapping = saved["base"], saved["dataset"]["format"], saved["dataset"]["mapping"]
    elif (out_dir / "latest").exists():
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    data = read_task_file(data_path, format, mapping)
    val_data = read_task_file(val_path, data.format, mapping) if val_path else None
    if resume and data.content_hash != saved["dataset"]["content_hash"]:
        raise TaskFileError(f"{data_path}: the dataset changed since the run started (content hash differs)")
    prep = prepare(base, data, cfg, val_data)
    train_cfg = prep.train_cfg
    if resume:
        train_cfg = TrainConfig.from_dict(checkpoint.load_trainer_state(latest)["train_config"])
        train_cfg.device, train_cfg.max_steps = cfg.device, max(train_cfg.max_steps, prep.train_cfg.max_steps)

    if resume and cfg.method == "lora":
        # Rebuild base + adapter (unmerged, so the adapter keeps training).
        adapter_cfg = json.loads((latest / checkpoint.ADAPTER_CONFIG).read_text())
        model, _, _ = load_model(adapter_cfg["base"])
        lora.apply_lora(model, **adapter_cfg["lora"])
        lora.load_adapter(model, latest / checkpoint.ADAPTER)
    elif resume:
        model, _, _ = load_model(latest)
    else:
        model, _, _ = load_model(prep.base_dir)
        if cfg.method == "lora":
            torch.manual_seed(cfg.seed)  # the adapters' random A matrices
            lora.apply_lora(model, **cfg.lora_config(prep.tokenizer))

    adapter_state = None
    if cfg.method == "lora":
        adapter_cfg = {"base": str(prep.base_dir.resolve()), "lora": cfg.lora_config(prep.tokenizer)}

        def adapter_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            return lora.adapter_tensors(model), adapter_cfg

    val_source = str(val_path) if val_path else f"{cfg.val_fraction:.0%} of the rows, seed {cfg.seed}"
    info = {
        "kind": "finetuned",
        "base": str(prep.base_dir.resolve()),
        "method": cfg.method,
        "dataset": dataset_info(data, prep.train, prep.val, val_source),
        "finetune": cfg.to_dict(),
        **({"lora": cfg.lora_config(prep.tokenizer)} if cfg.method == "lora" else {}),
    }
    batches = TaskBatches(
        prep.train, prep.val, train_cfg.batch_size, train_cfg.grad_accum, cfg.seed, prep.tokenizer.pad_id
    )
    on_eval = None
    if cfg.probes:  # greedy answers (the seed only keeps generation off torch's global RNG)
        on_eval = sample_logger(prep.tokenizer, cfg.probes, SamplingConfig(cfg.probe_tokens, 0.0, seed=0), chat=True)
    metrics = metrics_path if metrics_path is not None else out_dir / METRICS_FILE
    result = train(model, prep.tokenizer, batches, train_cfg, out_dir, metrics, resume, info, adapter_state, on_eval)
    if cfg.merge and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process writes
        merge_best(out_dir)
    return result
