"""Pretraining: a prepared corpus + a model shape -> a trained checkpoint, through the one trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from llm import checkpoint
from llm.config import ModelConfig, TrainConfig
from llm.corpus import TokenData, WindowBatches
from llm.model import Transformer
from llm.run import RunDir
from llm.tokenizer import Tokenizer
from llm.trainer import TrainResult, train


def pretrain(
    data_dir: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    metrics_path: str | Path | None = None,
    save_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Train from scratch on the token shards in data_dir into the run folder out_dir, or resume it.

    Resuming continues with the run's own shape and saved settings (RunDir.resumed_train_settings): only
    train_cfg's budgets (max_steps, max_time) and device are taken. Metrics go to metrics_path, by default the run's.
    """
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
    torch.manual_seed(train_cfg.seed)
    model = Transformer(model_cfg)
    if resume:
        checkpoint.load_weights(model, run.latest / checkpoint.WEIGHTS)
    batches = WindowBatches(data, model_cfg.context_length, train_cfg.batch_size, train_cfg.seed)
    info = {"kind": "pretrained", "data": str(data_dir), "data_tokens": data.meta["tokens"]}
    return train(model, tokenizer, batches, train_cfg, run.path, metrics_path, resume, info, save_dtype=save_dtype)
