"""Pretraining: a prepared corpus + a model shape -> a trained checkpoint, through the one trainer.

At every evaluation the run also logs, beside the losses, "val_bits_per_byte" and "samples": continuations
of a few fixed prompts, sampled with a fixed seed, so the metrics file shows the model learning to write
(gibberish, then words, then sentences).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from llm import checkpoint
from llm.config import ModelConfig, SamplingConfig, TrainConfig
from llm.corpus import TokenData, WindowBatches
from llm.device import check_model_fits, pick_device
from llm.errors import ConfigError
from llm.generate import sample_logger
from llm.model import Transformer
from llm.run import RunDir
from llm.tokenizer import Tokenizer
from llm.trainer import TrainResult, train

DEFAULT_SAMPLE_PROMPTS = ("Once upon a time", "The")
DEFAULT_SAMPLE_TOKENS = 48
# The generate command's defaults; seed 0 at every evaluation, so two samples differ only by the weights.
SAMPLE_SAMPLING = {"temperature": 0.8, "top_p": 0.95, "seed": 0}
BYTES_SAMPLE_TOKENS = 1_000_000  # tokens decoded to measure a split's bytes per token (a book's whole split)


def bytes_per_token(data: TokenData, tokenizer: Tokenizer, split: str = "val") -> float | None:
    """UTF-8 bytes per token of a split (its <eos> tokens count as tokens, they decode to no bytes), from its
    first BYTES_SAMPLE_TOKENS tokens; None for an empty split. meta.json records bytes for both splits
    together only, and a split's text can differ (the documents held out are drawn at random)."""
    ids, need = [], BYTES_SAMPLE_TOKENS
    for array in data.arrays(split):
        ids.extend(array[:need].tolist())
        need = BYTES_SAMPLE_TOKENS - len(ids)
        if need <= 0:
            break
    return len(tokenizer.decode(ids).encode("utf-8")) / len(ids) if ids else None


def eval_logger(tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int, val_bytes_per_token: float | None):
    """on_eval for the trainer: bits per byte of the validation loss, and samples of the prompts."""
    samples = None
    if prompts and max_new_tokens > 0:
        samples = sample_logger(tokenizer, prompts, SamplingConfig(max_new_tokens, **SAMPLE_SAMPLING))

    def on_eval(model: Transformer, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if val_bytes_per_token and "val_loss" in metrics:
            # nats per token -> bits per token -> bits per byte
            extra["val_bits_per_byte"] = round(metrics["val_loss"] / math.log(2) / val_bytes_per_token, 5)
        if samples is not None:
            extra.update(samples(model, step, metrics))
        return extra

    return on_eval


def pretrain(
    data_dir: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    metrics_path: str | Path | None = None,
    save_dtype: torch.dtype | None = None,
    sample_prompts: list[str] | tuple[str, ...] = DEFAULT_SAMPLE_PROMPTS,
    sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
) -> TrainResult:
    """Train from scratch on the token shards in data_dir into the run folder out_dir, or resume it.

    Resuming continues with the run's own shape and saved settings (RunDir.resumed_train_settings): only
    train_cfg's budgets (max_steps, max_time) and device are taken. Metrics go to metrics_path, by default the
    run's. Each evaluation logs the validation bits per byte and up to sample_tokens new tokens after each of
    sample_prompts (no prompts, or 0 tokens: no samples).
    """
    if sample_tokens < 0:
        raise ConfigError(f"must be >= 0, got {sample_tokens}", field="sample_tokens")
    data = TokenData.open(data_dir)
    tokenizer = Tokenizer.load(Path(data_dir))
    run = RunDir(out_dir)
    if resume:
        model_cfg = ModelConfig.load(run.latest / checkpoint.CONFIG)  # the run's own shape wins on resume
        saved = run.resumed_train_settings(train_cfg.max_steps, train_cfg.device, train_cfg.max_time)
        train_cfg = TrainConfig.from_dict(saved)
    else:
        run.check_new()
    if model_cfg.vocab_size != data.meta["vocab_size"]:
        model_cfg = ModelConfig(**{**model_cfg.to_dict(), "vocab_size": data.meta["vocab_size"]})
    # Weights, gradients and AdamW's two moments must fit before anything is allocated.
    check_model_fits(model_cfg, pick_device(train_cfg.device), copies=4, what="pretraining")
    torch.manual_seed(train_cfg.seed)
    model = Transformer(model_cfg)
    if resume:
        checkpoint.load_weights(model, run.latest / checkpoint.WEIGHTS)
    batches = WindowBatches(data, model_cfg.context_length, train_cfg.batch_size, train_cfg.seed)
    info = {"kind": "pretrained", "data": str(data_dir), "data_tokens": data.meta["tokens"]}
    on_eval = eval_logger(tokenizer, list(sample_prompts), sample_tokens, bytes_per_token(data, tokenizer))
    return train(
        model,
        tokenizer,
        batches,
        train_cfg,
        run.path,
        metrics_path,
        resume,
        info,
        on_eval=on_eval,
        save_dtype=save_dtype,
    )
