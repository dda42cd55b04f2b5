"""A SentencePiece tokenizer: ours (BPE with byte fallback and the reserved chat tokens, training.py), or an
imported Llama 2 / TinyLlama one (with its own chat template).

Byte fallback means no text is ever unknown: characters outside the vocabulary become their UTF-8 bytes, so any
Unicode string round-trips. The chat tokens are *control* symbols: encode() never produces them from text; the
chat template inserts them by id.

The model file is a protobuf (sentencepiece_model.proto); the few facts its Python API does not tell (piece
types, model type, normaliser) are read from it by hand, and a model is written by hand from a GGUF file's
vocabulary (gguf_vocab.py): no protobuf package is needed.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import sentencepiece as spm

from llm.data.tokenizer.base import CHAT_TOKENS, JSON_FILE, MODEL_FILE, Tokenizer
from llm.errors import TokenizerError

# SentencePiece piece types (sentencepiece_model.proto); GGUF's token types are the same numbers
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.model_type


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_proto: bytes, source: str = "tokenizer", chat_template: str | None = None):
        self.source = source
        self._proto = model_proto
        self.chat_template = chat_template
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception:
            raise TokenizerError(f"{source}: not a SentencePiece model file") from None
        sp = self._sp
        self.vocab_size = sp.vocab_size()
        self.unk_id = sp.unk_id()
        self.special = {tok: sp.piece_to_id(tok) for tok in CHAT_TOKENS if sp.piece_to_id(tok) != self.unk_id}
        if chat_template is None and len(self.special) < len(CHAT_TOKENS):
            missing = sorted(set(CHAT_TOKENS) - set(self.special))
            raise TokenizerError(
                f"{source}: the tokenizer lacks the reserved tokens {missing} and has no chat template"
            )
        self.eos_id, self.bos_id = sp.eos_id(), sp.bos_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id  # padding is never trained on
        # Our documents are separated by EOS, so every sequence starts with it; Llama-family tokenizers (imported,
        # without our chat tokens) start a sequence with BOS.
        self.start_id = self.eos_id if chat_template is None else self.bos_id
        pieces = [sp.id_to_piece(i) for i in range(self.vocab_size)]
        controls = [p for i, p in enumerate(pieces) if sp.IsControl(i) or sp.IsUnknown(i)]
        self._control_pattern = re.compile("(" + "|".join(re.escape(p) for p in sorted(controls, key=len)[::-1]) + ")")

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=num_threads)

    def encode_special(self, text: str) -> list[int]:
        """A control token's text becomes its id and the text between them is encoded as usual, each part on
        its own (as a Hugging Face tokenizer treats its special tokens)."""
        ids = []
        for i, part in enumerate(self._control_pattern.split(text)):
            if i % 2:  # the pattern's captured matches sit at odd positions
                ids.append(self._sp.piece_to_id(part))
            elif part:
                ids += self._sp.encode(part)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def token_bytes(self, i: int) -> bytes:
        """One raw byte for a byte-fallback piece (decode() would turn a byte that is not part of a valid
        character into U+FFFD), else the piece's text with its spaces (b"" for control tokens)."""
        i = int(i)
        if self._sp.IsByte(i):
            return bytes([int(self._sp.id_to_piece(i)[1:-1], 16)])  # the piece is written "<0xE4>"
        if self._sp.IsControl(i) or self._sp.IsUnknown(i):
            return b""
        return self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")

    def is_special(self, i: int) -> bool:
        return bool(self._sp.IsControl(int(i)))

    def is_byte(self, i: int) -> bool:
        return bool(self._sp.IsByte(int(i)))

    def score(self, i: int) -> float:
        return self._sp.GetScore(int(i))

    def facts(self) -> dict[str, Any]:
        return sentencepiece_facts(self._proto)

    def vocabulary_files(self) -> dict[str, bytes | str]:
        return {MODEL_FILE: self._proto}

    def hf_files(self) -> dict[str, bytes | str]:
        from llm.data.tokenizer.to_json import sentencepiece_json

        return {MODEL_FILE: self._proto, JSON_FILE: json.dumps(sentencepiece_json(self), ensure_ascii=False) + "\n"}

    def gguf_metadata(self) -> dict[str, Any]:
        from llm.data.tokenizer.gguf_vocab import sentencepiece_metadata

        return sentencepiece_metadata(self)


# --- the protobuf, by hand ---


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise TokenizerError("a SentencePiece model ends inside a number")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited and fixed as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise TokenizerError(f"unexpected protobuf wire type {wire}")
        yield field, value


def sentencepiece_facts(proto: bytes) -> dict[str, Any]:
    """What its Python API does not tell: piece types, model type, dummy prefix, normaliser and byte fallback."""
    types, facts = [], {"model_type": "unigram", "add_dummy_prefix": True, "normalizer": "nmt_nfkc"}
    facts["byte_fallback"] = False
    for field, value in _fields(proto):
        if field == 1:  # pieces: piece=1, score=2, type=3 (default NORMAL)
            types.append(dict(_fields(value)).get(3, NORMAL))
        elif field == 2:  # trainer_spec: model_type=3, byte_fallback=35
            spec = dict(_fields(value))
            facts["model_type"] = MODEL_TYPES.get(spec.get(3, 1), "unknown")
            facts["byte_fallback"] = bool(spec.get(35, 0))
        elif field == 3:  # normalizer_spec: name=1, add_dummy_prefix=3
            spec = dict(_fields(value))
            facts["normalizer"] = spec.get(1, b"nmt_nfkc").decode()
            facts["add_dummy_prefix"] = bool(spec.get(3, 1))
    return facts | {"types": types}


def _key(field: int, wire: int) -> bytes:
    return _encode_varint(field << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _message(fields: list[tuple[int, int | float | bytes]]) -> bytes:
    """A protobuf message: int -> varint, float -> fixed32, bytes -> length-delimited."""
    out = bytearray()
    for field, value in fields:
        if isinstance(value, float):
            out += _key(field, 5) + struct.pack("<f", value)
        elif isinstance(value, bytes):
            out += _key(field, 2) + _encode_varint(len(value)) + value
        else:
            out += _key(field, 0) + _encode_varint(value)
    return bytes(out)


def write_model(pieces: list[tuple[str, float, int]], roles: dict[str, int], add_dummy_prefix: bool) -> bytes:
    """A BPE SentencePiece model from its pieces [(text, score, type)] and the ids of its unk, bos, eos and pad
    (-1: none), with the identity normaliser and byte fallback when it has byte pieces (Llama's own settings)."""
    body = b"".join(_message([(1, _message([(1, p.encode("utf-8")), (2, float(s)), (3, t)]))]) for p, s, t in pieces)
    trainer = [(3, 2), (4, len(pieces)), (35, int(any(t == BYTE for _, _, t in pieces)))]
    for number, role in ((40, "unk"), (41, "bos"), (42, "eos"), (43, "pad")):
        trainer.append((number, roles.get(role, -1) & 0xFFFFFFFFFFFFFFFF))  # a negative int32 as protobuf writes it
    for number, role in ((45, "unk"), (46, "bos"), (47, "eos"), (48, "pad")):
        if roles.get(role, -1) >= 0:
            trainer.append((number, pieces[roles[role]][0].encode("utf-8")))
    normalizer = [(1, b"identity"), (3, int(add_dummy_prefix)), (4, 0), (5, 1)]
    return body + _message([(2, _message(trainer)), (3, _message(normalizer))])
