"""The one loop as a GPU runs it, shown on a CPU: one wait on the device per step, a run by the clock, MFU of
one device at the batch's own length, the memory error, rank 0's records, DDP's settings, TF32 and each rank's
own GPU."""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from llm_cli import read_metrics, sigterm_at_step
from test_training import CyclicBatches, small_run_config

from llm.config import TrainConfig, preset
from llm.device import pick_device
from llm.errors import ConfigError, TrainingError
from llm.model.transformer import Transformer
from llm.train import trainer
from llm.train.pretrain import pretrain
from llm.train.trainer import Trainer, learning_rate, train

LLM = str(Path(trainer.__file__).resolve().parent.parent)  # the llm package's folder


def tiny_run(tok, **overrides):
    """A tiny model, its batches and a TrainConfig for a few CPU steps."""
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=16))
    batches = CyclicBatches(tok.encode("Once upon a time, Lily had a ball. " * 4), 16, 2)
    values = dict(max_steps=8, batch_size=2, warmup_steps=2, log_interval=3, eval_interval=4, eval_batches=1)
    cfg = TrainConfig(**{**values, "ckpt_interval": 100, "ckpt_seconds": 0, "device": "cpu", **overrides})
    return model, batches, cfg


def test_the_learning_rate_of_a_run_by_the_clock_follows_the_time():
    cfg = TrainConfig(max_steps=0, max_time=100.0, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert learning_rate(0, cfg, 0.0) == pytest.approx(1e-4)  # the warmup is by steps
    assert learning_rate(500, cfg, 50.0) == pytest.approx(5.5e-4)  # half the time: half-way down the cosine
    assert learning_rate(900, cfg, 100.0) == pytest.approx(1e-4)  # the time is up: min_lr, whatever the step
    # A warmup that ends late joins the cosine instead of jumping above it.
    assert learning_rate(9, cfg, 50.0) == pytest.approx(5.5e-4)
    with pytest.raises(ConfigError) as err:
        TrainConfig(max_steps=0, max_time=0.0)
    assert err.value.field == "max_steps"


def test_a_run_by_the_clock_evaluates_ten_times_and_ends_done_at_its_time(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(Trainer, "elapsed", lambda self: self.state.elapsed_before + self.state.step + 1.0)  # 1 s/step
    model, batches, cfg = tiny_run(tok, max_steps=0, max_time=20.0, warmup_steps=2, log_interval=1)
    result = train(model, tok, batches, cfg, out_dir=tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert (result.reason, result.step) == ("done", 20)  # its planned end, not a "time_limit"
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert [r["step"] for r in records if r.get("event") == "checkpoint"] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    rates = [r["lr"] for r in records if "lr" in r]
    assert rates[-1] == pytest.approx(learning_rate(19, cfg, 19.0)) and rates[-1] < 1.1 * cfg.min_lr
    assert records[0]["max_time"] == 20.0 and records[0]["max_steps"] == 0


def count_device_reads(monkeypatch) -> collections.Counter:
    """Counts the reads of a tensor's value into Python (each one waits for the device) made by llm's own code."""
    reads: collections.Counter = collections.Counter()
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def read(self, *args, _real=real):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(LLM):
                reads[caller] += 1
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, read)
    return reads


def test_a_step_waits_for_the_device_once(tmp_path, tok, monkeypatch):
    reads = count_device_reads(monkeypatch)
    per_step = []
    advance = Trainer.advance

    def counted(self, stop):
        before = sum(reads.values())
        result = advance(self, stop)
        per_step.append(sum(reads.values()) - before)
        return result

    monkeypatch.setattr(Trainer, "advance", counted)
    model, batches, cfg = tiny_run(tok, grad_accum=2, eval_batches=2)
    train(model, tok, batches, cfg, out_dir=tmp_path / "run")
    # Steps 4 and 8 evaluate (one read a split); every other step reads the agreed loss alone, log steps too.
    assert per_step == [1, 1, 1, 3, 1, 1, 1, 3]


class FakeRanks(trainer.Distributed):
    """Rank 0 of 2 without a process group: each all-reduce is counted (and sums nothing)."""

    reductions = 0

    def __init__(self, device):
        self.world, self.rank, self.device = 2, 0, device

    def broadcast(self, value):
        return value

    def gather(self, value):
        return [value, value]


def test_a_ddp_step_agrees_in_one_all_reduce(tmp_path, tok, monkeypatch):
    def all_reduce(tensor):
        FakeRanks.reductions += 1

    monkeypatch.setattr(trainer, "Distributed", FakeRanks)
    monkeypatch.setattr(trainer, "DistributedDataParallel", lambda module, **kwargs: module)
    monkeypatch.setattr(trainer.dist, "all_reduce", all_reduce)
    model, batches, cfg = tiny_run(tok, grad_accum=2, max_steps=3, eval_interval=100, log_interval=1)
    train(model, tok, batches, cfg, out_dir=tmp_path / "run")
    assert FakeRanks.reductions == 3 + 1  # one a step, one for the final evaluation (loss, clock, stop and sums)


def test_a_step_counts_this_ranks_tokens_and_flops_at_the_batchs_length(tok):
    model = Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=64))
    batches = CyclicBatches(tok.encode("Once upon a time, Lily had a ball. " * 4), 10, 3)  # rows of 10 tokens
    cfg = TrainConfig(device="cpu")
    ddp = SimpleNamespace(world=2, rank=1, device=torch.device("cpu"))  # rank 1 of 2: one micro-batch of two
    work = trainer.train_step(
        model, model, trainer.make_optimizer(model, cfg, ddp.device), batches, 0, 2, 1.0, ddp, trainer.nullcontext()
    )
    assert work.tokens == 3 * 10  # its own, not the world's
    assert work.flops == 3 * 10 * model.flops_per_token(10) < 3 * 10 * model.flops_per_token()
    assert work.loss.dim() == 0 and work.loss.item() > 0


def test_mfu_is_one_devices_flops_over_one_devices_peak():
    logged = []
    run = Trainer.__new__(Trainer)  # only what log_train reads
    run.state, run.start, run.peak, run.device = trainer.TrainState(step=10), 0.0, 1e9, torch.device("cpu")
    run.log = SimpleNamespace(write=lambda record, console=None: logged.append(record))
    run.last_log = trainer.time.time() - 2.0
    run.tokens_since_log, run.flops_since_log = 2000, 4e9  # all ranks' tokens; this rank's FLOPs
    run.log_train(3.0, 1e-3)
    record = logged[0]
    assert record["mfu"] == pytest.approx(2.0, rel=0.01)  # 4e9 FLOPs in 2 s on a 1e9 FLOP/s device
    assert record["tokens_per_s"] == pytest.approx(1000, rel=0.01)


def test_out_of_memory_is_a_memory_error_naming_the_batch_size(tmp_path, tok, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train_step", exhausted)
    model, batches, cfg = tiny_run(tok)
    with pytest.raises(TrainingError) as err:
        train(model, tok, batches, cfg, out_dir=tmp_path / "run")
    assert (err.value.kind, err.value.field) == ("memory", "batch_size")
    assert "2 does not fit in the memory of cpu" in str(err.value)
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert (record["event"], record["kind"], record["field"], record["step"]) == ("error", "memory", "batch_size", 0)


def test_only_rank_0_writes_the_metrics_and_the_error_record(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # rank 1 (of a world it never joins: WORLD_SIZE stays 1)
    monkeypatch.setattr(trainer, "causal_lm_loss", lambda logits, targets: logits.sum() * float("nan"))
    model, batches, cfg = tiny_run(tok)
    with pytest.raises(TrainingError, match="diverged"):
        train(model, tok, batches, cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_ddp_takes_rank_0s_settings_and_does_not_resend_the_rotary_tables(tmp_path, tok, monkeypatch):
    class TwoRanks(trainer.Distributed):
        def __init__(self, device):
            self.world, self.rank, self.device = 2, 1, device

        def broadcast(self, value):
            return TrainConfig.from_dict({**value.to_dict(), "warmup_steps": 7})  # rank 0's plan differed

    wrapped = []
    monkeypatch.setattr(trainer, "Distributed", TwoRanks)
    monkeypatch.setattr(trainer, "DistributedDataParallel", lambda module, **kwargs: wrapped.append(kwargs) or module)
    model, batches, cfg = tiny_run(tok, grad_accum=2)
    run = Trainer(model, tok, batches, cfg, run=trainer.RunDir(tmp_path), metrics_path=tmp_path / "m.jsonl",
                  resume=False, info={}, hooks=trainer.TrainHooks())  # fmt: skip
    assert wrapped == [{"device_ids": None, "forward_sync_buffers": False}]
    assert run.cfg.warmup_steps == 7  # rank 0's settings, not this rank's own


def test_a_rank_lets_its_ddp_wrapper_go_before_the_process_group_is_destroyed(tmp_path, tok, monkeypatch):
    """The wrapper holds the process group: kept, the group would be freed whenever the trainer is, after
    destroy_process_group, and a finished rank could abort as its process ends."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module, **kwargs):
            super().__init__()
            self.module = module

    held_at_close = []

    class TwoRanks(trainer.Distributed):
        def __init__(self, device):
            self.world, self.rank, self.device = 2, 1, device

        def broadcast(self, value):
            return value

        def close(self):
            held_at_close.append(isinstance(run.run_model, Wrapper))

    monkeypatch.setattr(trainer, "Distributed", TwoRanks)
    monkeypatch.setattr(trainer, "DistributedDataParallel", Wrapper)
    model, batches, cfg = tiny_run(tok, grad_accum=2)
    run = Trainer(model, tok, batches, cfg, run=trainer.RunDir(tmp_path), metrics_path=tmp_path / "m.jsonl",
                  resume=False, info={}, hooks=trainer.TrainHooks())  # fmt: skip
    assert isinstance(run.run_model, Wrapper)
    run.close()
    assert held_at_close == [False] and run.run_model is model


def test_a_cuda_device_is_this_ranks_own_gpu_with_tf32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device() == pick_device("cuda") == torch.device("cuda", 1)  # never GPU 0 for rank 1
    assert pick_device("cuda:0") == torch.device("cuda", 0)  # named: as named
    assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"


def weight_dtypes(directory: Path) -> set[torch.dtype]:
    from safetensors.torch import load_file

    return {t.dtype for t in load_file(str(directory / "model.safetensors")).values()}


def test_save_dtype_bf16_rounds_best_only_and_the_run_resumes_exactly(tmp_path, data_dir, monkeypatch):
    """latest/ keeps the fp32 master weights, so a resume under --save-dtype bf16 continues exactly."""
    model_cfg = preset("tiny", context_length=32, dropout=0.1)
    settings = small_run_config(keep_best=True)
    straight = pretrain(data_dir, tmp_path / "straight", model_cfg, settings, save_dtype=torch.bfloat16)
    sigterm_at_step(monkeypatch, 5)
    stopped = pretrain(data_dir, tmp_path / "run", model_cfg, settings, save_dtype=torch.bfloat16)
    assert stopped.reason == "stopped"
    assert weight_dtypes(tmp_path / "run" / "latest") == {torch.float32}
    assert weight_dtypes(tmp_path / "run" / "best") == {torch.bfloat16}
    monkeypatch.undo()
    resumed = pretrain(data_dir, tmp_path / "run", model_cfg, settings, resume=True, save_dtype=torch.bfloat16)
    assert resumed.step == 12 and resumed.train_loss == pytest.approx(straight.train_loss, abs=1e-6)
