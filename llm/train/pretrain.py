"""Pretraining: a prepared corpus + a model shape -> a trained checkpoint, through the one trainer.

From raw text in one call (the studio's Pretrain tab, `python -m llm pretrain --config pretrain.json`):

    PretrainConfig -> plan() (sizes, steps, memory and time, before anything is made; the speed is measured
                      by llm.train.speed, the vocabulary and the held-out split checked on the text)
                   -> pretrain_text() -> prepare_text() (tokenizer + shards in <run>/data, once; under
                      torchrun by rank 0 while the others wait) -> pretrain()
    resume(run) continues either kind of run with its own data and settings.

A run with a time budget and no step budget follows the clock (llm.train.trainer): its learning rate decays
over the time, it evaluates every tenth of it and ends when the time is up.

At every evaluation the run also logs, beside the losses, "val_bits_per_byte" and "samples": continuations
of a few fixed prompts, sampled with a fixed seed, so the metrics file shows the model learning to write
(gibberish, then words, then sentences).
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from llm.config import SAMPLE_PROMPTS, ModelConfig, PretrainConfig, SamplingConfig, TrainConfig, preset
from llm.data import corpus
from llm.data.corpus import TokenData, WindowBatches
from llm.data.text import expand_inputs
from llm.data.tokenizer import MIN_VOCAB_SIZE, Tokenizer, holds_tokenizer, train_tokenizer
from llm.device import check_model_fits, describe, model_memory, pick_device
from llm.errors import ConfigError, InputError, TokenizerError
from llm.model import checkpoint
from llm.model.generate import sample_logger
from llm.model.transformer import Transformer
from llm.run import RunDir, is_main_process, torchrun_rank
from llm.train import speed
from llm.train.trainer import TIME_EVALUATIONS, TrainHooks, TrainResult, train

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
        model_cfg = checkpoint.read_config(run.latest)  # the run's own shape wins on resume
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
TEXT_EVAL_BATCHES = 4  # batches per evaluation and split (a book holds out a few thousand tokens)
MAX_WARMUP_STEPS = 100
MAX_LOG_LINES = 500  # a run logs every 10 steps, or less often when it has more steps than 10 x this
BYTES_PER_TOKEN_GUESS = 3.5  # English text under a BPE vocabulary of a few thousand (plan only, before tokenizing)
WAIT_SECONDS = 0.5  # how often a rank above 0 looks for the data rank 0 prepares


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


def evaluation_seconds(cfg: PretrainConfig, train_cfg: TrainConfig, measured: speed.Speed) -> float:
    """Seconds one evaluation takes: its validation and training batches, and the samples of the prompts."""
    batches = 2 * train_cfg.eval_batches * measured.eval_batch_seconds
    return batches + len(cfg.sample_prompts) * cfg.sample_tokens * measured.token_seconds


def expected_steps(cfg: PretrainConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, threads: int | None) -> int:
    """Steps the device is measured to do in cfg.max_time, beside TIME_EVALUATIONS evaluations (threads: the
    run's intra-op threads, as in llm.train.speed.measure)."""
    measured = speed.measure(model_cfg, train_cfg, pick_device(train_cfg.device), threads)
    training = cfg.max_time - TIME_EVALUATIONS * evaluation_seconds(cfg, train_cfg, measured)
    return max(1, int(training / measured.step_seconds))


def training_settings(cfg: PretrainConfig, model_cfg: ModelConfig, threads: int | None = None) -> TrainConfig:
    """The TrainConfig of a run: cfg.train's fields, the budgets, and the rest derived from the number of
    steps: about TIME_EVALUATIONS evaluations with a checkpoint at each, a warmup of a tenth of the run. With
    only a time budget the run follows the clock (max_steps 0: the trainer spreads the evaluations and the
    learning-rate decay over max_time), and the steps that set the warmup and the log interval are those the
    device is measured to do in that time."""
    derived = {"eval_batches": TEXT_EVAL_BATCHES, "keep_best": True, **cfg.train}
    given = TrainConfig.from_dict(derived, "train")  # batch size, accumulation, eval batches: given or default
    by_time = not cfg.max_steps and bool(cfg.max_time)
    steps = cfg.max_steps or (expected_steps(cfg, model_cfg, given, threads) if by_time else TrainConfig().max_steps)
    interval = max(1, steps // TIME_EVALUATIONS)
    schedule = {
        "max_steps": 0 if by_time else steps,
        "max_time": cfg.max_time,
        "eval_interval": interval,
        "ckpt_interval": interval,
        "log_interval": max(1, min(10, interval), steps // MAX_LOG_LINES),
        "warmup_steps": min(MAX_WARMUP_STEPS, steps // 10),
    }
    return TrainConfig.from_dict({**schedule, **derived}, "train")


def text_size(files: list[Path]) -> int | None:
    """Bytes of text in the files; None when one is compressed (its text size is not known before reading)."""
    if any(p.name.endswith((".gz", ".xz")) for p in files):
        return None
    return sum(p.stat().st_size for p in files)


SPLIT_CHECK_BYTES = 4 * 2**20  # plan() reads a text up to this size to check its split and its vocabulary


def file_versions(files: list[Path]) -> tuple:
    """(path, mtime, size) of each file: a cache key that changes when a file does."""
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


@functools.lru_cache(maxsize=8)
def _count_held_out(versions: tuple, val_fraction: float, text_field: str) -> tuple[int, int]:
    """corpus.count_held_out, read once per version of the files: the studio asks for a plan at each edit of
    its form."""
    return corpus.count_held_out([Path(path) for path, _, _ in versions], val_fraction, text_field)


def check_split(cfg: PretrainConfig, files: list[Path], size: int | None) -> None:
    """InputError when prepare() would hold no document out for validation (a text of one paragraph, say),
    found before a run starts: read for a text of known size up to SPLIT_CHECK_BYTES, else left to prepare()."""
    if not cfg.val_fraction or size is None or size > SPLIT_CHECK_BYTES:
        return
    documents, held_out = _count_held_out(file_versions(files), cfg.val_fraction, cfg.text_field)
    if documents and not held_out:
        raise InputError(
            f"{corpus.NO_VALIDATION} (the text has {documents} document{'s' * (documents != 1)}: paragraphs "
            "split at blank lines, or JSONL records)"
        )


@functools.lru_cache(maxsize=8)
def _vocabulary_problem(versions: tuple, vocab_size: int, text_field: str) -> TokenizerError | None:
    """Why a tokenizer of vocab_size cannot be trained on the files (versions: file_versions), or None: one is
    trained (a second or two for a few MB) and thrown away."""
    with tempfile.TemporaryDirectory(prefix="vocabulary-check-") as tmp:
        try:
            train_tokenizer([Path(path) for path, _, _ in versions], tmp, vocab_size, text_field=text_field)
        except TokenizerError as e:
            return e
    return None


def check_vocabulary(cfg: PretrainConfig, files: list[Path], size: int | None) -> None:
    """TokenizerError (naming vocab_size, with the largest size the text allows) when the new tokenizer cannot
    have cfg.vocab_size tokens on this text, found before a run starts; for a text of known size up to
    SPLIT_CHECK_BYTES, else left to the run."""
    if cfg.tokenizer or size is None or size > SPLIT_CHECK_BYTES:
        return
    problem = _vocabulary_problem(file_versions(files), cfg.vocab_size, cfg.text_field)
    if problem is not None and problem.field == "vocab_size":  # other failures are the run's to report
        raise TokenizerError(problem.message, field=problem.field)


def plan(cfg: PretrainConfig, threads: int | None = None) -> dict[str, Any]:
    """What a run from raw text would do, before anything is made: the model's size, tokens per step, steps,
    evaluations, and memory and time estimates on this device (threads: the run's intra-op threads, as in
    llm.train.speed.measure). The text's split and vocabulary are checked first (small texts).

    Time: a few training steps, an evaluation batch and sampled tokens measured on the device (llm.train.speed);
    a run by the clock takes its max_time. Memory: fp32 weights, gradients and AdamW moments, and the
    activations and logits of a batch (not Python and torch overhead)."""
    files = expand_inputs(cfg.inputs)
    size = text_size(files)
    check_split(cfg, files, size)
    check_vocabulary(cfg, files, size)
    mc = model_config(cfg, vocabulary(cfg))
    tc = training_settings(cfg, mc, threads)
    device = pick_device(tc.device)
    params = model_memory(mc).n_parameters
    measured = speed.measure(mc, tc, device, threads)
    steps = tc.max_steps or expected_steps(cfg, mc, tc, threads)
    n_evals = math.ceil(tc.max_steps / tc.eval_interval) if tc.max_steps else TIME_EVALUATIONS
    seconds = steps * measured.step_seconds + n_evals * evaluation_seconds(cfg, tc, measured)
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
        "params": params,
        "batch_size": tc.batch_size,
        "grad_accum": tc.grad_accum,
        "tokens_per_step": tokens_per_step,
        "max_steps": steps,
        "max_time": tc.max_time,
        "steps_from_time": not tc.max_steps,
        "lr": tc.lr,
        "evaluations": n_evals,
        "step_seconds": measured.step_seconds,
        "est_tokens_per_s": round(tokens_per_step / measured.step_seconds),
        "est_epochs": steps * tokens_per_step / train_tokens if train_tokens else None,
        "est_memory_bytes": int(4 * (4 * params + activations + logits)),
        "est_seconds": round(min(seconds, tc.max_time) if tc.max_time else seconds, 1),
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


def wait_for_data(run: RunDir) -> Path:
    """Under torchrun, rank 0 alone makes the tokenizer and the shards (every rank making them raced on the same
    folders); the others wait for its meta.json, written last, when the folder is renamed into place. Should
    rank 0 fail, torchrun ends the others."""
    print(f"rank {torchrun_rank()}: waiting for rank 0 to prepare the data in {run.data}", flush=True)
    while not (run.data / corpus.META).is_file():
        time.sleep(WAIT_SECONDS)
    return run.data


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
    data = prepare_text(cfg, out_dir, progress) if is_main_process() else wait_for_data(run)
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
    model_cfg = checkpoint.read_config(run.latest)
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
