"""Bits per byte of a character-level bigram model: the floor any trained language model should beat.

    python benchmarks/bigram_baseline.py --train build/tinystories_cased.txt \
        --eval ../shared/corpora/tinystories_valid_sample_794kb.txt

P(c_i | c_{i-1}) is estimated from the training text with add-k smoothing over the characters of both texts;
the score is the total negative log2-likelihood of the evaluation text divided by its UTF-8 bytes, the same
normalisation as `python -m llm eval`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `llm` importable
from llm.data.text import iter_documents  # noqa: E402


def read(path: str) -> str:
    return "".join(iter_documents([Path(path)]))  # normalised as the tokenizer and `eval` see it


def bigram_bits_per_byte(train: str, evaluate: str, k: float = 0.1) -> float:
    vocab = set(train) | set(evaluate)
    pairs = Counter(zip(train, train[1:], strict=False))
    firsts = Counter(train[:-1])
    bits = 0.0
    for prev, char in zip(evaluate, evaluate[1:], strict=False):
        p = (pairs[prev, char] + k) / (firsts[prev] + k * len(vocab))
        bits -= math.log2(p)
    bits += math.log2(len(vocab))  # the first character, uniformly
    return bits / len(evaluate.encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--k", type=float, default=0.1, help="add-k smoothing")
    args = parser.parse_args()
    bpb = bigram_bits_per_byte(read(args.train), read(args.eval), args.k)
    print(json.dumps({"model": "char bigram", "eval": args.eval, "bits_per_byte": round(bpb, 4)}))


if __name__ == "__main__":
    main()
