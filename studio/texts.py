"""Texts to pretrain on: the shipped sample book and the files uploaded in the Pretrain tab.

An uploaded text is read whole with the CLI's readers (llm.data.text: UTF-8, .txt / .txt.gz / .jsonl) before it
is kept, so a binary or non-UTF-8 file is refused with a message and leaves nothing behind. A Project Gutenberg
book is kept without Gutenberg's header, licence and footer (llm.data.text.strip_gutenberg), and the upload's
status says how much was removed. Kept texts live in <workspace>/texts/<id>/<file name>; a text's key is
"sample:<file name>" or "upload:<id>".
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llm.data.text import iter_file_documents, read_text, strip_gutenberg
from studio.context import REPO, Studio, StudioError, human_size, plural, upload_limit
from studio.store import new_id

SAMPLE_TEXTS = REPO / "datasets" / "pretrain"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl")  # what the Pretrain tab takes (the CLI reads these and more)
TEXTS = "texts"


@dataclass
class TextInfo:
    key: str
    name: str
    path: Path
    documents: int
    characters: int
    stripped: int = 0  # characters of Project Gutenberg's header, licence and footer left out

    def describe(self) -> str:
        text = (
            f"{self.name}: {human_size(self.path.stat().st_size)}, {self.characters:,} characters in "
            f"{plural(self.documents, 'paragraph' if '.jsonl' not in self.name else 'record')}"
        )
        if self.stripped:
            text += (
                f". A Project Gutenberg book: its header, licence and footer ({self.stripped:,} characters) were "
                "left out, so the model learns the book, not the licence"
            )
        return text


def count_text(path: Path, name: str) -> TextInfo:
    """Read a text file whole as pretraining will: its paragraphs (records) and characters. An LLMError names
    the file as the user called it, not by its temporary path."""
    if not name.lower().endswith(TEXT_SUFFIXES):
        raise StudioError(f"{name}: a text to pretrain on must be {', '.join(TEXT_SUFFIXES)}")
    documents = characters = 0
    for text, _ in iter_file_documents(path, name=name):
        documents += 1
        characters += len(text)
    if not characters:
        raise StudioError(f"{name}: there is no text in it")
    return TextInfo("", name, path, documents, characters)


def texts_dir(studio: Studio) -> Path:
    return studio.workspace / TEXTS


def text_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, key) of the sample books, then the uploaded texts, newest first."""
    samples = [(f"{p.name} (sample book)", f"sample:{p.name}") for p in sorted(SAMPLE_TEXTS.glob("*.txt"))]
    folder = texts_dir(studio)
    found = folder.glob("*/*") if folder.is_dir() else []
    uploads = sorted((p for p in found if p.is_file() and not p.parent.name.startswith(".")), reverse=True)
    return samples + [(f"{p.name} (uploaded)", f"upload:{p.parent.name}") for p in uploads]


def text_path(studio: Studio, key: str | None) -> Path:
    """The file a text key names; StudioError when it is gone or was never there."""
    kind, _, name = (key or "").partition(":")
    if kind == "sample" and "/" not in name and (SAMPLE_TEXTS / name).is_file():
        return SAMPLE_TEXTS / name
    if kind == "upload" and name and "/" not in name:
        found = [p for p in (texts_dir(studio) / name).glob("*") if p.is_file()]
        if found:
            return found[0]
    raise StudioError("Choose a text to pretrain on (the sample book, or upload one).")


def keep_book(source: Path, name: str, target: Path) -> tuple[str, int]:
    """Write the upload to target's folder: a Project Gutenberg book without Gutenberg's lines (as a .txt), any
    other text as it came. (the file name kept, the characters left out)."""
    if name.lower().endswith((".txt", ".txt.gz")):
        text = read_text(source, name)
        book = strip_gutenberg(text)
        if len(book) < len(text):
            kept = name.removesuffix(".gz").removesuffix(".GZ")
            (target / kept).write_text(book, encoding="utf-8")
            return kept, len(text) - len(book)
    shutil.copyfile(source, target / name)
    return name, 0


def store_text(studio: Studio, source: Path, name: str) -> TextInfo:
    """Check an uploaded text and keep a copy in the workspace; nothing is kept when it cannot be used."""
    if source.stat().st_size > studio.max_upload_bytes:
        raise StudioError(f"{name} is larger than the upload limit of {upload_limit(studio.max_upload_bytes)}.")
    count_text(source, name)  # refused before anything is written
    key, folder = new_id(), texts_dir(studio)
    folder.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=folder))  # written aside, then renamed: whole files only
    try:
        kept, stripped = keep_book(source, name, tmp)
        tmp.chmod(0o755)
        tmp.rename(folder / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = count_text(folder / key / kept, kept)
    return TextInfo(f"upload:{key}", kept, info.path, info.documents, info.characters, stripped)
