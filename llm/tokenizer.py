"""SentencePiece BPE tokenizer with byte fallback and the reserved chat tokens.

Byte fallback means no text is ever unknown: characters outside the vocabulary become their UTF-8 bytes, so
any Unicode string round-trips. The chat tokens are *control* symbols: encode() never produces them from
text (a user typing "<|end|>" cannot forge a turn boundary); the chat template inserts them by id.

A tokenizer imported with a model of the Llama family (llm/hf.py) has no chat tokens: it brings its own chat
template (chat_template.jinja beside tokenizer.model), which llm/chat.py renders instead of the built-in one.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llm.textio import iter_documents, name_files

PAD, UNK, BOS, EOS = 0, 1, 2, 3
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
MODEL_FILE = "tokenizer.model"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # an imported model's own chat template (Jinja, as Hugging Face's)


class TokenizerError(ValueError):
    pass


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

    def encode_to_array(self, texts: list[str], eos: bool, dtype=np.uint16) -> np.ndarray:
        """Encode texts and concatenate them (each followed by EOS when eos=True) into one array."""
        pieces = self.sp.encode(texts)
        if eos:
            pieces = [p + [EOS] for p in pieces]
        total = sum(len(p) for p in pieces)
        return np.fromiter(itertools.chain.from_iterable(pieces), dtype=dtype, count=total)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


def _training_sentences(files: list[Path], max_chars: int) -> Iterator[str]:
    """Non-empty lines of the inputs, at most max_chars in total (enough to learn merges)."""
    seen = 0
    for doc in iter_documents(files):
        for line in doc.split("\n"):
            if line.strip():
                yield line
                seen += len(line)
                if seen >= max_chars:
                    return


def _training_error(message: str, vocab_size: int) -> TokenizerError:
    """SentencePiece's trainer error -> a message that says which way to change --vocab-size."""
    too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return TokenizerError(
            f"--vocab-size {vocab_size} is too large for this text: at most {too_high.group(1)} is possible; "
            "use a smaller vocabulary or more text"
        )
    too_low = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if too_low:
        return TokenizerError(
            f"--vocab-size {vocab_size} is too small for this text: its distinct characters need at least "
            f"{too_low.group(1)}"
        )
    return TokenizerError(f"tokenizer training failed: {message}")


def train_tokenizer(
    files: list[Path],
    out_dir: str | Path,
    vocab_size: int = 4096,
    max_chars: int = 200_000_000,
    num_threads: int = 2,
) -> Tokenizer:
    """Train a BPE tokenizer on the text files and write <out_dir>/tokenizer.model."""
    reserved = 4 + len(CHAT_TOKENS) + 1 + 256  # pad/unk/bos/eos, chat tokens, newline, byte pieces
    if vocab_size <= reserved + 16:
        raise TokenizerError(f"--vocab-size {vocab_size} is too small: at least {reserved + 17} is needed")
    sentences = list(_training_sentences(files, max_chars))
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
            max_sentence_length=1 << 16,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _training_error(str(e).strip(), vocab_size) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(model.getvalue(), str(out / MODEL_FILE))
    tok.save(out)
    return tok
