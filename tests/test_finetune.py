"""Fine-tuning: task batches and loss masks, LoRA (gradients, merging, adapter checkpoints), full fine-tuning,
resume, probes, what a checkpoint records, bad input, and a run that actually learns a task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from llm_cli import ENV, REPO, loss_curve, read_metrics, run_llm
from safetensors.torch import load_file

from llm.cli import main
from llm.config import FinetuneConfig
from llm.data.batches import TaskBatches
from llm.data.tasks import TaskFileError, encode_examples, read_task_file, split_examples
from llm.errors import ConfigError
from llm.eval.tasks import evaluate_models, totals
from llm.model import checkpoint, lora
from llm.model.checkpoint import load_model
from llm.model.transformer import Transformer, causal_lm_loss
from llm.train import finetune, tuning
from llm.train.tuning import lora_settings

# A closed little world the tiny test model knows the words of (tests/conftest.py's stories).
NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Sue"]
THINGS = ["ball", "cat", "tree", "cake", "boat", "hat", "dog", "book"]
QUESTIONS = [
    "What does {n} like?",
    "What is the favourite thing of {n}?",
    "Tell me what {n} likes.",
    "{n} likes what?",
    "Which thing does {n} love?",
    "What did {n} want?",
]


def favourites_csv(path: Path) -> Path:
    """48 rows: each name has one favourite thing, asked in six ways."""
    lines = ["question,answer"]
    for i, name in enumerate(NAMES):
        lines += [f"{q.format(n=name)},{THINGS[(3 * i) % 8]}" for q in QUESTIONS]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    return favourites_csv(tmp_path_factory.mktemp("task") / "favourites.csv")


def quick(**overrides) -> FinetuneConfig:
    """A few steps of a tiny run."""
    settings = dict(method="lora", max_steps=6, batch_size=4, val_fraction=0.25, evals_per_epoch=2, lora_rank=4)
    return FinetuneConfig(**{**settings, **overrides})


def job(base: Path, data: Path, cfg: FinetuneConfig) -> FinetuneConfig:
    """cfg for this base model and task file."""
    return replace(cfg, base=str(base), data=str(data))


def encoded(task_file: Path, tiny_model_dir: Path):
    _, tok, _ = load_model(tiny_model_dir)
    return tok, encode_examples(read_task_file(task_file), tok, 64)


# ----------------------------------------------------------------------------------------------------------
# Batches and the loss mask


def test_batches_are_a_pure_function_of_seed_step_and_micro(task_file, tiny_model_dir):
    tok, enc = encoded(task_file, tiny_model_dir)
    a = TaskBatches(enc, enc, batch_size=4, grad_accum=2, seed=5, pad_id=tok.pad_id)
    b = TaskBatches(enc, enc, batch_size=4, grad_accum=2, seed=5, pad_id=tok.pad_id)
    for step, micro in [(3, 1), (0, 0), (11, 0), (3, 1)]:
        assert all(
            torch.equal(u, v) for u, v in zip(a.train_batch(step, micro), b.train_batch(step, micro), strict=True)
        )
    assert not torch.equal(a.train_batch(0, 0)[0], a.train_batch(0, 1)[0])
    # One epoch of 48 examples = 6 steps of 2 micro-batches of 4, walking one permutation: each example once.
    order = a.epoch_order(0).tolist()
    assert sorted(order) == list(range(48)) and order != a.epoch_order(1).tolist()
    for k in range(12):
        step, micro = divmod(k, 2)
        expected = a.collate([enc.items[i] for i in order[4 * k : 4 * k + 4]])
        assert all(torch.equal(u, v) for u, v in zip(a.train_batch(step, micro), expected, strict=True))


def test_batches_pad_with_no_loss_and_evaluate_the_whole_validation_set(task_file, tiny_model_dir):
    tok, enc = encoded(task_file, tiny_model_dir)
    batches = TaskBatches(enc, enc, batch_size=5, grad_accum=1, seed=0, pad_id=tok.pad_id)
    x, y = batches.train_batch(0, 0)
    for row in range(5):
        n = int((y[row] != -1).nonzero().max()) + 1  # up to the last trained position
        assert (x[row, n:] == tok.pad_id).all() and (y[row, n:] == -1).all()
    val = list(batches.eval_batches("val", 1))
    assert [len(v[0]) for v in val] == [5] * 9 + [3]  # 48 examples in batches of 5
    assert sum(len(v[0]) for v in batches.eval_batches("train", 2)) == 48


def test_targets_are_the_assistant_text_and_end_only(task_file, tiny_model_dir):
    tok, enc = encoded(task_file, tiny_model_dir)
    x, y = TaskBatches(enc, enc, 1, 1, 0, tok.pad_id).collate([enc.items[0]])
    trained = y[0][y[0] != -1].tolist()
    assert trained == tok.encode(" ball") + [tok.special["<|end|>"]]
    assert x[0].tolist() == enc.items[0][0][:-1]


def test_the_loss_does_not_depend_on_predictions_at_prompt_positions(task_file, tiny_model_dir):
    """Changing only what the model predicts at prompt positions leaves the loss as it was; changing a
    prediction of the answer moves it."""
    model, tok, _ = load_model(tiny_model_dir)
    _, enc = encoded(task_file, tiny_model_dir)
    x, y = TaskBatches(enc, enc, 8, 1, 0, tok.pad_id).train_batch(0, 0)
    logits = model(x).detach()
    loss = causal_lm_loss(logits, y)
    prompt = y == -1
    noisy = logits.clone()
    noisy[prompt] += 50 * torch.randn_like(noisy[prompt])
    assert torch.equal(causal_lm_loss(noisy, y), loss)
    moved = logits.clone()
    moved[~prompt] += 50 * torch.randn_like(moved[~prompt])
    assert not torch.allclose(causal_lm_loss(moved, y), loss)
    # And so the gradient reaches the logits only at answer positions.
    leaf = logits.clone().requires_grad_(True)
    causal_lm_loss(leaf, y).backward()
    assert (leaf.grad[prompt] == 0).all() and (leaf.grad[~prompt].abs().sum(-1) > 0).all()


# ----------------------------------------------------------------------------------------------------------
# LoRA


def test_lora_gradients_reach_only_the_adapters(task_file, tiny_model_dir):
    model, tok, _ = load_model(tiny_model_dir)
    _, enc = encoded(task_file, tiny_model_dir)
    lora.apply_lora(model, **lora_settings(FinetuneConfig(lora_rank=4), tok))
    model.train()
    x, y = TaskBatches(enc, enc, 8, 1, 0, tok.pad_id).train_batch(0, 0)
    causal_lm_loss(model(x), y).backward()
    for name, p in model.named_parameters():
        is_adapter = any(k in name for k in ("lora_a", "lora_b", "lora_rows"))
        assert p.requires_grad == is_adapter, name
        assert (p.grad is not None) == is_adapter, name
    rows = model.tok_emb.rows
    assert model.lm_head.rows is rows  # tied embeddings: one delta for input and output
    assert rows.lora_rows.grad.abs().sum() > 0


@pytest.mark.parametrize("tied", [True, False])
def test_adapters_are_made_on_the_device_the_model_is_on(tiny_model_dir, tied):
    # A fine-tune moves the model to its GPU before adding adapters; "meta" stands in for that other device here.
    model, tok, _ = load_model(tiny_model_dir)
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.to("meta")
    lora.apply_lora(model, **lora_settings(FinetuneConfig(lora_rank=4), tok))
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert any("lora_rows" in name for name in tensors) and any("lora_a" in name for name in tensors)
    assert {name: t.device.type for name, t in tensors.items() if t.device.type != "meta"} == {}


def test_merged_model_matches_base_plus_adapter(tiny_model_dir):
    model, tok, _ = load_model(tiny_model_dir)
    torch.manual_seed(0)
    lora.apply_lora(model, **lora_settings(FinetuneConfig(lora_rank=4, lora_dropout=0.0), tok))
    with torch.no_grad():  # a trained-looking adapter: nonzero B and token rows
        for name, p in model.named_parameters():
            if "lora_b" in name or "lora_rows" in name:
                p.normal_(0, 0.05)
    model.eval()
    x = torch.tensor([[tok.eos_id, tok.special["<|user|>"], *tok.encode(" Tom had a ball."), tok.special["<|end|>"]]])
    with torch.no_grad():
        before = model(x)
        lora.merge_lora(model)
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert model.lm_head.weight is model.tok_emb.weight  # still tied
    assert not any("lora" in name for name, _ in model.named_parameters())


# ----------------------------------------------------------------------------------------------------------
# Runs


def test_lora_run_stores_adapters_records_its_origin_and_logs_probes(tmp_path, task_file, tiny_model_dir):
    out = tmp_path / "run"
    cfg = quick(probes=["What does Lily like?", "Who is Tom?"], probe_tokens=5)
    result = finetune.finetune(job(tiny_model_dir, task_file, cfg), out)
    assert result.step == 6 and result.reason == "done"
    latest = out / "latest"
    assert (latest / "adapter.safetensors").is_file() and not (latest / "model.safetensors").exists()
    adapter = json.loads((latest / "adapter.json").read_text())
    assert Path(adapter["base"]) == Path(tiny_model_dir).resolve()
    assert set(adapter["lora"]) == {"rank", "alpha", "dropout", "targets", "tokens"} and adapter["lora"]["rank"] == 4
    info = json.loads((latest / "info.json").read_text())
    assert info["kind"] == "finetuned" and info["method"] == "lora" and info["base"] == adapter["base"]
    data = read_task_file(task_file)
    assert info["dataset"]["name"] == "favourites.csv" and info["dataset"]["content_hash"] == data.content_hash
    assert (info["dataset"]["train_examples"], info["dataset"]["val_examples"]) == (36, 12)
    assert info["finetune"]["lora_rank"] == 4 and info["train_config"]["max_steps"] == 6
    assert info["step"] == 6 and info["best_val_loss"] is not None and info["train_loss"] > 0
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert evals and all([s["prompt"] for s in r["samples"]] == cfg.probes for r in evals)
    assert all(isinstance(s["output"], str) for s in evals[-1]["samples"])
    # The adapter is a small fraction of a full checkpoint, and loading it gives a working merged model.
    full_size = (Path(tiny_model_dir) / "model.safetensors").stat().st_size
    assert (latest / "adapter.safetensors").stat().st_size < 0.1 * full_size
    model, _, loaded_info = load_model(out)  # best/ first
    assert loaded_info["kind"] == "finetuned" and not any("lora" in n for n, _ in model.named_parameters())


def test_full_run_stores_full_weights_and_keeps_the_best(tmp_path, task_file, tiny_model_dir):
    out = tmp_path / "run"
    result = finetune.finetune(job(tiny_model_dir, task_file, quick(method="full")), out, tmp_path / "m.jsonl")
    assert (out / "latest" / "model.safetensors").is_file() and (out / "best" / "model.safetensors").is_file()
    info = checkpoint.read_info(out / "best")
    assert info["method"] == "full" and "lora" not in info
    assert info["best_val_loss"] == pytest.approx(result.best_val_loss, rel=1e-5)
    assert (tmp_path / "m.jsonl").is_file() and not (out / "metrics.jsonl").exists()


def test_early_stopping_on_exact_match_keeps_the_checkpoint_that_answers_best(tmp_path, task_file, tiny_model_dir):
    out, metrics_path = tmp_path / "run", tmp_path / "m.jsonl"
    cfg = quick(early_stop_metric="exact", max_steps=12, lr=1e-2, early_stop_patience=0)
    finetune.finetune(job(tiny_model_dir, task_file, cfg), out, metrics_path)
    evals = read_metrics(metrics_path)
    evals = [r for r in evals if "val_exact" in r]
    assert len(evals) >= 3 and all(0 <= r["val_exact"] <= 1 and 0 <= r["val_f1"] <= 1 for r in evals)
    best = max(evals, key=lambda r: (r["val_exact"], -r["val_loss"]))  # the first such, on a tie of both
    assert checkpoint.read_info(out / "best")["step"] == best["step"]


def test_the_selection_score_prefers_exact_match_and_breaks_ties_by_loss():
    from llm.train.trainer import selection_score

    assert selection_score("val_loss", {"val_loss": 1.5}, {}) == 1.5
    better = selection_score("val_exact", {"val_loss": 9.0}, {"val_exact": 0.5})
    worse = selection_score("val_exact", {"val_loss": 0.1}, {"val_exact": 0.25})
    assert better < worse, "one more row answered exactly outweighs any loss"
    assert selection_score("val_exact", {"val_loss": 1.0}, {"val_exact": 0.5}) < better, "a tie: the lower loss"
    assert selection_score("val_exact", {"val_loss": 1.0}, {}) is None, "nothing scored: no checkpoint is better"
    with pytest.raises(ConfigError):
        FinetuneConfig(early_stop_metric="accuracy")


def test_merge_stores_full_weights_equal_to_the_adapter(tmp_path, task_file, tiny_model_dir):
    out = tmp_path / "run"
    finetune.finetune(job(tiny_model_dir, task_file, quick(merge=True, lora_dropout=0.0)), out)
    best = out / "best"
    assert (best / "model.safetensors").is_file() and not (best / "adapter.json").exists()
    assert checkpoint.read_info(best)["merged"] is True
    assert (out / "latest" / "adapter.json").is_file()  # latest stays resumable
    merged, tok, _ = load_model(best)
    x = torch.tensor([[tok.eos_id, tok.special["<|user|>"], *tok.encode(" What does Tom like?")]])
    adapter_best = out / "best-adapter"
    # Rebuild what best/ held before the merge: the same run without --merge.
    finetune.finetune(job(tiny_model_dir, task_file, quick(lora_dropout=0.0)), adapter_best)
    unmerged, _, _ = load_model(adapter_best / "best")
    with torch.no_grad():
        assert torch.allclose(merged(x), unmerged(x), atol=1e-5)


def test_resume_after_sigterm_gives_exactly_the_uninterrupted_run(tmp_path, task_file, tiny_model_dir, monkeypatch):
    cfg = job(tiny_model_dir, task_file, quick(max_steps=8, lora_dropout=0.1))  # dropout: RNG state restored too
    finetune.finetune(cfg, tmp_path / "whole")

    original = TaskBatches.train_batch

    def interrupting(self, step, micro):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer finishes the step, checkpoints and stops
        return original(self, step, micro)

    monkeypatch.setattr(TaskBatches, "train_batch", interrupting)
    stopped = finetune.finetune(cfg, tmp_path / "cut")
    assert stopped.reason == "stopped" and stopped.step == 4
    monkeypatch.setattr(TaskBatches, "train_batch", original)
    resumed = finetune.resume(tmp_path / "cut")
    assert resumed.step == 8
    whole = load_file(str(tmp_path / "whole" / "latest" / "adapter.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "latest" / "adapter.safetensors"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_resume_refuses_a_changed_dataset(tmp_path, tiny_model_dir):
    data = favourites_csv(tmp_path / "f.csv")
    finetune.finetune(job(tiny_model_dir, data, quick(max_steps=2)), tmp_path / "run")
    data.write_text(data.read_text().replace("ball", "kite"))
    with pytest.raises(TaskFileError, match="the file changed since the run started"):
        finetune.resume(tmp_path / "run")


def test_a_validation_file_replaces_the_split(tmp_path, task_file, tiny_model_dir):
    val = tmp_path / "val.csv"
    val.write_text("question,answer\nWhat does Lily like?,ball\nWhat does Tom like?,cake\n")
    finetune.finetune(replace(job(tiny_model_dir, task_file, quick(max_steps=2)), val_data=str(val)), tmp_path / "run")
    dataset = checkpoint.read_info(tmp_path / "run" / "latest")["dataset"]
    assert (dataset["train_examples"], dataset["val_examples"], dataset["validation"]) == (48, 2, str(val))


@pytest.mark.parametrize(
    "case,error,message",
    [
        ("bad data", TaskFileError, r"bad.jsonl, line 2, column 14: malformed JSON"),
        ("no base", Exception, r"no such model directory"),
        ("bad column", TaskFileError, r"no column 'q'"),
        ("bad target", ConfigError, r"lora_targets unknown \['wz'\]"),
        ("existing run", ConfigError, r"already holds a run: resume it"),
    ],
)
def test_bad_input_leaves_no_output_directory(tmp_path, task_file, tiny_model_dir, case, error, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n{"question": \n')
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        if case == "bad data":
            finetune.finetune(job(tiny_model_dir, bad, quick()), out)
        elif case == "no base":
            finetune.finetune(job(tmp_path / "nowhere", task_file, quick()), out)
        elif case == "bad column":
            mapping = {"prompt": "q", "response": "answer"}
            finetune.finetune(job(tiny_model_dir, task_file, quick(mapping=mapping)), out)
        elif case == "bad target":
            finetune.finetune(job(tiny_model_dir, task_file, quick(lora_targets=["wq", "wz"])), out)
        else:
            (out / "latest").mkdir(parents=True)
            finetune.finetune(job(tiny_model_dir, task_file, quick()), out)
    if case != "existing run":
        assert not out.exists()
    else:
        assert [p.name for p in out.iterdir()] == ["latest"] and not any((out / "latest").iterdir())


def test_the_missing_shipped_base_model_gets_a_clear_message(tmp_path, task_file, monkeypatch):
    monkeypatch.setattr(tuning, "DEFAULT_BASE_MODEL", tmp_path / "models" / "base")
    with pytest.raises(checkpoint.CheckpointError, match=r"the shipped base model is not in .* yet") as caught:
        finetune.finetune(job(tmp_path / "models" / "base", task_file, quick()), tmp_path / "run")
    assert caught.value.field == "base"


def test_the_default_batch_follows_the_rows_length_not_the_context(tmp_path, task_file, tiny_model_dir):
    assert tuning.training_settings(FinetuneConfig(), 1000, 10, 40)[0].batch_size == 8  # short rows: 8 a batch
    assert tuning.training_settings(FinetuneConfig(), 1000, 10, 1024)[0].batch_size == 2  # 2,048 tokens of rows
    # A long-context model (an import, say) with the same short rows: 8 a batch, not 2048 // 8192 = 1.
    model, tok, _ = load_model(tiny_model_dir)
    long = Transformer(replace(model.cfg, context_length=8192))
    checkpoint.save_checkpoint(tmp_path / "long", long, tok)
    assert finetune.prepare(job(tmp_path / "long", task_file, FinetuneConfig())).train_cfg.batch_size == 8


def test_plan_reports_sizes_steps_and_estimates(task_file, tiny_model_dir):
    data = read_task_file(task_file)
    lora_plan = finetune.plan(finetune.prepare(job(tiny_model_dir, task_file, FinetuneConfig(lora_rank=4, epochs=3))))
    full_cfg = job(tiny_model_dir, task_file, FinetuneConfig(method="full", epochs=3))
    full_plan = finetune.plan(finetune.prepare(full_cfg, data))  # data already read: not read again
    assert lora_plan["params"] > full_plan["params"] == full_plan["trainable_params"]  # LoRA adds its adapters
    assert 0 < lora_plan["trainable_params"] < 0.1 * lora_plan["params"]
    assert (lora_plan["train_examples"], lora_plan["val_examples"]) == (43, 5)
    assert lora_plan["max_steps"] == 3 * lora_plan["steps_per_epoch"]
    assert lora_plan["batch_size"] == 8  # TOKENS_PER_BATCH over rows of up to SHORT_ROWS (a quarter: 10)
    assert lora_plan["lr"] > full_plan["lr"]
    assert full_plan["est_memory_bytes"] > lora_plan["est_memory_bytes"] > 0
    assert full_plan["est_seconds"] > 0 and lora_plan["est_seconds"] > 0
    assert lora_plan["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")  # auto: the GPU if any


def test_the_plan_times_steps_of_the_runs_own_batches_once(task_file, tiny_model_dir, monkeypatch):
    """The plan's time comes from optimizer steps timed on the run's first batches (their lengths, LoRA on),
    not from a FLOPs rate; a second plan with the same settings times nothing again."""
    from llm.data.batches import TaskBatches
    from llm.train import speed

    timed = []
    real = speed.time_source

    def recording(model, cfg, batches, steps, device):
        timed.append(([batches.train_batch(i, 0)[0].shape for i in range(steps + 1)], model))
        return real(model, cfg, batches, steps, device)

    monkeypatch.setattr(speed, "time_source", recording)
    prep = finetune.prepare(job(tiny_model_dir, task_file, FinetuneConfig(lora_rank=4, epochs=3, seed=7)))
    plan = finetune.plan(prep)
    tc = prep.train_cfg
    own = TaskBatches(prep.train, prep.val, tc.batch_size, tc.grad_accum, 7, prep.tokenizer.pad_id)
    assert len(timed) == 1 and timed[0][0] == [own.train_batch(i, 0)[0].shape for i in range(speed.TUNING_STEPS + 1)]
    assert any("lora" in name for name, _ in timed[0][1].named_parameters()), "timed with the adapters on"
    assert plan["est_step_seconds"] > 0
    expected = plan["est_step_seconds"] * plan["max_steps"]  # the evaluations add to the steps' time
    assert plan["est_seconds"] >= 0.9 * expected
    assert finetune.plan(prep)["est_step_seconds"] == plan["est_step_seconds"] and len(timed) == 1, "cached"


def test_the_plan_refuses_a_batch_the_memory_cannot_hold(task_file, tiny_model_dir, monkeypatch):
    prep = finetune.prepare(job(tiny_model_dir, task_file, FinetuneConfig(batch_size=40)))
    needed = finetune.plan(prep)["est_memory_bytes"]
    monkeypatch.setattr(finetune, "available_memory", lambda device: needed - 1)
    with pytest.raises(
        ConfigError, match=r"batch_size 40 is too large for the memory: a batch of 40 examples .* smaller batch size"
    ) as caught:
        finetune.plan(prep)
    assert caught.value.field == "batch_size"


def test_config_errors_name_the_parameter():
    for bad, field in [
        (dict(method="qlora"), "method"),
        (dict(epochs=0), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(method="full", merge=True), "merge"),
    ]:
        with pytest.raises(ConfigError, match=field) as caught:
            FinetuneConfig(**bad)
        assert caught.value.field == field


# ----------------------------------------------------------------------------------------------------------
# The command line, and a run that learns


def test_cli_finetune_prints_the_plan_and_where_the_model_is(tmp_path, task_file, tiny_model_dir, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--base", tiny_model_dir, "--data", task_file, "--out", out, "--max-steps", "2"]
    assert (
        main([str(a) for a in [*args, "--probe", "What does Lily like?", "--method", "lora", "--lora-rank", "2"]]) == 0
    )
    printed = capsys.readouterr().out
    assert "pairs format, 48 rows, 48 kept, 0 dropped" in printed and "43 train / 5 val examples" in printed
    assert f"the model is in {out}" in printed
    assert any("samples" in r for r in read_metrics(out / "metrics.jsonl"))
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nWhat?,\n")
    assert main([str(a) for a in ["finetune", "--base", tiny_model_dir, "--data", bad, "--out", tmp_path / "x"]]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process(tmp_path, task_file, tiny_model_dir):
    """A LoRA run under torchrun (gloo on CPU), 2 ranks x 1 micro-batch, equals 1 process x 2 micro-batches."""
    flags = ["--base", tiny_model_dir, "--data", task_file, "--method", "lora", "--grad-accum", "2"]
    flags += ["--max-steps", "6", "--batch-size", "4", "--lora-rank", "4", "--lora-dropout", "0"]
    flags += ["--probe", "What does Tom like?"]  # dropout 0: each rank draws its own masks
    single = run_llm("finetune", "--out", tmp_path / "single", *flags)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, "-m", "llm", "finetune", "--out", str(tmp_path / "ddp"), *map(str, flags)]
    ddp = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr
    one, two = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("single", "ddp"))
    assert one[0]["world"] == 1 and two[0]["world"] == 2
    assert loss_curve(two) == pytest.approx(loss_curve(one), abs=1e-4)
    evals = lambda records: [r for r in records if "val_loss" in r]  # noqa: E731
    assert [r["val_loss"] for r in evals(two)] == pytest.approx([r["val_loss"] for r in evals(one)], abs=1e-4)
    assert [r["samples"] for r in evals(two)] == [r["samples"] for r in evals(one)]
    a, b = (load_file(str(tmp_path / run / "latest" / "adapter.safetensors")) for run in ("single", "ddp"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0, msg=name)


def copy_task_csv(path: Path) -> Path:
    """64 rows "Tom had a cake. What did Tom have?" -> "cake": held-out rows are new name/thing pairs, so the
    model has to learn to find the answer in the prompt rather than memorise it."""
    rows = [f"{n} had a {t}. What did {n} have?,{t}" for n in NAMES for t in THINGS]
    path.write_text("question,answer\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_full_finetuning_teaches_a_task(tmp_path, tiny_model_dir):
    """Exact match on held-out rows goes from 0 to most of them. The 2-layer test model learns to look the
    answer up in ~700 steps, but when varies with the seed (69-100% measured over four runs), so the bound
    is loose."""
    task = copy_task_csv(tmp_path / "had.csv")
    cfg = FinetuneConfig(method="full", lr=3e-3, epochs=120, batch_size=8, val_fraction=0.25, early_stop_patience=0)
    finetune.finetune(job(tiny_model_dir, task, cfg), tmp_path / "run")
    held_out = split_examples(read_task_file(task), cfg.val_fraction, cfg.seed)[1]
    table = totals(evaluate_models([tiny_model_dir, tmp_path / "run"], held_out, max_new_tokens=4))
    assert table["rows"].tolist() == [16, 16]
    before, after = table["exact_match"].tolist()
    assert before <= 0.05 and after >= 0.5, table.to_dict("records")


@pytest.mark.slow
def test_lora_finetuning_learns_the_task_answers(tmp_path, tiny_model_dir):
    """LoRA on the 2-layer test model learns slowly (it trains few parameters from zero), but
    the held-out answers become far more likely."""
    task = copy_task_csv(tmp_path / "had.csv")
    cfg = FinetuneConfig(method="lora", lr=1e-2, epochs=40, batch_size=8, val_fraction=0.25, early_stop_patience=0)
    finetune.finetune(job(tiny_model_dir, task, cfg), tmp_path / "run")
    held_out = split_examples(read_task_file(task), cfg.val_fraction, cfg.seed)[1]
    before, after = totals(evaluate_models([tiny_model_dir, tmp_path / "run"], held_out, max_new_tokens=4))[
        "ref_perplexity"
    ].tolist()
    assert after < before / 10, (before, after)


def test_a_run_whose_answers_are_mostly_empty_says_so(tmp_path, tok, monkeypatch, capsys):
    from test_generate import ScriptedModel

    from llm.data.tasks import Example
    from studio.jobs import empty_answers_warning

    examples = [
        Example(i, [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"}]) for i in range(4)
    ]
    stops_at_once = ScriptedModel([tok.special["<|end|>"]], tok.vocab_size)
    assert finetune.empty_answers(stops_at_once, tok, examples) == 4
    answers = ScriptedModel(tok.encode(" Hello"), tok.vocab_size)
    assert finetune.empty_answers(answers, tok, examples) == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"event": "answers", "step": 9, "empty": 14, "rows": 16}) + "\n")
    from llm.run import RunDir

    assert "14 of 16 answers to training prompts are empty" in empty_answers_warning(RunDir(run))
