"""Pretraining from raw text in one command: PretrainConfig, plan, the tokenizer and shards made once in
<run>/data, samples at each evaluation, a time budget that stops with a checkpoint, and resume."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import torch
from llm_cli import ENV, REPO, run_llm

from llm.config import PretrainConfig, TrainConfig, preset
from llm.data.tokenizer import Tokenizer
from llm.errors import ConfigError, InputError, TokenizerError
from llm.run import RunDir
from llm.train import pretrain as lib
from llm.train import speed

TINY = {"context_length": 32}
TRAIN = {"batch_size": 4, "eval_batches": 1}


def run_cli(*args: object) -> None:
    result = run_llm(*args)
    assert result.returncode == 0, result.stderr


def config(story_file, **changes) -> PretrainConfig:
    settings = dict(
        inputs=[str(story_file)],
        vocab_size=400,
        val_fraction=0.1,
        preset="tiny",
        model=TINY,
        train=TRAIN,
        max_steps=6,
        max_time=0.0,
        sample_prompts=["Once upon a time", "Tom"],
        sample_tokens=6,
    )
    return PretrainConfig(**{**settings, **changes})


def test_config_round_trips_through_its_file(tmp_path, story_file):
    cfg = config(story_file)
    cfg.save(tmp_path / "pretrain.json")
    assert PretrainConfig.load(tmp_path / "pretrain.json") == cfg


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"inputs": []}, "inputs"),
        ({"preset": "huge"}, "preset"),
        ({"model": {"vocab_size": 99}}, "model"),
        ({"model": {"d_model": 60, "n_head": 4}}, "n_head"),  # head size 15 is odd: no rotary embedding
        ({"train": {"max_steps": 5}}, "train"),  # a budget is the config's own field
        ({"train": {"lr": -1.0}}, "lr"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_settings_name_their_field(story_file, changes, field):
    with pytest.raises(ConfigError) as caught:
        config(story_file, **changes)
    assert caught.value.field == field


def test_the_plan_sizes_the_run_before_anything_is_made(tmp_path, story_file):
    plan = lib.plan(config(story_file, max_steps=40))
    assert plan["max_steps"] == 40 and not plan["steps_from_time"]
    assert plan["tokens_per_step"] == 4 * 32 and plan["vocab_size"] == 400
    assert plan["evaluations"] == 10 and plan["est_seconds"] > 0 and plan["est_memory_bytes"] > 4 * plan["params"]
    assert plan["est_epochs"] > 0 and plan["text_bytes"] == story_file.stat().st_size
    # Only a time budget: the steps the device is measured to do in it; the run itself follows the clock.
    short, long = (lib.plan(config(story_file, max_steps=0, max_time=t)) for t in (5.0, 50.0))
    assert short["steps_from_time"] and 1 <= short["max_steps"] < long["max_steps"]
    assert long["est_seconds"] <= 50.0 and long["evaluations"] == 10
    assert not list(tmp_path.iterdir()), "planning writes nothing"


def test_the_plan_comes_from_steps_timed_on_the_device(story_file, monkeypatch):
    timed = []

    def measure(model_cfg, train_cfg, device, threads=None):
        timed.append((model_cfg.context_length, train_cfg.batch_size, str(device), threads))
        return speed.Speed(step_seconds=0.01, eval_batch_seconds=0.002, token_seconds=0.0005)

    monkeypatch.setattr(speed, "measure", measure)
    plan = lib.plan(config(story_file, max_steps=0, max_time=500.0), threads=1)
    assert timed[0] == (32, 4, "cpu", 1)  # the real shape and batch, with the run's threads
    evaluation = 2 * 1 * 0.002 + 2 * 6 * 0.0005  # val and train batches, 2 prompts x 6 sampled tokens
    assert plan["max_steps"] == int((500.0 - 10 * evaluation) / 0.01) and plan["est_tokens_per_s"] == 128 / 0.01
    settings = lib.training_settings(
        config(story_file, max_steps=0, max_time=500.0), lib.model_config(config(story_file), 400), 1
    )
    assert settings.max_steps == 0 and settings.max_time == 500.0, "the run follows the clock, not the estimate"
    assert settings.warmup_steps == 100 and settings.log_interval == plan["max_steps"] // 500  # 500 log lines


def test_a_speed_is_measured_once_and_leaves_the_process_as_it_was(story_file):
    model_cfg = preset("tiny", vocab_size=400, context_length=32)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    measured = speed.measure(model_cfg, TrainConfig(batch_size=4), torch.device("cpu"), threads=1)
    assert 0 < measured.token_seconds and 0 < measured.eval_batch_seconds and 0 < measured.step_seconds < 5
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    assert speed.measure(model_cfg, TrainConfig(batch_size=4), torch.device("cpu"), threads=1) is measured


def test_a_timed_step_waits_for_its_loss_as_a_run_step_does(monkeypatch):
    # On a GPU a step that is not waited for overlaps the launching of the next: a launch-bound model would be
    # timed faster than its run goes, which waits once a step (Distributed.agree) to read the loss.
    from llm.model.transformer import Transformer
    from llm.train.trainer import Distributed

    agreed = []
    real = Distributed.agree
    monkeypatch.setattr(Distributed, "agree", lambda self, *a: agreed.append(a) or real(self, *a))
    model = Transformer(preset("tiny", vocab_size=400, context_length=32))
    batch = speed.RepeatedBatch(400, 2, 32, torch.device("cpu"))
    assert speed.time_source(model, TrainConfig(batch_size=2), batch, 3, torch.device("cpu")) > 0
    assert len(agreed) == 1 + 3  # the warm-up step and each timed step
    assert all(isinstance(loss, torch.Tensor) and loss.ndim == 0 for loss, *_ in agreed)


def test_the_plan_checks_the_vocabulary_against_the_text(tmp_path, story_file):
    short = tmp_path / "short.txt"
    short.write_text(story_file.read_text()[:2000])
    with pytest.raises(TokenizerError, match=r"2048 is too large for this text: at most \d+ is possible") as caught:
        lib.plan(config(short, inputs=[str(short)], vocab_size=2048, val_fraction=0.5))
    assert caught.value.field == "vocab_size"
    assert lib.plan(config(short, inputs=[str(short)], vocab_size=350, val_fraction=0.5))["vocab_size"] == 350


def test_the_plan_refuses_a_text_that_would_hold_nothing_out_for_validation(tmp_path, story_file):
    # One paragraph is one document: prepare() would fail on it after training a tokenizer; the plan says so.
    one = tmp_path / "one.txt"
    one.write_text(" ".join(story_file.read_text().split()))
    with pytest.raises(InputError, match=r"no document was held out .*the text has 1 document:"):
        lib.plan(config(one, inputs=[str(one)], val_fraction=0.05))
    assert lib.plan(config(one, inputs=[str(one)], val_fraction=0.0))["max_steps"] > 0, "nothing held out, asked"


def test_a_missing_text_or_tokenizer_is_a_clear_error(tmp_path, story_file):
    with pytest.raises(InputError, match="no such file"):
        lib.plan(config(story_file, inputs=[str(tmp_path / "gone.txt")]))
    with pytest.raises(ConfigError) as caught:
        lib.plan(config(story_file, tokenizer=str(tmp_path / "nothing")))
    assert caught.value.field == "tokenizer"


@pytest.mark.parametrize(
    "name, content, message",
    [("bin.txt", b"text\x00\x01binary", "binary"), ("latin1.txt", "café au lait\n".encode("latin-1"), "not UTF-8")],
)
def test_binary_or_non_utf8_text_is_refused_and_leaves_no_data(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=message):
        lib.pretrain_text(PretrainConfig(inputs=[str(path)], vocab_size=300), out)
    assert not RunDir(out).data.exists() and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_cli_config_trains_a_tokenizer_and_logs_samples(tmp_path, story_file):
    cfg = config(story_file)
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "pretrain.json")
    run_cli("pretrain", "--config", run / "pretrain.json", "--out", run)
    data = RunDir(run).data
    assert Tokenizer.load(data).vocab_size == 400 and (data / "meta.json").is_file()
    metrics = RunDir(run).read_metrics()
    assert metrics.final["event"] == "done" and metrics.step == 6
    samples = [e for e in metrics.evals if e.get("samples")]
    assert len(samples) == 6, "an evaluation (with samples) at every step of a 6-step run"
    assert [s["prompt"] for s in samples[-1]["samples"]] == ["Once upon a time", "Tom"]
    assert all(e["val_bits_per_byte"] > 0 for e in metrics.evals)
    info = RunDir(run).info()
    assert info["kind"] == "pretrained" and info["pretrain"]["inputs"] == [str(story_file.resolve())]
    assert RunDir(run).best.is_dir(), "the best checkpoint is kept: the studio offers it as a base"


def test_reusing_a_models_tokenizer(tmp_path, story_file, tiny_model_dir):
    gz = tmp_path / "stories.txt.gz"
    gz.write_bytes(gzip.compress(story_file.read_bytes()))
    run = tmp_path / "run"
    result = lib.pretrain_text(config(gz, tokenizer=str(tiny_model_dir), max_steps=2), run)
    assert result.step == 2
    assert (RunDir(run).data / "tokenizer.model").read_bytes() == (tiny_model_dir / "tokenizer.model").read_bytes()


def test_jsonl_text_field(tmp_path, story_file):
    path = tmp_path / "stories.jsonl"
    stories = story_file.read_text().split("\n\n")
    path.write_text("".join(json.dumps({"body": s, "n": i}) + "\n" for i, s in enumerate(stories)))
    with pytest.raises(InputError, match="no string field 'text'"):
        lib.pretrain_text(config(path, max_steps=1), tmp_path / "bad")
    lib.pretrain_text(config(path, text_field="body", max_steps=1), tmp_path / "good")
    assert RunDir(tmp_path / "good").read_metrics().final["event"] == "done"


@pytest.mark.slow
def test_time_limit_stops_with_a_checkpoint_and_resume_continues(tmp_path, story_file):
    run = tmp_path / "run"
    run_cli(
        "pretrain", "--input", story_file, "--out", run, "--preset", "tiny", "--context-length", "32",
        "--vocab-size", "400", "--batch-size", "4", "--max-steps", "3000", "--max-time", "1.5", "--sample-tokens", "4",
    )  # fmt: skip
    metrics = RunDir(run).read_metrics()
    stopped = metrics.final
    assert stopped["event"] == "time_limit" and 0 < stopped["step"] < 3000
    assert RunDir(run).info()["step"] == stopped["step"], "the checkpoint is at the step the time ran out"
    meta = (RunDir(run).data / "meta.json").stat().st_mtime_ns
    run_cli("pretrain", "--out", run, "--resume", "--max-steps", str(stopped["step"] + 5), "--max-time", "0")
    metrics = RunDir(run).read_metrics()
    assert metrics.final["event"] == "done" and metrics.step == stopped["step"] + 5
    assert len([e for e in metrics.events if e["event"] == "start"]) == 2
    assert (RunDir(run).data / "meta.json").stat().st_mtime_ns == meta, "the data is made once"
    assert metrics.evals[-1]["samples"][0]["prompt"] == "Once upon a time", "the run's own sample prompts"
    refused = run_llm("pretrain", "--config", run / "pretrain.json", "--out", run, "--resume")
    assert refused.returncode == 2 and "--config continues the run with its own settings" in refused.stderr


@pytest.mark.slow
def test_a_time_budget_alone_runs_by_the_clock_to_done(tmp_path, story_file):
    """The schedule, the evaluations and the end follow the time: ten evaluations, the learning rate down to
    min_lr, and "done" (not a cut-short "time_limit") when the time is up."""
    result = lib.pretrain_text(config(story_file, max_steps=0, max_time=3.0), tmp_path / "run")
    metrics = RunDir(tmp_path / "run").read_metrics()
    assert result.reason == "done" and metrics.final["event"] == "done"
    assert len(metrics.evals) == 10 and metrics.evals[-1]["step"] == result.step
    settings = TrainConfig.from_dict(RunDir(tmp_path / "run").info()["train_config"])
    assert settings.max_steps == 0 and metrics.train[-1]["lr"] < 1.5 * settings.min_lr
    assert metrics.train[-1]["elapsed"] >= 3.0


@pytest.mark.slow
def test_torchrun_from_raw_text_prepares_the_data_once(tmp_path, story_file):
    """Two ranks (gloo): rank 0 trains the tokenizer and writes the shards, rank 1 waits for them."""
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    flags = ["--preset", "tiny", "--context-length", "32", "--vocab-size", "400", "--batch-size", "4"]
    result = subprocess.run(
        [*torchrun, "-m", "llm", "pretrain", "--input", str(story_file), "--out", str(run), *flags,
         "--grad-accum", "2", "--max-steps", "4", "--sample-tokens", "4"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rank 1: waiting for rank 0 to prepare the data" in result.stdout
    assert result.stdout.count("pretraining a ") == 1, "rank 0 alone prints the plan"
    metrics = RunDir(run).read_metrics()
    assert metrics.start["world"] == 2 and metrics.final["event"] == "done" and metrics.step == 4
    assert sorted(p.name for p in run.iterdir()) == ["best", "data", "latest", "metrics.jsonl"]
