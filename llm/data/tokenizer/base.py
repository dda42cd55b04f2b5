"""The tokenizer interface every model's tokenizer has, and the files that hold one in a model directory.

Two implementations: SentencePiece (sp_model.py: ours, trained by training.py, and Llama 2 / TinyLlama's) and a
Hugging Face `tokenizers` tokenizer.json (json_model.py: byte-level BPE as in SmolLM2, Llama 3, GPT-2, and
SentencePiece-derived ones). Nothing outside this package knows which one a model has, nor reaches into it:

    encode(text)          plain text -> ids; the texts of special tokens are never read as those tokens (a user
                          typing "<|end|>" or "<|im_end|>" cannot forge a turn boundary)
    encode_special(text)  a chat template's rendered text -> ids: the special tokens' texts become their ids
    decode(ids)           ids -> text, special tokens left out
    token_bytes(i)        the UTF-8 bytes a token stands for (b"" for a special token); a byte-fallback or
                          byte-level token may hold part of a character
    id_to_piece(i)        a token as a reader sees it: SentencePiece's piece ("▁the", "<0xE4>"); a byte-level
                          token's text, its stray bytes written <0xF0>; a special token's text ("<|im_end|>")
    is_special(i)         a control token: no text of its own, its name is shown

A model directory holds one of these sets (TOKENIZER_FILES), written and read only here:
    tokenizer.model                                  SentencePiece
    tokenizer.json + tokenizer_config.json           `tokenizers` (the config names bos/eos/pad/unk)
    chat_template.jinja                              an imported model's own chat template (either kind)
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llm.errors import TokenizerError

MODEL_FILE = "tokenizer.model"  # SentencePiece
JSON_FILE, JSON_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"  # Hugging Face `tokenizers`
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # an imported model's own chat template (Jinja, as Hugging Face's)
TOKENIZER_FILES = (MODEL_FILE, JSON_FILE, JSON_CONFIG_FILE, CHAT_TEMPLATE_FILE)
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")  # ours, reserved when training


class Tokenizer(ABC):
    """Text <-> token ids, the special tokens' roles and the chat template (None: llm/data/chat.py's own).

    special: our reserved chat tokens by name (empty for an imported tokenizer, which has its own template).
    start_id: the token a document follows: ours is EOS (documents are separated by it); an imported one's is
    the BOS it adds (Llama), else its end-of-text token (GPT-2 style vocabularies add none)."""

    source: str
    chat_template: str | None
    vocab_size: int
    special: dict[str, int]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    start_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    @abstractmethod
    def encode_special(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def id_to_piece(self, i: int) -> str: ...

    @abstractmethod
    def token_bytes(self, i: int) -> bytes: ...

    @abstractmethod
    def is_special(self, i: int) -> bool: ...

    @abstractmethod
    def is_byte(self, i: int) -> bool:
        """Whether the token stands for part of a character: a byte-fallback piece, or a byte-level token whose
        bytes are not whole UTF-8 characters."""

    @abstractmethod
    def vocabulary_files(self) -> dict[str, bytes | str]:
        """The files of the vocabulary and its rules (the chat template apart)."""

    @abstractmethod
    def hf_files(self) -> dict[str, bytes | str]:
        """The tokenizer files of a Hugging Face folder (its tokenizer_config.json apart): tokenizer.json, and
        tokenizer.model for a SentencePiece tokenizer."""

    @abstractmethod
    def gguf_metadata(self) -> dict[str, Any]:
        """The tokenizer.* keys of a GGUF file (llm/data/tokenizer/gguf_vocab.py), for llama.cpp."""

    @functools.cached_property
    def byte_ids(self) -> np.ndarray:
        """A boolean mask over the vocabulary: True for the tokens that stand for part of a character."""
        return np.array([self.is_byte(i) for i in range(self.vocab_size)], dtype=bool)

    def special_ids(self) -> dict[str, int]:
        """{text: id} of every special token (what encode_special reads as one token)."""
        return {self.id_to_piece(i): i for i in range(self.vocab_size) if self.is_special(i)}

    def files(self) -> dict[str, bytes | str]:
        """The files that hold this tokenizer in a model directory: {name: content}."""
        template = {CHAT_TEMPLATE_FILE: self.chat_template} if self.chat_template else {}
        return self.vocabulary_files() | template

    def same_vocabulary(self, other: Tokenizer) -> bool:
        """Whether both turn every text into the same tokens (their chat templates aside)."""
        return self.vocabulary_files() == other.vocabulary_files()

    def save(self, directory: str | Path) -> Path:
        """Write the files into directory; returns the main one's path (tokenizer.model or tokenizer.json)."""
        for name, content in self.files().items():
            target = Path(directory) / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        return Path(directory) / next(iter(self.vocabulary_files()))

    def __reduce__(self):
        # Worker processes (llm/data/corpus.py) get the files and build their own copy.
        return from_files, (self.files(), self.source)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """The tokenizer in a model directory (or a tokenizer.model / tokenizer.json file's)."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        names = [n for n in TOKENIZER_FILES if (directory / n).is_file()]
        if not path.is_dir() and path.name not in names:
            raise TokenizerError(f"tokenizer not found: {path}")
        files = {n: (directory / n).read_bytes() if n == MODEL_FILE else _read_text(directory / n) for n in names}
        if not holds_tokenizer(directory):
            raise TokenizerError(f"tokenizer not found: {directory} is missing {MODEL_FILE} (or {JSON_FILE})")
        return from_files(files, str(directory / (MODEL_FILE if MODEL_FILE in files else JSON_FILE)))


def byte_fallback_share(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """The share of the tokens of texts that stand for part of a character (is_byte): characters the tokenizer
    has no piece for, spelt byte by byte (a Chinese character is 3 tokens in a tokenizer trained on English). A
    high share means long sequences and a model that has barely seen such tokens. 0.0 for no tokens."""
    counts = [(int(tokenizer.byte_ids[ids].sum()), len(ids)) for ids in map(tokenizer.encode, texts)]
    total = sum(n for _, n in counts)
    return sum(b for b, _ in counts) / total if total else 0.0


def holds_tokenizer(directory: Path) -> bool:
    """Whether a folder holds a tokenizer's files."""
    return (directory / MODEL_FILE).is_file() or (directory / JSON_FILE).is_file()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def from_files(files: dict[str, bytes | str], source: str = "tokenizer") -> Tokenizer:
    """A tokenizer from its files' contents, {name: content} as files() gives them; a SentencePiece model is
    taken when there are both (its own rules, exact; a Hugging Face folder may hold both)."""
    from llm.data.tokenizer.json_model import JsonTokenizer
    from llm.data.tokenizer.sp_model import SentencePieceTokenizer

    template = files.get(CHAT_TEMPLATE_FILE)
    if MODEL_FILE in files:
        return SentencePieceTokenizer(files[MODEL_FILE], source, template)
    if JSON_FILE in files:
        return JsonTokenizer(files[JSON_FILE], files.get(JSON_CONFIG_FILE, "{}"), source, template)
    raise TokenizerError(f"{source}: no tokenizer ({MODEL_FILE} or {JSON_FILE})")
