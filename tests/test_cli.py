"""The command line as a user meets it: bad input gets exit code 2 and one line naming the culprit, never a
traceback; eval's numbers agree with each other; generate matches the library."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
from llm_cli import read_metrics, run_llm, sigterm_at_step

from llm.config import TrainConfig, preset
from llm.eval.perplexity import score_text
from llm.model.checkpoint import load_model
from llm.model.generate import SamplingConfig, stream_text
from llm.train.pretrain import pretrain
from llm.train.trainer import learning_rate


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 2 and a single 'error: ...' line that contains every fragment."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text('Once upon a time, Lily had a ball.\n\nTom said, "Can I play?" Lily said, "Yes!"\n')
    return path


def prepare_args(inputs, tokenizer_dir, out) -> list:
    return ["prepare", "--input", *inputs, "--tokenizer", tokenizer_dir, "--out", out, "--workers", "1"]


def test_prepare_missing_input_file(tmp_path, tokenizer_dir):
    missing = tmp_path / "nope.txt"
    assert_user_error(run_llm(*prepare_args([missing], tokenizer_dir, tmp_path / "out")), str(missing), "no such file")
    assert not (tmp_path / "out").exists()


def test_prepare_empty_corpus(tmp_path, tokenizer_dir):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\t\n\n")
    assert_user_error(run_llm(*prepare_args([blank], tokenizer_dir, tmp_path / "out")), "empty", str(blank))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt"]


def test_tokenizer_on_an_empty_corpus(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    result = run_llm("tokenizer", "--input", blank, "--out", tmp_path / "tok", "--vocab-size", "300")
    assert_user_error(result, "empty", str(blank))


def test_prepare_binary_file_after_a_good_one(tmp_path, tokenizer_dir, story_file):
    """The good file is big enough that the progress bar is drawn before the bad one is reached."""
    good = tmp_path / "good.txt"
    good.write_text(story_file.read_text() * 25)  # ~3 MB: several batches
    png = tmp_path / "image.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(5000))
    result = run_llm(*prepare_args([good, png], tokenizer_dir, tmp_path / "out"))
    assert_user_error(result, str(png), "not UTF-8", "offset 0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.txt", "image.txt"]


def test_prepare_malformed_jsonl_names_the_line(tmp_path, tokenizer_dir):
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three"\n{"text": "four"}\n')
    assert_user_error(run_llm(*prepare_args([bad], tokenizer_dir, tmp_path / "out")), f"{bad}, line 3", "JSON")
    assert not (tmp_path / "out").exists()


def test_prepare_into_a_non_empty_folder(tmp_path, tokenizer_dir, text_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_user_error(run_llm(*prepare_args([text_file], tokenizer_dir, out)), str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_tokenizer_vocabulary_too_large(tmp_path, text_file):
    result = run_llm("tokenizer", "--input", text_file, "--out", tmp_path / "tok", "--vocab-size", "4096")
    assert_user_error(result, "--vocab-size 4096 is too large")
    assert not (tmp_path / "tok" / "tokenizer.model").exists()


def test_pretrain_unknown_preset(tmp_path, data_dir):
    result = run_llm("pretrain", "--data", data_dir, "--out", tmp_path / "run", "--preset", "huge")
    assert_user_error(result, "unknown preset 'huge'", "tiny")


def test_pretrain_bad_training_flag(tmp_path, data_dir):
    result = run_llm("pretrain", "--data", data_dir, "--out", tmp_path / "run", "--preset", "tiny", "--batch-size", "0")
    assert_user_error(result, "--batch-size")


def test_pretrain_on_unprepared_data(tmp_path, text_file):
    result = run_llm("pretrain", "--data", tmp_path, "--out", tmp_path / "run", "--preset", "tiny")
    assert_user_error(result, str(tmp_path), "not a prepared corpus")


def test_resume_without_a_run(tmp_path, data_dir):
    result = run_llm("pretrain", "--data", data_dir, "--out", tmp_path / "run", "--preset", "tiny", "--resume")
    assert_user_error(result, str(tmp_path / "run"))


@pytest.mark.parametrize(
    "missing, command", [("tokenizer.model", "generate"), ("model.safetensors", "eval"), ("config.json", "generate")]
)
def test_model_directory_missing_a_file(tmp_path, tiny_model_dir, text_file, missing, command):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / missing).unlink()
    args = ["--prompt", "Hi"] if command == "generate" else ["--text", text_file]
    assert_user_error(run_llm(command, "--model", broken, *args), str(broken), missing)


def test_eval_missing_text_file(tmp_path, tiny_model_dir):
    assert_user_error(run_llm("eval", "--model", tiny_model_dir, "--text", tmp_path / "none.txt"), "none.txt")


def test_eval_bits_per_byte_is_consistent_with_the_loss(tiny_model_dir, text_file):
    result = run_llm("eval", "--model", tiny_model_dir, "--text", text_file)
    assert result.returncode == 0, result.stderr
    score = json.loads(result.stdout)
    text = text_file.read_text()
    model, tok, _ = load_model(tiny_model_dir)
    assert score["bytes"] == len(text.encode())
    assert score["tokens"] == len(tok.encode(text))  # every token is scored (the first given end-of-text)
    bpb = score["loss"] * score["tokens"] / math.log(2) / score["bytes"]
    assert score["bits_per_byte"] == pytest.approx(bpb, rel=1e-9)
    assert score["perplexity"] == pytest.approx(math.exp(score["loss"]), rel=1e-9)
    assert score["loss"] == pytest.approx(score_text(model, tok, text).loss, abs=1e-5)
    assert score["loss"] < 3.0  # well under the 6 nats of a uniform guess: the stories model knows this text


@pytest.mark.slow
def test_generate_greedy_matches_the_library_with_and_without_cache(tiny_model_dir):
    args = ["generate", "--model", tiny_model_dir, "--prompt", "Once upon a time,"]
    args += ["--temperature", "0", "--max-new-tokens", "80", "--device", "cpu"]
    cached, plain = run_llm(*args), run_llm(*args, "--no-cache")
    assert cached.returncode == plain.returncode == 0, cached.stderr + plain.stderr
    model, tok, _ = load_model(tiny_model_dir)
    ids = [tok.eos_id] + tok.encode("Once upon a time,")
    expected = "".join(stream_text(model, tok, ids, SamplingConfig(80, temperature=0), (tok.eos_id,)))
    assert cached.stdout == plain.stdout == "Once upon a time," + expected + "\n"


def test_generate_stops_at_a_stop_string(tiny_model_dir):
    args = ["generate", "--model", tiny_model_dir, "--prompt", "Once upon a time,", "--temperature", "0"]
    result = run_llm(*args, "--max-new-tokens", "60", "--stop", " said")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time,") and " said" not in result.stdout


@pytest.mark.slow
def test_resume_without_max_steps_keeps_the_runs_step_budget(tmp_path, data_dir, monkeypatch):
    """A run stopped at step 3 of 6, resumed with no --max-steps, ends at step 6 (not at the default 1000)."""
    sigterm_at_step(monkeypatch, 2)
    cfg = TrainConfig(max_steps=6, batch_size=2, warmup_steps=1, log_interval=1, eval_interval=3, eval_batches=1)
    out = tmp_path / "run"
    assert pretrain(data_dir, out, preset("tiny", context_length=16), cfg, metrics_path=out / "metrics.jsonl").step == 3
    resumed = run_llm("pretrain", "--data", data_dir, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["event"] == "done" and records[-1]["step"] == 6
    assert [r["lr"] for r in records if "lr" in r] == pytest.approx([learning_rate(s, cfg) for s in range(6)])
