"""A seeded generator of English-like text, written to disk in chunks so its size never meets memory.

Sentences come from a small grammar (noun phrases, verbs, places, times, clauses) over a lexicon of real
English words and made-up ones built from English syllables, drawn with Zipf-like frequencies, so a BPE
tokenizer finds as rich a vocabulary as in real text. A pool of distinct sentences is made once; paragraphs
of 3-8 pool sentences are then drawn with numpy and written a few MB at a time. Only ASCII is produced, so
characters and UTF-8 bytes are the same count.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np

NOUNS = (
    "house river garden letter window market teacher doctor child friend table city village road forest bird "
    "book song storm winter morning question answer machine engine island bridge school kitchen mountain "
    "harbor painting story picture lamp candle dog horse boat train door station library field farmer"
).split()
ADJECTIVES = "old young small large quiet bright dark cold warm green heavy gentle strange simple careful busy".split()
VERBS = "found opened watched carried painted visited remembered followed built cleaned crossed answered".split()
INTRANSITIVE = "walked slept waited laughed arrived listened worked smiled wandered rested".split()
PLACES = "near|in|behind|across|at the edge of|on|under|by|at|beside|inside|around".split("|")
TIMES = (
    "in the morning|after the storm|before dinner|every winter|on Sunday|late at night|for a long time|"
    "the next day|in the spring|once again|by the evening|years later"
).split("|")
CONNECTIVES = "because|although|while|until|after|before|when|so that|and|but".split("|")
ARTICLES = ("the", "a", "the", "her", "his", "their", "this", "every")

ONSETS = (
    "b bl br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr qu r s sc sh sl sm sn sp st str t th tr v w".split()
)
VOWELS = "a e i o u ai ea ee oo ou ie a e o".split()
CODAS = ["", "", "", "b", "ck", "d", "ft", "g", "l", "ld", "lt", "m", "mp", "n", "nd", "ng", "nt", "r", "rn", "s", "st"]


def _made_up_words(rng: random.Random, count: int, suffixes: tuple[str, ...]) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        syllables = rng.choice((1, 1, 2, 2, 2, 3))
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
        words.add(word + rng.choice(suffixes))
    return sorted(words)


class Lexicon:
    """Word lists with Zipf-like weights: a few words are very common, most are rare."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.nouns = NOUNS + _made_up_words(rng, 6000, ("", "", "", "er", "ion", "ness", "ment"))
        self.names = [w.capitalize() for w in _made_up_words(rng, 800, ("", "a", "o", "en", "ia"))]
        self.adjectives = ADJECTIVES + _made_up_words(rng, 2000, ("y", "ful", "ous", "ish", "al", "ic"))
        self.verbs = VERBS + _made_up_words(rng, 2000, ("ed",))
        self.intransitive = INTRANSITIVE + _made_up_words(rng, 500, ("ed",))
        self._weights = {}

    def pick(self, words: list[str]) -> str:
        if id(words) not in self._weights:
            self._weights[id(words)] = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
        return self.rng.choices(words, cum_weights=self._weights[id(words)])[0]

    def noun_phrase(self) -> str:
        if self.rng.random() < 0.25:
            return self.pick(self.names)
        noun = self.pick(self.nouns) + ("s" if self.rng.random() < 0.2 else "")
        if self.rng.random() < 0.5:
            return f"{self.rng.choice(ARTICLES)} {self.pick(self.adjectives)} {noun}"
        return f"{self.rng.choice(ARTICLES)} {noun}"

    def clause(self) -> str:
        if self.rng.random() < 0.3:
            words = [self.noun_phrase(), self.pick(self.intransitive)]
        else:
            words = [self.noun_phrase(), self.pick(self.verbs), self.noun_phrase()]
        if self.rng.random() < 0.5:
            words += [self.rng.choice(PLACES), self.noun_phrase()]
        if self.rng.random() < 0.25:
            words.append(self.rng.choice(TIMES))
        return " ".join(words)

    def sentence(self) -> str:
        text = self.clause()
        if self.rng.random() < 0.35:
            text += f", {self.rng.choice(CONNECTIVES)} {self.clause()}"
        if self.rng.random() < 0.05:
            text += f" in {self.rng.randint(1500, 2030)}"  # a few digits, as real text has
        return text[0].upper() + text[1:] + ("!" if self.rng.random() < 0.08 else ".")


def sentence_pool(seed: int, size: int = 200_000) -> list[str]:
    lexicon = Lexicon(random.Random(seed))
    return [lexicon.sentence() for _ in range(size)]


def write_corpus(folder: Path, total_bytes: int, n_files: int, seed: int = 0, chunk_bytes: int = 4 << 20) -> list[Path]:
    """Write about total_bytes of paragraphs (blank-line separated) into n_files files; return their paths."""
    assert total_bytes > 0 and n_files > 0
    folder.mkdir(parents=True, exist_ok=True)
    pool = sentence_pool(seed)
    mean_len = sum(len(s) + 1 for s in pool) / len(pool)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_files):
        path = folder / f"part_{i:03d}.txt"
        quota = total_bytes // n_files + (total_bytes % n_files if i == n_files - 1 else 0)
        written = 0
        with open(path, "w", encoding="ascii") as f:
            while written < quota:
                # One chunk: sentence ids, then paragraph lengths that cover them.
                n = max(8, int(min(chunk_bytes, quota - written) / mean_len))
                ids = rng.integers(0, len(pool), n).tolist()
                ends = np.minimum(np.cumsum(rng.integers(3, 9, n // 3 + 1)), n)
                starts = np.concatenate(([0], ends[:-1]))
                paragraphs = [" ".join(pool[k] for k in ids[a:b]) for a, b in zip(starts, ends, strict=True) if b > a]
                text = "\n\n".join(paragraphs) + "\n\n"
                f.write(text)
                written += len(text)
        paths.append(path)
    return paths
