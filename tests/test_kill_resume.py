"""SIGKILL at random moments, inside checkpoint writes too: a run is resumable after every kill, leaves no
temporary checkpoint folder behind after its next save, and ends with the curve of an uninterrupted run."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from llm_cli import loss_curve, read_metrics, run_llm, start_llm, train_steps
from test_finetune import favourites_csv

from llm.run import RunDir

KILLS_PER_RUN = 5
STEPS = 40


def pretrain_args(data_dir: Path, out: Path) -> list:
    return ["pretrain", "--data", data_dir, "--out", out, "--preset", "tiny", "--context-length", "32",
            "--batch-size", "4", "--max-steps", STEPS, "--warmup-steps", "4", "--lr", "3e-3", "--log-interval", "1",
            "--eval-interval", "10", "--eval-batches", "2", "--ckpt-interval", "2", "--seed", "3", "--device", "cpu"]  # fmt: skip


def finetune_args(base: Path, data: Path, out: Path) -> list:
    # 36 training rows in batches of 4: 9 steps an epoch, an evaluation and a checkpoint at every step.
    return ["finetune", "--base", base, "--data", data, "--out", out, "--max-steps", STEPS, "--batch-size", "4",
            "--val-fraction", "0.25", "--evals-per-epoch", "9", "--lora-rank", "4", "--early-stop-patience", "0",
            "--seed", "3", "--device", "cpu"]  # fmt: skip


def temporary_folders(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp-" in p.name)


def kill_at_a_random_moment(args: list, run: Path, rng: random.Random, inside_a_save: bool) -> bool:
    """Start (or resume) the run and SIGKILL it: as soon as a checkpoint is being written (inside_a_save),
    else after a random delay once it has a checkpoint. False if the run finished before the kill."""
    proc = start_llm(*args)
    deadline, delay = time.time() + 120, rng.uniform(0.0, 1.5)
    armed = None
    while time.time() < deadline and proc.poll() is None:
        if not armed and RunDir(run).resumable():
            armed = time.time() + delay
        writing = run.is_dir() and temporary_folders(run)
        if armed and ((inside_a_save and writing) or (not inside_a_save and time.time() >= armed)):
            proc.kill()
            break
        time.sleep(0.002)
    code = proc.wait(60)
    assert code in (0, -signal.SIGKILL), proc.stderr.read()
    return code == -signal.SIGKILL


def kill_repeatedly_then_finish(args: list, run: Path, seed: int) -> int:
    rng, kills = random.Random(seed), 0
    while kills < KILLS_PER_RUN:
        resume = ["--resume"] if RunDir(run).resumable() else []
        if not kill_at_a_random_moment([*args, *resume], run, rng, inside_a_save=kills % 2 == 0):
            break  # finished first: a shorter run than planned would still have to match below
        kills += 1
        assert RunDir(run).resumable(), f"not resumable after kill {kills}"
    finished = run_llm(*args, "--resume")
    assert finished.returncode == 0, finished.stderr
    assert temporary_folders(run) == [] and not (run / "latest.old").exists(), "a killed save left its folder"
    return kills


def assert_same_curve(run: Path, reference: Path) -> None:
    records, expected = read_metrics(run / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert train_steps(records) == list(range(1, STEPS + 1)), "every step logged once"
    assert loss_curve(records) == pytest.approx(loss_curve(expected), abs=1e-6)
    assert [r["event"] for r in records if r.get("event") in ("done", "stopped", "error")][-1] == "done"


@pytest.mark.slow
def test_pretraining_survives_random_kills(tmp_path, data_dir):
    reference = tmp_path / "reference"
    assert run_llm(*pretrain_args(data_dir, reference)).returncode == 0
    run = tmp_path / "run"
    assert kill_repeatedly_then_finish(pretrain_args(data_dir, run), run, seed=1) == KILLS_PER_RUN
    assert_same_curve(run, reference)


@pytest.mark.slow
def test_finetuning_survives_random_kills(tmp_path, tiny_model_dir):
    data = favourites_csv(tmp_path / "favourites.csv")
    reference = tmp_path / "reference"
    assert run_llm(*finetune_args(tiny_model_dir, data, reference)).returncode == 0
    run = tmp_path / "run"
    assert kill_repeatedly_then_finish(finetune_args(tiny_model_dir, data, run), run, seed=2) == KILLS_PER_RUN
    assert_same_curve(run, reference)
