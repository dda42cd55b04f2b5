"""What fine-tuning and preference tuning share: the base model they start from, LoRA's settings and how a
LoRA checkpoint stores its adapter, the TrainConfig derived from the data, the probe answers logged at each
evaluation, and merging the best adapter into full weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from llm.config import DEFAULT_BASE_MODEL, FinetuneConfig, ModelConfig, PreferConfig, SamplingConfig, TrainConfig
from llm.data.tokenizer import Tokenizer
from llm.device import check_model_fits, pick_device
from llm.errors import CheckpointError, ConfigError, TaskFileError
from llm.model import checkpoint, lora
from llm.model.generate import sample_logger
from llm.model.transformer import Transformer
from llm.run import BEST, RunDir

TOKENS_PER_BATCH = 2048  # token positions per micro-batch: the default batch size is this over the rows' length
# Rows up to this long count as this long, so the default batch is at most 8 (the shipped base's, at its context
# of 256): a larger one would take steps away from small datasets.
SHORT_ROWS = 256


MAX_WARMUP_STEPS = 100  # warmup is a tenth of the run, at most this


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
    cfg: FinetuneConfig | PreferConfig, n_train: int, n_val: int, row_tokens: int, select_metric: str = "val_loss"
) -> tuple[TrainConfig, int]:
    """(the TrainConfig a fine-tune of n_train examples (or a preference run of n_train pairs) runs with,
    steps per epoch). row_tokens: the longest training row, which sets the default batch size (not the
    context length: short rows of a long-context model would train one at a time)."""
    if cfg.batch_size > n_train:  # each batch would hold every row several times over
        raise ConfigError(
            f"must be at most {n_train}, the rows there are to train on; got {cfg.batch_size}", field="batch_size"
        )
    batch_size = cfg.batch_size or max(1, min(TOKENS_PER_BATCH // max(row_tokens, SHORT_ROWS), n_train // 4))
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
    model_cfg = checkpoint.read_config(base_dir)
    if cfg.method == "full":
        check_model_fits(model_cfg, pick_device(cfg.device), copies=4, what=f"full tuning of {base_dir}")
    return base_dir, model_cfg, Tokenizer.load(base_dir)


def adapter_saver(
    model: Transformer, cfg: FinetuneConfig | PreferConfig, base_dir: Path, tokenizer: Tokenizer
) -> Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None:
    """For a LoRA run, the trainer's adapter_state: the adapter's tensors and adapter.json (naming the base)
    to store in each checkpoint instead of the full weights; None for a full fine-tune."""
    if cfg.method != "lora":
        return None
    adapter_cfg = {"base": str(base_dir.resolve()), "lora": lora_settings(cfg, tokenizer)}
    return lambda: (lora.adapter_tensors(model), adapter_cfg)


def merge_best(out_dir: Path) -> Path:
    """Rewrite out_dir/best (or, with no validation, the final model in latest) as merged full weights in best."""
    run = RunDir(out_dir)
    source = run.checkpoints()[0]
    if not (source / checkpoint.ADAPTER_CONFIG).is_file():
        return source  # already merged (a resumed run whose best did not change)
    model, tokenizer, info = checkpoint.load_model(source)
    info = {**info, "merged": True, "merged_from": source.name}
    return checkpoint.save_checkpoint(run.path / BEST, model, tokenizer, info)


def make_probe_logger(tokenizer: Tokenizer, probes: list[str], max_new_tokens: int):
    """on_eval for the trainer: greedy answers to the probe prompts, logged as "samples" (the seed only keeps
    generation off torch's global RNG)."""
    return sample_logger(tokenizer, probes, SamplingConfig(max_new_tokens, 0.0, seed=0), chat=True)


def start_model(cfg: FinetuneConfig | PreferConfig, base_dir: Path, tokenizer: Tokenizer) -> Transformer:
    """The model a new tuning run trains: its base, with seeded LoRA adapters for a LoRA run."""
    model, _, _ = checkpoint.load_model(base_dir)
    if cfg.method == "lora":
        torch.manual_seed(cfg.seed)  # the adapters' random A matrices
        lora.apply_lora(model, **lora_settings(cfg, tokenizer))
    return model


def resumed_settings(run: RunDir, kind: str, cls, device: str | None) -> tuple[dict[str, Any], Any]:
    """(the latest checkpoint's info, the run's own config of class cls) of a tuning run to resume; kind is
    the info "kind" the run must be (a fine-tune is not resumed as a preference run)."""
    run.check_resumable()
    saved = run.info()
    if saved.get("kind") != kind:
        raise ConfigError(f"{run.latest} is not a checkpoint of this kind of run ({kind}); cannot resume it here")
    key = "finetune" if cls is FinetuneConfig else "prefer"
    return saved, cls.from_dict({**saved[key], **({"device": device} if device else {})})


def check_same_data(path: str, saved: dict[str, Any], content_hash: str) -> None:
    if content_hash != saved["dataset"]["content_hash"]:
        raise TaskFileError(f"{path}: the file changed since the run started (content hash differs)")


def resumed_model(run: RunDir, method: str) -> Transformer:
    """The latest checkpoint's model, a LoRA one unmerged so that its adapter keeps training."""
    if method == "lora":
        return checkpoint.load_with_adapter(run.latest)
    return checkpoint.load_model(run.latest)[0]


def source_info(data: Any) -> dict[str, Any]:
    """What a run records of the file it trains on (a TaskData or PreferenceData): its name, path, content hash,
    column mapping and row count."""
    return {
        "name": Path(data.source).name,
        "path": str(Path(data.source).resolve()),
        "content_hash": data.content_hash,
        "mapping": data.mapping,
        "rows": len(data.examples) + len(data.problems),
    }


def run_info(kind: str, cfg: FinetuneConfig | PreferConfig, base_dir: Path, tokenizer: Tokenizer, **recorded) -> dict:
    """What each checkpoint of a tuning run records (info.json): its kind, base and method, what recorded
    adds (the dataset), its whole config with absolute paths (what resume() continues with; recorded's
    data and val_data are those paths), and its LoRA settings."""
    key = "finetune" if isinstance(cfg, FinetuneConfig) else "prefer"
    base = str(base_dir.resolve())
    paths = {k: recorded.pop(k) for k in ("data", "val_data") if k in recorded}
    return {
        "kind": kind,
        "base": base,
        "method": cfg.method,
        **recorded,
        key: replace(cfg, base=base, **paths).to_dict(),
        **({"lora": lora_settings(cfg, tokenizer)} if cfg.method == "lora" else {}),
    }
