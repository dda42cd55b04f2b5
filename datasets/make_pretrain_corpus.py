"""Build the base model's pretraining text from the TinyStories samples in ../shared/corpora.

The 4 MB TinyStories file was lowercased by its uploader; the 0.94 MB sample is the cased form of its first
942,640 characters. This script keeps the cased part as it is and restores case in the rest: sentence
starts and quotations get a capital, and words that the cased part writes capitalised in mid-sentence
(names such as Lily and Tom, and "I") are capitalised everywhere. It also repairs the upstream mojibake
("â€™" for an apostrophe and so on). The result (about 4.2 MB) is written to --out; nothing is committed.

    python datasets/make_pretrain_corpus.py --corpora ../shared/corpora --out build/tinystories_cased.txt
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

MOJIBAKE = [("â€œ", '"'), ("â€™", "'"), ("â€˜", "'"), ("â€“", "-"), ("â€”", "-"), ("â€¦", "..."), ("â€Š", " ")]
WORD = re.compile(r"[A-Za-z]+")
# A lowercase letter that starts a sentence or a quotation: at a line start, after . ! ? (but not after ?" or
# !", which end a quoted question inside a sentence: "Why?" he asked), or after an opening quote.
SENTENCE_START = re.compile(r'(^"?|[.!?]\s+"?|\."\s+"?|[,:;]\s+")([a-z])', re.MULTILINE)


def repair(text: str) -> str:
    for bad, good in MOJIBAKE:
        text = text.replace(bad, good)
    return text.replace("â€", '"')  # what is left is a closing quote whose last byte was lost upstream


def capitalised_words(cased: str) -> set[str]:
    """Lowercase words that the cased text writes with a capital in mid-sentence most of the time."""
    forms: dict[str, Counter] = defaultdict(Counter)
    for match in WORD.finditer(cased):
        before = cased[max(0, match.start() - 3) : match.start()]
        if re.search(r"[.!?\"\n]\s*$", before) or match.start() == 0:
            continue  # sentence-initial: capitalised for another reason
        word = match.group()
        forms[word.lower()][word[0].isupper()] += 1
    return {w for w, c in forms.items() if c[True] >= 3 and c[True] > 2 * c[False]}


def restore_case(text: str, names: set[str]) -> str:
    text = WORD.sub(lambda m: m.group().capitalize() if m.group() in names else m.group(), text)
    return SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", default="../shared/corpora")
    parser.add_argument("--out", default="build/tinystories_cased.txt")
    args = parser.parse_args()
    corpora = Path(args.corpora)
    cased = (corpora / "tinystories_sample_944kb.txt").read_text(encoding="utf-8")
    lower = (corpora / "tinystories_lowercase_4mb.txt").read_text(encoding="utf-8")
    assert lower[: len(cased)] == cased.lower(), "the cased sample should be the start of the lowercase file"
    names = capitalised_words(repair(cased))
    rest = restore_case(repair(lower[len(cased) :]), names)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(repair(cased) + rest, encoding="utf-8")
    print(f"{out}: {out.stat().st_size:,} bytes; {len(names)} words capitalised, e.g. {sorted(names)[:12]}")


if __name__ == "__main__":
    main()
