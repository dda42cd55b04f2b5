"""Build the base model's pretraining text from TinyStories files.

The 4 MB TinyStories file in ../shared/corpora was lowercased by its uploader; the 0.94 MB sample is the
cased form of its first 942,640 characters. This script keeps the cased part as it is and restores case in
the rest: sentence starts and quotations get a capital, and words that the cased part writes capitalised in
mid-sentence (names such as Lily and Tom, and "I") are capitalised everywhere.

More TinyStories text can be added with --extra (files in either layout: `<|endoftext|>` between stories, or
the samples' single newline between stories and blank line between paragraphs; a file with no capital
letter gets its case restored too). Every story is kept once, and a story that shares a paragraph with the
validation sample (--exclude) is dropped, so the validation figure stays one on unseen text.

The upstream text carries mojibake ("â€™" for an apostrophe and so on). It is repaired in all but a
--mojibake-share of the stories: a model that has never seen it pays dearly for each one in text that has it
(the TinyStories validation sample does), while a small share teaches it the pattern without making it
write mojibake often. The result is written to --out; nothing is committed.

    python datasets/make_pretrain_corpus.py --corpora ../shared/corpora --out build/tinystories_cased.txt
"""

from __future__ import annotations

import argparse
import json
import re
import zlib
from collections import Counter, defaultdict
from pathlib import Path

MOJIBAKE = [("â€œ", '"'), ("â€™", "'"), ("â€˜", "'"), ("â€“", "-"), ("â€”", "-"), ("â€¦", "..."), ("â€Š", " ")]
# Curly quotes and dashes as proper Unicode (some TinyStories files have them) become the ASCII the samples use;
# not where they end a mojibake sequence ("â€“" is a dash's mojibake).
TYPOGRAPHY = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-"}
TYPOGRAPHIC = re.compile("(?<!â€)[" + "".join(TYPOGRAPHY) + "]")
WORD = re.compile(r"[A-Za-z]+")
# A lowercase letter that starts a sentence or a quotation: at a line start, after . ! ? (but not after ?" or
# !", which end a quoted question inside a sentence: "Why?" he asked), or after an opening quote. Quotes may be
# the upstream mojibake: "â€œ" opens one and "â€" (its last byte lost) closes one.
OPEN, CLOSE = '(?:"|â€œ)', '(?:"|â€)'
SENTENCE_START = re.compile(rf"(^{OPEN}?|[.!?]\s+{OPEN}?|\.{CLOSE}\s+{OPEN}?|[,:;]\s+{OPEN})([a-z])", re.MULTILINE)
END_OF_TEXT = "<|endoftext|>"
MIN_SHARED_PARAGRAPH = 40  # characters: shorter paragraphs ("The end.") are shared by unrelated stories


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


def split_stories(text: str) -> list[str]:
    """Stories, each with its paragraphs joined by one blank line."""
    if END_OF_TEXT in text:
        chunks = text.split(END_OF_TEXT)
        return ["\n\n".join(p.strip() for p in chunk.split("\n") if p.strip()) for chunk in chunks if chunk.strip()]
    # The samples' layout: a blank line between paragraphs, a single newline between stories.
    stories, paragraphs, after_blank = [], [], False
    for line in text.split("\n"):
        if not line.strip():
            after_blank = True
            continue
        if paragraphs and not after_blank:
            stories.append("\n\n".join(paragraphs))
            paragraphs = []
        paragraphs.append(line.strip())
        after_blank = False
    if paragraphs:
        stories.append("\n\n".join(paragraphs))
    return stories


def key(paragraph: str) -> str:
    """What makes two paragraphs the same: case, spacing and the mojibake do not count."""
    return " ".join(repair(paragraph).lower().split())


def keeps_mojibake(story_key: str, share: float) -> bool:
    """A fixed share of stories, chosen by a hash of their key(), so the choice does not move between runs."""
    return zlib.crc32(story_key.encode()) % 10_000 < share * 10_000


def build(
    cased: str, lower: str, extras: list[str], excluded: str, names: set[str], mojibake_share: float
) -> tuple[list[str], Counter]:
    """The corpus's stories, in order (the cased sample, the rest of the lowercase file, then each extra),
    and counts of what was kept, repeated and excluded."""
    assert lower[: len(cased)] == cased.lower(), "the cased sample should be the start of the lowercase file"
    excluded_paragraphs = {key(p) for p in re.split(r"\n\s*\n", excluded)}
    excluded_paragraphs = {p for p in excluded_paragraphs if len(p) >= MIN_SHARED_PARAGRAPH}
    sources = [(cased, False), (lower[len(cased) :], True)]
    sources += [(extra, not re.search("[A-Z]", extra)) for extra in extras]
    stories, seen, counts = [], set(), Counter()
    for text, lowercased in sources:
        for story in split_stories(text):
            paragraphs = [key(p) for p in story.split("\n\n")]
            story_key = " ".join(paragraphs)  # key(story), from its paragraphs' keys
            if any(p in excluded_paragraphs for p in paragraphs):
                counts["excluded"] += 1
                continue
            if story_key in seen:
                counts["repeated"] += 1
                continue
            seen.add(story_key)
            story = TYPOGRAPHIC.sub(lambda m: TYPOGRAPHY[m.group()], story)
            if not keeps_mojibake(story_key, mojibake_share):
                story = repair(story)
            stories.append(restore_case(story, names) if lowercased else story)
            counts["kept"] += 1
    return stories, counts


def read_extra(path: Path) -> str:
    """A text file as it is; a JSON file holding a list of stories (or an object whose one value is that list,
    like maxme1/tiny-stories' {"texts": [...]}) as those stories with END_OF_TEXT between them."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return text
    data = json.loads(text)
    if isinstance(data, dict) and len(data) == 1:
        (data,) = data.values()
    if not (isinstance(data, list) and all(isinstance(story, str) for story in data)):
        raise SystemExit(f"{path}: expected a JSON list of stories (strings), or an object holding one")
    return END_OF_TEXT.join(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", default="../shared/corpora")
    parser.add_argument("--extra", nargs="*", default=[], help="more TinyStories: .txt, or .json lists of stories")
    parser.add_argument(
        "--exclude",
        default=None,
        help="text whose paragraphs no kept story may share (default: the validation sample in --corpora)",
    )
    parser.add_argument("--mojibake-share", type=float, default=0.1, help="share of stories that keep it")
    parser.add_argument("--out", default="build/tinystories_cased.txt")
    args = parser.parse_args()
    assert 0.0 <= args.mojibake_share <= 1.0, "--mojibake-share is a share between 0 and 1"
    corpora = Path(args.corpora)
    cased = (corpora / "tinystories_sample_944kb.txt").read_text(encoding="utf-8")
    lower = (corpora / "tinystories_lowercase_4mb.txt").read_text(encoding="utf-8")
    excluded = Path(args.exclude or corpora / "tinystories_valid_sample_794kb.txt").read_text(encoding="utf-8")
    extras = [read_extra(Path(path)) for path in args.extra]
    names = capitalised_words(repair(cased))
    stories, counts = build(cased, lower, extras, excluded, names, args.mojibake_share)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(stories) + "\n", encoding="utf-8")
    print(
        f"{out}: {out.stat().st_size:,} bytes, {counts['kept']:,} stories ({counts['repeated']:,} repeats and "
        f"{counts['excluded']:,} sharing a paragraph with the validation text left out); "
        f"{len(names)} words capitalised, e.g. {sorted(names)[:12]}"
    )


if __name__ == "__main__":
    main()
