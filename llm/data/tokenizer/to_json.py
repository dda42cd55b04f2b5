"""Our SentencePiece model as a Hugging Face tokenizer.json (for a Hugging Face export): the same BPE for the
`tokenizers` library (vocabulary, merges ordered as SentencePiece applies them, byte fallback, spaces as U+2581,
no dummy prefix for ours), so AutoTokenizer needs neither sentencepiece nor protobuf, with identical ids on any
text."""

from __future__ import annotations

from typing import Any

from llm.data.tokenizer.sp_model import CONTROL, NORMAL, UNKNOWN, USER_DEFINED, SentencePieceTokenizer
from llm.errors import TokenizerError


def _bpe_merges(vocab: dict[str, int], mergeable: set[str]) -> list[list[str]]:
    """Merges in the order SentencePiece's BPE applies them: a piece made earlier (lower id) first; the ways
    of splitting one piece by the ids of its halves (as transformers' converter orders them)."""
    merges = []
    for piece in sorted(mergeable, key=vocab.__getitem__):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        splits = [s for s in splits if s[0] in mergeable and s[1] in mergeable]
        merges += [list(s) for s in sorted(splits, key=lambda s: (vocab[s[0]], vocab[s[1]]))]
    return merges


def _model(tok: SentencePieceTokenizer, pieces: list[str], types: list[int], kind: str) -> dict[str, Any]:
    """tokenizer.json's model: BPE with the merges SentencePiece applies, or Unigram with its scores."""
    if kind == "unigram":
        return {"type": "Unigram", "unk_id": tok.unk_id, "vocab": [[p, tok.score(i)] for i, p in enumerate(pieces)],
                "byte_fallback": True}  # fmt: skip
    vocab = {p: i for i, p in enumerate(pieces)}
    mergeable = {p for i, p in enumerate(pieces) if types[i] == NORMAL}
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": pieces[tok.unk_id],
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": True,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": _bpe_merges(vocab, mergeable),
    }


def sentencepiece_json(tok: SentencePieceTokenizer) -> dict[str, Any]:
    """The `tokenizers` library's serialisation of the same SentencePiece model (identical ids on any text)."""
    facts = tok.facts()
    if facts["normalizer"] != "identity":
        raise TokenizerError(f"{tok.source}: normaliser {facts['normalizer']!r} cannot be exported (only identity)")
    if facts["model_type"] not in ("bpe", "unigram"):
        raise TokenizerError(f"{tok.source}: a {facts['model_type']} SentencePiece model cannot be exported")
    types = facts["types"]
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    added = [
        {
            "id": i,
            "content": pieces[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] != USER_DEFINED,  # user-defined pieces (our "\n") are text, not special
        }
        for i in range(tok.vocab_size)
        if types[i] in (UNKNOWN, CONTROL, USER_DEFINED)
    ]
    model = _model(tok, pieces, types, facts["model_type"])
    # SentencePiece writes spaces as U+2581 and, with a dummy prefix, puts one more before every text it encodes
    # (each text between special tokens: as SentencePieceTokenizer.encode_special does, and Llama's own tokenizer.json).
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    decoders = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if facts["add_dummy_prefix"]:
        normalizers.insert(0, {"type": "Prepend", "prepend": "\u2581"})
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    start = pieces[tok.start_id]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        # tokenizer(text) starts with the start token, as our generate and eval do; chat templates write it.
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": start, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": start, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {start: {"id": start, "ids": [tok.start_id], "tokens": [start]}},
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": model,
    }
