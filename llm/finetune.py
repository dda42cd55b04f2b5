"""Supervised fine-tuning on a task dataset, full or LoRA, through the one training loop (llm.trainer.train).

    FinetuneConfig -> prepare() (read the file once, split, encode once, derive the TrainConfig)
                   -> plan() (sizes, steps, memory and time, before starting)
                   -> finetune() -> TaskBatches -> trainer.train (checkpoints, resume, metrics, SIGTERM, best/)

A LoRA run stores only its adapter in each checkpoint (adapter.safetensors + adapter.json naming the base);
llm.checkpoint.load_model merges it onto the base when loading. With merge=True the best checkpoint is
rewritten at the end as full merged weights that need no base. A checkpoint's info.json records the base
model, the dataset (name and content hash), the whole FinetuneConfig and the metrics.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm import checkpoint, lora
from llm.config import (
    DEFAULT_BASE_MODEL,
    EXACT_MATCH_ROWS,
    FinetuneConfig,
    ModelConfig,
    PreferConfig,
    SamplingConfig,
    TrainConfig,
)
from llm.device import (
    available_memory,
    check_model_fits,
    describe,
    measure_matmul_flops,
    peak_flops,
    pick_device,
    size_text,
)
from llm.errors import CheckpointError, ConfigError, TaskFileError
from llm.generate import sample_logger
from llm.model import Transformer
from llm.run import BEST, MetricsWriter, RunDir
from llm.task_eval import answer, score, split_reference
from llm.tasks import EncodedExamples, Example, TaskData, encode_examples, read_task_file, split_examples, summary
from llm.tokenizer import MODEL_FILE, Tokenizer
from llm.trainer import TrainResult, train

TOKENS_PER_BATCH = 2048  # token positions per micro-batch at full context: sets the default batch size
# Share of a device's matrix-product rate that fine-tuning reaches (short sequences, small matrices), for the
# time estimate in plan() only. CPU: measured (0.5 on the opposites sample, 6-layer base, 2-core CPU);
# GPUs: a guess, unmeasured here (no GPU), where small batches of short rows leave the chip mostly idle.
EFFICIENCY = {"cpu": 0.5, "cuda": 0.25, "mps": 0.25}
DECODE_SLOWDOWN = 20  # generating one token at a time: tiny matrix products, far below the device's rate
MAX_WARMUP_STEPS = 100  # warmup is a tenth of the run, at most this
EXACT_EXTRA_TOKENS = 8  # room beyond the reference answer when exact match is scored at evaluations
EMPTY_CHECK_ROWS, EMPTY_CHECK_TOKENS = 16, 8  # training prompts answered when a run ends, tokens each
EVAL_SAMPLE_STREAM = 10**9  # seeds the fixed train sample scored at evaluations, apart from the epochs' seeds


def lora_settings(cfg: FinetuneConfig | PreferConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """lora.apply_lora's arguments (stored in adapter.json). The chat control tokens' embedding rows train
    too: pretraining never saw those tokens, and without them a LoRA model cannot learn to stop."""
    return {
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha,
        "dropout": cfg.lora_dropout,
        "targets": cfg.lora_targets,
        "tokens": sorted(tokenizer.special.values()),
    }


class TaskBatches:
    """Batches of encoded examples for the trainer, padded to the longest in the batch (targets -1).

    Training walks the examples epoch by epoch, each epoch in its own permutation seeded by (seed, epoch). The
    i-th sequence of micro-batch `micro` at step `step` is example number (step * grad_accum + micro) *
    batch_size + i of that endless walk, so a batch depends only on (seed, step, micro): a resumed run and a
    data-parallel run see exactly the batches of one uninterrupted run.
    """

    def __init__(
        self,
        train: EncodedExamples,
        val: EncodedExamples,
        batch_size: int,
        grad_accum: int,
        seed: int,
        pad_id: int,
        eval_rows: int = 0,
    ):
        assert train.items, "no training examples"
        self.train = train.items
        self.val = val.items[:eval_rows] if eval_rows else val.items  # what each evaluation scores
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
            order = np.random.default_rng([self.seed, EVAL_SAMPLE_STREAM]).permutation(len(self.train))[:size]
            items = [self.train[i] for i in np.sort(order)]
        for start in range(0, len(items), self.batch_size):
            yield self.collate(items[start : start + self.batch_size])


@dataclass
class Prepared:
    """A fine-tuning run's inputs, read, split and encoded once, and checked before anything is written."""

    cfg: FinetuneConfig
    base_dir: Path
    model_cfg: ModelConfig
    tokenizer: Tokenizer
    data: TaskData  # the whole file
    train: EncodedExamples
    val: EncodedExamples
    val_examples: list[Example]  # the rows of `val`, as conversations (exact-match scoring answers them)
    train_cfg: TrainConfig
    steps_per_epoch: int

    def summary(self) -> dict[str, Any]:
        """The data check of the whole file (llm.tasks.summary) for the rows this run trains and validates on."""
        return summary(self.data, self.train.combined(self.val))

    def validation_source(self) -> str:
        cfg = self.cfg
        return cfg.val_data or f"{cfg.val_fraction:.0%} of the rows, seed {cfg.seed}"


def base_directory(base: str | Path) -> Path:
    """The base model's directory, with a clear message when the shipped base model is not there yet."""
    try:
        return checkpoint.resolve(base)
    except CheckpointError:
        if Path(base).resolve() == DEFAULT_BASE_MODEL.resolve():
            raise CheckpointError(
                f"the shipped base model is not in {DEFAULT_BASE_MODEL} yet; choose another base model", field="base"
            ) from None
        raise


def eval_rows(cfg: FinetuneConfig | PreferConfig, n_val: int) -> int:
    """Validation rows scored at each evaluation: all of them, or at most cfg.max_eval_rows."""
    return min(n_val, cfg.max_eval_rows) if cfg.max_eval_rows else n_val


def training_settings(
    cfg: FinetuneConfig | PreferConfig, n_train: int, n_val: int, context_length: int, select_metric: str = "val_loss"
) -> tuple[TrainConfig, int]:
    """(the TrainConfig a fine-tune of n_train examples (or a preference run of n_train pairs) runs with,
    steps per epoch)."""
    if cfg.batch_size > n_train:  # each batch would hold every row several times over
        raise ConfigError(
            f"must be at most {n_train}, the rows there are to train on; got {cfg.batch_size}", field="batch_size"
        )
    batch_size = cfg.batch_size or max(1, min(TOKENS_PER_BATCH // context_length, n_train // 4))
    steps_per_epoch = math.ceil(n_train / (batch_size * cfg.grad_accum))
    max_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_interval = max(1, min(steps_per_epoch // cfg.evals_per_epoch, max_steps))
    lr = cfg.learning_rate
    train_cfg = TrainConfig(
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=cfg.grad_accum,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=min(MAX_WARMUP_STEPS, max_steps // 10) if cfg.warmup_steps is None else cfg.warmup_steps,
        weight_decay=cfg.weight_decay,  # default 0: the pretrained weights (or a zero adapter) are the anchor
        eval_interval=eval_interval,
        eval_batches=max(1, math.ceil(eval_rows(cfg, n_val) / batch_size)),
        ckpt_interval=eval_interval,
        log_interval=max(1, min(10, eval_interval)),
        seed=cfg.seed,
        device=cfg.device,
        early_stop_patience=cfg.early_stop_patience if n_val else 0,
        select_metric=select_metric,
        keep_best=True,
    )
    return train_cfg, steps_per_epoch


def open_base(cfg: FinetuneConfig | PreferConfig) -> tuple[Path, ModelConfig, Tokenizer]:
    """(directory, shape, tokenizer) of the model a tuning run starts from, checked before anything is loaded:
    full tuning must fit the weights, gradients and AdamW's two moments, all full size."""
    base_dir = base_directory(cfg.base)
    model_cfg = ModelConfig.load(base_dir / checkpoint.CONFIG)
    if cfg.method == "full":
        check_model_fits(model_cfg, pick_device(cfg.device), copies=4, what=f"full tuning of {base_dir}")
    return base_dir, model_cfg, Tokenizer.load(base_dir / MODEL_FILE)


def prepare(cfg: FinetuneConfig, data: TaskData | None = None) -> Prepared:
    """Read (unless data is given), split and encode the task data for the base model, and derive the
    training settings. Writes nothing."""
    if not cfg.data and data is None:
        raise ConfigError("is required: the task file to fine-tune on", field="data")
    base_dir, model_cfg, tokenizer = open_base(cfg)
    data = data if data is not None else read_task_file(cfg.data, cfg.format, cfg.mapping)
    if cfg.val_data:
        train_data, val_data = data, read_task_file(cfg.val_data, data.format, cfg.mapping)
    else:
        train_data, val_data = split_examples(data, cfg.val_fraction, cfg.seed)
    T = model_cfg.context_length
    train_enc = encode_examples(train_data, tokenizer, T, cfg.overflow)
    val_enc = encode_examples(val_data, tokenizer, T, cfg.overflow)
    if not train_enc.items:
        raise TaskFileError(f"{data.source}: no training example is left after dropping rows longer than the context")
    kept = set(val_enc.rows)
    val_examples = [example for example in val_data.examples if example.row in kept]
    select = "val_exact" if cfg.early_stop_metric == "exact" else "val_loss"
    train_cfg, steps_per_epoch = training_settings(cfg, len(train_enc.items), len(val_enc.items), T, select)
    return Prepared(
        cfg, base_dir, model_cfg, tokenizer, data, train_enc, val_enc, val_examples, train_cfg, steps_per_epoch
    )


def parameter_counts(model_cfg: ModelConfig, cfg: FinetuneConfig, tokenizer: Tokenizer) -> tuple[int, int]:
    """(all parameters of the model as it trains, trained parameters), from a model built without memory
    (meta device). With LoRA the adapters count in both."""
    with torch.device("meta"):
        model = Transformer(model_cfg)
        if cfg.method == "lora":
            lora.apply_lora(model, **lora_settings(cfg, tokenizer))
        return model.num_params(), sum(p.numel() for p in model.parameters() if p.requires_grad)


@functools.cache
def device_rate(device_type: str) -> float:
    """FLOP/s that fine-tuning reaches on this kind of device (for estimates)."""
    device = torch.device(device_type)
    rate = peak_flops(device) if device_type == "cuda" else measure_matmul_flops(device)
    return rate * EFFICIENCY.get(device_type, 0.25)


def plan(prep: Prepared) -> dict[str, Any]:
    """What a run would do, before starting it: sizes, steps, device, and rough memory and time estimates.

    Time: training FLOPs (6 per parameter and token, forward and backward; LoRA skips the frozen weights'
    gradients, but on small models its adapter products and dropout copies cost that back) plus evaluation
    forward passes (2) plus probe generation, over the measured rate of the device, for the token lengths
    that will be trained (after truncation). Memory: fp32 weights, gradients and AdamW moments of the trained
    parameters, and the activations and logits of the longest batch (not the Python and torch overhead).
    """
    cfg, mc, tc = prep.cfg, prep.model_cfg, prep.train_cfg
    total, trainable = parameter_counts(mc, cfg, prep.tokenizer)
    trained_lengths = [len(ids) for ids, _ in prep.train.items]
    mean_len = float(np.mean(trained_lengths))
    # Matrix FLOPs per token: every weight once (the tied LM head included), plus attention over the sequence.
    # The embedding lookup costs no FLOPs, the LM head does; tied, they are one matrix counted once in total.
    compute_params = total if mc.tie_embeddings else total - mc.vocab_size * mc.d_model
    attention = 4 * mc.n_layer * mc.d_model * min(mean_len, mc.context_length)
    forward = 2 * compute_params + attention
    train_tokens = tc.max_steps * tc.batch_size * tc.grad_accum * mean_len
    n_evals = tc.max_steps // tc.eval_interval + (tc.max_steps % tc.eval_interval > 0)
    scored = eval_rows(cfg, len(prep.val.items))
    eval_tokens = n_evals * 2 * scored * mean_len  # validation rows and an equal train sample
    probe_tokens = n_evals * len(cfg.probes) * cfg.probe_tokens
    if cfg.early_stop_metric == "exact":  # each scored row's answer: its reference's length and a margin
        answers = [sum(mask) + EXACT_EXTRA_TOKENS for _, mask in prep.val.items[:EXACT_MATCH_ROWS]]
        probe_tokens += n_evals * sum(answers)
    flops = train_tokens * 3 * forward + eval_tokens * forward + probe_tokens * forward * DECODE_SLOWDOWN
    device = pick_device(cfg.device)
    longest = max(trained_lengths)
    activations = tc.batch_size * longest * (mc.n_layer * (14 * mc.d_model + 3 * mc.mlp_hidden + mc.n_head * longest))
    logits = 3 * tc.batch_size * longest * mc.vocab_size  # logits, their softmax and gradient
    memory = 4 * (total + 3 * trainable + activations + logits)
    available = available_memory(device)
    if available is not None and memory > available:  # the estimate leaves out torch overhead: it tends to err low
        raise ConfigError(
            f"{tc.batch_size} is too large for the memory: a batch of {tc.batch_size} examples of up to {longest} "
            f"tokens needs about {size_text(memory)} with the model, and {device.type} has {size_text(available)} "
            "available; choose a smaller batch size (or shorter examples)",
            field="batch_size",
        )
    return {
        "base": str(prep.base_dir),
        "method": cfg.method,
        "device": describe(device),
        "params": total,
        "trainable_params": trainable,
        "trainable_fraction": trainable / total,
        "train_examples": len(prep.train.items),
        "val_examples": len(prep.val.items),
        "eval_rows": scored,
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


def exact_match_scorer(tokenizer: Tokenizer, examples: list[Example]):
    """on_eval for the trainer: greedy answers to up to EXACT_MATCH_ROWS held-out rows, scored against their
    reference answers; logs val_exact (the share answered exactly, after normalisation) and val_f1."""
    rows = [split_reference(example) for example in examples[:EXACT_MATCH_ROWS]]  # (conversation, reference)
    assert rows, "exact match needs held-out rows"
    # Enough tokens to give the reference answer, and to overshoot it.
    sampling = [SamplingConfig(len(tokenizer.encode(ref)) + EXACT_EXTRA_TOKENS, 0.0, seed=0) for _, ref in rows]

    def on_eval(model: Transformer, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        scores = []
        for (messages, reference), settings in zip(rows, sampling, strict=True):
            scores.append(score(answer(model, tokenizer, messages, settings), reference))
        exact = sum(s["exact"] for s in scores) / len(scores)
        return {"val_exact": round(exact, 4), "val_f1": round(sum(s["f1"] for s in scores) / len(scores), 4)}

    return on_eval


def evaluation_hook(prep: Prepared):
    """on_eval for the trainer: the probes' answers and, when early stopping follows exact match, the
    held-out rows' scores; None when there is nothing to do at an evaluation."""
    cfg, hooks = prep.cfg, []
    if cfg.probes:
        hooks.append(make_probe_logger(prep.tokenizer, cfg.probes, cfg.probe_tokens))
    if cfg.early_stop_metric == "exact" and prep.val_examples:
        hooks.append(exact_match_scorer(prep.tokenizer, prep.val_examples))
    if not hooks:
        return None
    return lambda model, step, metrics: {k: v for hook in hooks for k, v in hook(model, step, metrics).items()}


def make_probe_logger(tokenizer: Tokenizer, probes: list[str], max_new_tokens: int):
    """on_eval for the trainer: greedy answers to the probe prompts, logged as "samples" (the seed only keeps
    generation off torch's global RNG)."""
    return sample_logger(tokenizer, probes, SamplingConfig(max_new_tokens, 0.0, seed=0), chat=True)


def dataset_info(prep: Prepared) -> dict[str, Any]:
    data, train, val = prep.data, prep.train, prep.val
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
        "validation": prep.validation_source(),
    }


def merge_best(out_dir: Path) -> Path:
    """Rewrite out_dir/best (or, with no validation, the final model in latest) as merged full weights in best."""
    run = RunDir(out_dir)
    source = run.checkpoints()[0]
    if not (source / checkpoint.ADAPTER_CONFIG).is_file():
        return source  # already merged (a resumed run whose best did not change)
    model, tokenizer, info = checkpoint.load_model(source)
    info = {**info, "merged": True, "merged_from": source.name}
    return checkpoint.save_checkpoint(run.path / BEST, model, tokenizer, info)


def finetune(
    job: FinetuneConfig | Prepared, out_dir: str | Path, metrics_path: str | Path | None = None
) -> TrainResult:
    """Start a fine-tuning run in out_dir (latest/, best/ and the metrics file). Everything (data, base model,
    settings) is checked before the first file is written, so bad input never leaves a half-made run."""
    prep = job if isinstance(job, Prepared) else prepare(job)
    RunDir(out_dir).check_new()
    model, _, _ = checkpoint.load_model(prep.base_dir)
    if prep.cfg.method == "lora":
        torch.manual_seed(prep.cfg.seed)  # the adapters' random A matrices
        lora.apply_lora(model, **lora_settings(prep.cfg, prep.tokenizer))
    return _train(prep, model, prep.train_cfg, Path(out_dir), metrics_path, resume=False)


def resume(
    out_dir: str | Path, max_steps: int | None = None, device: str | None = None, metrics_path: str | Path | None = None
) -> TrainResult:
    """Continue the fine-tuning run in out_dir from its latest checkpoint, with its own saved FinetuneConfig
    and TrainConfig (RunDir's resume rule: only the step budget and the device may change). A dataset whose
    content changed since the run started is refused."""
    run = RunDir(out_dir)
    run.check_resumable()
    saved = run.info()
    if saved.get("kind") != "finetuned":
        raise ConfigError(f"{run.latest} is not a fine-tuning checkpoint; cannot resume it with finetune")
    cfg = FinetuneConfig.from_dict({**saved["finetune"], **({"device": device} if device else {})})
    prep = prepare(cfg)
    if prep.data.content_hash != saved["dataset"]["content_hash"]:
        raise TaskFileError(f"{cfg.data}: the dataset changed since the run started (content hash differs)")
    train_cfg = TrainConfig.from_dict(run.resumed_train_settings(max_steps, device))
    if cfg.method == "lora":
        model = checkpoint.load_with_adapter(run.latest)  # unmerged, so the adapter keeps training
    else:
        model, _, _ = checkpoint.load_model(run.latest)
    return _train(prep, model, train_cfg, run.path, metrics_path, resume=True)


def adapter_saver(
    model: Transformer, cfg: FinetuneConfig | PreferConfig, base_dir: Path, tokenizer: Tokenizer
) -> Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None:
    """For a LoRA run, the trainer's adapter_state: the adapter's tensors and adapter.json (naming the base)
    to store in each checkpoint instead of the full weights; None for a full fine-tune."""
    if cfg.method != "lora":
        return None
    adapter_cfg = {"base": str(base_dir.resolve()), "lora": lora_settings(cfg, tokenizer)}
    return lambda: (lora.adapter_tensors(model), adapter_cfg)


def _train(
    prep: Prepared, model: Transformer, train_cfg: TrainConfig, out_dir: Path, metrics_path, resume: bool
) -> TrainResult:
    cfg, tokenizer = prep.cfg, prep.tokenizer
    adapter_state = adapter_saver(model, cfg, prep.base_dir, tokenizer)
    info = {
        "kind": "finetuned",
        "base": str(prep.base_dir.resolve()),
        "method": cfg.method,
        "dataset": dataset_info(prep),
        "finetune": replace(  # whole and absolute: what resume() continues with
            cfg,
            base=str(prep.base_dir.resolve()),
            data=str(Path(prep.data.source).resolve()),
            val_data=str(Path(cfg.val_data).resolve()) if cfg.val_data else "",
        ).to_dict(),
        **({"lora": lora_settings(cfg, tokenizer)} if cfg.method == "lora" else {}),
    }
    batches = TaskBatches(
        prep.train, prep.val, train_cfg.batch_size, train_cfg.grad_accum, cfg.seed, tokenizer.pad_id, cfg.max_eval_rows
    )
    on_eval = evaluation_hook(prep)
    result = train(model, tokenizer, batches, train_cfg, out_dir, metrics_path, resume, info, adapter_state, on_eval)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process writes
        rows = set(prep.train.rows[:EMPTY_CHECK_ROWS])
        empty = empty_answers(model, tokenizer, [e for e in prep.data.examples if e.row in rows])
        MetricsWriter(Path(metrics_path) if metrics_path else RunDir(out_dir).metrics).append(
            {"event": "answers", "step": result.step, "empty": empty, "rows": len(rows)}
        )
        if cfg.merge:
            merge_best(out_dir)
    return result


def empty_answers(model: Transformer, tokenizer: Tokenizer, examples: list) -> int:
    """How many of the examples' prompts the model answers with nothing (greedy): a fine-tune that learnt to
    stop at once (answers cut away by truncation, an end token learnt as the answer) shows here."""
    sampling = SamplingConfig(EMPTY_CHECK_TOKENS, temperature=0.0, seed=0)
    return sum(not answer(model, tokenizer, split_reference(e)[0], sampling) for e in examples)
