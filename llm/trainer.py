"""The one training loop, shared by pretraining and fine-tuning.

AdamW with weight-decay groups, linear warmup then cosine decay, gradient accumulation, gradient clipping,
bf16 autocast on CUDA, optional torch.compile, periodic evaluation, atomic checkpoints, resume, DDP under
torchrun, and a clean stop on SIGTERM / Ctrl-C (a last checkpoint is written first).

Progress goes to the console and, as one JSON object a line, to a metrics file that the studio reads:
  {"step", "train_loss", "lr", "tokens_per_s", "mfu", "elapsed"}      every log_interval steps
  {"step", "val_loss", "train_eval_loss", ...}                       at each evaluation
  {"event": "start" | "checkpoint" | "stopped" | "done" | "error", ...}
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from llm import checkpoint
from llm.config import TrainConfig
from llm.device import autocast_dtype, describe, peak_flops, pick_device
from llm.model import Transformer, causal_lm_loss
from llm.tokenizer import Tokenizer

METRICS_FILE = "metrics.jsonl"  # a run's metrics, beside its checkpoints unless told otherwise


class TrainingError(RuntimeError):
    pass


class BatchSource(Protocol):
    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eval_batches(self, split: str, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TrainResult:
    step: int
    train_loss: float
    best_val_loss: float
    reason: str  # "done", "stopped" (signal) or "early_stop"
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
            # Without it a rank could tear its group down while another was still in the last collective:
            # fine-tuning runs under torchrun hung at exit about one time in four (0 in 20 with it).
            dist.barrier()
            dist.destroy_process_group()


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a line cut short by a killed run, so that it is dropped."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


class MetricsLog:
    """Console lines and the JSONL metrics file (written by rank 0 only)."""

    def __init__(self, path: Path | None, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None and path.exists():
                # Drop what the interrupted run logged after its last checkpoint: it is about to be redone.
                kept = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= resume_step]
                path.write_text("".join(ln + "\n" for ln in kept))
            elif resume_step is None:
                path.write_text("")

    def write(self, record: dict[str, Any], console: str | None = None) -> None:
        if not self.enabled:
            return
        if console:
            print(console, flush=True)
        if self.path is not None:
            record = {**record, "time": round(time.time(), 3)}
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


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


def train(
    model: Transformer,
    tokenizer: Tokenizer,
    batches: BatchSource,
    cfg: TrainConfig,
    out_dir: str | Path,
    metrics_path: str | Path | None = None,
    resume: bool = False,
    info: dict[str, Any] | None = None,
    adapter_state: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    on_eval: Callable[[Transformer, int, dict[str, float]], dict[str, Any]] | None = None,
    save_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Train `model` (weights already loaded, including when resuming) and checkpoint into out_dir.

    out_dir/latest is the newest checkpoint (with trainer_state.pt), out_dir/best the one with the lowest
    validation loss when cfg.keep_best. adapter_state, when given, returns the adapter tensors and config to
    store instead of the full weights (LoRA). on_eval(model, step, metrics) may return extra fields to log
    with the evaluation's metrics (e.g. sample generations, bits per byte). All ranks must call this under torchrun.
    """
    out_dir = Path(out_dir)
    device = pick_device(cfg.device)
    ddp = Distributed(device)
    device = ddp.device
    if cfg.grad_accum % ddp.world:
        raise TrainingError(f"--grad-accum {cfg.grad_accum} must be divisible by the {ddp.world} processes")
    local_accum = cfg.grad_accum // ddp.world
    torch.manual_seed(cfg.seed + ddp.rank)
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    step, elapsed_before, best_val, patience_used = 0, 0.0, float("inf"), 0
    if resume:
        state = checkpoint.load_trainer_state(checkpoint.resolve(out_dir / "latest"))
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed"]
        best_val, patience_used = state["best_val"], state["patience_used"]
        # Each rank's own dropout RNG (a run resumed on another number of processes reuses them in turn).
        torch.set_rng_state(state["rng"][ddp.rank % len(state["rng"])])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"][ddp.rank % len(state["cuda_rng"])], device)
    log = MetricsLog(Path(metrics_path) if metrics_path else None, ddp.main, step if resume else None)
    amp = autocast_dtype(device)
    autocast = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run_model: torch.nn.Module = torch.compile(model) if cfg.compile else model
    if ddp.world > 1:
        run_model = DistributedDataParallel(run_model, device_ids=[device.index] if device.type == "cuda" else None)
    peak = peak_flops(device) if ddp.main else 1.0
    tokens_per_step = cfg.batch_size * model.cfg.context_length * cfg.grad_accum
    # Token positions actually processed (fine-tuning batches are padded only to their longest sequence).
    tokens_seen = state.get("tokens_seen", step * tokens_per_step) if resume else 0
    tokens_since_log = 0
    log.write(
        {
            "event": "start",
            "step": step,
            "device": describe(device),
            "world": ddp.world,
            "params": model.num_params(),
            "trainable": trainable,
            "max_steps": cfg.max_steps,
        },
        f"device: {describe(device)} x{ddp.world} | params {model.num_params():,} (trainable {trainable:,}) | "
        f"{'resuming at' if resume else 'starting at'} step {step} of {cfg.max_steps}",
    )

    def run_info(train_loss: float) -> dict[str, Any]:
        return {
            **(info or {}),
            "train_config": cfg.to_dict(),
            "params": model.num_params(),
            "trainable_params": trainable,
            "step": step,
            "tokens_seen": tokens_seen,
            "train_loss": train_loss,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "wall_seconds": round(elapsed_before + time.time() - start, 1),
        }

    def save(target: str, train_loss: float, with_state: bool = True) -> None:
        if with_state:  # every rank's RNG state, so that a resumed run draws the same dropout masks
            rng = ddp.gather(torch.get_rng_state())
            cuda_rng = ddp.gather(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
        if not ddp.main:
            return
        trainer_state = None
        if with_state:
            trainer_state = {
                "step": step,
                "train_config": cfg.to_dict(),
                "optimizer": optimizer.state_dict(),
                "elapsed": elapsed_before + time.time() - start,
                "best_val": best_val,
                "patience_used": patience_used,
                "tokens_seen": tokens_seen,
                "rng": rng,
            }
            if cuda_rng is not None:
                trainer_state["cuda_rng"] = cuda_rng
        checkpoint.save_checkpoint(
            out_dir / target,
            model,
            tokenizer,
            run_info(train_loss),
            trainer_state,
            save_dtype,
            adapter_state() if adapter_state else None,
        )

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        result = {}
        for split, key in (("val", "val_loss"), ("train", "train_eval_loss")):
            losses = []
            for x, y in batches.eval_batches(split, cfg.eval_batches):
                with autocast:
                    losses.append(causal_lm_loss(model(x.to(device)), y.to(device)).item())
            if losses:
                result[key] = ddp.mean(sum(losses) / len(losses))
        model.train()
        return result

    model.train()
    start, last_log = time.time(), time.time()
    train_loss, reason = float("nan"), "done"
    with StopFlag() as stop:
        while step < cfg.max_steps:
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, step_tokens = 0.0, 0
            for i in range(local_accum):
                micro = ddp.rank * local_accum + i  # the global micro-batch index: same data for any world size
                x, y = batches.train_batch(step, micro)
                sync = i == local_accum - 1 or ddp.world == 1
                ctx = nullcontext() if sync else run_model.no_sync()
                with ctx, autocast:
                    loss = causal_lm_loss(run_model(x.to(device)), y.to(device))
                    (loss / local_accum).backward()
                loss_sum += loss.item()
                step_tokens += x.numel() * ddp.world
            train_loss = ddp.mean(loss_sum / local_accum)
            if not math.isfinite(train_loss):
                message = (
                    f"the training loss became {train_loss} at step {step}: the run diverged. "
                    "Try a lower --lr, a smaller --grad-clip, or check the data. The last checkpoint is kept."
                )
                log.write({"event": "error", "step": step, "message": message})
                ddp.close()
                raise TrainingError(message)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += step_tokens
            tokens_since_log += step_tokens

            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                now = time.time()
                tps = tokens_since_log / max(now - last_log, 1e-9)
                last_log, tokens_since_log = now, 0
                mfu = tps * model.flops_per_token() / peak
                log.write(
                    {
                        "step": step,
                        "train_loss": round(train_loss, 5),
                        "lr": lr,
                        "tokens_per_s": round(tps),
                        "mfu": round(mfu, 4),
                        "elapsed": round(elapsed_before + now - start, 1),
                    },
                    f"step {step:6d} | loss {train_loss:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | mfu {mfu:.1%}",
                )
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                metrics = evaluate()
                extra = on_eval(model, step, metrics) if (on_eval and ddp.main) else {}
                val = metrics.get("val_loss")
                improved = val is not None and val < best_val
                if improved:
                    best_val, patience_used = val, 0
                    if cfg.keep_best:
                        save("best", train_loss, with_state=False)
                elif val is not None:
                    patience_used += 1
                text = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                log.write(
                    {"step": step, **{k: round(v, 5) for k, v in metrics.items()}, **extra},
                    f"eval step {step} | {text}{' (best)' if improved else ''}",
                )
                if cfg.early_stop_patience and patience_used >= cfg.early_stop_patience:
                    reason = "early_stop"
            stopping = ddp.any(stop.set)
            if step % cfg.ckpt_interval == 0 or step == cfg.max_steps or stopping or reason != "done":
                save("latest", train_loss)
                log.write({"event": "checkpoint", "step": step})
            if stopping:
                reason = "stopped"
            if reason != "done":
                break
    log.write(
        {
            "event": reason if reason != "done" else "done",
            "step": step,
            "train_loss": train_loss,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
        },
        f"{reason} at step {step}: checkpoint in {out_dir / 'latest'}",
    )
    ddp.close()
    return TrainResult(step, train_loss, best_val, reason, out_dir)
