"""A Hugging Face `tokenizers` tokenizer (tokenizer.json): byte-level BPE (SmolLM2, Llama 3, GPT-2) or
SentencePiece-derived BPE / Unigram (spaces as U+2581, byte fallback pieces <0xNN>).

tokenizer.json holds the vocabulary and the rules; which special token is BOS, EOS, padding and unknown is
not in it: tokenizer_config.json says so (its bos_token, eos_token, pad_token and unk_token, as Hugging Face
writes them; `gguf_pre` names the pre-tokenizer as llama.cpp knows it, when the model came from a GGUF file).

A byte-level vocabulary spells each byte as a printable character (GPT-2's alphabet: "Ġ" is a space); a token
stands for the bytes its characters spell, which need not be whole UTF-8 characters ("ĠðŁ" is a space and the
first two bytes of an emoji). Special tokens' texts are recognised only in a chat template's rendered text
(encode_special), never in plain text (encode).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import tokenizers

from llm.data.tokenizer.base import CHAT_TOKENS, JSON_CONFIG_FILE, JSON_FILE, Tokenizer
from llm.errors import TokenizerError

MODELS = ("BPE", "Unigram")
ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")
END_OF_TEXT = "<|endoftext|>"  # the document separator of GPT-2 style vocabularies
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def byte_alphabet() -> dict[int, str]:
    """GPT-2's spelling of each byte as a printable character: printable Latin-1 bytes as themselves, the
    others as the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


BYTE_OF_CHAR = {c: b for b, c in byte_alphabet().items()}


def _has_type(spec: Any, name: str) -> bool:
    """Whether a component of tokenizer.json (or one inside a Sequence) is of type name."""
    if isinstance(spec, dict):
        return spec.get("type") == name or any(_has_type(v, name) for v in spec.values() if isinstance(v, list))
    if isinstance(spec, list):
        return any(_has_type(item, name) for item in spec)
    return False


def readable(data: bytes) -> str:
    """Bytes as text, each byte that is not part of a whole character written <0xF0>."""
    text = data.decode("utf-8", errors="surrogateescape")
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def config_text(roles: dict[str, str | None], gguf_pre: str | None = None) -> str:
    """tokenizer_config.json as this project writes it: the special tokens' roles (and llama.cpp's name of the
    pre-tokenizer, when known)."""
    config = {role: roles.get(role) for role in ROLES} | ({"gguf_pre": gguf_pre} if gguf_pre else {})
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


class JsonTokenizer(Tokenizer):
    def __init__(
        self, tokenizer_json: str, config_json: str, source: str = JSON_FILE, chat_template: str | None = None
    ):
        self.source, self.chat_template = source, chat_template
        self._json, self._config_json = tokenizer_json, config_json
        self.spec, self.config = (
            _parse(tokenizer_json, source, JSON_FILE),
            _parse(config_json, source, JSON_CONFIG_FILE),
        )
        if not isinstance(self.spec.get("model"), dict) or self.spec["model"].get("type") not in MODELS:
            kind = self.spec.get("model", {}).get("type") if isinstance(self.spec.get("model"), dict) else None
            raise TokenizerError(f"{source}: model type {kind!r} is not supported (only {', '.join(MODELS)})")
        try:
            self._plain = tokenizers.Tokenizer.from_str(tokenizer_json)
            self._with_special = tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the library's own error type is not exported; its message says what is wrong
            raise TokenizerError(f"{source}: the tokenizers library cannot read it ({e})") from None
        self._plain.encode_special_tokens = True  # plain text never yields a special token
        self.vocab_size = self._plain.get_vocab_size(with_added_tokens=True)
        added = self._plain.get_added_tokens_decoder()
        self._special = {i for i, token in added.items() if token.special}
        self.added_ids = set(added)
        decoding = (self.spec.get("pre_tokenizer"), self.spec.get("decoder"))
        self.byte_level = any(_has_type(part, "ByteLevel") for part in decoding)
        self._bytes, self._partial = self._byte_table()
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (self._role_id(role) for role in ROLES)
        if self.eos_id < 0:
            raise TokenizerError(f"{source}: {JSON_CONFIG_FILE} names no eos_token (the token that ends a turn)")
        self.pad_id = self.pad_id if self.pad_id >= 0 else self.eos_id  # padding is never trained on
        self.special = {
            t: i for t in CHAT_TOKENS if (i := self._plain.token_to_id(t)) is not None and i in self._special
        }
        if chat_template is None and len(self.special) < len(CHAT_TOKENS):
            raise TokenizerError(f"{source}: the tokenizer has no chat template (nor our reserved chat tokens)")
        self.start_id, self.adds_bos = self._start()

    def _role_id(self, role: str) -> int:
        value = self.config.get(role)
        if isinstance(value, dict):  # {"content": "<s>", ...}, as older tokenizer_config.json files write it
            value = value.get("content")
        if value is None:
            return -1
        i = self._plain.token_to_id(value) if isinstance(value, str) else None
        if i is None:
            raise TokenizerError(f"{self.source}: {JSON_CONFIG_FILE} {role} {value!r} is not in the vocabulary")
        return i

    def _start(self) -> tuple[int, bool]:
        """(start_id, whether the post-processor adds it): the BOS it puts before a text, else the end-of-text
        token, else EOS."""
        processors = [self.spec.get("post_processor") or {}]
        processors += processors[0].get("processors", []) if processors[0].get("type") == "Sequence" else []
        for processor in processors:
            first = (processor.get("single") or [{}])[0] if processor.get("type") == "TemplateProcessing" else {}
            if "SpecialToken" in first:
                return processor["special_tokens"][first["SpecialToken"]["id"]]["ids"][0], True
        end = self._plain.token_to_id(END_OF_TEXT)
        return (end if end is not None and end in self._special else self.eos_id), False

    def _byte_table(self) -> tuple[list[bytes], set[int]]:
        """(the bytes of every token, the ids of those that are part of a character)."""
        byte_level = self.byte_level
        fallback = bool(self.spec["model"].get("byte_fallback"))
        table, partial = [], set()
        for i in range(self.vocab_size):
            token = self._plain.id_to_token(i) or ""
            if i in self._special:
                data = b""
            elif i in self.added_ids or not byte_level and not (fallback and BYTE_PIECE.fullmatch(token)):
                data = token.replace("\u2581", " ").encode("utf-8")
            elif byte_level:
                data = bytes(BYTE_OF_CHAR[c] for c in token) if all(c in BYTE_OF_CHAR for c in token) else b""
            else:
                data = bytes([int(token[3:5], 16)])
                partial.add(i)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                partial.add(i)
            table.append(data)
        return table, partial

    def encode(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return [e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def encode_special(self, text: str) -> list[int]:
        return self._with_special.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._plain.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        i = int(i)
        if i in self.added_ids or not self.byte_level:
            return self._plain.id_to_token(i) or ""
        return readable(self._bytes[i])

    def token_bytes(self, i: int) -> bytes:
        return self._bytes[int(i)]

    def is_special(self, i: int) -> bool:
        return int(i) in self._special

    def is_byte(self, i: int) -> bool:
        return int(i) in self._partial

    def vocabulary_files(self) -> dict[str, bytes | str]:
        return {JSON_FILE: self._json, JSON_CONFIG_FILE: self._config_json}

    def hf_files(self) -> dict[str, bytes | str]:
        return {JSON_FILE: self._json}  # as it came: an imported model's tokenizer.json passes through unchanged

    def gguf_metadata(self) -> dict[str, Any]:
        from llm.data.tokenizer.gguf_vocab import json_metadata

        return json_metadata(self)

    def tokens(self) -> list[str]:
        """The vocabulary as tokenizer.json spells it, in id order."""
        return [self._plain.id_to_token(i) or "" for i in range(self.vocab_size)]


def _parse(text: str | bytes, source: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{source}: {name} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{source}: {name} is not a JSON object")
    return value
