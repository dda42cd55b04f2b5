"""Benchmarks: lm-evaluation-harness's zero-shot multiple choice. A model whose probabilities are known by hand
gives the hand-computed log-likelihoods, acc and acc_norm (per character, not byte); packing requests into
batches changes nothing; groups score the mean of their subtasks; a malformed task file is refused naming the
file and line; the shipped task files hold what their manifest says."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from llm_cli import read_metrics, run_llm
from test_cli import assert_user_error

from llm.config import BenchConfig, preset
from llm.data.benchmarks import TASKS, read_task, task_names
from llm.errors import ConfigError, TaskFileError
from llm.eval import bench, likelihood
from llm.model.checkpoint import load_model
from llm.model.transformer import Transformer
from llm.run import BENCHMARKS, read_benchmarks

# A character tokenizer and a bigram model over it: P(next | previous) is a table, so every log-likelihood
# can be written out by hand. Row "a" differs from the others: after "a", "b" has probability 1/2.
VOCAB = ["<s>", " ", "a", "b", "é", "?", "x"]
DEFAULT = [0, 1 / 4, 1 / 4, 1 / 4, 1 / 8, 1 / 16, 1 / 16]
AFTER_A = [0, 1 / 8, 1 / 8, 1 / 2, 1 / 8, 1 / 16, 1 / 16]
L = math.log


class CharTokenizer:
    start_id = 0

    def encode(self, text: str) -> list[int]:
        return [VOCAB.index(c) for c in text]


class Bigram(torch.nn.Module):
    def __init__(self, context_length: int = 64):
        super().__init__()
        table = torch.tensor([AFTER_A if token == "a" else DEFAULT for token in VOCAB])
        self.logits = torch.nn.Parameter(table.clamp_min(1e-30).log())  # (V, V): row previous, column next
        self.cfg = SimpleNamespace(context_length=context_length)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx]  # (B, T, V)


# (context, choices, label): acc and acc_norm (per character) by hand; the continuation is " " + choice.
HAND_ROWS = [
    ("x?", ["ab", "ba"], 0),  # ab: 1/4 1/4 1/2, ba: 1/4 1/4 1/4 -> ab; same length -> ab
    ("x", ["b", "ab"], 1),  # b: 1/16 beats ab: 1/32 (acc wrong); per char log(1/16)/1 < log(1/32)/2 (norm right)
    ("x", ["éé", "ab"], 1),  # éé: 1/4 1/8 1/8 = 1/256, ab: 1/32 -> ab; per char ab; per BYTE éé (4 bytes) would win
    ("", ["ab", "b"], 0),  # after the start token: ab 1/32, b 1/16 -> b (acc wrong); per char ab (norm right)
    ("x", ["b", "ab"], 0),  # as row 2 with the short answer right: acc right, norm wrong
]
HAND_LL = [
    [L(1 / 4) + L(1 / 4) + L(1 / 2), 3 * L(1 / 4)],
    [2 * L(1 / 4), 2 * L(1 / 4) + L(1 / 2)],
    [L(1 / 4) + 2 * L(1 / 8), 2 * L(1 / 4) + L(1 / 2)],
    [2 * L(1 / 4) + L(1 / 2), 2 * L(1 / 4)],
    [2 * L(1 / 4), 2 * L(1 / 4) + L(1 / 2)],
]
HAND_ACC, HAND_ACC_NORM = [1, 0, 1, 0, 1], [1, 1, 1, 1, 0]


def write_task(path, rows: list[dict], compress: bool = False):
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture
def hand_task(tmp_path):
    rows = [{"id": str(i), "context": c, "choices": ch, "label": y} for i, (c, ch, y) in enumerate(HAND_ROWS)]
    return read_task(str(write_task(tmp_path / "hand.jsonl.gz", rows, compress=True)))


def test_a_known_model_gets_the_hand_computed_scores(hand_task):
    lls = likelihood.loglikelihoods(Bigram(), likelihood.encode_task(CharTokenizer(), hand_task))
    np.testing.assert_allclose(lls, np.array(HAND_LL).ravel(), rtol=1e-6)
    scores = bench.row_scores(hand_task, lls)
    assert scores["acc"].tolist() == HAND_ACC and scores["acc_norm"].tolist() == HAND_ACC_NORM
    metrics = bench.summarise(hand_task, scores)["metrics"]
    assert metrics["acc"] == pytest.approx(0.6) and metrics["acc_norm"] == pytest.approx(0.8)
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 4))  # lm-eval: sqrt(p(1-p)/(n-1))
    assert metrics["acc_norm_stderr"] == pytest.approx(math.sqrt(0.8 * 0.2 / 4))
    assert hand_task.spec.name == "hand" and hand_task.chance == pytest.approx(0.5)


def test_acc_norm_divides_by_characters_not_bytes(hand_task):
    row = hand_task.rows[2]
    assert row.lengths == (2, 2)  # "éé" is 2 characters (4 bytes), as Python's len counts them
    lls = np.array(HAND_LL[2])
    assert np.argmax(lls / np.array(row.lengths)) == 1  # per character: "ab", the label
    assert np.argmax(lls / np.array([len(c.encode()) for c in ["éé", "ab"]])) == 0  # per byte it would be "éé"


def test_partial_scoring_rows_score_one_continuation_after_each_context(tmp_path):
    rows = [{"contexts": ["xa", "xb"], "continuation": "b", "label": 0}]  # Winogrande's shape
    task = read_task(str(write_task(tmp_path / "wino.jsonl", rows)))
    assert task.spec.metrics == ("acc",)  # acc_norm is not defined when the choices are contexts
    lls = likelihood.loglikelihoods(Bigram(), likelihood.encode_task(CharTokenizer(), task))
    np.testing.assert_allclose(lls, [L(1 / 8) + L(1 / 4), L(1 / 4) + L(1 / 4)], rtol=1e-6)  # " " after a: 1/8
    assert bench.row_scores(task, lls)["acc"].tolist() == [0]


def test_a_request_longer_than_the_context_keeps_its_end(hand_task):
    long = ("x" * 50 + "?", " ab")  # 54 tokens in a window of 8: the bigram only sees the last ones
    lls = likelihood.loglikelihoods(Bigram(context_length=8), [likelihood.encode_pair(CharTokenizer(), *long)])
    assert lls[0] == pytest.approx(HAND_LL[0][0])
    too_long = ("x", " " + "b" * 20)  # a continuation longer than the window: its last 8 tokens are scored
    lls = likelihood.loglikelihoods(Bigram(context_length=8), [likelihood.encode_pair(CharTokenizer(), *too_long)])
    assert lls[0] == pytest.approx(8 * L(1 / 4))


def test_batching_changes_no_log_likelihood(tok):
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=tok.vocab_size, context_length=32)).eval()
    texts = [("Tom had a", " cat."), ("Once upon a time,", " Lily had a big red ball and a cake."), ("", " Sam")]
    texts += [("Mia said, ", "Yes!"), ("The dog", " was happy"), ("Ben " * 20, "ran.")]
    requests = [likelihood.encode_pair(tok, c, x) for c, x in texts]
    one_by_one = likelihood.loglikelihoods(model, requests, batch_tokens=1)
    packed = likelihood.loglikelihoods(model, requests, batch_tokens=10_000)
    np.testing.assert_allclose(packed, one_by_one, rtol=1e-5, atol=1e-5)
    ctx, cont = requests[0]  # and both equal the plain sum over the continuation's tokens
    logp = torch.log_softmax(model(torch.tensor([ctx + cont[:-1]]))[0], -1)
    direct = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    assert packed[0] == pytest.approx(direct, abs=1e-5)


def test_requests_are_encoded_as_lm_eval_encodes_them(tok):
    ctx, cont = likelihood.encode_pair(tok, "Tom had a", " cat.")
    whole = tok.encode("Tom had a cat.")
    assert ctx == tok.encode("Tom had a") and cont == whole[len(ctx) :]  # the continuation: what follows
    assert likelihood.encode_pair(tok, "Tom had a ", "cat.") == (ctx, cont)  # a trailing space moves onto it
    assert likelihood.encode_pair(tok, "", " Tom") == ([tok.start_id], tok.encode(" Tom"))  # empty: the start token


def test_batches_hold_every_request_once_within_the_token_budget():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8]
    groups = likelihood.batches(lengths, batch_tokens=12)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 12 for g in groups)
    assert groups == likelihood.batches(lengths, batch_tokens=12)  # the shuffled order is fixed


def test_a_group_scores_the_mean_of_its_subtasks_and_a_limit_applies_to_each(tmp_path):
    rows = [{"subtask": s, "context": "x", "choices": ["b", "ab"], "label": y} for s, y in [("p", 0)] * 3]
    rows += [{"subtask": "q", "context": "x", "choices": ["b", "ab"], "label": y} for y in (0, 1, 1, 1)]
    path = write_task(tmp_path / "group.jsonl", rows)
    task = read_task(str(path), limit=2)
    assert [r.subtask for r in task.rows] == ["p", "p", "q", "q"] and task.rows_in_file == 7
    lls = likelihood.loglikelihoods(Bigram(), likelihood.encode_task(CharTokenizer(), task))
    summary = bench.summarise(task, bench.row_scores(task, lls))  # "b" is always picked: p 2/2, q 1/2
    assert summary["subtasks"]["p"]["acc"] == 1.0 and summary["subtasks"]["q"]["acc"] == 0.5
    assert summary["metrics"]["acc"] == pytest.approx(0.75)  # the mean of the subtasks, not of the rows
    q_stderr = math.sqrt(0.25 * 2 / 1) / math.sqrt(2)  # sample std / sqrt(n) of [1, 0]
    pooled = math.sqrt((1 * 0**2 * 2 + 1 * q_stderr**2 * 2) / (4 - 2) / 4)  # lm-eval's pooled_sample_stderr
    assert summary["metrics"]["acc_stderr"] == pytest.approx(pooled)


BAD_LINES = [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"context": "q", "choices": ["a", "b"]}', "'label' is missing"),
    ('{"context": "q", "choices": ["a", "b"], "label": 2}', "'label' must be the index of a choice, 0 to 1, got 2"),
    ('{"context": "q", "choices": ["a", "b"], "label": true}', "'label' must be the index"),
    ('{"context": "q", "choices": ["a"], "label": 0}', "'choices' must be a list of two or more texts"),
    ('{"context": 3, "choices": ["a", "b"], "label": 0}', "'context' must be str, got int"),
    ('{"question": "q", "label": 0}', "has neither 'choices'"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_a_malformed_row_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"context": "q", "choices": ["a", "b"], "label": 0}\n\n' + line + "\n")
    with pytest.raises(TaskFileError) as error:
        read_task(str(path))
    assert str(error.value).startswith(f"{path}, line 3: {message}")


def test_unreadable_task_files_and_unknown_names_are_refused(tmp_path):
    damaged = tmp_path / "cut.jsonl.gz"
    damaged.write_bytes(gzip.compress(b'{"context": "q"}\n' * 50)[:30])
    with pytest.raises(TaskFileError, match="cut.jsonl.gz: a damaged gzip file"):
        read_task(str(damaged))
    with pytest.raises(TaskFileError, match="no such task file"):
        read_task(str(tmp_path / "gone.jsonl"))
    with pytest.raises(ConfigError, match="has no task 'hellaswog': choose from blimp, hellaswag") as error:
        read_task("hellaswog")
    assert error.value.field == "tasks"
    assert task_names(["blimp,piqa", " piqa ", "arc_easy"]) == ["blimp", "piqa", "arc_easy"]


@pytest.mark.parametrize("name", list(TASKS))
def test_the_shipped_task_files_read_whole(name):
    task = read_task(name, limit=3)
    expected = {"blimp": 67_000, "hellaswag": 10_042, "arc_easy": 2_376, "arc_challenge": 1_172, "piqa": 1_838}
    expected |= {"winogrande": 1_267, "boolq": 3_270}
    assert task.rows_in_file == expected[name]
    assert len(task.rows) == (67 * 3 if name == "blimp" else 3)
    assert task.spec.metrics == (("acc",) if name in ("blimp", "winogrande", "boolq") else ("acc", "acc_norm"))


@pytest.mark.slow
def test_the_cli_scores_saves_beside_the_model_and_reports_progress(tmp_path, tiny_model_dir, hand_task):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "run").mkdir()
    rows = [{"context": "Tom had a", "choices": ["cat.", "dog.", "ball."], "label": i % 3} for i in range(7)]
    task_file = write_task(tmp_path / "mine.jsonl", rows)
    result = run_llm("bench", "--model", model_dir, "--tasks", f"{task_file},blimp", "--limit", "2",
                     "--out", tmp_path / "run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = read_benchmarks(model_dir)["tasks"]
    assert set(saved) == {"mine", "blimp"} and saved["blimp"]["rows"] == 134 and saved["mine"]["rows"] == 2
    assert saved["blimp"]["selection"] == "the first 2 rows of each subtask" and saved["blimp"]["version"] == "2.0"
    assert saved["mine"]["settings"]["precision"] == "fp32" and saved["mine"]["chance"] == pytest.approx(1 / 3)
    model, tokenizer, _ = load_model(model_dir)  # the CLI's figures are the library's
    task = read_task(str(task_file), limit=2)
    lls = likelihood.loglikelihoods(model, likelihood.encode_task(tokenizer, task))
    assert saved["mine"]["metrics"]["acc"] == bench.row_scores(task, lls)["acc"].mean()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["event"] == "start" and records[0]["max_steps"] == 2 * 3 + 134 * 2
    assert records[-1] == {"event": "done", "step": 274, "time": records[-1]["time"]}
    assert "blimp" in result.stdout and "±" in result.stdout


@pytest.mark.slow
def test_the_cli_refuses_a_malformed_task_file_in_one_line(tmp_path, tiny_model_dir):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"context": "q", "choices": ["a", "b"], "label": 5}\n')
    assert_user_error(run_llm("bench", "--model", tiny_model_dir, "--tasks", path), f"{path}, line 1", "'label'")
    assert_user_error(run_llm("bench", "--model", tiny_model_dir), "--tasks is required")
    assert not (tiny_model_dir / BENCHMARKS).exists()


def test_saving_merges_tasks_and_a_config_checks_its_fields(tmp_path):
    bench.save_results(tmp_path, {"a": {"rows": 1}})
    bench.save_results(tmp_path, {"b": {"rows": 2}})
    bench.save_results(tmp_path, {"a": {"rows": 3}})
    assert read_benchmarks(tmp_path)["tasks"] == {"a": {"rows": 3}, "b": {"rows": 2}}
    assert [p.name for p in tmp_path.iterdir()] == [BENCHMARKS]  # no temporary file left behind
    with pytest.raises(ConfigError) as error:
        BenchConfig(tasks=["blimp"], batch_tokens=0)
    assert error.value.field == "batch_tokens"


def test_the_estimate_counts_about_the_tokens_scoring_will_see(tiny_model_dir):
    tasks = [read_task("piqa", limit=40), read_task("blimp", limit=3)]
    cfg = BenchConfig(models=[str(tiny_model_dir)] * 2, tasks=["piqa", "blimp"])
    cost = bench.estimate(cfg, tasks)
    _, tokenizer, _ = load_model(tiny_model_dir)
    real = sum(len(c) + len(x) - 1 for task in tasks for c, x in likelihood.encode_task(tokenizer, task))  # inputs
    assert cost["requests"] == 2 * (40 * 2 + 67 * 3 * 2)
    assert cost["tokens"] == pytest.approx(2 * real, rel=0.15) and cost["seconds"] > 0


def test_the_time_left_is_counted_in_tokens_and_later_models_are_taken_as_large():
    tracker = bench.Tracker(total=1_000, models=2, metrics_path=None, progress=None)
    assert tracker.remaining(5.0) is None  # nothing scored yet
    tracker.add_model(tokens=100)  # the first model's requests: 100 tokens; the second is taken to have as many
    tracker.tokens_done = 50
    assert tracker.remaining(10.0) == pytest.approx(10 / 50 * (200 - 50))
