"""Reading raw text: expanding inputs, decompressing, normalising, and splitting into documents.

Everything here streams: a file is read a line (at most MAX_LINE bytes) at a time, so memory does not
depend on the size of a file. Text is normalised on the way in: a leading byte-order mark is dropped and
CRLF / CR line endings become LF. Errors name the file by its path, or by the name a caller gives it (an
upload kept under a temporary path is named as the user called it).

A Project Gutenberg eBook carries its header, licence and footer around the book: strip_gutenberg() keeps the
book alone (the sample book and the studio's uploads go through it).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import lzma
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from llm.errors import InputError

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.xz", ".jsonl", ".jsonl.gz", ".jsonl.xz", ".md")
MAX_LINE = 1 << 20  # bytes read at once; longer lines arrive in pieces
MAX_DOC_CHARS = 1 << 20  # a paragraph longer than this is cut into several documents
# Project Gutenberg's own lines: "*** START OF THE PROJECT GUTENBERG EBOOK <TITLE> ***" (older books: "THIS",
# "EBOOK" spelt "E-BOOK", no space after the stars), the same with END, and "End of (the) Project Gutenberg
# EBook of <title>" just before the end marker.
GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*\n?", re.I | re.M)
GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK", re.I | re.M)
GUTENBERG_CLOSING = re.compile(r"^End of (?:the )?Project Gutenberg.*\n?", re.I | re.M)


def wide_encoding(head: bytes) -> str | None:
    """'UTF-16' or 'UTF-32' when the first bytes of a file show that encoding (a byte-order mark, or the NUL
    bytes that every ASCII character carries in it), else None. Such files are not UTF-8: name the fix."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "UTF-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    sample = head[:4096]
    # ASCII text in UTF-16 is every other byte NUL; real UTF-8 text has none (a binary file has them anywhere).
    if len(sample) >= 4 and sample.count(0) >= len(sample) // 3:
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        if min(even, odd) <= max(even, odd) // 10:
            return "UTF-16"
    return None


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively for text files) and glob patterns -> a sorted file list."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"no files match {item!r}")
            files.extend(matches)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
            if not found:
                raise InputError(f"{path}: the folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise InputError(f"{path}: not a regular file (a device, a pipe or a socket): give a text file")
        else:
            raise InputError(f"{path}: no such file or folder")
    if not files:
        raise InputError("no input files given")
    return files


def name_files(files: list[Path], limit: int = 3) -> str:
    """'a.txt, b.txt and 5 more': the inputs, named in an error message."""
    named = ", ".join(str(p) for p in files[:limit])
    return named + (f" and {len(files) - limit} more" if len(files) > limit else "")


def _open_binary(path: Path) -> IO[bytes]:
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_text(decoder: codecs.IncrementalDecoder, raw: bytes, path: Path | str, offset: int, line_no: int) -> str:
    """The next bytes of a file as text; binary or non-UTF-8 content is an InputError naming where."""
    if offset == 0 and (wide := wide_encoding(raw)):
        raise InputError(f"{path}: the file is saved as {wide}: save it as UTF-8")
    try:
        text = decoder.decode(raw, final=not raw)  # final: a character cut off at the end is an error
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (invalid byte at offset {offset + e.start}, line {line_no}); is it a binary file?"
        ) from None
    if "\x00" in text:
        where = offset + len(text[: text.index("\x00")].encode())
        raise InputError(f"{path}: looks like a binary file (NUL byte at offset {where})")
    return text


def iter_lines(path: Path, whole: bool = False, name: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, normalised text with its trailing '\\n') for each line of a text file (name: how errors
    call it, default its path).

    A line longer than MAX_LINE bytes arrives in several pieces with the same line number (only the last
    ends in '\\n'), so memory stays bounded; whole=True joins them instead (a JSON record is parsed whole).
    """
    shown = name or path
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line_no, pending, at_start = 0, 1, "", True
    try:
        with _open_binary(path) as f:
            while True:
                raw = f.readline(MAX_LINE)
                text = _decode_text(decoder, raw, shown, offset, line_no)
                offset += len(raw)
                if at_start and text:
                    text, at_start = text.removeprefix("\ufeff"), False
                pending += text
                if raw and not pending.endswith("\n"):
                    if whole:
                        continue
                    # A piece of a long line: hand it out now, but keep a final '\r' that may pair with a '\n'.
                    piece, pending = (pending[:-1], "\r") if pending.endswith("\r") else (pending, "")
                    if piece:
                        yield line_no, _normalise_newlines(piece)
                    continue
                if pending:
                    yield line_no, _normalise_newlines(pending)
                if not raw:
                    return
                line_no, pending = line_no + 1, ""
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise InputError(f"{shown}: cannot read ({e})") from None
    except MemoryError:
        raise InputError(f"{shown}, line {line_no}: a line too long to hold in memory") from None


def iter_documents(files: list[Path], text_field: str = "text") -> Iterator[str]:
    """Documents of all files, in order. See iter_file_documents."""
    for path in files:
        for text, _ in iter_file_documents(path, text_field):
            yield text


def iter_file_documents(path: Path, text_field: str = "text", name: str | None = None) -> Iterator[tuple[str, bool]]:
    """(document text, ends_unit) pairs of one file (name: how errors call it, default its path).

    A JSONL record is one document, ending its unit (an end-of-text token follows it in the token stream).
    A text file is split at blank lines into paragraph documents that keep their '\\n\\n' separator, so
    consecutive paragraphs read as the original text; only the file's last paragraph ends the unit.
    """
    if ".jsonl" in path.name:
        for line_no, line in iter_lines(path, whole=True, name=name):
            if line.strip() and (value := _jsonl_text(name or path, line_no, line, text_field)).strip():
                yield _normalise_newlines(value), True
        return
    previous = None
    for paragraph in _paragraphs(path, name):
        if previous is not None:
            yield previous, False
        previous = paragraph
    if previous is not None:
        yield previous.rstrip("\n") + "\n", True


def _jsonl_text(path: Path | str, line_no: int, line: str, text_field: str) -> str:
    """The text field of one JSONL record; a malformed record is an InputError naming its line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {line_no}: malformed JSON ({e.msg})") from None
    except (RecursionError, MemoryError):
        raise InputError(f"{path}, line {line_no}: JSON nested too deeply or too large to read") from None
    value = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(value, str):
        raise InputError(f"{path}, line {line_no}: no string field {text_field!r} in this record")
    return value


def _paragraphs(path: Path, name: str | None = None) -> Iterator[str]:
    """Blank-line separated paragraphs of a text file, each ending in '\\n\\n'.

    A paragraph longer than MAX_DOC_CHARS comes in several pieces that join to it; only its last piece ends
    in the blank line.
    """
    lines: list[str] = []
    size, at_line_start = 0, True
    held = None  # a full piece of a long paragraph, kept until we know whether the paragraph ends with it
    for _, piece in iter_lines(path, name=name):
        blank = at_line_start and piece.endswith("\n") and not piece.strip()
        at_line_start = piece.endswith("\n")
        if blank:
            if lines:
                if held is not None:
                    yield held
                yield "".join(lines) + "\n"  # the last line ends in '\n': one more makes the blank line
            elif held is not None:
                yield held + "\n"
            lines, size, held = [], 0, None
            continue
        lines.append(piece)
        size += len(piece)
        if size >= MAX_DOC_CHARS:
            if held is not None:
                yield held
            lines, size, held = [], 0, "".join(lines)
    if held is not None:
        yield held
    if lines:
        yield "".join(lines).rstrip("\n") + "\n\n"


def read_text(path: Path, name: str | None = None) -> str:
    """A whole text file as one normalised string (for a file that must be looked at whole, such as an upload to
    strip of Project Gutenberg's lines; the upload limit bounds its size). Errors as iter_lines'."""
    return "".join(piece for _, piece in iter_lines(path, name=name))


def strip_gutenberg(text: str) -> str:
    """The book inside a Project Gutenberg eBook: the text between its "*** START OF ... PROJECT GUTENBERG EBOOK"
    and "*** END OF ..." lines, less the "End of Project Gutenberg's ..." line, so neither the header, the
    licence nor the footer is left (Gutenberg's licence asks for that when the text is shared without their
    name, and a model trained on a book should not learn the licence). A text with neither line comes back as
    it is; one with only one of them loses what lies beyond it."""
    start = GUTENBERG_START.search(text)
    end = GUTENBERG_END.search(text, start.end() if start else 0)
    if start is None and end is None:
        return text
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    return GUTENBERG_CLOSING.sub("", body).strip("\n") + "\n"


def short_pieces(line: str, max_chars: int) -> Iterator[str]:
    """line in pieces of at most max_chars, each cut after a space where there is one (a tokenizer trains on
    sentences of bounded length: a book saved as one line must not be skipped whole)."""
    while len(line) > max_chars:
        cut = line.rfind(" ", 0, max_chars) + 1 or max_chars
        yield line[:cut]
        line = line[cut:]
    if line:
        yield line
