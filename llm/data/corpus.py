"""Raw text -> token shards on disk -> random training windows.

prepare() streams documents from the inputs, sends batches of them to worker processes that return numpy
token arrays, and appends those to shard files. Only a bounded number of batches is in flight, so memory
does not grow with the corpus. A document goes to the validation split when a hash of its position says
so, which holds documents out whole and is the same on every run.

On disk (<out>/):
  meta.json               dtype, vocabulary size, shard list with token counts, source files
  tokenizer files         the tokenizer that made the shards (llm/data/tokenizer)
  train_000.bin, ...      raw token ids (uint16 when the vocabulary fits, else uint32)
  val_000.bin, ...
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.data.text import iter_file_documents, name_files
from llm.data.tokenizer import Tokenizer
from llm.errors import ConfigError, InputError

META = "meta.json"
EVAL_STREAM = 10**9  # evaluation windows are seeded apart from the training steps' (steps never reach it)
BATCH_CHARS = 1 << 20  # characters sent to a worker at once


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_validation(file_index: int, doc_index: int, val_fraction: float, seed: int) -> bool:
    """Deterministic choice of the held-out documents: a hash of the document's position."""
    digest = hashlib.blake2b(f"{seed}:{file_index}:{doc_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


NO_VALIDATION = "no document was held out for validation: raise the validation fraction or add documents"


def count_held_out(files: list[Path], val_fraction: float, text_field: str = "text", seed: int = 0) -> tuple[int, int]:
    """(documents, documents held out for validation) as prepare() splits these files; reads them whole."""
    documents = held_out = 0
    for file_index, path in enumerate(files):
        for doc_index, _ in enumerate(iter_file_documents(path, text_field)):
            documents += 1
            held_out += is_validation(file_index, doc_index, val_fraction, seed)
    return documents, held_out


# ---- worker processes: each loads the tokenizer once, then encodes batches ----
_worker_tok: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _worker_tok
    torch.set_num_threads(1)
    _worker_tok = tok  # pickled as its files and built anew in this process


def _encode_batch(batch: list[tuple[str, bool, bool]], dtype: str) -> tuple[np.ndarray, np.ndarray, int]:
    """[(text, ends_unit, is_val)] -> (train tokens, val tokens, UTF-8 bytes encoded)."""
    assert _worker_tok is not None
    out = {}
    for split in (False, True):
        docs = [(t, e) for t, e, v in batch if v == split]
        ids = _worker_tok.encode_batch([t for t, _ in docs])
        flat: list[int] = []
        for piece, (_, ends_unit) in zip(ids, docs, strict=True):
            flat.extend(piece)
            if ends_unit:
                flat.append(_worker_tok.eos_id)
        out[split] = np.asarray(flat, dtype=dtype)
    return out[False], out[True], sum(len(t.encode()) for t, _, _ in batch)


class ShardWriter:
    """Appends token arrays to <dir>/<split>_NNN.bin files of at most shard_tokens tokens."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.shards: list[dict] = []
        self.file = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, tokens = tokens[:room], tokens[room:]
            self.file.write(part.tobytes())
            self.shards[-1]["tokens"] += len(part)

    def _next_shard(self) -> None:
        if self.file is not None:
            self.file.close()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self.file = open(self.directory / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> list[dict]:
        if self.file is not None:
            self.file.close()
        return self.shards


def _batches(files: list[Path], text_field: str, val_fraction: float, seed: int):
    """Yield lists of (text, ends_unit, is_val) of about BATCH_CHARS characters, and count documents."""
    batch, size = [], 0
    for file_index, path in enumerate(files):
        for doc_index, (text, ends_unit) in enumerate(iter_file_documents(path, text_field)):
            batch.append((text, ends_unit, is_validation(file_index, doc_index, val_fraction, seed)))
            size += len(text)
            if size >= BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


class Progress:
    """Progress on stderr: MB read, MB/s, tokens, and a bar when the input size is known.

    On a terminal the bar is redrawn in place; in a log (a studio job, CI) a whole line is written every
    LOG_SECONDS instead, so the log never fills with carriage returns.
    """

    LOG_SECONDS = 10.0

    def __init__(self, total_bytes: int | None, enabled: bool):
        self.total, self.enabled = total_bytes, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start, self.last = time.time(), 0.0
        self.open_line = False  # a bar is drawn and the cursor sits at its end

    def update(self, done_bytes: int, tokens: int, final: bool = False) -> None:
        now = time.time()
        interval = 0.5 if self.tty else self.LOG_SECONDS
        if not self.enabled or (not final and now - self.last < interval):
            return
        self.last = now
        mb, secs = done_bytes / 1e6, max(now - self.start, 1e-9)
        line = f"{mb:,.1f} MB  {mb / secs:.2f} MB/s  {tokens:,} tokens"
        if self.total:
            filled = int(30 * min(done_bytes / self.total, 1.0))
            line = f"[{'#' * filled}{'-' * (30 - filled)}] {line}"
        if self.tty:
            print(f"\r{line}", end="\n" if final else "", file=sys.stderr, flush=True)
            self.open_line = not final
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """End a bar left open (by an error), so that the next message starts on a line of its own."""
        if self.open_line:
            print(file=sys.stderr, flush=True)
            self.open_line = False


def _encode_corpus(
    files: list[Path], tok: Tokenizer, writers: dict[bool, ShardWriter], bar: Progress, workers: int, **split: Any
) -> tuple[int, int]:
    """Encode the corpus in a bounded pool of worker processes into the shard writers (keyed by is_val);
    returns (text bytes encoded, tokens written). split: _batches' text_field, val_fraction and seed."""
    done_bytes = tokens = 0
    dtype = token_dtype(tok.vocab_size)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(tok,)) as pool:
        pending: deque[Future] = deque()

        def collect() -> None:
            nonlocal done_bytes, tokens
            train, val, nbytes = pending.popleft().result()
            writers[False].write(train)
            writers[True].write(val)
            done_bytes += nbytes
            tokens += len(train) + len(val)
            bar.update(done_bytes, tokens)

        for batch in _batches(files, split["text_field"], split["val_fraction"], split["seed"]):
            pending.append(pool.submit(_encode_batch, batch, dtype.name))
            if len(pending) >= 2 * workers:  # bounded: memory stays flat however large the corpus
                collect()
        while pending:
            collect()
    return done_bytes, tokens


def prepare(
    files: list[Path],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.01,
    workers: int = 0,
    shard_tokens: int = 100_000_000,
    text_field: str = "text",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Tokenize files into shards under out_dir (written aside, then renamed into place). Returns meta."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"must be in [0, 1), got {val_fraction}", field="val_fraction")
    tok = Tokenizer.load(tokenizer_path)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: the output folder exists and is not empty")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writers = {False: ShardWriter(tmp, "train", shard_tokens), True: ShardWriter(tmp, "val", shard_tokens)}
    # The bar compares text bytes encoded with file sizes: only meaningful when no input is compressed.
    compressed = any(p.name.endswith((".gz", ".xz")) for p in files)
    bar = Progress(None if compressed else sum(p.stat().st_size for p in files), progress)
    start = time.time()
    try:
        split = dict(text_field=text_field, val_fraction=val_fraction, seed=seed)
        done_bytes, tokens = _encode_corpus(files, tok, writers, bar, workers or os.cpu_count() or 1, **split)
        shards = {split: writers[v].close() for split, v in (("train", False), ("val", True))}
        if tokens == 0:
            raise InputError(f"the corpus is empty: no text in {name_files(files)}")
        if val_fraction > 0 and not shards["val"]:
            raise InputError(NO_VALIDATION)
        meta = {
            "dtype": token_dtype(tok.vocab_size).name,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "shards": shards,
            "tokens": {s: sum(x["tokens"] for x in shards[s]) for s in shards},
            "bytes": done_bytes,
            "val_fraction": val_fraction,
            "seed": seed,
            "sources": [str(p) for p in files],
            "seconds": round(time.time() - start, 2),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        tok.save(tmp)
        bar.update(done_bytes, tokens, final=True)
    except BaseException:
        bar.close()
        for w in writers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return meta


@dataclass
class TokenData:
    """Memory-mapped token shards of one prepared corpus."""

    directory: Path
    meta: dict

    @classmethod
    def open(cls, directory: str | Path) -> TokenData:
        directory = Path(directory)
        meta_path = directory / META
        if not meta_path.is_file():
            raise InputError(f"{directory}: not a prepared corpus (no {META}); run `python -m llm prepare`")
        return cls(directory, json.loads(meta_path.read_text()))

    def arrays(self, split: str) -> list[np.memmap]:
        return [
            np.memmap(self.directory / s["file"], dtype=self.meta["dtype"], mode="r")
            for s in self.meta["shards"][split]
            if s["tokens"] > 0
        ]


class WindowBatches:
    """Random (x, y) windows from token shards: y is x shifted by one token.

    The window positions of micro-batch `micro` at optimizer step `step` come from an RNG seeded by
    (seed, step, micro), so batches need no saved state: a resumed run and a data-parallel run (where rank
    r takes some of the micro-batches) see exactly the batches a single uninterrupted run would.
    """

    def __init__(self, data: TokenData, context_length: int, batch_size: int, seed: int):
        self.context_length, self.batch_size, self.seed = context_length, batch_size, seed
        self.splits = {s: data.arrays(s) for s in ("train", "val")}
        for split, arrays in self.splits.items():
            usable = [a for a in arrays if len(a) > context_length]
            if arrays and not usable:
                raise InputError(
                    f"{data.directory}: the {split} split has fewer tokens than the context length "
                    f"{context_length}; use more text or a shorter context"
                )
            self.splits[split] = usable
        if not self.splits["train"]:
            raise InputError(f"{data.directory}: the train split is empty")
        self.n_tokens = {s: sum(len(a) for a in v) for s, v in self.splits.items()}

    def _windows(self, split: str, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        arrays, T = self.splits[split], self.context_length
        sizes = np.array([len(a) - T for a in arrays], dtype=np.float64)  # window starts per shard
        shard_of = rng.choice(len(arrays), size=self.batch_size, p=sizes / sizes.sum())
        rows = []
        for s in shard_of:
            start = int(rng.integers(0, len(arrays[s]) - T))
            rows.append(np.asarray(arrays[s][start : start + T + 1], dtype=np.int64))
        block = torch.from_numpy(np.stack(rows))  # (B, T+1)
        return block[:, :-1], block[:, 1:]

    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._windows("train", np.random.default_rng([self.seed, step, micro]))

    def eval_batches(self, split: str, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same `count` batches every time, so evaluations along a run are comparable."""
        if not self.splits.get(split):
            return
        rng = np.random.default_rng([self.seed, EVAL_STREAM + (split == "val")])
        for _ in range(count):
            yield self._windows(split, rng)
