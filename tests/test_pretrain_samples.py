"""Watching a pretraining run learn to write: samples of fixed prompts and bits per byte at every evaluation;
and the sample book in datasets/pretrain."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from llm_cli import read_metrics, run_llm

from llm.config import ConfigError, SamplingConfig, TrainConfig, preset
from llm.data.corpus import TokenData
from llm.model.checkpoint import load_model
from llm.model.generate import sample_logger
from llm.train.pretrain import DEFAULT_SAMPLE_PROMPTS, bytes_per_token, pretrain

REPO = Path(__file__).resolve().parent.parent
BOOK_DIR = REPO / "datasets" / "pretrain"
SHARED_BOOK = REPO.parent / "shared" / "corpora" / "gutenberg_54_marvelous_land_of_oz.txt"


def quick_config() -> TrainConfig:
    return TrainConfig(max_steps=6, batch_size=4, warmup_steps=1, eval_interval=3, ckpt_interval=6, eval_batches=1)


def evals(records: list[dict]) -> list[dict]:
    return [r for r in records if "val_loss" in r]


def test_a_pretraining_run_logs_samples_and_bits_per_byte_at_every_evaluation(tmp_path, data_dir, tok):
    prompts = ["Once upon a time", "Tom said"]
    runs = []
    for name in ("a", "b"):
        pretrain(data_dir, tmp_path / name, preset("tiny", context_length=32), quick_config(), sample_prompts=prompts)
        runs.append(evals(read_metrics(tmp_path / name / "metrics.jsonl")))
    first, second = runs
    assert [r["step"] for r in first] == [3, 6]
    for record in first:
        assert [s["prompt"] for s in record["samples"]] == prompts
        assert all(isinstance(s["output"], str) and s["output"] for s in record["samples"])
    assert [r["samples"] for r in first] == [r["samples"] for r in second]  # the same seed: the same text
    assert first[0]["samples"] != first[1]["samples"]  # what changed is the model
    ratio = bytes_per_token(TokenData.open(data_dir), tok)
    for record in first:
        assert record["val_bits_per_byte"] == pytest.approx(record["val_loss"] / math.log(2) / ratio, rel=1e-3)


def test_bytes_per_token_decodes_the_held_out_split(data_dir, tok):
    data = TokenData.open(data_dir)
    ids = [int(i) for array in data.arrays("val") for i in array]
    assert bytes_per_token(data, tok) == len(tok.decode(ids).encode()) / len(ids)
    whole = data.meta["bytes"] / sum(data.meta["tokens"].values())  # both splits together, from meta.json
    assert bytes_per_token(data, tok) == pytest.approx(whole, rel=0.05)


def test_sample_logger_is_repeatable_and_leaves_training_state_alone(tiny_model_dir):
    model, tok, _ = load_model(tiny_model_dir)
    model.train()
    on_eval = sample_logger(tok, list(DEFAULT_SAMPLE_PROMPTS), SamplingConfig(12, temperature=0.8, seed=0))
    rng = torch.get_rng_state()
    first, again = on_eval(model, 1, {}), on_eval(model, 2, {})
    assert first == again and [s["prompt"] for s in first["samples"]] == list(DEFAULT_SAMPLE_PROMPTS)
    assert torch.equal(torch.get_rng_state(), rng) and model.training  # dropout's RNG untouched, mode restored
    chat = sample_logger(tok, ["What does Lily like?"], SamplingConfig(8, temperature=0.0, seed=0), chat=True)
    assert chat(model, 1, {})["samples"][0]["prompt"] == "What does Lily like?"


def test_pretrain_cli_sample_flags(tmp_path, data_dir):
    out = tmp_path / "run"
    flags = ["--preset", "tiny", "--context-length", "32", "--max-steps", "2", "--batch-size", "2"]
    flags += ["--eval-interval", "2", "--eval-batches", "1", "--warmup-steps", "1"]
    result = run_llm(
        "pretrain", "--data", data_dir, "--out", out, *flags, "--sample-prompt", "Lily", "--sample-prompt", "Tom"
    )
    assert result.returncode == 0, result.stderr
    (record,) = evals(read_metrics(out / "metrics.jsonl"))
    assert [s["prompt"] for s in record["samples"]] == ["Lily", "Tom"] and "val_bits_per_byte" in record
    result = run_llm("pretrain", "--data", data_dir, "--out", tmp_path / "none", *flags, "--sample-tokens", "0")
    assert result.returncode == 0, result.stderr
    (record,) = evals(read_metrics(tmp_path / "none" / "metrics.jsonl"))
    assert "samples" not in record
    with pytest.raises(ConfigError, match="sample_tokens must be >= 0"):
        pretrain(data_dir, tmp_path / "bad", preset("tiny"), quick_config(), sample_tokens=-1)


def make_book_module():
    spec = importlib.util.spec_from_file_location("make_book", BOOK_DIR / "make_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_book_keeps_only_the_book_and_joins_page_breaks():
    raw = (
        "\ufeffThe Project Gutenberg EBook of X\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\n"
        "Chapter 1\r\n\r\nTip went to the\r\n\r\n\r\n9\r\nforest.\r\n\r\n   Line-Art Drawing\r\n\r\nThe End\r\n"
        "End of Project Gutenberg's X\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nLicense text\r\n"
    )
    assert make_book_module().book_text(raw) == "Chapter 1\n\nTip went to the\nforest.\nThe End\n"


def test_the_shipped_book_is_small_and_names_no_gutenberg():
    data = (BOOK_DIR / "marvelous_land_of_oz.txt").read_bytes()
    assert len(data) <= 300_000 and b"\r" not in data and b"gutenberg" not in data.lower()
    assert data.decode("utf-8").count("Tip") > 100


@pytest.mark.skipif(not SHARED_BOOK.is_file(), reason="the shared corpus is not here")
def test_make_book_reproduces_the_shipped_book():
    text = make_book_module().book_text(SHARED_BOOK.read_text(encoding="utf-8"))
    assert text.encode("utf-8") == (BOOK_DIR / "marvelous_land_of_oz.txt").read_bytes()
