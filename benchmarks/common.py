"""What the benchmark scripts share: the machine's state, a table printer, the JSON report, a training step.

The scripts are run as `python benchmarks/<name>.py`, so each puts the repository root on sys.path before
importing `llm` and this module.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from llm.config import TrainConfig
from llm.device import describe
from llm.model.transformer import Transformer
from llm.train.trainer import Distributed, autocast_context, make_optimizer, train_step


def other_training_runs() -> list[str]:
    """Command lines of running `llm pretrain` processes: figures taken beside one are lower."""
    try:
        found = subprocess.run(["pgrep", "-af", "llm pretrain"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return []
    return [line for line in found.stdout.splitlines() if line.strip()]


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and when a figure was taken, including whether a training run competed for the cores."""
    runs = other_training_runs()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": describe(device),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # runnable processes, 1/5/15 min
        "contention": runs,
    }


def print_machine(info: dict[str, Any]) -> None:
    load = "/".join(f"{x:.1f}" for x in info["load_average"])
    print(f"{info['date']} | {info['device']} | {info['cpu_count']} CPUs | load {load} | torch {info['torch']}")
    if info["contention"]:
        print(f"NOTE: {len(info['contention'])} `llm pretrain` process(es) running: figures are lower than on")
        print("      an idle machine; ratios taken in the same run are still comparable.")
        for line in info["contention"]:
            print(f"      {line[:110]}")
    else:
        print("no `llm pretrain` process found (pgrep -f 'llm pretrain'); the load average shows any other work")


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Right-aligned columns; floats and ints are formatted by the caller."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print(line)
    print(line)


def write_json(path: str | None, report: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {target}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RandomBatches:
    """Random token windows (B, T) as a trainer batch source: speed does not depend on the text."""

    def __init__(self, vocab_size: int, context_length: int, batch_size: int, device: torch.device, seed: int):
        self.shape, self.vocab_size = (batch_size, context_length + 1), vocab_size
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = torch.randint(0, self.vocab_size, self.shape, device=self.device, generator=self.generator)
        return block[:, :-1], block[:, 1:]  # (B, T) inputs, (B, T) next-token targets

    def eval_batches(self, split: str, count: int):
        raise NotImplementedError("benchmarks time training steps only")


def time_training_steps(
    model: Transformer,
    device: torch.device,
    batch_size: int,
    steps: int,
    warmup: int,
    compile: bool = False,
    seed: int = 0,
    precision: str = "auto",
) -> dict[str, float]:
    """Time the trainer's own step (llm.train.trainer.train_step: forward, loss, backward, clip, AdamW) on random
    token batches.

    The first `warmup` steps (allocator, kernel selection, torch.compile) are run but not timed. Returns
    seconds per step and tokens/s over the timed steps, and the last loss (a sanity check: about ln V).
    """
    assert steps > 0 and warmup >= 0
    cfg = TrainConfig(batch_size=batch_size, device=str(device))
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    autocast = autocast_context(device, precision)
    run_model = torch.compile(model) if compile else model
    batches = RandomBatches(model.cfg.vocab_size, model.cfg.context_length, batch_size, device, seed)
    ddp = Distributed(device)

    def step() -> float:
        # The trainer reads the loss once a step too (Distributed.agree), which also waits for the device.
        return train_step(run_model, model, optimizer, batches, 0, 1, cfg.grad_clip, ddp, autocast).loss.item()

    warm_start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    loss = float("nan")
    for _ in range(steps):
        loss = step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "warmup_seconds": start - warm_start,
        "seconds_per_step": seconds / steps,
        "tokens_per_s": batch_size * model.cfg.context_length * steps / seconds,
        "last_loss": loss,
    }
