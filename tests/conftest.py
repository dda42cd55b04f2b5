"""Shared fixtures: a generated story corpus, a tokenizer, prepared data and a tiny pretrained model.

Everything is made from a seeded generator, so the tests need neither the network nor ../shared.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest
import torch

from llm.config import TrainConfig, preset
from llm.data.corpus import prepare
from llm.data.tokenizer import Tokenizer, train_tokenizer
from llm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "corpora"

# One intra-op thread: the tests' matrices are tiny, and OpenMP threads spinning against other work on a
# 2-core machine made training ~10x slower (tiny_model_dir: 98 s with 2 threads, 8.6 s with 1, measured
# while another training run was going on).
torch.set_num_threads(1)

NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Sue"]
THINGS = ["ball", "cat", "tree", "cake", "boat", "hat", "dog", "book"]
FEELINGS = ["happy", "sad", "tired", "brave", "kind"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_stories(n: int, seed: int = 0) -> list[str]:
    """Short, very regular stories: learnable by a tiny model in a few seconds."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        thing, feeling = rng.choice(THINGS), rng.choice(FEELINGS)
        stories.append(
            f"Once upon a time, {a} had a {thing}. {a} was {feeling}. "
            f'{b} said, "Can I play with the {thing}?" {a} said, "Yes!" They played all day.'
        )
    return stories


@pytest.fixture(scope="session")
def story_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text("\n\n".join(make_stories(600)) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, story_file) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([story_file], out, vocab_size=400)
    return out


@pytest.fixture(scope="session")
def tok(tokenizer_dir) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, story_file, tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("data") / "prepared"
    prepare([story_file], tokenizer_dir, out, val_fraction=0.1, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, data_dir) -> Path:
    """A tiny model pretrained on the stories for a few seconds: a stand-in base model for tests."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    torch.manual_seed(0)
    cfg = TrainConfig(
        max_steps=150,
        batch_size=8,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=10,
        eval_interval=150,
        ckpt_interval=150,
        log_interval=50,
        eval_batches=2,
    )
    pretrain(data_dir, out, preset("tiny", context_length=64), cfg)
    return out / "latest"
