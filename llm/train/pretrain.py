"""Pretraining: a prepared corpus + a model shape -> a trained checkpoint, through the one trainer.

From raw text in one call (the studio's Pretrain tab, `python -m llm pretrain --config pretrain.json`):

    PretrainConfig -> plan() (sizes, steps, memory and time, before anything is made)
                   -> pretrain_text() -> prepare_text() (tokenizer + shards in <run>/data, once) -> pretrain()
    resume(run) continues either kind of run with its own data and settings.

At every evaluation the run also logs, beside the losses, "val_bits_per_byte" and "samples": continuations
of a few fixed prompts, sampled with a fixed seed, so the metrics file shows the model learning to write
(gibberish, then words, then sentences).
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from llm.config import SAMPLE_PROMPTS, ModelConfig, PretrainConfig, SamplingConfig, TrainConfig, preset
from llm.data import corpus
from llm.data.corpus import TokenData, WindowBatches
from llm.data.text import expand_inputs
from llm.data.tokenizer import MIN_VOCAB_SIZE, Tokenizer, holds_tokenizer, train_tokenizer
from llm.device import DECODE_SLOWDOWN, check_model_fits, describe, pick_device
from llm.device import device_rate as training_rate
from llm.errors import ConfigError, InputError, TokenizerError
from llm.model import checkpoint
from llm.model.generate import sample_logger
from llm.model.transformer import Transformer
from llm.run import RunDir
from llm.train.trainer import TrainHooks, TrainResult, train

DEFAULT_SAMPLE_PROMPTS = SAMPLE_PROMPTS
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
    *,
    resume: bool = False,
    metrics_path: str | Path | None = None,
    save_dtype: torch.dtype | None = None,
    sample_prompts: list[str] | tuple[str, ...] = DEFAULT_SAMPLE_PROMPTS,
    sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
    extra_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train from scratch on the token shards in data_dir into the run folder out_dir, or resume it.

    Resuming continues with the run's own shape and saved settings (RunDir.resumed_train_settings): only
    train_cfg's budgets (max_steps, max_time) and device are taken. Metrics go to metrics_path, by default the
    run's. Each evaluation logs the validation bits per byte and up to sample_tokens new tokens after each of
    sample_prompts (no prompts, or 0 tokens: no samples). extra_info is recorded in each checkpoint's info.
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
    info = {"kind": "pretrained", "data": str(data_dir), "data_tokens": data.meta["tokens"], **(extra_info or {})}
    on_eval = eval_logger(tokenizer, list(sample_prompts), sample_tokens, bytes_per_token(data, tokenizer))
    hooks = TrainHooks(on_eval=on_eval, save_dtype=save_dtype)
    return train(
        model, tokenizer, batches, train_cfg, out_dir=run.path, metrics_path=metrics_path, resume=resume, info=info,
        hooks=hooks,
    )  # fmt: skip


# From raw text. Defaults derived from the budget where PretrainConfig.train does not set them.
EVALUATIONS = 10  # evaluations (with samples and a checkpoint) in a run
TEXT_EVAL_BATCHES = 4  # batches per evaluation and split (a book holds out a few thousand tokens)
MAX_WARMUP_STEPS = 100
# Steps planned for a time budget, over the estimate: the time limit ends the run anyway, and a rate measured
# while other work shares the device (as on a 2-core CPU) would otherwise end the run well before its time.
TIME_BUDGET_HEADROOM = 1.25
BYTES_PER_TOKEN_GUESS = 3.5  # English text under a BPE vocabulary of a few thousand (plan only, before tokenizing)
# Share of the device's matrix-product rate that pretraining reaches, relative to fine-tuning's figure in
# llm.device.device_rate (full windows, no padding). CPU: measured on the sample book (micro preset).
PRETRAIN_SPEEDUP = 1.0


def tokenizer_source(source: str) -> Path:
    """The tokenizer to reuse: a tokenizer file or a folder holding one, or a model or run folder."""
    path = Path(source)
    if path.is_file() or holds_tokenizer(path):
        return path
    if not path.exists():
        raise ConfigError(f"{source}: no such model, run or tokenizer folder", field="tokenizer")
    return checkpoint.resolve(path)


def vocabulary(cfg: PretrainConfig) -> int:
    """The vocabulary size the run will have: the reused tokenizer's, or cfg.vocab_size."""
    if cfg.tokenizer:
        return Tokenizer.load(tokenizer_source(cfg.tokenizer)).vocab_size
    if cfg.vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"{cfg.vocab_size} is too small: at least {MIN_VOCAB_SIZE} is needed", field="vocab_size")
    return cfg.vocab_size


def model_config(cfg: PretrainConfig, vocab_size: int) -> ModelConfig:
    return preset(cfg.preset, **{**cfg.model, "vocab_size": vocab_size})


def step_flops(model_cfg: ModelConfig, train_cfg: TrainConfig, n_prompts: int, sample_tokens: int) -> dict[str, float]:
    """FLOPs of one training step, of one evaluation (val and train batches) and of one evaluation's samples.

    Forward: 2 per weight and token (a tied embedding is the LM head, counted once; an untied input
    embedding is a lookup) plus attention over the window; training: 3 forwards (backward is twice the
    forward). Sampling decodes a token at a time, far below the device's rate (DECODE_SLOWDOWN)."""
    mc, tc = model_cfg, train_cfg
    with torch.device("meta"):
        params = Transformer(mc).num_params()
    compute_params = params if mc.tie_embeddings else params - mc.vocab_size * mc.d_model
    forward = 2 * compute_params + 4 * mc.n_layer * mc.d_model * mc.context_length
    window_tokens = tc.batch_size * mc.context_length
    return {
        "params": params,
        "train_step": 3 * forward * window_tokens * tc.grad_accum,
        "evaluation": 2 * forward * window_tokens * tc.eval_batches,
        "samples": forward * n_prompts * sample_tokens * DECODE_SLOWDOWN,
    }


def device_rate(device: torch.device, threads: int | None = None) -> float:
    """FLOP/s pretraining reaches here; on a CPU for a child process with `threads` threads (the studio's
    trainer gets fewer threads than the studio itself measures with)."""
    rate = training_rate(device.type) * PRETRAIN_SPEEDUP
    if device.type == "cpu" and threads:
        rate *= threads / torch.get_num_threads()
    return rate


def training_settings(cfg: PretrainConfig, model_cfg: ModelConfig, threads: int | None = None) -> TrainConfig:
    """The TrainConfig of a run: cfg.train's fields, the budgets, and the rest derived from the number of
    steps: about EVALUATIONS evaluations with a checkpoint at each, a warmup of a tenth of the run. With only
    a time budget, the steps are a little more (TIME_BUDGET_HEADROOM) than the device is expected to do in
    it, so the cosine schedule nearly ends then; the time limit stops the run in any case."""
    derived = {"eval_batches": TEXT_EVAL_BATCHES, "keep_best": True, **cfg.train}
    given = TrainConfig.from_dict(derived, "train")  # batch size, accumulation, eval batches: given or default
    if cfg.max_steps:
        steps = cfg.max_steps
    elif cfg.max_time:
        flops = step_flops(model_cfg, given, len(cfg.sample_prompts), cfg.sample_tokens)
        rate = device_rate(pick_device(given.device), threads)
        per_eval = flops["evaluation"] + flops["samples"]
        expected = (cfg.max_time * rate - EVALUATIONS * per_eval) / flops["train_step"]
        steps = max(1, int(TIME_BUDGET_HEADROOM * expected))
    else:
        steps = TrainConfig().max_steps
    interval = max(1, steps // EVALUATIONS)
    schedule = {
        "max_steps": steps,
        "max_time": cfg.max_time,
        "eval_interval": interval,
        "ckpt_interval": interval,
        "log_interval": max(1, min(10, interval)),
        "warmup_steps": min(MAX_WARMUP_STEPS, steps // 10),
    }
    return TrainConfig.from_dict({**schedule, **derived}, "train")


def text_size(files: list[Path]) -> int | None:
    """Bytes of text in the files; None when one is compressed (its text size is not known before reading)."""
    if any(p.name.endswith((".gz", ".xz")) for p in files):
        return None
    return sum(p.stat().st_size for p in files)


SPLIT_CHECK_BYTES = 4 * 2**20  # plan() reads a text up to this size to see that prepare() can hold some out


@functools.lru_cache(maxsize=8)
def _count_held_out(versions: tuple, val_fraction: float, text_field: str) -> tuple[int, int]:
    """corpus.count_held_out, read once per version of the files (versions: (path, mtime, size) each): the
    studio asks for a plan at each edit of its form."""
    return corpus.count_held_out([Path(path) for path, _, _ in versions], val_fraction, text_field)


def check_split(cfg: PretrainConfig, files: list[Path], size: int | None) -> None:
    """InputError when prepare() would hold no document out for validation (a text of one paragraph, say),
    found before a run starts: read for a text of known size up to SPLIT_CHECK_BYTES, else left to prepare()."""
    if not cfg.val_fraction or size is None or size > SPLIT_CHECK_BYTES:
        return
    versions = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    documents, held_out = _count_held_out(versions, cfg.val_fraction, cfg.text_field)
    if documents and not held_out:
        raise InputError(
            f"{corpus.NO_VALIDATION} (the text has {documents} document{'s' * (documents != 1)}: paragraphs "
            "split at blank lines, or JSONL records)"
        )


def plan(cfg: PretrainConfig, threads: int | None = None) -> dict[str, Any]:
    """What a run from raw text would do, before anything is made: the model's size, tokens per step, steps,
    evaluations, and rough memory and time estimates on this device (threads: as in device_rate).

    Time: training, evaluation and sampling FLOPs over the device's measured rate. Memory: fp32 weights,
    gradients and AdamW moments, and the activations and logits of a batch (not Python and torch overhead)."""
    files = expand_inputs(cfg.inputs)
    size = text_size(files)
    check_split(cfg, files, size)
    model_cfg = model_config(cfg, vocabulary(cfg))
    train_cfg = training_settings(cfg, model_cfg, threads)
    mc, tc = model_cfg, train_cfg
    device = pick_device(tc.device)
    flops = step_flops(mc, tc, len(cfg.sample_prompts), cfg.sample_tokens)
    n_evals = tc.max_steps // tc.eval_interval + (tc.max_steps % tc.eval_interval > 0)
    total = tc.max_steps * flops["train_step"] + n_evals * (flops["evaluation"] + flops["samples"])
    rate = device_rate(device, threads)
    seconds = total / rate
    if tc.max_time:
        seconds = min(seconds, tc.max_time)
    tokens_per_step = tc.batch_size * tc.grad_accum * mc.context_length
    T, B = mc.context_length, tc.batch_size
    activations = B * T * mc.n_layer * (14 * mc.d_model + 3 * mc.mlp_hidden + mc.n_head * T)
    logits = 3 * B * T * mc.vocab_size
    text_tokens = size / BYTES_PER_TOKEN_GUESS if size else None
    train_tokens = text_tokens * (1 - cfg.val_fraction) if text_tokens else None
    return {
        "device": describe(device),
        "files": len(files),
        "text_bytes": size,
        "est_text_tokens": int(text_tokens) if text_tokens else None,
        "val_fraction": cfg.val_fraction,
        "tokenizer": cfg.tokenizer or f"new, {cfg.vocab_size:,} tokens",
        "vocab_size": mc.vocab_size,
        "preset": cfg.preset,
        "shape": {k: getattr(mc, k) for k in ("n_layer", "n_head", "d_model", "context_length")},
        "params": flops["params"],
        "batch_size": tc.batch_size,
        "grad_accum": tc.grad_accum,
        "tokens_per_step": tokens_per_step,
        "max_steps": tc.max_steps,
        "max_time": tc.max_time,
        "steps_from_time": not cfg.max_steps and bool(cfg.max_time),
        "lr": tc.lr,
        "evaluations": n_evals,
        "est_tokens_per_s": round(rate * tokens_per_step / flops["train_step"]),
        "est_epochs": tc.max_steps * tokens_per_step / train_tokens if train_tokens else None,
        "est_memory_bytes": int(4 * (4 * flops["params"] + activations + logits)),
        "est_seconds": round(seconds, 1),
    }


def prepare_text(cfg: PretrainConfig, out_dir: str | Path, progress: bool = False) -> Path:
    """The run's tokenizer (trained on the text, or reused) and token shards in <out_dir>/data, made once:
    when the folder exists from an earlier attempt with the same text and settings, it is used as it is."""
    data = RunDir(out_dir).data
    files = expand_inputs(cfg.inputs)
    wanted = {"sources": [str(p) for p in files], "val_fraction": cfg.val_fraction}
    if (data / corpus.META).is_file():
        meta = TokenData.open(data).meta
        if {k: meta[k] for k in wanted} != wanted:
            raise ConfigError(
                f"{data} was made from other text or settings; start the run in a new folder", field="out"
            )
        return data
    data.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=data.parent) as tmp:
        if cfg.tokenizer:
            Tokenizer.load(tokenizer_source(cfg.tokenizer)).save(tmp)
        else:
            train_tokenizer(files, tmp, cfg.vocab_size, text_field=cfg.text_field)
        corpus.prepare(files, tmp, data, cfg.val_fraction, text_field=cfg.text_field, progress=progress)
    return data


def absolute(cfg: PretrainConfig) -> PretrainConfig:
    """cfg with its paths absolute, as a run records it (what resume() and the studio read back)."""
    inputs = [i if any(ch in i for ch in "*?[") else str(Path(i).resolve()) for i in cfg.inputs]
    return replace(cfg, inputs=inputs, tokenizer=str(Path(cfg.tokenizer).resolve()) if cfg.tokenizer else "")


def pretrain_text(
    cfg: PretrainConfig,
    out_dir: str | Path,
    metrics_path: str | Path | None = None,
    save_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> TrainResult:
    """Start a run from raw text in out_dir: tokenizer and shards in <out_dir>/data, then pretraining. The
    settings are checked before anything is written; the run records cfg in each checkpoint's info."""
    run = RunDir(out_dir)
    run.check_new()
    vocab = vocabulary(cfg)  # a missing tokenizer is reported before any text is read
    model_cfg = model_config(cfg, vocab)
    train_cfg = training_settings(cfg, model_cfg)
    data = prepare_text(cfg, out_dir, progress)
    tokens = Tokenizer.load(data).vocab_size
    assert tokens == vocab, f"the tokenizer has {tokens} tokens, {vocab} were asked for"
    return pretrain(
        data, run.path, model_cfg, train_cfg, metrics_path=metrics_path, save_dtype=save_dtype,
        sample_prompts=cfg.sample_prompts, sample_tokens=cfg.sample_tokens,
        extra_info={"pretrain": absolute(cfg).to_dict()},
    )  # fmt: skip


def resume(
    out_dir: str | Path,
    max_steps: int | None = None,
    max_time: float | None = None,
    device: str | None = None,
    metrics_path: str | Path | None = None,
    save_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Continue a pretraining run from its latest checkpoint with its own data, shape, settings and sample
    prompts (RunDir's resume rule: only the budgets and the device may change)."""
    run = RunDir(out_dir)
    run.check_resumable()
    info = run.info()
    if info.get("kind") != "pretrained":
        raise ConfigError(
            f"{run.latest} is not a pretraining checkpoint; cannot resume it with pretrain", field="resume"
        )
    saved = info.get("pretrain") or {}
    train_cfg = TrainConfig.from_dict(run.resumed_train_settings(max_steps, device, max_time))
    model_cfg = ModelConfig.load(run.latest / checkpoint.CONFIG)
    data = run.data if run.data.is_dir() else Path(info["data"])  # a run from raw text keeps its data inside
    return pretrain(
        data,
        run.path,
        model_cfg,
        train_cfg,
        resume=True,
        metrics_path=metrics_path,
        save_dtype=save_dtype,
        sample_prompts=saved.get("sample_prompts", DEFAULT_SAMPLE_PROMPTS),
        sample_tokens=saved.get("sample_tokens", DEFAULT_SAMPLE_TOKENS),
        extra_info={"pretrain": saved} if saved else None,
    )
