"""The studio beside a run that trains on the GPU: its models step aside, the run gets one GPU, showing the
memory opens no CUDA context, progress of a run by the clock follows its time, and the Pretrain tab's
validation share and Resume. A CPU machine shows it with stand-ins for the GPU."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from llm.config import PretrainConfig
from llm.device import available_memory
from llm.errors import ConfigError
from llm.run import MetricsWriter, RunDir
from studio import jobs
from studio.context import SAMPLES_DIR, Studio, memory_now
from studio.tabs import pretrain as tab
from studio.tabs.runs import can_resume, progress_html


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    return Studio(tmp_path / "ws", tiny_model_dir, SAMPLES_DIR)


def add_run(studio: Studio, status: str, config: dict | None = None) -> str:
    run_id = studio.add_run("pretrain", PretrainConfig(inputs=["book.txt"], **(config or {})), "r", "", "text:b", "pt")
    studio.store.update_run(run_id, status=status)
    return run_id


def test_the_studios_models_leave_the_gpu_while_a_run_trains(studio, monkeypatch):
    loaded = []

    def load_model(path, device):
        loaded.append(str(device))
        return object(), object(), {}

    monkeypatch.setattr("llm.model.checkpoint.load_model", load_model)
    monkeypatch.setattr(
        "llm.device.pick_device", lambda name="auto": torch.device("cuda:0" if name == "auto" else name)
    )
    studio.load("base:base")
    run_id = add_run(studio, "running")
    studio.load("base:base")  # a run trains: the studio's copy is on the CPU
    assert loaded == ["cuda:0", "cpu"]
    studio.step_aside()  # what the job runner calls when it starts a trainer
    assert [stamp[2] for stamp in studio._models] == ["cpu"]
    studio.store.update_run(run_id, status="done")
    studio.load("base:base")
    assert loaded == ["cuda:0", "cpu", "cuda:0"]  # back on the GPU once the run ended


class FakeChild:
    pid = 4242

    def poll(self):
        return None


def test_a_run_starts_on_one_gpu_and_the_studio_steps_aside(studio, monkeypatch):
    started, stepped = [], []
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda cmd, **kwargs: started.append(kwargs["env"]) or FakeChild())
    monkeypatch.setattr(studio.jobs, "on_launch", lambda: stepped.append(True))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    add_run(studio, "queued")
    studio.jobs.tick()
    assert started[0]["CUDA_VISIBLE_DEVICES"] == "3" and stepped == [True]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert jobs.child_env()["CUDA_VISIBLE_DEVICES"] == "0"  # never every GPU of the machine


def test_the_memory_line_and_the_plans_memory_check_ask_the_driver_not_torch(monkeypatch):
    asked = []

    def smi(command, **kwargs):
        asked.append(command[1])
        return subprocess.CompletedProcess(command, 0, stdout="NVIDIA H200, 1024, 143771\n")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setattr(subprocess, "run", smi)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: pytest.fail("opened a CUDA context"))
    assert memory_now().startswith("GPU NVIDIA H200: 1.1 GB of 150.8 GB memory in use, 149.7 GB free")
    assert available_memory(torch.device("cuda", 1)) == (143771 - 1024) * 2**20
    assert asked == ["--id=4", "--id=6"]  # CUDA's indices are among the visible GPUs
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("nvidia-smi")))
    assert memory_now().startswith("CPU, ")


def write_metrics(studio: Studio, run_id: str, records: list[dict]) -> None:
    run_dir = RunDir(studio.store.abs(studio.store.run(run_id)["dir"]))
    writer = MetricsWriter(run_dir.metrics)
    for record in records:
        writer.append(record)


def test_progress_of_a_run_by_the_clock_follows_its_time_and_ends_at_100(studio):
    run_id = add_run(studio, "running", {"max_time": 120.0, "max_steps": 0})
    start = {"event": "start", "step": 0, "max_steps": 0, "max_time": 120.0, "device": "cpu", "params": 1}
    write_metrics(studio, run_id, [start, {"step": 40, "train_loss": 3.0, "lr": 1e-3, "elapsed": 60.0}])
    p = studio.jobs.progress(run_id)
    assert p["fraction"] == pytest.approx(0.5, abs=0.02) and p["remaining"] == pytest.approx(60, abs=2)
    assert "step <b>40</b> · 1:00 of 2:00 trained · 50%" in progress_html(p)
    studio.store.update_run(run_id, status="done", finished=time.time())
    done = studio.jobs.progress(run_id)
    assert done["fraction"] == 1.0 and "100%" in progress_html(done) and done["remaining"] is None


def test_a_run_that_ended_early_shows_100_too(studio):
    run_id = add_run(studio, "done", {"max_steps": 300, "max_time": 0.0})
    start = {"event": "start", "step": 0, "max_steps": 300, "max_time": 0.0, "device": "cpu", "params": 1}
    write_metrics(studio, run_id, [start, {"step": 91, "train_loss": 3.0, "lr": 1e-3, "elapsed": 60.0}])
    p = studio.jobs.progress(run_id)
    assert p["fraction"] == 1.0 and "step <b>91</b> of 300 · 100%" in progress_html(p)


def test_resume_is_offered_only_where_it_can_help(tmp_path):
    run = RunDir(tmp_path)
    assert not can_resume("failed", run)  # failed before a checkpoint: it would fail again
    assert can_resume("stopped", run) and can_resume("interrupted", run)
    run.latest.mkdir()
    (run.latest / "trainer_state.pt").write_bytes(b"")
    assert can_resume("failed", run)  # a checkpoint to go on from (after running out of memory, say)
    assert not can_resume("done", run)


def test_the_pretrain_form_sets_the_validation_share(studio):
    form = {"text": "sample:marvelous_land_of_oz.txt", "tokenizer": tab.NEW_TOKENIZER, "vocab": 2048, "preset": "tiny",
            "budget": "steps", "minutes": None, "steps": 10, "prompts": "Once"}  # fmt: skip

    def config(validation):
        settings = tab.form_settings(form | {"validation": validation})
        return tab.pretrain_config(studio, form["text"], form["tokenizer"], settings)

    assert config(0.125).val_fraction == 0.125
    assert config(None).val_fraction == PretrainConfig(inputs=["-"]).val_fraction
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\), got 1") as refused:
        config(1.0)
    assert refused.value.field == "val_fraction", "PretrainConfig's own check, naming the field"
    plan = tab.api_functions(studio)["pretrain_plan"]
    assert "20% held out to validate" in plan(form["text"], "new", '{"preset": "tiny", "val_fraction": 0.2}')


def test_start_takes_the_name_and_the_validation_share(studio, monkeypatch):
    monkeypatch.setattr(studio.jobs, "submit", lambda run_id: "queued")
    start = tab.api_functions(studio)["pretrain_start"]
    settings = '{"preset": "tiny", "max_steps": 10, "max_time": 0, "val_fraction": 0.125}'
    start("sample:marvelous_land_of_oz.txt", tab.NEW_TOKENIZER, settings, "oz-tiny")
    run = studio.store.runs()[0]
    assert run["name"] == "oz-tiny" and run["config"]["val_fraction"] == 0.125


def test_the_batch_comparison_uses_the_studios_loaded_models(studio, monkeypatch):
    from llm.eval import tasks as task_eval
    from studio.tabs import compare

    asked = []
    load = studio.load
    monkeypatch.setattr(studio, "load", lambda ref: asked.append(ref) or load(ref))
    monkeypatch.setattr(task_eval, "load_model", lambda *a, **k: pytest.fail("a second copy was loaded"))
    dataset = next(d["id"] for d in studio.store.datasets() if d["name"] == "opposites.csv")
    out = compare.batch(studio, ["base:base"], dataset, 2, 4, 0, progress=lambda *a, **k: None)
    assert "Scored 2 held-out rows" in out["batch_status"] and asked == ["base:base"] and len(out["batch_totals"]) == 1
