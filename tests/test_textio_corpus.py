"""Reading raw text and preparing token shards: exact tokens, document-level validation split, every input
format giving the same tokens, nothing half-written on bad input, and memory that does not grow with the corpus.

The document rule under test (llm/data/text.py): a text file is split at blank lines into paragraphs; each
paragraph is a document ending in a blank line ('\\n\\n') except the file's last, which ends in one '\\n' and is
followed by an end-of-text token. A JSONL record is one document followed by an end-of-text token.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, make_stories

from llm.data import text as textio
from llm.data.corpus import TokenData, WindowBatches, prepare
from llm.data.text import InputError, expand_inputs, iter_documents, iter_lines
from llm.data.tokenizer import EOS, Tokenizer

EXTRAS = ["北京的故事：小猫很开心。", "Emoji time 😀🎉 for Mia.", "Tabs\tand  double  spaces   here."]


def make_paragraphs(n: int, seed: int) -> list[str]:
    """Paragraphs with a unique marker each; some span several lines, some are not English."""
    rng = random.Random(seed)
    paragraphs = []
    for i, story in enumerate(make_stories(n, seed)):
        lines = [f"Story {seed}-{i}:", story]
        if rng.random() < 0.3:
            lines.append(rng.choice(EXTRAS))
        paragraphs.append("\n".join(lines))
    return paragraphs


def file_text(paragraphs: list[str]) -> str:
    return "\n\n".join(paragraphs) + "\n"


def file_tokens(tok: Tokenizer, paragraphs: list[str]) -> list[int]:
    """The tokens prepare() must produce for a text file of these paragraphs, computed independently."""
    docs = [p + "\n\n" for p in paragraphs[:-1]] + [paragraphs[-1] + "\n"]
    return [i for d in docs for i in tok.encode(d)] + [EOS]


def shard_tokens(directory, split: str) -> list[int]:
    arrays = TokenData.open(directory).arrays(split)
    return np.concatenate(arrays).tolist() if arrays else []


def run_prepare(files, tokenizer_dir, out, val_fraction=0.0, **kw) -> dict:
    return prepare(list(files), tokenizer_dir, out, val_fraction, workers=1, progress=False, **kw)


def test_exact_token_count_of_a_multi_file_corpus(tmp_path, tok, tokenizer_dir):
    corpus = {f"part{k}.txt": make_paragraphs(40, seed=k) for k in range(3)}
    records = [f"Record {i}: " + s for i, s in enumerate(make_stories(30, seed=9))]
    for name, paragraphs in corpus.items():
        (tmp_path / name).write_text(file_text(paragraphs))
    (tmp_path / "records.jsonl").write_text(
        "".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(records))
    )
    files = sorted(tmp_path.glob("part*.txt")) + [tmp_path / "records.jsonl"]
    meta = run_prepare(files, tokenizer_dir, tmp_path / "out")
    expected = [i for name in sorted(corpus) for i in file_tokens(tok, corpus[name])]
    expected += [i for r in records for i in tok.encode(r) + [EOS]]
    assert shard_tokens(tmp_path / "out", "train") == expected
    assert meta["tokens"] == {"train": len(expected), "val": 0}
    assert meta["bytes"] == sum(len(d.encode()) for d in iter_documents(files))
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == tok.files()["tokenizer.model"]


def test_validation_split_holds_out_whole_documents(tmp_path, tok, tokenizer_dir):
    paragraphs = make_paragraphs(300, seed=1)
    (tmp_path / "a.txt").write_text(file_text(paragraphs))
    meta = run_prepare([tmp_path / "a.txt"], tokenizer_dir, tmp_path / "out", val_fraction=0.2)
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == len(file_tokens(tok, paragraphs))
    train = tok.decode(shard_tokens(tmp_path / "out", "train"))
    val = tok.decode(shard_tokens(tmp_path / "out", "val"))
    in_val = [p for p in paragraphs if p.split(":")[0] + ":" in val]
    assert 30 < len(in_val) < 90  # about 20% of 300
    for p in paragraphs:
        marker = p.split(":")[0] + ":"
        assert (marker in train) != (marker in val), marker  # each document is in exactly one split
        assert p in (val if marker in val else train)  # and whole
    # The choice is a pure function of the seed: the same run gives the same split.
    again = run_prepare([tmp_path / "a.txt"], tokenizer_dir, tmp_path / "again", val_fraction=0.2)
    assert again["shards"] == meta["shards"]
    assert shard_tokens(tmp_path / "again", "val") == shard_tokens(tmp_path / "out", "val")


def write_variants(folder, paragraphs: list[str]) -> dict[str, object]:
    """The same text as plain, gzip, xz, BOM + CRLF, old-Mac CR, extra blank lines, and one JSONL record."""
    text = file_text(paragraphs)
    paths = {}
    paths["plain"] = folder / "plain.txt"
    paths["plain"].write_text(text)
    paths["gz"] = folder / "text.txt.gz"
    paths["gz"].write_bytes(gzip.compress(text.encode()))
    paths["xz"] = folder / "text.txt.xz"
    paths["xz"].write_bytes(lzma.compress(text.encode()))
    paths["bom_crlf"] = folder / "windows.txt"
    paths["bom_crlf"].write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    paths["cr"] = folder / "mac.txt"
    paths["cr"].write_bytes(text.replace("\n", "\r").encode())
    paths["extra_blank_lines"] = folder / "spaced.txt"
    paths["extra_blank_lines"].write_text("\n\n" + "\n\n \n\t\n".join(paragraphs) + "\n\n\n")
    record = json.dumps({"title": "t", "body": text}) + "\n"
    paths["jsonl"] = folder / "one.jsonl"
    paths["jsonl"].write_text("\ufeff\n" + record + "\n")  # a BOM, and blank lines around a record, are skipped
    paths["jsonl_gz"] = folder / "one.jsonl.gz"
    paths["jsonl_gz"].write_bytes(gzip.compress(record.encode()))
    return paths


def test_every_input_format_gives_the_same_tokens(tmp_path, tok, tokenizer_dir):
    paragraphs = make_paragraphs(60, seed=2)
    expected = file_tokens(tok, paragraphs)
    for kind, path in write_variants(tmp_path, paragraphs).items():
        out = tmp_path / f"out_{kind}"
        run_prepare([path], tokenizer_dir, out, text_field="body" if "jsonl" in kind else "text")
        assert shard_tokens(out, "train") == expected, kind


def test_jsonl_records_are_documents_and_errors_name_the_line(tmp_path, tok, tokenizer_dir):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "Hi there.\\r\\nBye.\\rOld Mac."}\n{"text": "   "}\n{"text": "Second."}\n')
    run_prepare([good], tokenizer_dir, tmp_path / "out")
    assert shard_tokens(tmp_path / "out", "train") == tok.encode("Hi there.\nBye.\nOld Mac.") + [EOS] + tok.encode(
        "Second."
    ) + [EOS]
    for body, message in (
        ('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', r"bad.jsonl, line 3: malformed JSON"),
        ('{"text": "a"}\n{"body": "b"}\n', r"bad.jsonl, line 2: no string field 'text'"),
        ('{"text": "a"}\n["text"]\n', r"bad.jsonl, line 2: no string field 'text'"),
        ('{"text": 5}\n', r"bad.jsonl, line 1: no string field 'text'"),
    ):
        (tmp_path / "bad.jsonl").write_text(body)
        with pytest.raises(InputError, match=message):
            list(iter_documents([tmp_path / "bad.jsonl"]))


def test_folder_and_glob_inputs(tmp_path, tokenizer_dir):
    paragraphs = make_paragraphs(20, seed=3)
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "b.txt").write_text(file_text(paragraphs[:10]))
    (tmp_path / "corpus" / "a.txt.gz").write_bytes(gzip.compress(file_text(paragraphs[10:]).encode()))
    (tmp_path / "corpus" / "sub" / "c.jsonl").write_text(json.dumps({"text": "Deep."}) + "\n")
    (tmp_path / "corpus" / "notes.csv").write_text("a,b\n")  # not a text format: a folder skips it
    folder = tmp_path / "corpus"
    assert expand_inputs([str(folder)]) == [folder / "a.txt.gz", folder / "b.txt", folder / "sub" / "c.jsonl"]
    assert expand_inputs([f"{folder}/**/*.jsonl", f"{folder}/b.*"]) == [folder / "sub" / "c.jsonl", folder / "b.txt"]
    run_prepare(expand_inputs([str(folder)]), tokenizer_dir, tmp_path / "from_folder")
    run_prepare([folder / "a.txt.gz", folder / "b.txt", folder / "sub" / "c.jsonl"], tokenizer_dir, tmp_path / "listed")
    assert shard_tokens(tmp_path / "from_folder", "train") == shard_tokens(tmp_path / "listed", "train")
    for bad, message in (([f"{folder}/*.parquet"], "no files match"), ([str(tmp_path / "nope")], "no such file")):
        with pytest.raises(InputError, match=message):
            expand_inputs(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no text files"):
        expand_inputs([str(tmp_path / "empty")])


def png_like(path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(2000))


@pytest.mark.parametrize(
    "write_bad, message",
    [
        (png_like, r"bad.txt: not UTF-8 text \(invalid byte at offset 0, line 1\)"),
        (
            lambda p: p.write_bytes(b"fine\nthen a NUL\x00 here\n"),
            r"bad.txt: looks like a binary file \(NUL byte at offset 15\)",
        ),
        (lambda p: p.write_bytes(b"ok\n" + "好".encode()[:2]), r"bad.txt: not UTF-8 text"),  # cut mid-character
        (lambda p: p.write_bytes(gzip.compress(b"text")[:-6]), r"bad.txt.gz: cannot read"),
        (lambda p: p.write_text("\n \n\t\n\n"), r"the corpus is empty"),
    ],
)
def test_bad_input_leaves_no_output(tmp_path, tokenizer_dir, write_bad, message):
    good = tmp_path / "good.txt"
    good.write_text(file_text(make_paragraphs(20, seed=4)))
    bad = tmp_path / ("bad.txt.gz" if "gz" in message else "bad.txt")
    write_bad(bad)
    files = [bad] if "empty" in message else [good, bad]
    with pytest.raises(InputError, match=message):
        run_prepare(files, tokenizer_dir, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.txt", bad.name])


def test_existing_output_folder(tmp_path, tokenizer_dir):
    (tmp_path / "a.txt").write_text(file_text(make_paragraphs(10, seed=5)))
    (tmp_path / "out").mkdir()
    run_prepare([tmp_path / "a.txt"], tokenizer_dir, tmp_path / "out")  # an empty folder is fine
    with pytest.raises(InputError, match="out: the output folder exists and is not empty"):
        run_prepare([tmp_path / "a.txt"], tokenizer_dir, tmp_path / "out")
    assert (tmp_path / "out" / "meta.json").is_file()


def test_shards_split_at_the_requested_size(tmp_path, tok, tokenizer_dir):
    paragraphs = make_paragraphs(50, seed=6)
    (tmp_path / "a.txt").write_text(file_text(paragraphs))
    meta = run_prepare([tmp_path / "a.txt"], tokenizer_dir, tmp_path / "out", shard_tokens=1000)
    sizes = [s["tokens"] for s in meta["shards"]["train"]]
    assert len(sizes) > 2 and all(n == 1000 for n in sizes[:-1]) and 0 < sizes[-1] <= 1000
    assert shard_tokens(tmp_path / "out", "train") == file_tokens(tok, paragraphs)


def test_long_lines_and_paragraphs_stream_in_bounded_pieces(tmp_path, monkeypatch):
    """A line or paragraph longer than the read limits arrives in pieces that join to the exact text."""
    monkeypatch.setattr(textio, "MAX_LINE", 64)
    monkeypatch.setattr(textio, "MAX_DOC_CHARS", 200)
    rng = random.Random(7)
    words = ["cat", "好", "😀", "tree", "Ünï"]
    paragraphs = [
        " ".join(rng.choice(words) for _ in range(n)).replace("tree tree", "tree\ntree") for n in (5, 400, 30, 900, 3)
    ]
    paragraphs.insert(2, "x" * 1000)  # one line of 1000 bytes, no spaces
    text = file_text(paragraphs)
    path = tmp_path / "long.txt"
    path.write_bytes(text.replace("\n", "\r\n").encode())  # '\r\n' pairs fall across piece boundaries too
    pieces = [line for _, line in iter_lines(path)]
    assert max(len(p.encode()) for p in pieces) <= 64 + 4  # + a held-back '\r' and a character cut by a read
    assert "".join(pieces) == text
    docs = list(iter_documents([path]))
    assert max(len(d) for d in docs) <= 200 + 70
    assert "".join(docs) == text


def test_progress_on_a_terminal_and_in_a_log(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setattr("llm.data.corpus.BATCH_CHARS", 2000)
    (tmp_path / "a.txt").write_text(file_text(make_paragraphs(100, seed=8)))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream in (io.StringIO(), Terminal()):
        monkeypatch.setattr(sys, "stderr", stream)
        out = tmp_path / f"out_{type(stream).__name__}"
        meta = prepare([tmp_path / "a.txt"], tokenizer_dir, out, 0.0, workers=1, progress=True)
        text = stream.getvalue()
        assert text.endswith(f"{meta['tokens']['train']:,} tokens\n")
        assert ("\r" in text) == stream.isatty()  # a log gets whole lines, a terminal a bar redrawn in place
        # An error after the bar was drawn starts on a fresh line.
        stream.seek(0)
        stream.truncate()
        png_like(tmp_path / "bad.txt")
        with pytest.raises(InputError):
            prepare([tmp_path / "a.txt", tmp_path / "bad.txt"], tokenizer_dir, tmp_path / "x", 0.0, 1, progress=True)
        assert stream.getvalue().endswith("\n")
        (tmp_path / "bad.txt").unlink()


def test_window_batches_are_a_pure_function_of_step_and_micro(data_dir):
    data = TokenData.open(data_dir)
    batches = WindowBatches(data, context_length=32, batch_size=4, seed=3)
    x, y = batches.train_batch(5, 1)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    again = WindowBatches(data, context_length=32, batch_size=4, seed=3)
    assert torch.equal(again.train_batch(5, 1)[0], x)
    assert not torch.equal(batches.train_batch(5, 0)[0], x) and not torch.equal(batches.train_batch(6, 1)[0], x)
    first = [b[0] for b in batches.eval_batches("val", 3)]
    assert len(first) == 3 and all(
        torch.equal(a, b[0]) for a, b in zip(first, batches.eval_batches("val", 3), strict=True)
    )
    val_tokens = set(np.concatenate(data.arrays("val")).tolist())
    assert set(first[0].flatten().tolist()) <= val_tokens


def test_window_batches_refuse_a_context_longer_than_the_data(data_dir):
    with pytest.raises(InputError, match="fewer tokens than the context length"):
        WindowBatches(TokenData.open(data_dir), context_length=100_000, batch_size=2, seed=0)


def peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory (MB) of a `python -m llm` run and the workers it starts, whichever is largest."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone (and its waited-for children)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_maxrss / 1024  # Linux reports KiB


@pytest.mark.slow
def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path, tokenizer_dir):
    block = ("\n\n".join(make_stories(2000, seed=11)) + "\n\n").encode()
    peaks = {}
    for mb in (10, 100):
        path = tmp_path / f"corpus_{mb}.txt"
        with open(path, "wb") as f:
            for _ in range(mb * 1_000_000 // len(block) + 1):
                f.write(block)
        args = ["prepare", "--input", str(path), "--tokenizer", str(tokenizer_dir), "--workers", "2", "--quiet"]
        peaks[mb] = peak_rss_mb([*args, "--out", str(tmp_path / f"out_{mb}")])
        assert TokenData.open(tmp_path / f"out_{mb}").meta["bytes"] > 0.95 * mb * 1e6
    # 90 MB more text may cost at most 25 MB more memory (measured: under 2 MB more, about 240 MB in all).
    assert peaks[100] < peaks[10] + 25, peaks
