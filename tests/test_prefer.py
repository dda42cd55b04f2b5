"""Preference tuning (DPO): the loss against a hand computation and at its starting point, the LoRA-disabled
reference, preference files and their errors, win-rate rules, an end-to-end run that learns the preference,
the CLI's exit code on bad input, and an exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm.cli import main
from llm.config import PreferConfig
from llm.data.batches import PairBatches
from llm.data.preferences import encode_pairs, read_preference_file
from llm.errors import ConfigError, TaskFileError
from llm.eval.preferences import outcome, parse_rule, sequence_logps
from llm.model import lora
from llm.model.checkpoint import load_model
from llm.run import read_metrics
from llm.train import prefer
from llm.train.prefer import DPOObjective, dpo_loss
from llm.train.tuning import lora_settings

NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Sue"]
THINGS = ["ball", "cat", "tree", "cake", "boat", "hat", "dog", "book"]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def story_pairs(path: Path) -> Path:
    """64 pairs in the words of the tiny test model: the chosen answer asks a question back, the rejected one
    ends with a statement; otherwise they are the same."""
    rows = []
    for name in NAMES:
        for thing in THINGS:
            body = f"{name} had a {thing}."
            rows.append(
                {
                    "prompt": f"Tell me about {name} and the {thing}.",
                    "chosen": f"{body} Can I play with the {thing}?",
                    "rejected": f"{body} They played all day.",
                }
            )
    return jsonl(path, rows)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return story_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def quick(base: Path, data: Path, **overrides) -> PreferConfig:
    settings = dict(base=str(base), data=str(data), max_steps=6, batch_size=4, val_fraction=0.25, lora_rank=4)
    return PreferConfig(**{**settings, **overrides})


# ----------------------------------------------------------------------------------------------------------
# The loss


def test_dpo_loss_equals_a_hand_computation_on_a_toy_batch():
    # Two sequences of two positions over three tokens; position 0 of the first is not an answer token.
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0]], [[0.0, 1.0, 1.0], [2.0, 0.0, 1.0]]])
    targets = torch.tensor([[-1, 2], [1, 0]])

    def log_softmax(row, k):
        return row[k] - math.log(sum(math.exp(v) for v in row))

    rows = logits.tolist()
    by_hand = [log_softmax(rows[0][1], 2), log_softmax(rows[1][0], 1) + log_softmax(rows[1][1], 0)]
    assert sequence_logps(logits, targets).tolist() == pytest.approx(by_hand, abs=1e-6)

    policy_c, policy_r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    ref_c, ref_r = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    beta = 0.5
    margins = [beta * ((-3.0 + 3.5) - (-4.0 + 3.0)), beta * ((-5.0 + 4.0) - (-2.0 + 2.5))]  # 0.75, -0.75
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 2
    loss, got = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta)
    assert got.tolist() == pytest.approx(margins)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_with_the_reference_equal_to_the_policy_the_loss_is_log_2_and_only_the_margin_has_a_gradient():
    """ "Zero gradient on the margin terms", stated exactly: when the policy equals the reference every margin
    is 0 and the loss is log 2. The gradient with respect to each pair's chosen log-prob is then -beta/2 (per
    pair, over B pairs: -beta/(2B)) and with respect to its rejected log-prob +beta/(2B): not zero, DPO moves
    them apart from the first step. What is zero is the gradient along a common shift of both log-probs
    (their sum: only the margin counts) and any gradient into the reference (it is a constant)."""
    B, beta = 3, 0.2
    policy_c = torch.tensor([-3.0, -7.0, -1.5], requires_grad=True)
    policy_r = torch.tensor([-2.0, -9.0, -4.0], requires_grad=True)
    ref_c, ref_r = policy_c.detach().clone(), policy_r.detach().clone()
    loss, margins = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7) and torch.all(margins == 0)
    loss.backward()
    assert torch.allclose(policy_c.grad, torch.full((B,), -beta / (2 * B)))
    assert torch.allclose(policy_r.grad, torch.full((B,), beta / (2 * B)))
    assert torch.allclose(policy_c.grad + policy_r.grad, torch.zeros(B))


def test_a_fresh_lora_model_starts_at_log_2_and_the_reference_gets_no_gradient(pairs_file, tiny_model_dir):
    model, tok, _ = load_model(tiny_model_dir)
    cfg = quick(tiny_model_dir, pairs_file)
    lora.apply_lora(model, **lora_settings(cfg, tok))  # B = 0 and zero token rows: the policy is the reference
    enc = encode_pairs(read_preference_file(pairs_file), tok, model.cfg.context_length)
    x, y = PairBatches(enc, enc, 4, 1, 0, tok.pad_id).train_batch(0, 0)
    objective = DPOObjective(beta=0.1, sft_weight=0.0)
    loss = objective(model, x, y)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads)  # the frozen base (the reference) gets nothing
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_disabled_lora_gives_exactly_the_base_models_logits(tiny_model_dir):
    base, tok, _ = load_model(tiny_model_dir)
    model, _, _ = load_model(tiny_model_dir)
    lora.apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["wq", "w_up"], tokens=[tok.special["<|end|>"]])
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if ".lora_" in name:
            p.data.normal_()  # a trained-looking adapter, so switching it off makes a difference
    x = torch.tensor([[tok.eos_id, *tok.encode(" Lily had a ball."), tok.special["<|end|>"]]])
    with torch.no_grad():
        expected, adapted = base(x), model(x)
        with lora.disabled(model):
            off = model(x)
        again = model(x)
    assert torch.equal(off, expected)
    assert not torch.allclose(adapted, expected) and torch.equal(again, adapted)


# ----------------------------------------------------------------------------------------------------------
# Preference files


def test_the_forms_people_have_read_to_the_same_pairs(tmp_path):
    text = jsonl(tmp_path / "t.jsonl", [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}])
    factory = jsonl(
        tmp_path / "f.jsonl", [{"instruction": "Hi?", "input": "", "chosen": "Hello!", "rejected": "Go away."}]
    )
    turns = [{"role": "user", "content": "Hi?"}]
    conversations = jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "chosen": [*turns, {"role": "assistant", "content": "Hello!"}],
                "rejected": [*turns, {"role": "assistant", "content": "Go away."}],
            }
        ],
    )
    one_turn = jsonl(
        tmp_path / "o.jsonl",
        [{"conversations": [{"from": "human", "value": "Hi?"}], "chosen": {"from": "gpt", "value": "Hello!"},
          "rejected": {"from": "gpt", "value": "Go away."}}],
    )  # fmt: skip
    csv = tmp_path / "t.csv"
    csv.write_text("prompt,chosen,rejected\nHi?,Hello!,Go away.\n")
    for path in (text, factory, conversations, one_turn, csv):
        pair = read_preference_file(path).examples[0]
        assert (pair.prompt, pair.chosen, pair.rejected) == (turns, "Hello!", "Go away."), path.name
    alpaca_input = jsonl(tmp_path / "i.jsonl", [{"instruction": "Add", "input": "1+1", "chosen": "2", "rejected": "3"}])
    assert read_preference_file(alpaca_input).examples[0].prompt == [{"role": "user", "content": "Add\n\n1+1"}]


def test_every_bad_row_is_reported_with_its_row_and_column(tmp_path):
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},  # line 1: fine
        {"prompt": "Hi?", "chosen": "", "rejected": "Go away."},
        {"prompt": "Hi?", "chosen": "Same", "rejected": "Same"},
        {"prompt": 7, "chosen": "a", "rejected": "b"},
        {"chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "b"}], "prompt": []},
        {"prompt": "Hi?", "chosen": [{"role": "robot", "content": "x"}], "rejected": "y"},
        {"prompt": "Hi?", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}, {"role": "user",
                                                                                             "content": "c"}]},
    ]  # fmt: skip
    data = read_preference_file(jsonl(tmp_path / "p.jsonl", rows))
    assert [p.row for p in data.examples] == [1]
    found = [(p.row, p.column, p.reason) for p in data.problems]
    assert found == [
        (2, "chosen", "empty answer"),
        (3, "rejected", "same answer"),
        (4, "prompt", "wrong type"),
        (5, "rejected", "different prompts"),
        (6, "chosen", "unknown role"),
        (7, "rejected", "assistant turn first"),  # an answer before any question
    ]
    assert str(data.problems[0]) == "row 2, column 'chosen': empty answer"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("p.jsonl", '{"prompt": "a", "chosen": "b"}\n', r"missing column\(s\) \['rejected'\]"),
        ("p.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n', r"line 2, column \d+: malformed"),
        ("p.csv", b"prompt,chosen,rejected\nHi,\xff,no\n", "not UTF-8 text"),
        ("p.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "b"}\n', "no usable rows.*row 1.*same answer"),
        ("p.txt", "prompt chosen rejected\n", "unsupported file type"),
    ],
)
def test_unusable_files_raise_with_the_file_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TaskFileError, match=message) as error:
        read_preference_file(path)
    assert str(path) in str(error.value)


def test_only_the_answer_tokens_are_marked(pairs_file, tiny_model_dir):
    _, tok, _ = load_model(tiny_model_dir)
    enc = encode_pairs(read_preference_file(pairs_file), tok, 64)
    (chosen_ids, chosen_mask), _ = enc.items[0]
    marked = [i for i, m in zip(chosen_ids, chosen_mask, strict=True) if m]
    assert tok.decode(marked[:-1]) == " Lily had a ball. Can I play with the ball?"
    assert marked[-1] == tok.special["<|end|>"]


# ----------------------------------------------------------------------------------------------------------
# Win-rate rules


def test_rules_compare_two_answers_and_refuse_anything_else():
    ask = parse_rule("ends-with-question")
    assert outcome(ask, "Do you?", "I do.") == "win" and outcome(ask, "I do.", "Do you?") == "loss"
    assert outcome(ask, "A?", "B?") == "tie"
    assert outcome(parse_rule("shorter"), "ab", "abc") == "win"
    assert outcome(parse_rule("contains:please"), "yes please", "yes") == "win"
    assert outcome(parse_rule("regex:^[A-Z]"), "yes", "Yes") == "loss"
    for bad in ("longest", "contains:", "regex:(", "__import__('os')"):
        with pytest.raises(ConfigError) as error:
            parse_rule(bad)
        assert error.value.field == "rule"


# ----------------------------------------------------------------------------------------------------------
# Runs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_learns_the_preference_on_held_out_pairs(tmp_path, pairs_file, tiny_model_dir, method):
    cfg = quick(tiny_model_dir, pairs_file, method=method, max_steps=40, batch_size=8, evals_per_epoch=1)
    cfg = replace(cfg, lr=3e-3 if method == "lora" else 3e-4)
    prefer.prefer(cfg, tmp_path / "run")
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl").evals if "reward_accuracy" in r]
    first, last = evals[0], evals[-1]
    assert last["reward_accuracy"] >= 0.9 and last["reward_margin"] > first["reward_margin"] > 0
    info = json.loads((tmp_path / "run" / "latest" / "info.json").read_text())
    assert info["kind"] == "preferred" and info["prefer"]["beta"] == cfg.beta and info["dataset"]["val_pairs"] == 16
    stored = "adapter.safetensors" if method == "lora" else "model.safetensors"
    assert (tmp_path / "run" / "best" / stored).is_file()


def test_resume_after_sigterm_gives_exactly_the_uninterrupted_run(tmp_path, pairs_file, tiny_model_dir, monkeypatch):
    cfg = quick(tiny_model_dir, pairs_file, max_steps=6, lora_dropout=0.1)  # dropout: RNG state restored too
    prefer.prefer(cfg, tmp_path / "whole")
    original = PairBatches.train_batch

    def interrupting(self, step, micro):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer finishes the step, checkpoints and stops
        return original(self, step, micro)

    monkeypatch.setattr(PairBatches, "train_batch", interrupting)
    assert prefer.prefer(cfg, tmp_path / "cut").step == 3
    monkeypatch.setattr(PairBatches, "train_batch", original)
    assert prefer.resume(tmp_path / "cut").step == 6
    whole = load_file(str(tmp_path / "whole" / "latest" / "adapter.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "latest" / "adapter.safetensors"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_cli_exits_with_2_naming_the_problem_and_records_it_in_the_run(tmp_path, tiny_model_dir, capsys):
    bad = jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b"}])
    run = tmp_path / "run"
    run.mkdir()  # as the studio makes it, with its config file
    PreferConfig(base=str(tiny_model_dir), data=str(bad)).save(run / "prefer.json")
    assert main(["prefer", "--config", str(run / "prefer.json"), "--out", str(run)]) == 2
    assert "missing column(s) ['rejected']" in capsys.readouterr().err
    (error,) = [e for e in read_metrics(run / "metrics.jsonl").events if e["event"] == "error"]
    assert error["kind"] == "data"
    assert main(["prefer", "--data", str(bad), "--out", str(tmp_path / "r2"), "--beta", "0"]) == 2
    assert "--beta must be positive" in capsys.readouterr().err
    assert main(["eval-prefer", "--model", str(tiny_model_dir), "--data", str(bad), "--rule", "best"]) == 2
    assert "--rule must be one of" in capsys.readouterr().err


def test_cli_prefer_then_eval_prefer_reports_a_win_rate(tmp_path, pairs_file, tiny_model_dir, capsys):
    args = ["--base", str(tiny_model_dir), "--data", str(pairs_file), "--max-steps", "2", "--batch-size", "4"]
    assert main(["prefer", "--out", str(tmp_path / "run"), *args]) == 0
    assert "DPO (lora, beta 0.1)" in capsys.readouterr().out
    out = tmp_path / "report.csv"
    code = main(["eval-prefer", "--model", str(tmp_path / "run"), "--data", str(pairs_file), "--rule",
                 "ends-with-question", "--rows", "3", "--max-new-tokens", "8", "--out", str(out)])  # fmt: skip
    assert code == 0
    totals = json.loads(out.with_suffix(".json").read_text())["totals"]
    assert totals["prompts"] == 3 and totals["base"] == str(tiny_model_dir.resolve())
    assert 0 <= totals["win_rate"] <= 1 and 0 <= totals["reward_accuracy"] <= 1
