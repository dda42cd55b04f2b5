"""SentencePiece BPE tokenizer with byte fallback and the reserved chat tokens.

Byte fallback means no text is ever unknown: characters outside the vocabulary become their UTF-8 bytes, so
any Unicode string round-trips. The chat tokens are *control* symbols: encode() never produces them from
text (a user typing "<|end|>" cannot forge a turn boundary); the chat template inserts them by id.

A tokenizer imported with a model of the Llama family (llm/model/hf.py) has no chat tokens: it brings its own chat
template (chat_template.jinja beside tokenizer.model), which llm/data/chat.py renders instead of the built-in one.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llm.data.text import iter_documents, name_files, short_pieces
from llm.errors import TokenizerError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
MODEL_FILE = "tokenizer.model"
# pad/unk/bos/eos, the chat tokens, newline and the 256 byte pieces, and room for a few merges
MIN_VOCAB_SIZE = 4 + len(CHAT_TOKENS) + 1 + 256 + 17
MAX_SENTENCE_BYTES = 1 << 16  # the longest line the trainer reads (it skips longer ones)
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # an imported model's own chat template (Jinja, as Hugging Face's)


class Tokenizer:
    def __init__(self, model_proto: bytes, source: str = "tokenizer", chat_template: str | None = None):
        self.source = source
        self.proto = model_proto
        self.chat_template = chat_template
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception:
            raise TokenizerError(f"{source}: not a SentencePiece model file") from None
        self.vocab_size = self.sp.vocab_size()
        self.special = {tok: self.sp.piece_to_id(tok) for tok in CHAT_TOKENS if self.sp.piece_to_id(tok) != UNK}
        if chat_template is None and len(self.special) < len(CHAT_TOKENS):
            missing = sorted(set(CHAT_TOKENS) - set(self.special))
            raise TokenizerError(
                f"{source}: the tokenizer lacks the reserved tokens {missing} and has no chat template"
            )
        self.eos_id, self.bos_id = self.sp.eos_id(), self.sp.bos_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id  # padding is never trained on
        # Our documents are separated by EOS, so every sequence starts with it; Llama-family tokenizers (imported,
        # without our chat tokens) start a sequence with BOS.
        self.start_id = self.eos_id if chat_template is None else self.bos_id

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise TokenizerError(f"tokenizer not found: {path}")
        template = path.with_name(CHAT_TEMPLATE_FILE)
        return cls(path.read_bytes(), str(path), template.read_text() if template.is_file() else None)

    def files(self) -> dict[str, bytes | str]:
        """The files that hold this tokenizer in a model directory: {name: content}."""
        return {MODEL_FILE: self.proto} | ({CHAT_TEMPLATE_FILE: self.chat_template} if self.chat_template else {})

    def save(self, directory: str | Path) -> Path:
        for name, content in self.files().items():
            target = Path(directory) / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        return Path(directory) / MODEL_FILE

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of an id, as SentencePiece spells it ("▁the", "<0xE4>", "<|user|>")."""
        return self.sp.id_to_piece(int(i))

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes a token stands for: one raw byte for a byte-fallback piece (decode() would turn a
        byte that is not part of a valid character into U+FFFD), else the piece's text (b"" for control tokens).
        Streaming joins these and decodes them as characters become whole."""
        if self.sp.IsByte(int(i)):
            return bytes([int(self.sp.id_to_piece(int(i))[1:-1], 16)])  # the piece is written "<0xE4>"
        return self.sp.decode([int(i)]).encode("utf-8")

    @functools.cached_property
    def byte_ids(self) -> np.ndarray:
        """A boolean mask over the vocabulary: True for the 256 byte-fallback pieces."""
        return np.array([self.sp.IsByte(i) for i in range(self.vocab_size)], dtype=bool)


def byte_fallback_share(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """The share of the tokens of texts that are byte-fallback pieces: characters the tokenizer has no piece
    for, spelt byte by byte (a Chinese character is 3 tokens in a tokenizer trained on English). A high share
    means long sequences and a model that has barely seen such tokens. 0.0 for no tokens."""
    counts = [(int(tokenizer.byte_ids[ids].sum()), len(ids)) for ids in map(tokenizer.encode, texts)]
    total = sum(n for _, n in counts)
    return sum(b for b, _ in counts) / total if total else 0.0


def _training_sentences(files: list[Path], max_chars: int, text_field: str = "text") -> Iterator[str]:
    """Non-empty lines of the inputs, at most max_chars in total (enough to learn merges). A line longer than
    the trainer takes (MAX_SENTENCE_BYTES; it skips longer ones) comes in pieces: a text saved as one long line
    would otherwise leave it nothing."""
    seen = 0
    for doc in iter_documents(files, text_field):
        for line in doc.split("\n"):
            for piece in short_pieces(line, MAX_SENTENCE_BYTES // 4) if line.strip() else ():  # UTF-8: 4 bytes at most
                yield piece
                seen += len(piece)
                if seen >= max_chars:
                    return


def _training_error(message: str, vocab_size: int, files: list[Path]) -> TokenizerError:
    """SentencePiece's trainer error -> a message that says which way to change the vocabulary size."""
    too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return TokenizerError(
            f"{vocab_size} is too large for this text: at most {too_high.group(1)} is possible; "
            "use a smaller vocabulary or more text",
            field="vocab_size",
        )
    too_low = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if too_low:
        return TokenizerError(
            f"{vocab_size} is too small for this text: its distinct characters need at least {too_low.group(1)}",
            field="vocab_size",
        )
    return TokenizerError(f"tokenizer training on {name_files(files)} failed: {message}")


def train_tokenizer(
    files: list[Path],
    out_dir: str | Path,
    vocab_size: int = 4096,
    max_chars: int = 200_000_000,
    num_threads: int = 2,
    text_field: str = "text",
) -> Tokenizer:
    """Train a BPE tokenizer on the text files (the text_field of .jsonl records) and write
    <out_dir>/tokenizer.model."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"{vocab_size} is too small: at least {MIN_VOCAB_SIZE} is needed", field="vocab_size")
    sentences = list(_training_sentences(files, max_chars, text_field))
    if not sentences:
        raise TokenizerError(f"the corpus is empty: no text in {name_files(files)}")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            normalization_rule_name="identity",  # keep the text exactly as written
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,  # so decode(encode(a) + encode(b)) == a + b
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=0.9995,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            control_symbols=list(CHAT_TOKENS),
            user_defined_symbols=["\n"],
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _training_error(str(e).strip(), vocab_size, files) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(model.getvalue(), str(out / MODEL_FILE))
    tok.save(out)
    return tok
