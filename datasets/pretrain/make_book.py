"""Write datasets/pretrain/marvelous_land_of_oz.txt from the Project Gutenberg file in ../shared/corpora.

    python datasets/pretrain/make_book.py [--source PATH]

Keeps only the book: llm.data.text.strip_gutenberg keeps the lines between Gutenberg's "*** START OF" and
"*** END OF" markers, without the "End of Project Gutenberg's ..." line before the end marker, so neither the
header, the footer nor the licence text remains (Gutenberg's licence asks for that when the text is shared
without their name; the studio strips an uploaded book by the same rule). The printed
book's page numbers and "Line-Art Drawing" placeholders, which break sentences in two, are dropped. Line
endings become "\\n", runs of more than two blank lines become two, and the result is checked to name
Gutenberg nowhere.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from llm.data.text import strip_gutenberg  # noqa: E402

SOURCE = HERE.parent.parent.parent / "shared" / "corpora" / "gutenberg_54_marvelous_land_of_oz.txt"
TARGET = HERE / "marvelous_land_of_oz.txt"
MAX_BYTES = 300_000  # the studio's sample book stays small
# A line holding only a page number and/or "Line-Art Drawing ..." (where the printed book had a picture).
PRINT_MARK = re.compile(r"\s*(\d+|(\d+\s+)?Line-Art Drawing.*)\s*")


def book_text(raw: str) -> str:
    """The book between the Gutenberg markers, with Gutenberg's own lines and the printed book's marks removed."""
    book = strip_gutenberg(raw.lstrip("\ufeff").replace("\r\n", "\n"))
    assert book.count("\n") < raw.count("\n"), "no Project Gutenberg markers found"
    body: list[str] = []
    joining = False  # just after a dropped page mark: blank lines are skipped until the text goes on
    for line in book.split("\n"):
        line = line.rstrip()
        if joining and not line:
            continue
        joining = bool(PRINT_MARK.fullmatch(line))
        if joining:
            # A page number or picture placeholder of the printed book, often in mid-sentence: drop it and the
            # blank lines around it, so the sentence goes on on the next line.
            while body and not body[-1]:
                body.pop()
            continue
        body.append(line)
    text = re.sub(r"\n{4,}", "\n\n\n", "\n".join(body)).strip("\n") + "\n"
    assert "gutenberg" not in text.lower(), "a Gutenberg line is left in the book"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help=f"default {SOURCE}")
    args = parser.parse_args()
    text = book_text(args.source.read_text(encoding="utf-8"))
    data = text.encode("utf-8")
    assert len(data) <= MAX_BYTES, f"{len(data):,} bytes: more than the {MAX_BYTES:,} allowed for the sample book"
    TARGET.write_bytes(data)
    print(f"{TARGET}: {len(data):,} bytes, {text.count(chr(10)):,} lines")


if __name__ == "__main__":
    main()
