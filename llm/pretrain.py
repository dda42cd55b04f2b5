"""Pretraining: a prepared corpus + a model shape -> a trained checkpoint, through the one trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from llm import checkpoint
from llm.config import ConfigError, ModelConfig, TrainConfig
from llm.corpus import TokenData, WindowBatches
from llm.device import check_model_fits, pick_device
from llm.model import Transformer
from llm.tokenizer import Tokenizer
from llm.trainer import METRICS_FILE, TrainResult, train


def pretrain(
    data_dir: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    metrics_path: str | Path | None = None,
    save_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Train from scratch (or resume out_dir/latest) on the token shards in data_dir.

    Metrics go to metrics_path, by default out_dir/metrics.jsonl.
    """
    data = TokenData.open(data_dir)
    tokenizer = Tokenizer.load(Path(data_dir))
    out_dir = Path(out_dir)
    if resume:
        latest = checkpoint.resolve(out_dir / "latest")
        model_cfg = ModelConfig.load(latest / checkpoint.CONFIG)  # the run's own shape wins on resume
        # Resume with the run's saved settings; only the step budget and the device may change.
        saved = TrainConfig.from_dict(checkpoint.load_trainer_state(latest)["train_config"])
        saved.max_steps, saved.device = train_cfg.max_steps, train_cfg.device
        train_cfg = saved
    elif (out_dir / "latest").exists():
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    if model_cfg.vocab_size != data.meta["vocab_size"]:
        model_cfg = ModelConfig(**{**model_cfg.to_dict(), "vocab_size": data.meta["vocab_size"]})
    # Weights, gradients and AdamW's two moments must fit before anything is allocated.
    check_model_fits(model_cfg, pick_device(train_cfg.device), copies=4, what="pretraining")
    torch.manual_seed(train_cfg.seed)
    model = Transformer(model_cfg)
    if resume:
        checkpoint.load_weights(model, latest / checkpoint.WEIGHTS)
    batches = WindowBatches(data, model_cfg.context_length, train_cfg.batch_size, train_cfg.seed)
    info = {"kind": "pretrained", "data": str(data_dir), "data_tokens": data.meta["tokens"]}
    metrics = metrics_path if metrics_path is not None else out_dir / METRICS_FILE
    return train(model, tokenizer, batches, train_cfg, out_dir, metrics, resume, info, save_dtype=save_dtype)
