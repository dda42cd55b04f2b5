"""A run folder and its metrics file: the one owner of their layout and schema. Imports no torch, so the
studio can read runs cheaply.

    <run>/latest/          the newest checkpoint, with trainer_state.pt for resuming (llm/model/checkpoint.py owns
                           what a checkpoint holds; its tokenizer files, tokenizer.model or tokenizer.json +
                           tokenizer_config.json and chat_template.jinja, are llm/data/tokenizer's, named in its
                           TOKENIZER_FILES); latest.old/ exists only if a save died mid-rename
    <run>/best/            the checkpoint with the lowest validation loss (fine-tuning; pretraining with keep_best)
    <run>/metrics.jsonl    one JSON record a line, appended by the trainer (schema below)
    <run>/train.log        a studio run's console output
    <run>/data/            a run pretrained from raw text: its tokenizer and token shards, made once
    <run>/<command>.json   the config a studio run was started with (`python -m llm <command> --config`),
                           e.g. finetune.json
    <run>/command.json     the command line of the run's latest attempt
    <model>/benchmarks.json  a model directory's benchmark results (llm/eval/bench.py), by task: kept with the
                           checkpoint they were scored on (a checkpoint saved again starts without them)

Metrics records, each with "time" (Unix seconds):
    train   {"step", "train_loss", "lr", "tokens_per_s" (all ranks), "elapsed" (seconds trained, earlier attempts
             included), "mfu" and "max_memory" (GPU only: one device's MFU, its peak bytes allocated)}
            every log_interval steps
    eval    {"step", "val_loss", "train_eval_loss",
             "val_bits_per_byte" (pretraining: the validation loss per byte of text),
             "samples": [{"prompt", "output"}] (pretraining's samples, tuning's probe answers),
             "val_exact", "val_f1" (fine-tuning that selects by exact match: held-out rows answered),
             "reward_margin", "reward_accuracy" (preference runs: on the held-out pairs)}   (each key optional
            but step)
    event   {"event": "start", "step", "device", "world", "params", "trainable", "max_steps", "max_time"}
            (max_steps 0: a run by the clock, which ends "done" after max_time seconds of training)
            {"event": "checkpoint", "step"}
            {"event": "done" | "stopped" | "early_stop" | "time_limit", "step", "train_loss", "best_val_loss"}
            {"event": "error", "step" (when training had begun), "message", "kind", "field"}   (kind as
             llm.errors: "diverged", "memory", "data", "config", ..., or "internal" for a bug; field: the
             config field the error concerns, or null; written once, by record_error)
            {"event": "answers", "step", "empty", "rows"}   (fine-tuning's end: empty greedy answers to
                                                             training prompts, of rows asked)
    bench   {"step" (choices scored), "elapsed", "remaining" (seconds, or null), "model", "task"}   a benchmark
            job's progress, with a start event whose max_steps is the choices to score, and a done (or stopped)
            event; read_metrics counts them as evals
A resumed run first drops the records after its checkpoint's step (they are about to be redone), so the
file reads as one uninterrupted run with a "start" event for each attempt.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.errors import CheckpointError, ConfigError, LLMError

LATEST, BEST = "latest", "best"
METRICS_FILE, LOG_FILE = "metrics.jsonl", "train.log"
COMMAND_FILE = "command.json"
DATA = "data"
CONFIG, INFO, STATE = "config.json", "info.json", "trainer_state.pt"  # inside a checkpoint (llm/model/checkpoint.py)
BENCHMARKS = "benchmarks.json"  # inside a model directory: its benchmark results (llm/eval/bench.py)
ANSWERS = "answers"  # the event a fine-tune ends with: how many of its answers to training prompts are empty
ENDINGS = ("done", "stopped", "early_stop", "time_limit", "error")  # events that end an attempt
FINISHED = ("done", "early_stop", "time_limit")  # endings after which the run is complete


def is_checkpoint(path: Path) -> bool:
    return (path / CONFIG).is_file()


@dataclass
class Metrics:
    """A run's metrics file, parsed into its record kinds."""

    start: dict[str, Any] = field(default_factory=dict)  # the latest attempt's "start" event
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any] | None:
        """The event that ended the latest attempt, if it was written. A resumed run keeps the earlier
        attempt's records up to its checkpoint (its "stopped" event too), so only events after the last
        "start" count."""
        starts = [i for i, e in enumerate(self.events) if e["event"] == "start"]
        latest = self.events[starts[-1] if starts else 0 :]
        ends = [e for e in latest if e["event"] in ENDINGS]
        return ends[-1] if ends else None

    @property
    def step(self) -> int:
        return max((r["step"] for r in self.train + self.evals + self.events if "step" in r), default=0)

    def empty_answers(self) -> tuple[int, int] | None:
        """(empty, rows) when most of a finished fine-tune's greedy answers to its own training prompts were
        empty (it learnt to stop at once: answers cut away by truncation, say); else None."""
        answers = [e for e in self.events if e["event"] == ANSWERS]
        if not answers or answers[-1]["empty"] <= answers[-1]["rows"] / 2:
            return None
        return answers[-1]["empty"], answers[-1]["rows"]

    def loss_points(self) -> list[tuple[int, float, str]]:
        """(step, loss, curve) with curve "train" or "validation", for plots."""
        points = [(r["step"], float(r["train_loss"]), "train") for r in self.train]
        points += [(r["step"], float(r["val_loss"]), "validation") for r in self.evals if r.get("val_loss") is not None]
        return points


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every whole record; a missing file or a line cut short by a killed writer are normal and skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_metrics(path: Path) -> Metrics:
    metrics = Metrics()
    for record in read_records(path):
        if "event" in record:
            metrics.events.append(record)
            if record["event"] == "start":
                metrics.start = record
        elif "train_loss" in record:
            metrics.train.append(record)
        elif "step" in record:
            metrics.evals.append(record)
    return metrics


class MetricsWriter:
    """Appends records to a metrics file (one process writes it: rank 0)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def start_fresh(self) -> None:
        self.path.write_text("")

    def keep_through(self, step: int) -> None:
        """Drop what an interrupted attempt logged after its last checkpoint (at `step`), and any line a
        killed writer cut short."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time(), 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_number) + "\n")


def torchrun_rank() -> int:
    """This process's rank under torchrun (RANK); 0 for a single process."""
    return int(os.environ.get("RANK", "0"))


def torchrun_world() -> int:
    """How many processes torchrun started for the run (WORLD_SIZE); 1 for a single process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Under torchrun every rank runs the same code; one of them (rank 0) writes a run's files."""
    return torchrun_rank() == 0


def record_error(path: Path, error: BaseException, step: int | None = None) -> None:
    """The error record that ends a run's attempt, written once (by rank 0): an error that the trainer
    recorded with its step is not recorded again by the command that called it. An LLMError keeps its kind
    and field (a front end words them); anything else is "internal", a bug."""
    if getattr(error, "recorded", False) or not is_main_process():
        return
    record: dict[str, Any] = {"event": "error", "message": str(error), "kind": "internal", "field": None}
    if isinstance(error, LLMError):
        record.update(message=error.message, field=error.field, kind=error.kind)
    if step is not None:
        record["step"] = step
    MetricsWriter(path).append(record)
    error.recorded = True  # type: ignore[attr-defined]


def _json_number(value: Any) -> Any:
    """numpy / torch scalars as plain numbers."""
    return value.item() if hasattr(value, "item") else str(value)


def read_json(path: Path) -> Any:
    """A JSON file of a model directory; a CheckpointError naming it when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # malformed JSON, not UTF-8, nested too deeply
        raise CheckpointError(f"{path}: not a readable JSON file ({type(e).__name__})") from None


def read_info(directory: Path) -> dict[str, Any]:
    """A checkpoint's info.json (what made it); {} when there is none."""
    path = directory / INFO
    info = read_json(path) if path.is_file() else {}
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def read_benchmarks(directory: Path) -> dict[str, Any]:
    """A model directory's benchmark results, {"tasks": {task: record}} (llm/eval/bench.py writes them); {}
    when it has none."""
    path = directory / BENCHMARKS
    results = read_json(path) if path.is_file() else {}
    if not isinstance(results, dict) or not isinstance(results.get("tasks", {}), dict):
        raise CheckpointError(f"{path}: expected a JSON object with a 'tasks' object")
    return results


def info_version(directory: Path) -> tuple:
    """(modification time, size) of a checkpoint's info.json, which every save rewrites: a cache of what a
    model directory holds is stale when this changes. () when there is none."""
    path = directory / INFO
    stat = path.stat() if path.is_file() else None
    return (stat.st_mtime_ns, stat.st_size) if stat else ()


def run_of(directory: Path) -> RunDir | None:
    """The run a model directory belongs to: the run folder itself, or the run holding a checkpoint of it
    (latest/, best/); None for a model on its own (a shipped or imported one)."""
    for path in (directory, directory.parent):
        if RunDir(path).metrics.is_file():
            return RunDir(path)
    return None


class RunDir:
    """A run folder: where its files are, whether it can resume, and the settings it continues with."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.best = self.path / BEST  # the best checkpoint (fine-tuning; pretraining with keep_best)
        self.metrics, self.log = self.path / METRICS_FILE, self.path / LOG_FILE
        self.data = self.path / DATA  # a run pretrained from raw text: its tokenizer and shards

    @property
    def latest(self) -> Path:
        """The newest checkpoint (latest.old when a save died between its two renames)."""
        latest = self.path / LATEST
        old = self.path / (LATEST + ".old")
        return old if not is_checkpoint(latest) and is_checkpoint(old) else latest

    def settings(self, command: str = "finetune") -> Path:
        """The config file a run of `python -m llm <command>` is started with."""
        return self.path / f"{command}.json"

    @property
    def command(self) -> Path:
        return self.path / COMMAND_FILE

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints that exist, the one to use first: best, then latest."""
        return [p for p in (self.best, self.latest) if is_checkpoint(p)]

    def resumable(self) -> bool:
        """Does the run have a checkpoint with trainer state to continue from?"""
        return (self.latest / STATE).is_file()

    def has_run(self) -> bool:
        return self.latest.exists()

    def info(self, which: str = LATEST) -> dict[str, Any]:
        """A checkpoint's info.json (what made it); {} when there is none."""
        return read_info(self.latest if which == LATEST else self.path / which)

    def read_metrics(self) -> Metrics:
        return read_metrics(self.metrics)

    def check_new(self) -> None:
        """Refuse to start a new run over an existing one."""
        if self.has_run():
            raise ConfigError(f"{self.path} already holds a run: resume it, or choose another folder", field="out")

    def check_resumable(self) -> None:
        if not self.resumable():
            raise ConfigError(f"{self.path} has no checkpoint to resume from (no {LATEST}/{STATE})", field="resume")

    def resumed_train_settings(
        self, max_steps: int | None = None, device: str | None = None, max_time: float | None = None
    ) -> dict[str, Any]:
        """The one resume rule, for pretraining and fine-tuning alike: the run continues with the TrainConfig
        saved in its latest checkpoint, so its schedule, batches and seed are its own; only the budgets
        (max_steps, max_time) and the device may change, each when given."""
        self.check_resumable()
        saved = dict(self.info()["train_config"])
        changes = {"max_steps": max_steps, "device": device, "max_time": max_time}
        return {**saved, **{k: v for k, v in changes.items() if v is not None}}
