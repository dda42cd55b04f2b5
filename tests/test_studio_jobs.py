"""Fine-tuning jobs as real child processes: one device, one run at a time; stop; a killed studio; resume."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from llm.run import RunDir
from studio.context import SAMPLES_DIR, Studio
from studio.jobs import CHILD_NICENESS

FINAL = ("done", "stopped", "failed", "interrupted")


def settings(max_steps: int, batch_size: int = 64) -> dict:
    # Batch 64 of the opposites sample: 7 steps an epoch, an evaluation and a checkpoint every 3 steps.
    return {"method": "lora", "epochs": 1, "max_steps": max_steps, "lr": 0.003, "batch_size": batch_size,
            "lora_rank": 4, "probes": []}  # fmt: skip


def wait(studio: Studio, run_id: str, until, timeout: float = 180):
    """Tick the job runner (as the studio's watcher does) until until(run, metrics) holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        studio.jobs.tick()
        run = studio.store.run(run_id)
        metrics = RunDir(studio.store.abs(run["dir"])).read_metrics()
        if until(run, metrics):
            return run, metrics
        time.sleep(0.3)
    log = RunDir(studio.store.abs(run["dir"])).log.read_text()
    raise AssertionError(f"timed out; run is {run['status']}: {run['message']}\n{log[-2000:]}")


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    studio = Studio(tmp_path / "workspace", tiny_model_dir, SAMPLES_DIR)
    yield studio
    for run in studio.store.runs(("running", "stopping")):
        os.kill(run["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_a_second_run_waits_for_the_device_and_stop_keeps_a_checkpoint(studio):
    first = studio.create_run("base:base", "sample-opposites", settings(100_000), "long")
    assert studio.jobs.submit(first).startswith("Started")
    second = studio.create_run("base:base", "sample-opposites", settings(3), "short")
    message = studio.jobs.submit(second)
    assert message.startswith("Queued") and "long" in message, "never two runs on one device"

    run, _ = wait(studio, first, lambda r, m: len(m.train) > 0)
    assert run["status"] == "running" and studio.store.run(second)["status"] == "queued"
    studio_nice = os.getpriority(os.PRIO_PROCESS, 0)
    trainer_threads = os.listdir(f"/proc/{run['pid']}/task")  # torch's threads too: each has its own priority
    assert len(trainer_threads) > 1
    for tid in trainer_threads:
        assert os.getpriority(os.PRIO_PROCESS, int(tid)) == min(19, studio_nice + CHILD_NICENESS), "below the studio"
    autogroup = f"/proc/{run['pid']}/autogroup"  # its session's share of the CPU, where the kernel has autogroups
    if os.path.exists(autogroup):
        assert open(autogroup).read().split()[-1] == str(CHILD_NICENESS)
    assert "Stopping" in studio.jobs.stop(first)
    run, metrics = wait(studio, first, lambda r, m: r["status"] in FINAL)
    assert run["status"] == "stopped", run["message"]
    assert metrics.final["event"] == "stopped"
    run_dir = studio.store.abs(run["dir"])
    assert (run_dir / "latest" / "trainer_state.pt").is_file(), "SIGTERM: the trainer checkpoints, then ends"
    stopped_at = json.loads((run_dir / "latest" / "info.json").read_text())["step"]
    assert stopped_at == metrics.final["step"] > 0

    run, metrics = wait(studio, second, lambda r, m: r["status"] in FINAL)
    assert run["status"] == "done" and metrics.step == 3, "the queued run starts once the device is free"


@pytest.mark.slow
def test_a_killed_run_shows_as_interrupted_after_a_restart_and_resumes(studio, tiny_model_dir):
    run_id = studio.create_run("base:base", "sample-opposites", settings(30), "crash")
    studio.jobs.submit(run_id)
    run, _ = wait(studio, run_id, lambda r, m: any(e["event"] == "checkpoint" for e in m.events))
    restarted = Studio(studio.workspace, tiny_model_dir, SAMPLES_DIR)  # a new studio on the same workspace
    restarted.jobs.tick()
    assert restarted.store.run(run_id)["status"] == "running", "a restarted studio re-attaches to a live trainer"

    os.kill(run["pid"], signal.SIGKILL)  # the machine went down with the studio and the trainer
    run, metrics = wait(restarted, run_id, lambda r, m: r["status"] in FINAL, timeout=30)
    assert run["status"] == "interrupted" and "Resume" in run["message"]
    assert metrics.final is None, "no done event was written"
    checkpoint_step = max(e["step"] for e in metrics.events if e["event"] == "checkpoint")

    assert restarted.jobs.resume(run_id).startswith("Started")
    run, metrics = wait(restarted, run_id, lambda r, m: r["status"] in FINAL)
    assert run["status"] == "done", run["message"]
    assert metrics.step == 30 and metrics.start["step"] == checkpoint_step, "resumed from its last checkpoint"
    command = json.loads((restarted.store.abs(run["dir"]) / "command.json").read_text())
    assert "--resume" in command


@pytest.mark.slow
def test_bad_settings_fail_with_an_explanation(studio, tmp_path):
    data = tmp_path / "tiny.csv"
    data.write_text("question,answer\nUp?,down\n")
    key = studio.store.add_dataset("tiny.csv", data, "upload", "auto", {}, 1)
    run_id = studio.create_run("base:base", key, {**settings(2, batch_size=1), "device": "cuda:99"}, "bad")
    studio.jobs.submit(run_id)
    run, _ = wait(studio, run_id, lambda r, m: r["status"] in FINAL)
    assert run["status"] == "failed" and "CUDA" in run["message"] and "Traceback" not in run["message"]
