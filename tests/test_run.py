"""The run folder and its metrics file have one owner (llm/run.py): layout, records, the resume rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from llm_cli import ENV, REPO

from llm.config import TrainConfig
from llm.errors import ConfigError
from llm.run import INFO, STATE, MetricsWriter, RunDir, read_metrics


def fake_checkpoint(path, train_config: dict) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / STATE).write_bytes(b"state")
    (path / INFO).write_text(json.dumps({"step": 4, "train_config": train_config}))


def test_run_dir_knows_its_layout_and_what_can_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.resumable() and run.checkpoints() == [] and run.info() == {}
    run.check_new()
    fake_checkpoint(run.path / "latest", TrainConfig().to_dict())
    assert run.resumable() and run.checkpoints() == [run.latest] and run.info()["step"] == 4
    with pytest.raises(ConfigError, match="already holds a run") as caught:
        run.check_new()
    assert caught.value.field == "out"
    (run.path / "latest").rename(run.path / "latest.old")  # a save that died between its two renames
    assert run.latest == run.path / "latest.old" and run.resumable()
    fake_checkpoint(run.best, TrainConfig().to_dict())
    assert run.checkpoints()[0] == run.best, "best first: what a run folder loads as a model"


def test_the_resume_rule_keeps_the_run_settings_but_its_budgets_and_device(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        run.resumed_train_settings()
    saved = TrainConfig(max_steps=50, lr=3e-3, min_lr=1e-4, seed=7).to_dict()
    fake_checkpoint(run.latest, saved)
    assert run.resumed_train_settings() == saved, "nothing given: the run's own step budget and schedule"
    changed = run.resumed_train_settings(max_steps=80, device="cpu", max_time=60.0)
    assert {k: v for k, v in changed.items() if changed[k] != saved[k]} == {
        "max_steps": 80,
        "device": "cpu",
        "max_time": 60.0,
    }


def test_metrics_records_are_read_by_kind_and_the_latest_attempt_decides(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.start_fresh()
    for record in [
        {"event": "start", "step": 0, "max_steps": 6},
        {"step": 2, "train_loss": 2.0, "lr": 0.1},
        {"step": 2, "val_loss": 1.9, "samples": [{"prompt": "p", "output": "o"}]},
        {"event": "checkpoint", "step": 2},
        {"step": 3, "train_loss": 1.5, "lr": 0.1},
        {"event": "stopped", "step": 3},
    ]:
        writer.append(record)
    metrics = read_metrics(path)
    assert metrics.final["event"] == "stopped" and metrics.step == 3
    assert metrics.loss_points() == [(2, 2.0, "train"), (3, 1.5, "train"), (2, 1.9, "validation")]
    assert all("time" in r for r in metrics.train + metrics.evals + metrics.events)
    writer.keep_through(2)  # a resume from the step-2 checkpoint drops what came after it
    with open(path, "a") as f:
        f.write('{"step": 9, "train_lo')  # and a line a killed writer cut short is skipped when read
    metrics = read_metrics(path)
    assert metrics.step == 2 and metrics.final is None and len(metrics.train) == 1
    writer.append({"event": "start", "step": 2})
    writer.append({"event": "error", "step": 2, "message": "boom", "kind": "diverged"})
    assert read_metrics(path).final["kind"] == "diverged"


def test_the_studio_reads_runs_without_importing_torch():
    code = "import sys, llm.run, llm.config, llm.errors, llm.cli.flags; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, check=True)
