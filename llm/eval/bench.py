"""Standard benchmarks for any model: zero-shot multiple choice scored by log-likelihood, as
lm-evaluation-harness (v0.4, its task versions in llm/data/benchmarks.py) scores it. Each choice of a row is
a request whose score is its log-likelihood (llm/eval/likelihood.py).

acc: the right choice has the highest log-likelihood (the first of equals); acc_norm: the highest
log-likelihood per character of the choice (Python's len, the delimiter not counted: lm-eval's definition;
the issue asked for bytes, which lm-eval calls acc_bytes and does not report). Standard error: lm-eval's,
the sample standard deviation of the 0/1 scores over sqrt(n), i.e. sqrt(p(1-p)/(n-1)); a group (BLiMP) scores
the mean of its subtasks' accuracies, with their pooled standard error.

run_bench scores models on tasks, saves each model's results in its directory (llm.run.BENCHMARKS) and
reports progress with the time left; estimate says what a run will cost before it starts.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.config import BenchConfig, ModelConfig
from llm.data.benchmarks import BenchTask, read_task, task_names
from llm.data.tokenizer import Tokenizer
from llm.device import autocast_dtype, describe, device_rate, model_memory, pick_device
from llm.eval.likelihood import Request, encode_task, input_tokens, loglikelihoods
from llm.model.checkpoint import load_model, resolve
from llm.model.transformer import Transformer
from llm.run import BENCHMARKS, CONFIG, MetricsWriter, read_benchmarks

ESTIMATE_SAMPLE = 256  # requests whose tokens are counted to estimate a task's (per model)
# Scoring's share of the device's matrix-product rate, relative to training's in llm.device.device_rate.
SCORING_EFFICIENCY = 1.0


@dataclass
class Progress:
    """Where a benchmark run is: requests (choices) scored of all models' and tasks', seconds so far, and
    seconds left at the rate so far (None before the first batch)."""

    model: str
    task: str
    done: int
    total: int
    elapsed: float
    remaining: float | None


def row_scores(task: BenchTask, lls: np.ndarray) -> dict[str, np.ndarray]:
    """Each row's 0/1 score under each of the task's metrics, from its choices' log-likelihoods in row order."""
    scores: dict[str, list[float]] = {metric: [] for metric in task.spec.metrics}
    start = 0
    for row in task.rows:
        ll = lls[start : start + len(row.pairs)]
        start += len(row.pairs)
        scores["acc"].append(float(np.argmax(ll) == row.label))
        if "acc_norm" in scores:
            scores["acc_norm"].append(float(np.argmax(ll / np.array(row.lengths, dtype=float)) == row.label))
    assert start == len(lls), "a log-likelihood for every choice"
    return {metric: np.array(values) for metric, values in scores.items()}


def mean_stderr(values: np.ndarray) -> float | None:
    """lm-eval's standard error of a mean: sample standard deviation / sqrt(n); None for fewer than 2 values."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def pooled_stderr(stderrs: list[float | None], sizes: list[int]) -> float | None:
    """lm-eval's standard error of a group's mean of subtask means (pooled_sample_stderr)."""
    if any(s is None for s in stderrs) or sum(sizes) <= len(sizes):
        return None
    pooled = sum((n - 1) * s**2 * n for n, s in zip(sizes, stderrs, strict=True)) / (sum(sizes) - len(sizes))
    return float(math.sqrt(pooled / sum(sizes)))


def metric_values(scores: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict[str, float | None]:
    """{metric: mean, metric_stderr: its standard error} over all rows, or over the rows a mask picks."""
    values: dict[str, float | None] = {}
    for metric, row_values in scores.items():
        picked = row_values if rows is None else row_values[rows]
        values[metric], values[f"{metric}_stderr"] = float(picked.mean()), mean_stderr(picked)
    return values


def summarise(task: BenchTask, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """{metrics: {metric, metric_stderr}, subtasks: {name: {rows, metric, metric_stderr}}}. A group's metric is
    the unweighted mean of its subtasks' (lm-eval's weight_by_size False), with their pooled standard error."""
    if not task.subtasks:
        return {"metrics": metric_values(scores), "subtasks": {}}
    subtasks = {}
    for name in task.subtasks:
        rows = np.array([r.subtask == name for r in task.rows])
        subtasks[name] = {"rows": int(rows.sum()), **metric_values(scores, rows)}
    sizes = [s["rows"] for s in subtasks.values()]
    metrics: dict[str, float | None] = {}
    for metric in scores:
        metrics[metric] = float(np.mean([s[metric] for s in subtasks.values()]))
        metrics[f"{metric}_stderr"] = pooled_stderr([s[f"{metric}_stderr"] for s in subtasks.values()], sizes)
    return {"metrics": metrics, "subtasks": subtasks}


def task_record(task: BenchTask, summary: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """What a model's results file keeps of one task: the definition, the rows used, the scores, the settings."""
    return {
        "version": task.spec.version,
        "file": task.spec.file,
        "sha256": task.sha256,
        "split": task.spec.split,
        "rows": len(task.rows),
        "rows_in_file": task.rows_in_file,
        "selection": selection(task),
        "chance": task.chance,
        "headline": task.spec.headline,
        **summary,
        "settings": settings,
        "time": round(time.time(), 3),
    }


def selection(task: BenchTask) -> str:
    if not task.limit:
        return "all rows"
    return f"the first {task.limit} rows" + (" of each subtask" if task.subtasks else "")


def save_results(directory: Path, records: dict[str, dict[str, Any]]) -> Path:
    """Merge task records into a model directory's results file (a task scored again replaces its record),
    written whole under a temporary name, then renamed."""
    path = directory / BENCHMARKS
    results = read_benchmarks(directory)
    results["tasks"] = {**results.get("tasks", {}), **records}
    tmp = path.with_name(f".{BENCHMARKS}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)
    return path


def forward_flops(cfg: ModelConfig, tokens: float) -> float:
    """FLOPs of a forward pass per token of a sequence of `tokens` tokens: 2 per weight it is multiplied by
    (a tied embedding is the LM head, counted once; an untied input embedding is a lookup) and attention's
    4 x layers x width per earlier position (half the sequence on average)."""
    params = model_memory(cfg).n_parameters
    compute = params if cfg.tie_embeddings else params - cfg.vocab_size * cfg.d_model
    return 2 * compute + 4 * cfg.n_layer * cfg.d_model * tokens / 2


def estimate(cfg: BenchConfig, tasks: list[BenchTask], threads: int | None = None) -> dict[str, Any]:
    """A run's rough cost, by arithmetic, before anything is loaded but each model's config and tokenizer:
    {requests, tokens, seconds, device}. Tokens: the characters of the rows' requests times the model's tokens
    per character on an evenly spread sample of rows; seconds: their forward FLOPs over the rate this device
    reaches now (llm.device.device_rate, scaled by SCORING_EFFICIENCY; on a CPU, for a process with `threads`
    threads when given: the studio's job gets fewer than the studio measures with)."""
    device = pick_device(cfg.device)
    requests, tokens, flops = 0, 0.0, 0.0
    for model in cfg.models:
        directory = resolve(model)
        model_cfg, tokenizer = ModelConfig.load(directory / CONFIG), Tokenizer.load(directory)
        for task in tasks:
            texts = [c + x for row in task.rows for c, x in row.pairs]
            sample = texts[:: max(1, len(texts) // ESTIMATE_SAMPLE)]
            per_char = sum(len(tokenizer.encode(t)) for t in sample) / max(1, sum(len(t) for t in sample))
            task_tokens = per_char * sum(len(t) for t in texts)
            requests, tokens = requests + len(texts), tokens + task_tokens
            flops += task_tokens * forward_flops(model_cfg, task_tokens / max(1, len(texts)))
    rate = device_rate(device.type) * SCORING_EFFICIENCY
    if device.type == "cpu" and threads:
        rate *= threads / torch.get_num_threads()
    seconds = flops / rate
    return {"requests": requests, "tokens": round(tokens), "seconds": seconds, "device": describe(device)}


def settings_of(cfg: BenchConfig, device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    precision = {None: "fp32", torch.bfloat16: "bf16"}.get(amp, str(amp))
    return {"device": describe(device), "precision": precision, "batch_tokens": cfg.batch_tokens, "shots": 0}


class Tracker:
    """Counts what a run has scored, tells progress() after each batch, and writes a studio job's progress
    records (every 2 seconds at most) into its metrics file. The time left is counted in tokens, as requests
    differ in length from task to task (HellaSwag's are five times BLiMP's); a model not encoded yet is taken
    to have as many tokens as those encoded so far."""

    def __init__(self, total: int, models: int, metrics_path: str | Path | None, progress: Callable | None):
        self.total, self.models, self.progress = total, models, progress
        self.done = self.tokens_done = self.tokens_known = self.models_known = 0
        self.start, self.last_record = time.perf_counter(), -math.inf
        self.writer = MetricsWriter(Path(metrics_path)) if metrics_path else None

    def begin(self, device: str) -> None:
        if self.writer:
            self.writer.start_fresh()
            self.writer.append({"event": "start", "step": 0, "device": device, "max_steps": self.total})

    def add_model(self, tokens: int) -> None:
        """A model's requests are encoded: its tokens join the total."""
        self.tokens_known, self.models_known = self.tokens_known + tokens, self.models_known + 1

    def remaining(self, elapsed: float) -> float | None:
        if not self.tokens_done:
            return None
        tokens_total = self.tokens_known / self.models_known * self.models
        return elapsed / self.tokens_done * max(0.0, tokens_total - self.tokens_done)

    def tick(self, model: str, task: str, requests: int, tokens: int) -> None:
        self.done, self.tokens_done = self.done + requests, self.tokens_done + tokens
        now = time.perf_counter() - self.start
        left = self.remaining(now)
        if self.progress:
            self.progress(Progress(model, task, self.done, self.total, now, left))
        if self.writer and (now - self.last_record >= 2 or self.done == self.total):
            record = {"step": self.done, "elapsed": round(now, 2), "remaining": left and round(left, 1)}
            self.writer.append(record | {"model": model, "task": task})
            self.last_record = now

    def end(self, event: str = "done") -> None:
        if self.writer:
            self.writer.append({"event": event, "step": self.done})


def score_task(
    model: Transformer, task: BenchTask, requests: list[Request], cfg: BenchConfig, amp: torch.dtype | None, tick
) -> dict[str, Any]:
    """One task's record for one model (see task_record), from its encoded requests; tick(requests, tokens)
    after each batch."""
    started = time.perf_counter()
    lls = loglikelihoods(model, requests, cfg.batch_tokens, amp, tick)
    settings = settings_of(cfg, next(model.parameters()).device, amp)
    settings["seconds"] = round(time.perf_counter() - started, 2)
    return task_record(task, summarise(task, row_scores(task, lls)), settings)


def run_bench(
    cfg: BenchConfig, metrics_path: str | Path | None = None, progress: Callable[[Progress], None] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Score every model on every task: {model: {task: record}} (see task_record). Each model's records go
    into its directory (cfg.save_results) as each task ends. metrics_path: a run folder's metrics file for a
    studio job (a start event with max_steps = the requests to score, progress records, a done event)."""
    tasks = [read_task(name, cfg.limit) for name in task_names(cfg.tasks)]
    directories = [resolve(m) for m in cfg.models]  # a clear error for a missing model before any work
    device = pick_device(cfg.device)
    amp = autocast_dtype(device, cfg.precision)
    total = len(directories) * sum(len(r.pairs) for t in tasks for r in t.rows)
    tracker = Tracker(total, len(directories), metrics_path, progress)
    tracker.begin(describe(device))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for model_dir, directory in zip(cfg.models, directories, strict=True):
            model, tokenizer, _ = load_model(directory, device)
            encoded = [encode_task(tokenizer, task) for task in tasks]
            tracker.add_model(sum(input_tokens(r, model.cfg.context_length) for rs in encoded for r in rs))
            results[model_dir] = {}
            for task, requests in zip(tasks, encoded, strict=True):
                tick = functools.partial(tracker.tick, model_dir, task.spec.name)
                results[model_dir][task.spec.name] = record = score_task(model, task, requests, cfg, amp, tick)
                if cfg.save_results:
                    save_results(directory, {task.spec.name: record})
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI raises it: the tasks that ended are saved
        tracker.end("stopped")
        raise
    tracker.end()
    return results


class ProgressLine:
    """A progress callback that prints where a run is, with the time left, every few seconds."""

    def __init__(self, every: float = 5.0):
        self.every, self.last, self.where = every, -math.inf, ("", "")

    def __call__(self, p: Progress) -> None:
        if p.elapsed - self.last < self.every and (p.model, p.task) == self.where and p.done < p.total:
            return
        self.last, self.where = p.elapsed, (p.model, p.task)
        left = f", about {p.remaining:.0f} s left" if p.remaining is not None else ""
        print(
            f"{p.model} {p.task}: {p.done:,} of {p.total:,} choices scored ({p.done / p.total:.0%}), "
            f"{p.elapsed:.0f} s{left}",
            flush=True,
        )


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The results as a text table: a line per model and task, each metric with its standard error."""
    lines = [f"{'model':<28} {'task':<14} {'rows':>7}  {'acc':<16} {'acc_norm':<16} chance"]
    for model, tasks in results.items():
        for name, record in tasks.items():
            metrics = record["metrics"]
            cells = [
                f"{metrics[m]:.4f} ± {metrics[m + '_stderr'] or 0:.4f}" if m in metrics else "-"
                for m in ("acc", "acc_norm")
            ]
            lines.append(
                f"{model:<28} {name:<14} {record['rows']:>7,}  {cells[0]:<16} {cells[1]:<16} {record['chance']:.3f}"
            )
    return "\n".join(lines)
