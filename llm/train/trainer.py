"""The one training loop, shared by pretraining and fine-tuning.

AdamW with weight-decay groups, linear warmup then cosine decay, gradient accumulation, gradient clipping,
bf16 autocast (on CUDA, or asked for on a CPU with bf16 units), optional torch.compile, periodic evaluation,
atomic checkpoints (every ckpt_interval steps and every ckpt_seconds), resume, DDP under torchrun, a time
budget (max_time), and a clean stop on SIGTERM / Ctrl-C (a last checkpoint is written first). Progress goes
to the console and to the run's metrics file (llm/run.py owns its schema).

A run with a time budget and no step budget (max_steps 0) follows the clock: its learning rate decays over
max_time seconds of training, and it evaluates and checkpoints every max_time / TIME_EVALUATIONS seconds, the
last time when the time is up (its planned end: "done").

The device is never waited on inside a step: losses stay on the device, batches are copied from pinned
memory without blocking, and each step ends with one agreement (Distributed.agree: one all-reduce under DDP,
one read of the device) on the loss, the clock and a stop request, from which every rank takes the same
decisions (learning rate, evaluation, checkpoint, end).

    train() -> Trainer: restore state -> [train_step -> agree -> log -> evaluate -> checkpoint]* -> final event
"""

from __future__ import annotations

import math
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
from llm.run import BEST, LATEST, MetricsWriter, RunDir, record_error, torchrun_rank, torchrun_world

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
TIME_EVALUATIONS = 10  # evaluations (each with a checkpoint) of a run that lasts max_time with no step budget


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


def learning_rate(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to min_lr at the end of the run: at
    max_steps, or, for a run with no step budget (max_steps 0), at max_time seconds of training (elapsed: the
    seconds trained so far). A run by the clock takes the lower of the warmup and the decay, so the learning
    rate joins the cosine wherever the warmup ends on it."""
    warmup = cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else cfg.lr
    if cfg.max_steps:
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    else:
        progress = elapsed / cfg.max_time
    progress = min(max(progress, 0.0), 1.0)
    decay = cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    return min(warmup, decay)


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


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t on the device. From the CPU to a GPU through pinned memory, without waiting: a copy from pageable
    memory may first wait for everything queued on the GPU."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Distributed:
    """Rank and world size under torchrun; a single process otherwise."""

    def __init__(self, device: torch.device):
        self.world = torchrun_world()
        self.rank = torchrun_rank()
        self.device = device  # under torchrun, llm.device.pick_device gives each rank its own GPU (LOCAL_RANK)
        if self.world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @classmethod
    def alone(cls, device: torch.device) -> Distributed:
        """A single process on the device, whatever torchrun says (for work outside the run, e.g. timing)."""
        single = cls.__new__(cls)
        single.world, single.rank, single.device = 1, 0, device
        return single

    @property
    def main(self) -> bool:
        return self.rank == 0

    def total(self, values: list[torch.Tensor | float]) -> list[float]:
        """values (scalars: tensors on the device, or numbers) summed over all ranks, read back to the host:
        under DDP one all-reduce and one wait on the device for them all; alone, one read per tensor."""
        if self.world == 1:
            return [v.item() if isinstance(v, torch.Tensor) else float(v) for v in values]
        dtype = torch.float64  # DDP runs on CPUs (gloo) and GPUs (NCCL), which both have it
        t = torch.stack(
            [
                v.detach().reshape(()).to(dtype)
                if isinstance(v, torch.Tensor)
                else to_device(torch.tensor(v, dtype=dtype), self.device)
                for v in values
            ]
        )
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, loss: torch.Tensor, elapsed: float, stop: bool) -> tuple[float, float, bool]:
        """What every rank goes by after a step, from one total(): the mean loss over the ranks, their mean
        training time, and whether any was asked to stop."""
        loss_sum, elapsed_sum, stops = self.total([loss, elapsed, float(stop)])
        return loss_sum / self.world, elapsed_sum / self.world, stops > 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (every rank must call this)."""
        if self.world == 1:
            return value
        values = [value]
        dist.broadcast_object_list(values, src=0)
        return values[0]

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


@dataclass
class StepWork:
    """What one rank did in a step. The loss stays on the device: reading it would wait for the step to end."""

    loss: torch.Tensor  # this rank's mean loss over its micro-batches, a scalar on the device
    tokens: int  # token positions this rank processed
    flops: float  # their training FLOPs, each batch at its own length (Transformer.flops_per_token)


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
) -> StepWork:
    """One optimizer step over grad_accum micro-batches (this rank's share of them): forward, loss,
    backward, clip, AdamW, without waiting for the device. A non-finite loss is seen after the step (in
    Distributed.agree), and the run then ends without saving what the step did. run_model is model itself,
    or its compiled or DDP wrapper; loss_fn(run_model, x, y) the objective."""
    assert grad_accum % ddp.world == 0, "grad_accum must be divisible by the number of processes"
    device = ddp.device
    local_accum = grad_accum // ddp.world
    loss_sum, tokens, flops = torch.zeros((), device=device), 0, 0.0
    for i in range(local_accum):
        micro = ddp.rank * local_accum + i  # the global micro-batch index: the same data for any world size
        x, y = batches.train_batch(step, micro)
        sync = i == local_accum - 1 or ddp.world == 1  # DDP averages gradients on the last micro-batch only
        with nullcontext() if sync else run_model.no_sync(), autocast:
            loss = loss_fn(run_model, to_device(x, device), to_device(y, device))
            (loss / local_accum).backward()
        loss_sum += loss.detach().float()
        tokens += x.numel()
        flops += x.numel() * model.flops_per_token(x.size(1))
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepWork(loss_sum / local_accum, tokens, flops)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: BatchSource,
    count: int,
    ddp: Distributed,
    autocast: AbstractContextManager,
    loss_fn: LossFn = lm_loss,
) -> dict[str, float]:
    """Mean loss on the validation split and on a fixed sample of the training split. Under DDP each rank
    scores every world-th batch, and the sums meet in one Distributed.total."""
    was_training = model.training
    model.eval()
    sums: list[torch.Tensor | float] = []
    for split in ("val", "train"):
        total, n = torch.zeros((), device=ddp.device), 0
        for i, (x, y) in enumerate(batches.eval_batches(split, count)):
            if i % ddp.world == ddp.rank:
                with autocast:
                    total += loss_fn(model, to_device(x, ddp.device), to_device(y, ddp.device)).float()
                n += 1
        sums += [total, n]
    val_sum, val_n, train_sum, train_n = ddp.total(sums)
    model.train(was_training)
    result = {"val_loss": val_sum / val_n} if val_n else {}
    return result | ({"train_eval_loss": train_sum / train_n} if train_n else {})


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
        self.model, self.tokenizer, self.batches, self.hooks = model, tokenizer, batches, hooks
        self.run, self.info, self.metrics_path = run, info, metrics_path
        self.ddp = Distributed(pick_device(cfg.device))
        self.device = self.ddp.device
        # Rank 0's settings on every rank: settings derived from a speed measured on each rank (a pretraining
        # plan's warmup) could differ, and ranks on different schedules would drift apart.
        self.cfg = cfg = self.ddp.broadcast(cfg)
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
            # The only buffers are the rotary tables, the same on every rank: no need to send them each forward.
            run_model = DistributedDataParallel(run_model, device_ids=device_ids, forward_sync_buffers=False)
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
        """Seconds trained by this run, earlier attempts included, as this rank's clock reads now (the
        decisions go by self.clock, the ranks' agreed reading at the end of the last step)."""
        return self.state.elapsed_before + time.time() - self.start

    @property
    def by_time(self) -> bool:
        """A run that lasts max_time with no step budget: its schedule, evaluations and checkpoints follow the
        clock."""
        return not self.cfg.max_steps

    def next_evaluation(self) -> float:
        """When (self.clock) a run by the clock evaluates next: at the next multiple of max_time/TIME_EVALUATIONS."""
        interval = self.cfg.max_time / TIME_EVALUATIONS
        return (math.floor(self.clock / interval + 1e-9) + 1) * interval

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
        self.saved_at = self.clock  # on every rank, from the agreed clock: they decide together when to save next
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
                "max_time": self.cfg.max_time,
            },
            f"device: {where} x{self.ddp.world} | params {params:,} (trainable {self.trainable:,}) | "
            f"{'resuming at' if self.resumed else 'starting at'} step {s.step} of "
            + (f"{self.cfg.max_time:g} s of training" if self.by_time else f"{self.cfg.max_steps}"),
        )

    def log_train(self, train_loss: float, lr: float) -> None:
        now = time.time()
        seconds = max(now - self.last_log, 1e-9)
        tps = self.tokens_since_log / seconds  # all ranks' tokens
        # MFU of this rank's device: the FLOPs of its own tokens (each batch at its length) over one device's peak.
        mfu = self.flops_since_log / seconds / self.peak if self.peak else None
        self.last_log, self.tokens_since_log, self.flops_since_log = now, 0, 0.0
        step = self.state.step
        record = {"step": step, "train_loss": round(train_loss, 5), "lr": lr, "tokens_per_s": round(tps)}
        if mfu is not None:
            record["mfu"] = round(mfu, 4)
        if self.device.type == "cuda":  # the allocator's own count: no wait on the device
            record["max_memory"] = torch.cuda.max_memory_allocated(self.device)
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

    def ending(self, stop: bool, early_stop: bool) -> str | None:
        """Why the run ends after this step, if it does (from agreed values: the same on every rank)."""
        cfg = self.cfg
        if stop:
            return "stopped"
        if early_stop:
            return "early_stop"
        if cfg.max_time and self.clock >= cfg.max_time:
            return "done" if self.by_time else "time_limit"  # a run by the clock ends as planned
        return "done" if cfg.max_steps and self.state.step >= cfg.max_steps else None

    def evaluation_due(self, last: bool) -> bool:
        if not self.by_time:
            return self.state.step % self.cfg.eval_interval == 0 or last
        if self.clock < self.next_eval and not last:
            return False
        self.next_eval = self.next_evaluation()
        return True

    def checkpoint_due(self, evaluated: bool) -> bool:
        """Every ckpt_interval steps (a run by the clock: at each evaluation), or ckpt_seconds after the last save."""
        cfg = self.cfg
        by_seconds = bool(cfg.ckpt_seconds) and self.clock - self.saved_at >= cfg.ckpt_seconds
        return by_seconds or (evaluated if self.by_time else self.state.step % cfg.ckpt_interval == 0)

    def advance(self, stop: StopFlag) -> tuple[float, str | None]:
        """One step and what follows it (a log line, an evaluation, a checkpoint); returns (the step's loss, why
        the run ends now or None). The step's one wait on the device is Distributed.agree."""
        s, cfg = self.state, self.cfg
        lr = learning_rate(s.step, cfg, self.clock)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        work = train_step(
            self.run_model, self.model, self.optimizer, self.batches, s.step, cfg.grad_accum, cfg.grad_clip,
            self.ddp, self.autocast, self.hooks.loss_fn,
        )  # fmt: skip
        train_loss, self.clock, stopping = self.ddp.agree(work.loss, self.elapsed(), stop.set)
        if not math.isfinite(train_loss):
            self.close()
            raise self.diverged(train_loss)
        s.step += 1
        s.tokens_seen += work.tokens * self.ddp.world
        self.tokens_since_log += work.tokens * self.ddp.world
        self.flops_since_log += work.flops
        last = s.step == cfg.max_steps or (self.by_time and self.clock >= cfg.max_time)
        if s.step % cfg.log_interval == 0 or last:
            self.log_train(train_loss, lr)
        evaluated = self.evaluation_due(last)
        reason = self.ending(stopping, evaluated and self.evaluate_and_log(train_loss))
        if reason is not None or self.checkpoint_due(evaluated):
            self.save(LATEST, train_loss)
            self.log.write({"event": "checkpoint", "step": s.step})
        return train_loss, reason

    def close(self) -> None:
        """This rank's part in the run ends. The DDP wrapper goes first: it holds the process group, which is
        then torn down inside Distributed.close, right after every rank has passed its barrier, and not whenever
        Python frees the trainer."""
        self.run_model = self.model
        self.ddp.close()

    def fit(self) -> TrainResult:
        s = self.state
        self.log_start()
        self.model.train()
        self.start = self.last_log = time.time()
        self.clock = self.saved_at = s.elapsed_before
        self.next_eval = self.next_evaluation() if self.by_time else math.inf
        self.tokens_since_log, self.flops_since_log = 0, 0.0
        train_loss, reason = float("nan"), self.ending(False, False)
        with StopFlag() as stop:
            while reason is None:
                train_loss, reason = self.advance(stop)
        best = s.best_val if math.isfinite(s.best_val) else None
        self.log.write(
            {"event": reason, "step": s.step, "train_loss": train_loss, "best_val_loss": best},
            f"{reason} at step {s.step}: checkpoint in {self.run.latest}",
        )
        self.close()
        return TrainResult(s.step, train_loss, s.best_val, reason, self.run.path)


def out_of_memory(cfg: TrainConfig, device: torch.device, step: int | None) -> TrainingError:
    """The error for a device that ran out of memory (torch.OutOfMemoryError): the memory kind, naming the
    batch size, the setting that most often fixes it."""
    at = f" at step {step}" if step is not None else ""
    return TrainingError(
        f"{cfg.batch_size} does not fit in the memory of {describe(device)}{at} with this model: choose a smaller "
        "batch size (a larger grad_accum keeps the examples per step), a smaller model or a shorter context",
        field="batch_size",
        kind="memory",
    )


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
    trainer = None
    try:
        trainer = Trainer(
            model, tokenizer, batches, cfg, run=run, metrics_path=metrics, resume=resume, info=info or {},
            hooks=hooks or TrainHooks(),
        )  # fmt: skip
        return trainer.fit()
    except torch.OutOfMemoryError:
        step = trainer.state.step if trainer else None
        error = out_of_memory(cfg, trainer.device if trainer else pick_device(cfg.device), step)
        record_error(metrics, error, step)
        raise error from None
    except Exception as error:
        record_error(metrics, error, trainer.state.step if trainer else None)
        raise
