"""How fast a model of a given shape trains on this device, measured rather than guessed.

A few real training steps (llm.train.trainer.train_step: forward, loss, backward, clip, AdamW, autocast as the
run has it) on random tokens of the real shape, one evaluation batch and a few sampled tokens, timed on the
device with the thread count the run will have. A small model on a GPU is bound by kernel launches, not by
FLOPs, so no FLOPs rate predicts it (25% of a data-sheet peak planned millions of steps for a run that did
thousands); a short measurement does, on a CPU as well.

It takes about a second for the shapes a CPU trains; measurements are cached by shape and settings, as the
studio asks for a plan at each edit of its form.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from llm.config import ModelConfig, SamplingConfig, TrainConfig
from llm.device import check_model_fits, pick_device
from llm.model.generate import generate_ids
from llm.model.transformer import Transformer
from llm.train.trainer import BatchSource, Distributed, autocast_context, make_optimizer, out_of_memory, train_step

STEP_BUDGET_SECONDS = 0.4  # a timed step takes about this long at most: larger batches are timed in part
TIMED_STEPS = 3  # after one untimed warm-up step
TUNING_STEPS = 2  # a fine-tune's own batches, after a warm-up step: a 135M model takes seconds a step on a CPU
SAMPLED_TOKENS = 8


@dataclass(frozen=True)
class Speed:
    """Seconds for one optimizer step, one evaluation batch and one sampled token (batch 1, KV cache)."""

    step_seconds: float
    eval_batch_seconds: float
    token_seconds: float


@contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for a while (None: as they are)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RepeatedBatch:
    """One batch of random tokens on the device, as a trainer batch source (timing does not depend on text)."""

    def __init__(self, vocab_size: int, rows: int, length: int, device: torch.device):
        generator = torch.Generator(device=device).manual_seed(0)  # the global RNG is left alone
        block = torch.randint(0, vocab_size, (rows, length + 1), device=device, generator=generator)
        self.x, self.y = block[:, :-1], block[:, 1:]

    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def wait(device: torch.device) -> float:
    """time.perf_counter() once the device has done what it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def time_steps(model: Transformer, cfg: TrainConfig, rows: int, steps: int, device: torch.device) -> float:
    """Seconds per training step of `rows` windows, over `steps` timed steps after one warm-up step."""
    batch = RepeatedBatch(model.cfg.vocab_size, rows, model.cfg.context_length, device)
    return time_source(model, TrainConfig(**{**cfg.to_dict(), "grad_accum": 1}), batch, steps, device)


def time_source(model: Transformer, cfg: TrainConfig, batches: BatchSource, steps: int, device: torch.device) -> float:
    """Seconds per optimizer step (cfg.grad_accum micro-batches of batches, as a run draws them, and the loss
    read after it, as a run reads it), over `steps` timed steps after one warm-up step (steps 1.. of the run:
    its own batches, their own lengths)."""
    optimizer = make_optimizer(model, cfg, device)
    autocast, alone = autocast_context(device, cfg.precision), Distributed.alone(device)

    def step(index: int) -> None:
        work = train_step(model, model, optimizer, batches, index, cfg.grad_accum, cfg.grad_clip, alone, autocast)
        # The run's one wait on the device a step: without it a GPU's steps overlap the launching of the next,
        # and a launch-bound model is timed faster than its run goes.
        alone.agree(work.loss, 0.0, False)

    step(0)
    start = wait(device)
    for index in range(1, steps + 1):
        step(index)
    return (wait(device) - start) / steps


@torch.no_grad()
def time_forward_and_sampling(
    model: Transformer, cfg: TrainConfig, rows: int, device: torch.device
) -> tuple[float, float]:
    """(seconds for a forward pass of `rows` windows, seconds per token sampled with the KV cache)."""
    model.eval()
    batch = RepeatedBatch(model.cfg.vocab_size, rows, model.cfg.context_length, device)
    with autocast_context(device, cfg.precision):
        start = wait(device)
        model(batch.x)
        forward = wait(device) - start
    sampling = SamplingConfig(SAMPLED_TOKENS, temperature=0.0, seed=0)
    start = time.perf_counter()
    tokens = sum(1 for _ in generate_ids(model, [0], sampling))
    return forward, (wait(device) - start) / tokens


def micro_batch_seconds(model: Transformer, cfg: TrainConfig, device: torch.device) -> tuple[float, int]:
    """(seconds for a step of cfg.batch_size windows, the windows timed at once): the whole batch when a step
    of it takes at most STEP_BUDGET_SECONDS, else as many windows as do, scaled up. (A line through steps of
    one and of a few windows, which would leave out the fixed part of a step, swung by 5x on a busy CPU.)"""
    one = time_steps(model, cfg, 1, 1, device)
    rows = min(cfg.batch_size, max(1, int(STEP_BUDGET_SECONDS / one)))
    timed = one if rows == 1 else time_steps(model, cfg, rows, TIMED_STEPS, device)
    return timed * cfg.batch_size / rows, rows


@functools.lru_cache(maxsize=32)
def _measure(shape: str, batch_size: int, grad_accum: int, precision: str, device: str, threads: int | None) -> Speed:
    cfg = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, precision=precision, device=device)
    target, model_cfg = torch.device(device), ModelConfig.from_dict(json.loads(shape))
    check_model_fits(model_cfg, target, copies=4, what="training")  # weights, gradients, AdamW's two moments
    with thread_count(threads), torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
        try:
            with target:
                model = Transformer(model_cfg)
            micro, rows = micro_batch_seconds(model, cfg, target)
            forward, token = time_forward_and_sampling(model, cfg, rows, target)
        except torch.OutOfMemoryError:
            raise out_of_memory(cfg, target, None) from None
        finally:
            if target.type == "cuda":
                torch.cuda.empty_cache()  # what the measurement held goes back to the run and other processes
    return Speed(micro * grad_accum, forward * batch_size / rows, token)


def measure(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device, threads: int | None = None) -> Speed:
    """The speed of training model_cfg with train_cfg's batch, accumulation and precision on the device, with
    `threads` intra-op threads (None: the process's own), measured once per shape and settings. A batch too
    slow to time whole is timed on fewer windows and scaled (time grows with the windows, except for small
    models, which a whole batch fits). The model is built with random weights on the device itself; the
    global RNG is left as it was. A model whose weights, gradients and AdamW moments exceed the device's memory is
    refused first (ConfigError); a batch that runs out of memory is the memory kind of TrainingError."""
    shape = json.dumps(model_cfg.to_dict(), sort_keys=True)
    return _measure(shape, train_cfg.batch_size, train_cfg.grad_accum, train_cfg.precision, str(device), threads)


_tuning_seconds: dict[str, float] = {}  # tuning_step_seconds by everything that decides a step's time


def tuning_step_seconds(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    batches: BatchSource,
    adapt: Callable[[Transformer], None],
    key: str,
    threads: int | None = None,
) -> float:
    """Seconds per optimizer step of a fine-tune (or preference run), timed on its own first batches (their real
    lengths, padded as the run pads them) with the model as it trains (adapt: LoRA applied, or nothing for a
    full tune), on random weights (the speed does not depend on them): one warm-up step, then TUNING_STEPS.
    key: what decides the time besides the shape and settings (the batches' lengths, LoRA's settings); a
    measurement is cached by it. The model must fit the device (ConfigError), as in measure()."""
    device = pick_device(train_cfg.device)
    shape = json.dumps(model_cfg.to_dict(), sort_keys=True)
    cache_key = json.dumps([shape, train_cfg.to_dict(), key, str(device), threads])
    if cache_key not in _tuning_seconds:
        check_model_fits(model_cfg, device, what="training")
        with thread_count(threads), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                with device:
                    model = Transformer(model_cfg)
                adapt(model)
                model.train()
                _tuning_seconds[cache_key] = time_source(model, train_cfg, batches, TUNING_STEPS, device)
            except torch.OutOfMemoryError:
                raise out_of_memory(train_cfg, device, None) from None
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return _tuning_seconds[cache_key]
