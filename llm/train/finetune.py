"""Supervised fine-tuning on a task dataset, full or LoRA, through the one training loop (llm.train.trainer.train).

    FinetuneConfig -> prepare() (read the file once, split, encode once, derive the TrainConfig)
                   -> plan() (sizes, steps, memory and time, before starting)
                   -> finetune() -> TaskBatches -> trainer.train (checkpoints, resume, metrics, SIGTERM, best/)

A LoRA run stores only its adapter in each checkpoint (adapter.safetensors + adapter.json naming the base);
llm.model.checkpoint.load_model merges it onto the base when loading. With merge=True the best checkpoint is
rewritten at the end as full merged weights that need no base. A checkpoint's info.json records the base
model, the dataset (name and content hash), the whole FinetuneConfig and the metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.config import (
    EXACT_MATCH_ROWS,
    FinetuneConfig,
    ModelConfig,
    SamplingConfig,
    TrainConfig,
)
from llm.data.batches import TaskBatches
from llm.data.tasks import EncodedExamples, Example, TaskData, encode_examples, read_task_file, split_examples, summary
from llm.data.tokenizer import Tokenizer
from llm.device import DECODE_SLOWDOWN, available_memory, describe, pick_device, size_text
from llm.errors import ConfigError, TaskFileError
from llm.eval.tasks import answer, score, split_reference
from llm.model import lora
from llm.model.transformer import Transformer
from llm.run import ANSWERS, MetricsWriter, RunDir, is_main_process
from llm.train import speed, tuning
from llm.train.trainer import TrainHooks, TrainResult, train

KIND = "finetuned"  # info.json "kind" of a fine-tuned checkpoint
EXACT_EXTRA_TOKENS = 8  # room beyond the reference answer when exact match is scored at evaluations
EMPTY_CHECK_ROWS, EMPTY_CHECK_TOKENS = 16, 8  # training prompts answered when a run ends, tokens each


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
        """The data check of the whole file (llm.data.tasks.summary) for the rows this run trains and validates on."""
        return summary(self.data, self.train.combined(self.val))

    def validation_source(self) -> str:
        cfg = self.cfg
        return cfg.val_data or f"{cfg.val_fraction:.0%} of the rows, seed {cfg.seed}"


def encode_data(cfg: FinetuneConfig, data: TaskData) -> EncodedExamples:
    """Every example of data encoded for cfg's base model (its tokenizer and context) with cfg.overflow: what
    prepare() splits, for a caller that keeps it across settings that leave it unchanged (the split's share and
    seed, the method, the schedule)."""
    _, model_cfg, tokenizer = tuning.open_base(cfg)
    return encode_examples(data, tokenizer, model_cfg.context_length, cfg.overflow)


def prepare(cfg: FinetuneConfig, data: TaskData | None = None, encoded: EncodedExamples | None = None) -> Prepared:
    """Read (unless data is given), split and encode the task data for the base model, and derive the
    training settings. encoded: encode_data(cfg, data), when the caller has it. Writes nothing."""
    if not cfg.data and data is None:
        raise ConfigError("is required: the task file to fine-tune on", field="data")
    base_dir, model_cfg, tokenizer = tuning.open_base(cfg)
    data = data if data is not None else read_task_file(cfg.data, cfg.format, cfg.mapping)
    T = model_cfg.context_length
    whole = encoded if encoded is not None else encode_examples(data, tokenizer, T, cfg.overflow)
    if cfg.val_data:
        val_data = read_task_file(cfg.val_data, data.format, cfg.mapping)
        train_enc, val_enc = whole, encode_examples(val_data, tokenizer, T, cfg.overflow)
    else:
        train_data, val_data = split_examples(data, cfg.val_fraction, cfg.seed)
        train_enc, val_enc = whole.select(train_data.examples), whole.select(val_data.examples)
    if not train_enc.items:
        raise TaskFileError(f"{data.source}: no training example is left after dropping rows longer than the context")
    kept = set(val_enc.rows)
    val_examples = [example for example in val_data.examples if example.row in kept]
    select = "val_exact" if cfg.early_stop_metric == "exact" else "val_loss"
    longest = max(len(ids) for ids, _ in train_enc.items)
    train_cfg, steps_per_epoch = tuning.training_settings(
        cfg, len(train_enc.items), len(val_enc.items), longest, select
    )
    return Prepared(
        cfg, base_dir, model_cfg, tokenizer, data, train_enc, val_enc, val_examples, train_cfg, steps_per_epoch
    )


def parameter_counts(model_cfg: ModelConfig, cfg: FinetuneConfig, tokenizer: Tokenizer) -> tuple[int, int]:
    """(all parameters of the model as it trains, trained parameters), from a model built without memory
    (meta device). With LoRA the adapters count in both."""
    with torch.device("meta"):
        model = Transformer(model_cfg)
        if cfg.method == "lora":
            lora.apply_lora(model, **tuning.lora_settings(cfg, tokenizer))
        return model.num_params(), sum(p.numel() for p in model.parameters() if p.requires_grad)


def plan(prep: Prepared, threads: int | None = None) -> dict[str, Any]:
    """What a run would do, before starting it: sizes, steps, device, and rough memory and time estimates.

    Time: a few optimizer steps of the run's own first batches, timed on the device with the model as it
    trains (llm.train.speed.tuning_step_seconds; threads: the run's intra-op threads, None: this process's),
    give the rate at which this run's work is done; evaluations (forward passes) and probe generation are
    counted in the same FLOPs (6 per parameter and token for a training step, 2 for a forward pass) at that
    rate. Memory: fp32 weights, gradients and AdamW moments of the trained parameters, and the activations
    and logits of the longest batch (not the Python and torch overhead).
    """
    cfg, mc, tc = prep.cfg, prep.model_cfg, prep.train_cfg
    total, trainable = parameter_counts(mc, cfg, prep.tokenizer)
    n_evals = tc.max_steps // tc.eval_interval + (tc.max_steps % tc.eval_interval > 0)
    scored = tuning.eval_rows(cfg, len(prep.val.items))
    device = pick_device(cfg.device)
    longest = max(len(ids) for ids, _ in prep.train.items)
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
        "est_step_seconds": round(step_seconds := timed_step_seconds(prep, threads), 3),
        "est_seconds": round(work_in_steps(prep, total, n_evals, scored) * step_seconds, 1),
    }


def work_in_steps(prep: Prepared, total_params: int, n_evals: int, scored: int) -> float:
    """A run's work in optimizer steps: its steps, plus its evaluations (forward passes of scored validation rows
    and as many training rows) and its probes' and exact-match answers (tokens generated one at a time), each
    as the share of a step's FLOPs it is (6 per parameter and token for a training step, 2 for a forward pass)."""
    cfg, mc, tc = prep.cfg, prep.model_cfg, prep.train_cfg
    mean_len = float(np.mean([len(ids) for ids, _ in prep.train.items]))
    # Matrix FLOPs per token: every weight once (the tied LM head included), plus attention over the sequence.
    # The embedding lookup costs no FLOPs, the LM head does; tied, they are one matrix counted once in total.
    compute_params = total_params if mc.tie_embeddings else total_params - mc.vocab_size * mc.d_model
    forward = 2 * compute_params + 4 * mc.n_layer * mc.d_model * min(mean_len, mc.context_length)
    step_flops = tc.batch_size * tc.grad_accum * mean_len * 3 * forward
    eval_tokens = n_evals * 2 * scored * mean_len
    probe_tokens = n_evals * len(cfg.probes) * cfg.probe_tokens
    if cfg.early_stop_metric == "exact":  # each scored row's answer: its reference's length and a margin
        answers = [sum(mask) + EXACT_EXTRA_TOKENS for _, mask in prep.val.items[:EXACT_MATCH_ROWS]]
        probe_tokens += n_evals * sum(answers)
    extra_flops = eval_tokens * forward + probe_tokens * forward * DECODE_SLOWDOWN
    return tc.max_steps + extra_flops / step_flops


def timed_step_seconds(prep: Prepared, threads: int | None = None) -> float:
    """Seconds per optimizer step of this run, timed on its own first batches (llm.train.speed)."""
    cfg, tc = prep.cfg, prep.train_cfg
    batches = TaskBatches(prep.train, prep.val, tc.batch_size, tc.grad_accum, cfg.seed, prep.tokenizer.pad_id)
    settings = tuning.lora_settings(cfg, prep.tokenizer) if cfg.method == "lora" else None
    lengths = [batches.train_batch(step, 0)[0].shape for step in range(speed.TUNING_STEPS + 1)]

    def adapt(model: Transformer) -> None:
        if settings is not None:
            lora.apply_lora(model, **settings)

    key = json.dumps([cfg.method, settings, [list(shape) for shape in lengths]])
    return speed.tuning_step_seconds(prep.model_cfg, tc, batches, adapt, key, threads)


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
        hooks.append(tuning.make_probe_logger(prep.tokenizer, cfg.probes, cfg.probe_tokens))
    if cfg.early_stop_metric == "exact" and prep.val_examples:
        hooks.append(exact_match_scorer(prep.tokenizer, prep.val_examples))
    if not hooks:
        return None
    return lambda model, step, metrics: {k: v for hook in hooks for k, v in hook(model, step, metrics).items()}


def dataset_info(prep: Prepared) -> dict[str, Any]:
    data, train, val = prep.data, prep.train, prep.val
    return {
        **tuning.source_info(data),
        "format": data.format,
        "dropped": len(data.problems) + len(train.dropped) + len(val.dropped),
        "truncated": len(train.truncated) + len(val.truncated),
        "train_examples": len(train.items),
        "val_examples": len(val.items),
        "validation": prep.validation_source(),
    }


def finetune(
    job: FinetuneConfig | Prepared, out_dir: str | Path, metrics_path: str | Path | None = None
) -> TrainResult:
    """Start a fine-tuning run in out_dir (latest/, best/ and the metrics file). Everything (data, base model,
    settings) is checked before the first file is written, so bad input never leaves a half-made run."""
    prep = job if isinstance(job, Prepared) else prepare(job)
    RunDir(out_dir).check_new()
    model = tuning.start_model(prep.cfg, prep.base_dir, prep.tokenizer)
    return _train(prep, model, prep.train_cfg, Path(out_dir), metrics_path, resume=False)


def resume(
    out_dir: str | Path, max_steps: int | None = None, device: str | None = None, metrics_path: str | Path | None = None
) -> TrainResult:
    """Continue the fine-tuning run in out_dir from its latest checkpoint, with its own saved FinetuneConfig
    and TrainConfig (RunDir's resume rule: only the step budget and the device may change). A dataset whose
    content changed since the run started is refused."""
    run = RunDir(out_dir)
    saved, cfg = tuning.resumed_settings(run, KIND, FinetuneConfig, device)
    prep = prepare(cfg)
    tuning.check_same_data(cfg.data, saved, prep.data.content_hash)
    train_cfg = TrainConfig.from_dict(run.resumed_train_settings(max_steps, device))
    return _train(prep, tuning.resumed_model(run, cfg.method), train_cfg, run.path, metrics_path, resume=True)


def _train(
    prep: Prepared, model: Transformer, train_cfg: TrainConfig, out_dir: Path, metrics_path, resume: bool
) -> TrainResult:
    cfg, tokenizer = prep.cfg, prep.tokenizer
    adapter_state = tuning.adapter_saver(model, cfg, prep.base_dir, tokenizer)
    val_data = str(Path(cfg.val_data).resolve()) if cfg.val_data else ""
    data = str(Path(prep.data.source).resolve())
    info = tuning.run_info(
        KIND, cfg, prep.base_dir, tokenizer, dataset=dataset_info(prep), data=data, val_data=val_data
    )
    batches = TaskBatches(
        prep.train, prep.val, train_cfg.batch_size, train_cfg.grad_accum, cfg.seed, tokenizer.pad_id, cfg.max_eval_rows
    )
    hooks = TrainHooks(on_eval=evaluation_hook(prep), adapter_state=adapter_state)
    result = train(
        model, tokenizer, batches, train_cfg, out_dir=out_dir, metrics_path=metrics_path, resume=resume, info=info,
        hooks=hooks,
    )  # fmt: skip
    if is_main_process():  # under torchrun, one process writes
        rows = set(prep.train.rows[:EMPTY_CHECK_ROWS])
        empty = empty_answers(model, tokenizer, [e for e in prep.data.examples if e.row in rows])
        MetricsWriter(Path(metrics_path) if metrics_path else RunDir(out_dir).metrics).append(
            {"event": ANSWERS, "step": result.step, "empty": empty, "rows": len(rows)}
        )
        if cfg.merge:
            tuning.merge_best(out_dir)
    return result


def empty_answers(model: Transformer, tokenizer: Tokenizer, examples: list) -> int:
    """How many of the examples' prompts the model answers with nothing (greedy): a fine-tune that learnt to
    stop at once (answers cut away by truncation, an end token learnt as the answer) shows here."""
    sampling = SamplingConfig(EMPTY_CHECK_TOKENS, temperature=0.0, seed=0)
    return sum(not answer(model, tokenizer, split_reference(e)[0], sampling) for e in examples)
