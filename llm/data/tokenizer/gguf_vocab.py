"""A tokenizer as a GGUF file's tokenizer.* metadata (llama.cpp's vocabulary), both ways.

    tokenizer.ggml.model        "llama": SentencePiece (tokens, scores, token_type): rebuilt as a SentencePiece
                                model (sp_model.write_model), exact as the original
                                "gpt2": byte-level BPE (tokens, token_type, merges, pre): rebuilt as a
                                tokenizer.json with the pre-tokenizer llama.cpp applies for `pre`
    tokenizer.ggml.*_token_id   bos, eos, unknown, padding (eot: where our chat turns end)
    tokenizer.ggml.add_bos_token, add_space_prefix
    tokenizer.chat_template     kept as the model's own (the model's export writes it)

token_type uses SentencePiece's numbers: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
"""

from __future__ import annotations

import json
from typing import Any

from llm.data.tokenizer.base import Tokenizer
from llm.data.tokenizer.json_model import JsonTokenizer, config_text
from llm.data.tokenizer.sp_model import CONTROL, NORMAL, USER_DEFINED, SentencePieceTokenizer, write_model
from llm.errors import TokenizerError

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _sequence(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(parts)}


# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> the same split in tokenizer.json. smollm: each digit
# apart, then GPT-2's regex (as SmolLM2's own tokenizer.json); llama-bpe: Llama 3's regex.
PRE_TOKENIZERS = {
    "gpt-2": _byte_level(True),
    "smollm": _sequence({"type": "Digits", "individual_digits": True}, _byte_level(True)),
    "llama-bpe": _sequence(
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        _byte_level(False),
    ),
}
PRE_ALIASES = {"default": "gpt-2", "gpt2": "gpt-2", "llama3": "llama-bpe", "llama-v3": "llama-bpe"}


def tokenizer_from_gguf(meta: dict[str, Any], source: str) -> Tokenizer:
    """The tokenizer a GGUF file's metadata describes ({key: value}, arrays as lists)."""
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError(f"{source}: tokenizer.ggml.tokens is missing or not a list of texts")
    types = _array(meta, "tokenizer.ggml.token_type", len(tokens), source, [NORMAL] * len(tokens))
    roles = {}
    for role, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        value = meta.get(f"tokenizer.ggml.{key}_token_id", -1)
        if not isinstance(value, int) or not -1 <= value < len(tokens):
            raise TokenizerError(f"{source}: tokenizer.ggml.{key}_token_id {value!r} is not a token of the vocabulary")
        roles[role] = value
    template = meta.get("tokenizer.chat_template")
    template = template if isinstance(template, str) else None
    if model == "llama":
        scores = _array(meta, "tokenizer.ggml.scores", len(tokens), source)
        add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        proto = write_model(list(zip(tokens, scores, types, strict=True)), roles, add_prefix)
        return SentencePieceTokenizer(proto, source, template)
    if model == "gpt2":
        pre = PRE_ALIASES.get(meta.get("tokenizer.ggml.pre", "default"), meta.get("tokenizer.ggml.pre"))
        if pre not in PRE_TOKENIZERS:
            raise TokenizerError(
                f"{source}: tokenizer.ggml.pre {pre!r} is not a pre-tokenizer this project knows "
                f"(only {', '.join(PRE_TOKENIZERS)})"
            )
        merges = meta.get("tokenizer.ggml.merges")
        if not isinstance(merges, list) or not all(isinstance(m, str) and m.count(" ") == 1 for m in merges):
            raise TokenizerError(f"{source}: tokenizer.ggml.merges is missing or not a list of 'a b' pairs")
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and roles["bos"] >= 0
        spec = byte_level_json(tokens, types, merges, pre, roles["bos"] if add_bos else -1)
        names = {f"{role}_token": tokens[i] if i >= 0 else None for role, i in roles.items()}
        return JsonTokenizer(json.dumps(spec, ensure_ascii=False), config_text(names, pre), source, template)
    raise TokenizerError(f"{source}: tokenizer.ggml.model {model!r} is not supported (only llama and gpt2)")


def _array(meta: dict[str, Any], key: str, length: int, source: str, default: list | None = None) -> list:
    value = meta.get(key, default)
    if not isinstance(value, list) or len(value) != length:
        size = len(value) if isinstance(value, list) else "none"
        raise TokenizerError(f"{source}: {key} must hold one value per token ({length}), got {size}")
    return value


def byte_level_json(tokens: list[str], types: list[int], merges: list[str], pre: str, bos: int) -> dict[str, Any]:
    """tokenizer.json of a byte-level BPE vocabulary: control tokens special, user-defined ones added whole
    (as llama.cpp matches both), BOS put before each text when bos >= 0."""
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": kind == CONTROL}
        for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
        if kind in (CONTROL, USER_DEFINED)
    ]  # fmt: skip
    single = [{"Sequence": {"id": "A", "type_id": 0}}]
    specials = {}
    if bos >= 0:
        single.insert(0, {"SpecialToken": {"id": tokens[bos], "type_id": 0}})
        specials = {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}}
    model = {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
        "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
        "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [m.split(" ") for m in merges],
    }  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": model,
    }


def _roles(tok: Tokenizer, bos: int) -> dict[str, Any]:
    ids = {"bos": bos, "eos": tok.eos_id, "unknown": tok.unk_id, "padding": tok.pad_id}
    return {f"tokenizer.ggml.{role}_token_id": i for role, i in ids.items() if i >= 0}


def sentencepiece_metadata(tok: SentencePieceTokenizer) -> dict[str, Any]:
    """A SentencePiece tokenizer as llama.cpp's "llama" vocabulary. BOS is the token every sequence starts
    with (ours: EOS, which also ends a document); our chat turns end with <|end|> (eot)."""
    facts = tok.facts()
    if facts["model_type"] != "bpe" or facts["normalizer"] != "identity":
        raise TokenizerError(f"{tok.source}: only a BPE SentencePiece model with the identity normaliser fits GGUF")
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [tok.id_to_piece(i) for i in range(tok.vocab_size)],
        "tokenizer.ggml.scores": [tok.score(i) for i in range(tok.vocab_size)],
        "tokenizer.ggml.token_type": facts["types"],
        **_roles(tok, tok.start_id),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": facts["add_dummy_prefix"],
    }
    if "<|end|>" in tok.special:
        meta["tokenizer.ggml.eot_token_id"] = tok.special["<|end|>"]
    return meta


def pre_tokenizer_name(tok: JsonTokenizer) -> str:
    """llama.cpp's name of a byte-level tokenizer's pre-tokenizer: the one it came with, or the known one whose
    tokenizer.json split is the same."""
    if tok.config.get("gguf_pre") in PRE_TOKENIZERS:
        return tok.config["gguf_pre"]
    spec = tok.spec.get("pre_tokenizer")
    variants = {"smollm": _sequence({"type": "Split", "pattern": {"Regex": r"\p{N}"}, "behavior": "Isolated",
                                     "invert": False}, _byte_level(True))}  # fmt: skip
    for name, known in [*PRE_TOKENIZERS.items(), *variants.items()]:
        if _same_split(spec, known):
            return name
    raise TokenizerError(
        f"{tok.source}: its pre-tokenizer is not one llama.cpp knows by name ({', '.join(PRE_TOKENIZERS)}), so a "
        "GGUF file could not say how to split text; export it as a Hugging Face folder instead"
    )


def _same_split(spec: Any, known: Any) -> bool:
    """Equal but for the settings that do not change how text is split (offsets, prefix space off)."""

    def core(part: Any) -> Any:
        if isinstance(part, dict):
            return {k: core(v) for k, v in part.items() if k not in ("trim_offsets", "add_prefix_space")}
        return [core(p) for p in part] if isinstance(part, list) else part

    return core(spec) == core(known)


def json_metadata(tok: JsonTokenizer) -> dict[str, Any]:
    """A byte-level tokenizer.json as llama.cpp's "gpt2" vocabulary."""
    if not tok.byte_level or tok.spec["model"]["type"] != "BPE":
        raise TokenizerError(
            f"{tok.source}: only a byte-level BPE tokenizer.json fits a GGUF file without a SentencePiece model; "
            "export it as a Hugging Face folder instead"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok.spec["model"].get("merges", [])]
    kinds = [
        CONTROL if tok.is_special(i) else USER_DEFINED if i in tok.added_ids else NORMAL for i in range(tok.vocab_size)
    ]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre_tokenizer_name(tok),
        "tokenizer.ggml.tokens": tok.tokens(),
        "tokenizer.ggml.token_type": kinds,
        "tokenizer.ggml.merges": merges,
        **_roles(tok, tok.bos_id),
        "tokenizer.ggml.add_bos_token": tok.adds_bos,
    }
