"""The one training loop: it learns, it resumes exactly (after SIGKILL or SIGTERM), and DDP matches one process."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import pytest
import torch
from conftest import make_stories
from llm_cli import ENV, REPO, loss_curve, read_metrics, run_llm, sigterm_at_step, start_llm, train_steps, wait_for

from llm.config import TrainConfig, preset
from llm.device import autocast_dtype, has_bf16
from llm.errors import ConfigError
from llm.model import checkpoint
from llm.model.transformer import Transformer
from llm.train import trainer
from llm.train.pretrain import pretrain
from llm.train.trainer import MetricsLog, TrainingError, learning_rate, train


class CyclicBatches:
    """Random windows of one short token sequence repeated: a text a tiny model can learn by heart."""

    def __init__(self, ids: list[int], context_length: int, batch_size: int):
        self.data = torch.tensor(ids * 4)
        self.context_length, self.batch_size = context_length, batch_size

    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(step * 1000 + micro)
        starts = torch.randint(0, len(self.data) - self.context_length - 1, (self.batch_size,), generator=generator)
        rows = torch.stack([self.data[s : s + self.context_length + 1] for s in starts.tolist()])  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]

    def eval_batches(self, split: str, count: int):
        for i in range(count):
            yield self.train_batch(10**6 + i, 0)


def test_tiny_model_overfits_a_tiny_text(tmp_path, tok):
    ids = tok.encode(" ".join(make_stories(8, seed=42)))
    assert 250 < len(ids) < 400  # "a few hundred tokens"
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=32))
    cfg = TrainConfig(max_steps=80, batch_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=10, log_interval=10)
    cfg.eval_interval, cfg.eval_batches = 80, 4
    result = train(
        model, tok, CyclicBatches(ids, 32, 4), cfg, out_dir=tmp_path / "run", metrics_path=tmp_path / "metrics.jsonl"
    )
    records = read_metrics(tmp_path / "metrics.jsonl")
    curve = loss_curve(records)
    assert curve[10] > 3.0  # it starts near ln(400) = 6 nats
    assert result.train_loss < 0.5  # nats per token, after 80 steps of 4 x 32 tokens
    assert [r for r in records if "val_loss" in r][-1]["val_loss"] < 0.5
    assert result.reason == "done" and result.step == 80


@pytest.mark.skipif(not has_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_bf16_precision_on_a_cpu_with_bf16_units_also_overfits(tmp_path, tok):
    ids = tok.encode(" ".join(make_stories(8, seed=42)))
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=32))
    cfg = TrainConfig(max_steps=80, batch_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=10, precision="bf16")
    cfg.eval_interval, cfg.eval_batches = 80, 4
    result = train(
        model, tok, CyclicBatches(ids, 32, 4), cfg, out_dir=tmp_path / "run", metrics_path=tmp_path / "metrics.jsonl"
    )
    start = next(r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "start")
    assert start["device"].endswith("bf16")
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay fp32
    assert result.train_loss < 0.5


def test_precision_is_checked():
    with pytest.raises(ConfigError) as err:
        TrainConfig(precision="fp16")
    assert err.value.field == "precision"
    assert autocast_dtype(torch.device("cpu"), "auto") is None  # a CPU trains in fp32 unless asked
    assert autocast_dtype(torch.device("cpu"), "fp32") is None


def test_learning_rate_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(max_steps=110, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    rates = [learning_rate(s, cfg) for s in range(111)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)  # linear warmup
    assert rates[10] == pytest.approx(1e-3) and rates[60] == pytest.approx(5.5e-4)  # half-way down the cosine
    assert rates[110] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))  # never rises after warmup
    assert learning_rate(500, cfg) == pytest.approx(1e-4)  # past max_steps (a longer resumed run): min_lr


def small_run_config(**overrides) -> TrainConfig:
    values = dict(max_steps=12, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=3, log_interval=1)
    values.update(eval_interval=4, eval_batches=2, ckpt_interval=4, seed=5, device="cpu")
    return TrainConfig(**{**values, **overrides})


def test_sigterm_in_process_stops_cleanly_and_resume_matches(tmp_path, data_dir, monkeypatch):
    model_cfg = preset("tiny", context_length=32, dropout=0.1)  # dropout: the RNG state must be restored too
    straight = pretrain(
        data_dir, tmp_path / "straight", model_cfg, small_run_config(), metrics_path=tmp_path / "straight.jsonl"
    )

    sigterm_at_step(monkeypatch, 5)  # as the studio's Stop button does
    metrics = tmp_path / "run.jsonl"
    handler = signal.getsignal(signal.SIGTERM)
    stopped = pretrain(data_dir, tmp_path / "run", model_cfg, small_run_config(), metrics_path=metrics)
    assert signal.getsignal(signal.SIGTERM) is handler  # the trainer gives the handler back
    assert (stopped.reason, stopped.step) == ("stopped", 6)  # the step in flight is finished, then saved
    assert [(r.get("event"), r["step"]) for r in read_metrics(metrics)[-2:]] == [("checkpoint", 6), ("stopped", 6)]
    assert checkpoint.load_trainer_state(tmp_path / "run" / "latest")["step"] == 6

    monkeypatch.undo()
    resumed = pretrain(data_dir, tmp_path / "run", model_cfg, small_run_config(), resume=True, metrics_path=metrics)
    assert resumed.step == 12 and resumed.train_loss == pytest.approx(straight.train_loss, abs=1e-6)
    records = read_metrics(metrics)
    assert train_steps(records) == list(range(1, 13))
    assert loss_curve(records) == pytest.approx(loss_curve(read_metrics(tmp_path / "straight.jsonl")), abs=1e-6)


def test_starting_over_an_existing_run_is_refused(tmp_path, data_dir):
    cfg = small_run_config(max_steps=2, eval_interval=2, ckpt_interval=2)
    pretrain(data_dir, tmp_path / "run", preset("tiny", context_length=32), cfg)
    with pytest.raises(ConfigError, match="already holds a run: resume it"):
        pretrain(data_dir, tmp_path / "run", preset("tiny", context_length=32), cfg)


def test_metrics_log_on_resume_drops_later_lines_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"event": "start", "step": 0}] + [{"step": s, "train_loss": 1.0} for s in range(1, 8)]
    lines.insert(5, {"event": "checkpoint", "step": 4})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 8, "train_lo')  # killed mid-write
    MetricsLog(path, enabled=True, resume_step=4)
    assert read_metrics(path) == lines[:6]
    assert path.read_text().endswith("}\n")
    MetricsLog(path, enabled=True, resume_step=None)  # a fresh run starts an empty file
    assert path.read_text() == ""


def test_diverging_loss_raises_and_logs_an_error(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(trainer, "causal_lm_loss", lambda logits, targets: logits.sum() * float("nan"))
    model = Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=16))
    batches = CyclicBatches(tok.encode("Once upon a time, Lily had a ball. " * 4), 16, 2)
    with pytest.raises(TrainingError, match="diverged.*learning rate"):
        train(
            model, tok, batches, small_run_config(), out_dir=tmp_path / "run", metrics_path=tmp_path / "metrics.jsonl"
        )
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["event"] == "error"


def test_checkpoints_record_the_run(tmp_path, tok):
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=16))
    batches = CyclicBatches(tok.encode(" ".join(make_stories(3))), 16, 2)
    cfg = small_run_config(max_steps=8, batch_size=2, keep_best=True, eval_interval=2, ckpt_interval=3)
    train(model, tok, batches, cfg, out_dir=tmp_path / "run", info={"kind": "test"})
    latest, best = tmp_path / "run" / "latest", tmp_path / "run" / "best"
    info = checkpoint.read_info(latest)
    assert info["kind"] == "test" and info["step"] == 8 and info["tokens_seen"] == 8 * 2 * 16
    assert TrainConfig.from_dict(info["train_config"]) == cfg
    assert checkpoint.load_trainer_state(latest)["step"] == 8
    assert (best / checkpoint.WEIGHTS).is_file() and not (best / checkpoint.STATE).exists()
    assert checkpoint.read_info(best)["best_val_loss"] == pytest.approx(checkpoint.read_info(latest)["best_val_loss"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best", "latest", "metrics.jsonl"]  # no leftovers


# ---- end to end through the CLI, in child processes ----

PRETRAIN_FLAGS = [
    "--preset", "tiny", "--context-length", "32", "--batch-size", "4", "--max-steps", "60",
    "--warmup-steps", "5", "--lr", "3e-3", "--min-lr", "3e-4", "--log-interval", "1",
    "--eval-interval", "20", "--eval-batches", "2", "--ckpt-interval", "10", "--seed", "7", "--device", "cpu",
]  # fmt: skip


def pretrain_args(data_dir, out) -> list:
    return ["pretrain", "--data", data_dir, "--out", out, *PRETRAIN_FLAGS]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir) -> list[dict]:
    """The metrics of an uninterrupted 60-step run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_llm(*pretrain_args(data_dir, out))
    assert done.returncode == 0, done.stderr
    records = read_metrics(out / "metrics.jsonl")
    assert train_steps(records) == list(range(1, 61))
    return records


def assert_same_run(records: list[dict], reference: list[dict]) -> None:
    """Every step logged once, the loss curve and the final loss equal to the reference run's."""
    assert train_steps(records) == list(range(1, 61))
    evals = [r["step"] for r in records if "val_loss" in r]
    assert evals == [20, 40, 60]
    assert loss_curve(records) == pytest.approx(loss_curve(reference), abs=1e-4)
    assert records[-1]["event"] == "done" and records[-1]["step"] == 60
    assert records[-1]["train_loss"] == pytest.approx(reference[-1]["train_loss"], abs=1e-4)


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, data_dir, reference_run):
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    proc = start_llm(*pretrain_args(data_dir, out))

    def checkpointed_and_past_it(records):
        saved = [r["step"] for r in records if r.get("event") == "checkpoint"]
        return saved and max(train_steps(records)) >= saved[-1] + 2

    wait_for(metrics, proc, checkpointed_and_past_it)
    proc.kill()
    assert proc.wait(60) == -signal.SIGKILL
    before = read_metrics(metrics)
    assert not any(r.get("event") in ("done", "stopped") for r in before)
    resumed = run_llm(*pretrain_args(data_dir, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    records = read_metrics(metrics)
    restart = [r for r in records if r.get("event") == "start"]
    assert len(restart) == 2 and 10 <= restart[1]["step"] < max(train_steps(before))  # some steps were redone
    assert_same_run(records, reference_run)


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_resume_continues(tmp_path, data_dir, reference_run):
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    proc = start_llm(*pretrain_args(data_dir, out))
    wait_for(metrics, proc, lambda records: any(r.get("event") == "checkpoint" for r in records))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.stderr.read()
    records = read_metrics(metrics)
    last_checkpoint, stopped = records[-2], records[-1]
    assert last_checkpoint["event"] == "checkpoint" and stopped["event"] == "stopped"
    step = stopped["step"]
    assert last_checkpoint["step"] == step == max(train_steps(records)) and 10 <= step < 60
    assert checkpoint.load_trainer_state(out / "latest")["step"] == step
    resumed = run_llm(*pretrain_args(data_dir, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    records = read_metrics(metrics)
    assert [r["step"] for r in records if r.get("event") == "start"] == [0, step]
    assert_same_run(records, reference_run)


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process(tmp_path, data_dir):
    """Under torchrun (gloo on CPU), 2 ranks x 1 micro-batch equal 1 process x 2 micro-batches."""
    flags = [*PRETRAIN_FLAGS, "--grad-accum", "2", "--max-steps", "20", "--eval-interval", "10"]
    single = run_llm("pretrain", "--data", data_dir, "--out", tmp_path / "single", *flags)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.run(
        [*torchrun, "-m", "llm", "pretrain", "--data", str(data_dir), "--out", str(tmp_path / "ddp"), *flags],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr
    one, two = read_metrics(tmp_path / "single" / "metrics.jsonl"), read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert one[0]["world"] == 1 and two[0]["world"] == 2
    assert train_steps(two) == list(range(1, 21))  # rank 0 alone writes the metrics
    assert loss_curve(two) == pytest.approx(loss_curve(one), abs=1e-4)
    assert [r["val_loss"] for r in two if "val_loss" in r] == pytest.approx(
        [r["val_loss"] for r in one if "val_loss" in r], abs=1e-4
    )
    assert not math.isnan(two[-1]["train_loss"])
    rng = checkpoint.load_trainer_state(tmp_path / "ddp" / "latest")["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0], rng[1])  # each rank's own dropout RNG, for --resume
    single_model, _, _ = checkpoint.load_model(tmp_path / "single")
    ddp_model, _, _ = checkpoint.load_model(tmp_path / "ddp")
    for (name, a), b in zip(single_model.state_dict().items(), ddp_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=name)
