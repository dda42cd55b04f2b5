"""The one training loop, shared by pretraining and fine-tuning.

AdamW with weight-decay groups, linear warmup then cosine decay, gradient accumulation, gradient clipping,
bf16 autocast (on CUDA, or asked for on a CPU with bf16 units), optional torch.compile, periodic evaluation,
atomic checkpoints (every ckpt_interval steps and every ckpt_seconds), resume, DDP under torchrun, a time
budget (max_time), and a clean stop on SIGTERM / Ctrl-C (a last checkpoint is written first). Progress goes
to the console and to the run's metrics file (llm/run.py owns its schema).

    train() -> Trainer: restore state -> [train_step -> log -> evaluate -> checkpoint]* -> final event
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from llm.config import TrainConfig
from llm.data.tokenizer import Tokenizer
from llm.device import autocast_dtype, describe, peak_flops, pick_device
from llm.errors import TrainingError
from llm.model import checkpoint
from llm.model.transformer import Transformer, causal_lm_loss
from llm.run import BEST, LATEST, MetricsWriter, RunDir, record_error

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default objective: next-token cross-entropy of model(x) (B, T, V) against y (B, T), -1 ignored."""
    return causal_lm_loss(model(x), y)


class BatchSource(Protocol):
    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eval_batches(self, split: str, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


OnEval = Callable[[Transformer, int, dict[str, float]], dict[str, Any]]
AdapterState = Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]


@dataclass
class TrainHooks:
    """What a kind of run adds to the one loop.

    on_eval(model, step, metrics) returns extra fields to log with an evaluation (samples, bits per byte,
    exact match); adapter_state() the adapter tensors and adapter.json to store instead of the full weights
    (LoRA); loss_fn(model, x, y) the objective, trained and evaluated (the batch source decides what x and y
    hold); save_dtype the dtype of the weights saved in best/ (latest/ keeps the training dtype)."""

    on_eval: OnEval | None = None
    adapter_state: AdapterState | None = None
    loss_fn: LossFn = lm_loss
    save_dtype: torch.dtype | None = None


@dataclass
class TrainResult:
    step: int
    train_loss: float
    best_val_loss: float
    reason: str  # "done", "stopped" (signal), "early_stop" or "time_limit"
    out_dir: Path


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices (linears, embeddings) only; never on norm gains. Frozen params are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda" or None)


def autocast_context(device: torch.device, precision: str = "auto") -> AbstractContextManager:
    amp = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=amp) if amp else nullcontext()


class Distributed:
    """Rank and world size under torchrun; a single process otherwise."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, value: Any) -> list[Any]:
        """value from every rank, in rank order (every rank must call this)."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            # Without it a rank could tear its group down while another was still in the last collective
            # (fine-tuning under torchrun then hung at exit).
            dist.barrier()
            dist.destroy_process_group()


class StopFlag:
    """Set by SIGTERM or SIGINT; the loop finishes its step, checkpoints and returns."""

    def __init__(self):
        self.set = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """Console lines and the run's metrics file; only rank 0 writes."""

    def __init__(self, path: Path | None, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.writer = MetricsWriter(path) if enabled and path is not None else None
        if self.writer is not None:
            if resume_step is None:
                self.writer.start_fresh()
            else:
                self.writer.keep_through(resume_step)

    def write(self, record: dict[str, Any], console: str | None = None) -> None:
        if not self.enabled:
            return
        if console:
            print(console, flush=True)
        if self.writer is not None:
            self.writer.append(record)


def train_step(
    run_model: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: BatchSource,
    step: int,
    grad_accum: int,
    grad_clip: float,
    ddp: Distributed,
    autocast: AbstractContextManager,
    loss_fn: LossFn = lm_loss,
) -> tuple[float, int]:
    """One optimizer step over grad_accum micro-batches (this rank's share of them): forward, loss,
    backward, clip, AdamW. Returns (the mean loss over all ranks, token positions processed by all ranks).
    run_model is model itself, or its compiled or DDP wrapper; loss_fn(run_model, x, y) the objective."""
    assert grad_accum % ddp.world == 0, "grad_accum must be divisible by the number of processes"
    device = ddp.device
    local_accum = grad_accum // ddp.world
    loss_sum, tokens = 0.0, 0
    for i in range(local_accum):
        micro = ddp.rank * local_accum + i  # the global micro-batch index: the same data for any world size
        x, y = batches.train_batch(step, micro)
        sync = i == local_accum - 1 or ddp.world == 1  # DDP averages gradients on the last micro-batch only
        with nullcontext() if sync else run_model.no_sync(), autocast:
            loss = loss_fn(run_model, x.to(device), y.to(device))
            (loss / local_accum).backward()
        loss_sum += loss.item()
        tokens += x.numel() * ddp.world
    mean_loss = ddp.mean(loss_sum / local_accum)
    if math.isfinite(mean_loss):
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, tokens


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: BatchSource,
    count: int,
    ddp: Distributed,
    autocast: AbstractContextManager,
    loss_fn: LossFn = lm_loss,
) -> dict[str, float]:
    """Mean loss on the validation split and on a fixed sample of the training split, over all ranks."""
    was_training = model.training
    model.eval()
    result = {}
    for split, key in (("val", "val_loss"), ("train", "train_eval_loss")):
        losses = []
        for x, y in batches.eval_batches(split, count):
            with autocast:
                losses.append(loss_fn(model, x.to(ddp.device), y.to(ddp.device)).item())
        if losses:
            result[key] = ddp.mean(sum(losses) / len(losses))
    model.train(was_training)
    return result


@dataclass
class TrainState:
    """What carries over between steps and across a resume (saved in trainer_state.pt)."""

    step: int = 0
    tokens_seen: int = 0  # token positions processed (task batches are padded only to their longest row)
    elapsed_before: float = 0.0  # seconds trained by earlier attempts of the run
    best_val: float = float("inf")
    best_score: float = float("inf")  # selection_score() of the best checkpoint (lower is better)
    patience_used: int = 0  # evaluations since the best score


def selection_score(metric: str, metrics: dict[str, float], extra: dict[str, Any]) -> float | None:
    """The number that picks the best checkpoint, lower is better: the validation loss, or minus a value the
    evaluation hook logged (e.g. val_exact, a share in [0, 1]). Equal shares are told apart by the loss,
    weighted so that it never outweighs one row of a share: 1e-4 x (a loss capped at 10) <= 1e-3 < 1/256."""
    val = metrics.get("val_loss")
    if metric == "val_loss":
        return val
    if extra.get(metric) is None:
        return None
    return -float(extra[metric]) + 1e-4 * min(val if val is not None else 10.0, 10.0)


class Trainer:
    """One attempt of a run: set up, loop until the step budget, a stop, early stopping or the time limit."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        batches: BatchSource,
        cfg: TrainConfig,
        *,
        run: RunDir,
        metrics_path: Path,
        resume: bool,
        info: dict[str, Any],
        hooks: TrainHooks,
    ):
        self.model, self.tokenizer, self.batches, self.cfg, self.hooks = model, tokenizer, batches, cfg, hooks
        self.run, self.info, self.metrics_path = run, info, metrics_path
        self.ddp = Distributed(pick_device(cfg.device))
        self.device = self.ddp.device
        if cfg.grad_accum % self.ddp.world:
            raise TrainingError(
                f"{cfg.grad_accum} must be divisible by the {self.ddp.world} processes", field="grad_accum"
            )
        torch.manual_seed(cfg.seed + self.ddp.rank)
        model.to(self.device)
        self.optimizer = make_optimizer(model, cfg, self.device)
        self.state = self._restore() if resume else TrainState()
        self.log = MetricsLog(metrics_path, self.ddp.main, self.state.step if resume else None)
        self.autocast = autocast_context(self.device, cfg.precision)
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        run_model: torch.nn.Module = torch.compile(model) if cfg.compile else model
        if self.ddp.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            run_model = DistributedDataParallel(run_model, device_ids=device_ids)
        self.run_model = run_model
        # MFU only where the peak is well defined: a CPU's peak would be a short matmul timed once, which on a
        # shared machine reads low and gave MFU above 100%; CPU runs log tokens/s alone.
        self.peak = peak_flops(self.device) if self.ddp.main and self.device.type != "cpu" else None
        self.resumed = resume

    def _restore(self) -> TrainState:
        saved = checkpoint.load_trainer_state(self.run.latest)
        self.optimizer.load_state_dict(saved["optimizer"])
        # Each rank's own dropout RNG (a run resumed on another number of processes reuses them in turn).
        rank = self.ddp.rank
        torch.set_rng_state(saved["rng"][rank % len(saved["rng"])])
        if self.device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"][rank % len(saved["cuda_rng"])], self.device)
        tokens_per_step = self.cfg.batch_size * self.model.cfg.context_length * self.cfg.grad_accum
        return TrainState(
            step=saved["step"],
            tokens_seen=saved.get("tokens_seen", saved["step"] * tokens_per_step),
            elapsed_before=saved["elapsed"],
            best_val=saved["best_val"],
            best_score=saved.get("best_score", saved["best_val"]),  # a state from before select_metric
            patience_used=saved["patience_used"],
        )

    def elapsed(self) -> float:
        return self.state.elapsed_before + time.time() - self.start

    # Checkpoints

    def run_info(self, train_loss: float) -> dict[str, Any]:
        s = self.state
        return {
            **self.info,
            "train_config": self.cfg.to_dict(),
            "params": self.model.num_params(),
            "trainable_params": self.trainable,
            "step": s.step,
            "tokens_seen": s.tokens_seen,
            "train_loss": train_loss,
            "best_val_loss": s.best_val if math.isfinite(s.best_val) else None,
            "wall_seconds": round(self.elapsed(), 1),
        }

    def trainer_state(self) -> dict[str, Any]:
        """Optimizer, counters and every rank's RNG states (so a resumed run draws the same dropout masks).
        Every rank must call this; only rank 0 gets the result."""
        rng = self.ddp.gather(torch.get_rng_state())
        cuda_rng = self.ddp.gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None
        s = self.state
        saved = {
            "step": s.step,
            "train_config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "elapsed": self.elapsed(),
            "best_val": s.best_val,
            "best_score": s.best_score,
            "patience_used": s.patience_used,
            "tokens_seen": s.tokens_seen,
            "rng": rng,
        }
        if cuda_rng is not None:
            saved["cuda_rng"] = cuda_rng
        return saved

    def save(self, target: str, train_loss: float, with_state: bool = True) -> None:
        trainer_state = self.trainer_state() if with_state else None
        self.last_save = time.time()  # on every rank: they decide together when the next save is due
        if not self.ddp.main:
            return
        adapter = self.hooks.adapter_state() if self.hooks.adapter_state else None
        info = self.run_info(train_loss)
        # latest/ keeps the training weights as they are, so a resume continues exactly; best/ is for sharing.
        dtype = self.hooks.save_dtype if target == BEST else None
        checkpoint.save_checkpoint(
            self.run.path / target, self.model, self.tokenizer, info, trainer_state, dtype, adapter
        )

    # The loop

    def log_start(self) -> None:
        where, params, s = describe(self.device), self.model.num_params(), self.state
        where += " bf16" if autocast_dtype(self.device, self.cfg.precision) == torch.bfloat16 else " fp32"
        self.log.write(
            {
                "event": "start",
                "step": s.step,
                "device": where,
                "world": self.ddp.world,
                "params": params,
                "trainable": self.trainable,
                "max_steps": self.cfg.max_steps,
            },
            f"device: {where} x{self.ddp.world} | params {params:,} (trainable {self.trainable:,}) | "
            f"{'resuming at' if self.resumed else 'starting at'} step {s.step} of {self.cfg.max_steps}",
        )

    def log_train(self, train_loss: float, lr: float) -> None:
        now = time.time()
        tps = self.tokens_since_log / max(now - self.last_log, 1e-9)
        self.last_log, self.tokens_since_log = now, 0
        mfu = tps * self.model.flops_per_token() / self.peak if self.peak else None
        step = self.state.step
        record = {"step": step, "train_loss": round(train_loss, 5), "lr": lr, "tokens_per_s": round(tps)}
        if mfu is not None:
            record["mfu"] = round(mfu, 4)
        self.log.write(
            {**record, "elapsed": round(self.elapsed(), 1)},
            f"step {step:6d} | loss {train_loss:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s"
            + (f" | mfu {mfu:.1%}" if mfu is not None else ""),
        )

    def evaluate_and_log(self, train_loss: float) -> bool:
        """Evaluate, keep the best checkpoint, log; True when early stopping says the run should end."""
        s, cfg = self.state, self.cfg
        on_eval = self.hooks.on_eval
        metrics = evaluate(self.model, self.batches, cfg.eval_batches, self.ddp, self.autocast, self.hooks.loss_fn)
        extra = on_eval(self.model, s.step, metrics) if (on_eval and self.ddp.main) else {}
        # The hook runs on the main process only: every process decides on its values (e.g. val_exact), so
        # early stopping ends them all at the same step.
        extra = self.ddp.gather(extra)[0]
        val = metrics.get("val_loss")
        if val is not None:
            s.best_val = min(s.best_val, val)
        score = selection_score(cfg.select_metric, metrics, extra)
        improved = score is not None and score < s.best_score
        if improved:
            s.best_score, s.patience_used = score, 0
            if cfg.keep_best:
                self.save(BEST, train_loss, with_state=False)
        elif score is not None:
            s.patience_used += 1
        scores = {k: v for k, v in extra.items() if isinstance(v, float)}  # e.g. val_exact (not the samples)
        text = " | ".join(f"{k} {v:.4f}" for k, v in {**metrics, **scores}.items())
        self.log.write(
            {"step": s.step, **{k: round(v, 5) for k, v in metrics.items()}, **extra},
            f"eval step {s.step} | {text}{' (best)' if improved else ''}",
        )
        return bool(cfg.early_stop_patience) and s.patience_used >= cfg.early_stop_patience

    def diverged(self, train_loss: float) -> TrainingError:
        message = (
            f"the training loss became {train_loss} at step {self.state.step}: the run diverged. Try a lower "
            "learning rate, a smaller gradient clip, or check the data. The last checkpoint is kept."
        )
        return TrainingError(message, kind="diverged")

    def ending(self, stop: StopFlag, early_stop: bool) -> str | None:
        """Why the run ends after this step, if it does (agreed by every rank)."""
        cfg = self.cfg
        if self.ddp.any(stop.set):
            return "stopped"
        if early_stop:
            return "early_stop"
        if cfg.max_time and self.ddp.any(self.elapsed() >= cfg.max_time):
            return "time_limit"
        return "done" if self.state.step >= cfg.max_steps else None

    def checkpoint_due(self) -> bool:
        cfg = self.cfg
        by_time = bool(cfg.ckpt_seconds) and time.time() - self.last_save >= cfg.ckpt_seconds
        return self.state.step % cfg.ckpt_interval == 0 or self.ddp.any(by_time)

    def fit(self) -> TrainResult:
        s, cfg = self.state, self.cfg
        self.log_start()
        self.model.train()
        self.start = self.last_log = self.last_save = time.time()
        self.tokens_since_log = 0
        train_loss, reason = float("nan"), "done" if s.step >= cfg.max_steps else None
        with StopFlag() as stop:
            while reason is None:
                lr = learning_rate(s.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                train_loss, tokens = train_step(
                    self.run_model,
                    self.model,
                    self.optimizer,
                    self.batches,
                    s.step,
                    cfg.grad_accum,
                    cfg.grad_clip,
                    self.ddp,
                    self.autocast,
                    self.hooks.loss_fn,
                )
                if not math.isfinite(train_loss):
                    self.ddp.close()
                    raise self.diverged(train_loss)
                s.step += 1
                s.tokens_seen += tokens
                self.tokens_since_log += tokens
                last = s.step == cfg.max_steps
                if s.step % cfg.log_interval == 0 or last:
                    self.log_train(train_loss, lr)
                early_stop = (s.step % cfg.eval_interval == 0 or last) and self.evaluate_and_log(train_loss)
                reason = self.ending(stop, early_stop)
                if reason is not None or self.checkpoint_due():
                    self.save(LATEST, train_loss)
                    self.log.write({"event": "checkpoint", "step": s.step})
        best = s.best_val if math.isfinite(s.best_val) else None
        self.log.write(
            {"event": reason, "step": s.step, "train_loss": train_loss, "best_val_loss": best},
            f"{reason} at step {s.step}: checkpoint in {self.run.latest}",
        )
        self.ddp.close()
        return TrainResult(s.step, train_loss, s.best_val, reason, self.run.path)


def train(
    model: Transformer,
    tokenizer: Tokenizer,
    batches: BatchSource,
    cfg: TrainConfig,
    *,
    out_dir: str | Path,
    metrics_path: str | Path | None = None,
    resume: bool = False,
    info: dict[str, Any] | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train `model` (weights already loaded, including when resuming) and checkpoint into the run folder
    out_dir (latest/, and best/ when cfg.keep_best); metrics go to metrics_path, by default the run's
    metrics file; info is recorded in each checkpoint. An error during training is recorded in the metrics
    file (with its step) before it is raised. All ranks must call this under torchrun."""
    run = RunDir(out_dir)
    metrics = Path(metrics_path) if metrics_path is not None else run.metrics
    trainer = Trainer(
        model, tokenizer, batches, cfg, run=run, metrics_path=metrics, resume=resume, info=info or {},
        hooks=hooks or TrainHooks(),
    )  # fmt: skip
    try:
        return trainer.fit()
    except Exception as error:
        record_error(metrics, error, trainer.state.step)
        raise
