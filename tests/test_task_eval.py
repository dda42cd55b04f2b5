"""Task evaluation: scores, reference loss, the per-row table and totals, and the eval-task command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from llm.cli import main
from llm.config import FinetuneConfig
from llm.data.batches import TaskBatches
from llm.data.tasks import Example, encode_examples, read_task_file
from llm.eval.tasks import evaluate_models, reference_loss, score, split_reference, totals
from llm.model.checkpoint import load_model
from llm.model.transformer import causal_lm_loss
from llm.train import finetune


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "likes.csv"
    rows = [
        f"What does {n} like?,{t}"
        for n, t in zip(
            ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna"], "ball cat tree cake boat hat".split(), strict=True
        )
    ]
    path.write_text("question,answer\n" + "\n".join(rows * 2) + "\n")
    return path


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, tiny_model_dir, task_file) -> Path:
    out = tmp_path_factory.mktemp("tuned") / "run"
    cfg = FinetuneConfig(base=str(tiny_model_dir), data=str(task_file), max_steps=4, batch_size=4, lora_rank=2)
    finetune.finetune(cfg, out)
    return out


@pytest.mark.parametrize(
    "prediction,reference,exact,contains,f1",
    [
        ("Small.", "small", True, True, 1.0),
        ("the small", "small", True, True, 1.0),  # articles and punctuation do not count
        ("It is small!", "small", False, True, 0.5),
        ("smaller", "small", False, False, 0.0),  # whole words only
        ("big red ball", "red ball", False, True, 0.8),
        ("ball red", "red ball", False, False, 1.0),  # F1 ignores order, contains does not
        ("", "small", False, False, 0.0),
    ],
)
def test_score(prediction, reference, exact, contains, f1):
    result = score(prediction, reference)
    assert (result["exact"], result["contains"]) == (exact, contains)
    assert result["f1"] == pytest.approx(f1)


def test_the_reference_is_the_last_assistant_turn():
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    assert split_reference(Example(1, turns)) == (turns[:3], "d")


def test_reference_loss_is_the_training_loss_of_the_answer(tiny_model_dir, task_file):
    model, tok, _ = load_model(tiny_model_dir)
    data = read_task_file(task_file)
    enc = encode_examples(data, tok, model.cfg.context_length)
    x, y = TaskBatches(enc, enc, 1, 1, 0, tok.pad_id).collate([enc.items[0]])
    with torch.no_grad():
        expected = causal_lm_loss(model(x), y).item()
    messages, reference = split_reference(data.examples[0])
    loss, count = reference_loss(model, tok, messages, reference)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert count == len(tok.encode(" " + reference)) + 1  # and its <|end|>


def test_every_model_answers_the_same_rows_and_totals_sum_them_up(tiny_model_dir, tuned_dir, task_file):
    data = read_task_file(task_file)
    table = evaluate_models([tiny_model_dir, tuned_dir], data, rows=5, seed=3, max_new_tokens=4)
    assert list(table.columns) == [
        "model", "row", "prompt", "reference", "answer", "exact", "contains", "f1", "ref_loss", "ref_tokens",
    ]  # fmt: skip
    base, tuned = (table[table["model"] == str(m)] for m in (tiny_model_dir, tuned_dir))
    assert len(base) == len(tuned) == 5 and base["row"].tolist() == tuned["row"].tolist()
    assert base["row"].tolist() == sorted(base["row"]) and base["prompt"].tolist() == tuned["prompt"].tolist()
    again = evaluate_models([tiny_model_dir], data, rows=5, seed=3, max_new_tokens=4)
    assert again["answer"].tolist() == base["answer"].tolist()  # greedy: the same answers every time
    summary = totals(table)
    assert summary["model"].tolist() == [str(tiny_model_dir), str(tuned_dir)]
    first = summary.iloc[0]
    assert first["rows"] == 5 and first["exact_match"] == base["exact"].mean()
    nll = (base["ref_loss"] * base["ref_tokens"]).sum() / base["ref_tokens"].sum()
    assert first["ref_perplexity"] == pytest.approx(math.exp(nll))


def test_sampled_answers_are_seeded_per_row(tiny_model_dir, task_file):
    data = read_task_file(task_file)
    run = lambda seed: evaluate_models([tiny_model_dir], data, rows=4, seed=seed, max_new_tokens=8, temperature=1.5)  # noqa: E731
    assert run(1)["answer"].tolist() == run(1)["answer"].tolist()
    assert run(1)["answer"].tolist() != run(2)["answer"].tolist()


def test_eval_task_cli_writes_the_before_after_table(tmp_path, tiny_model_dir, tuned_dir, task_file, capsys):
    out = tmp_path / "report.csv"
    args = ["eval-task", "--model", tiny_model_dir, "--model", tuned_dir, "--data", task_file, "--split", "val"]
    assert main([str(a) for a in [*args, "--max-new-tokens", "4", "--out", out]]) == 0
    printed = capsys.readouterr().out
    assert "1 rows (val), 2 model(s)" in printed and "exact_match" in printed
    assert str(tiny_model_dir) in printed and str(tuned_dir) in printed
    rows = pd.read_csv(out)
    assert len(rows) == 2 and rows["row"].nunique() == 1
    report = json.loads(out.with_suffix(".json").read_text())
    assert [t["model"] for t in report["totals"]] == [str(tiny_model_dir), str(tuned_dir)]
    assert report["data"]["split"] == "val" and len(report["rows"]) == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_eval_task_cli_names_a_missing_model(tmp_path, task_file, capsys):
    assert main(["eval-task", "--model", str(tmp_path / "gone"), "--data", str(task_file)]) == 2
    assert "gone: no such model directory" in capsys.readouterr().err
