"""The tokenizer of a Hugging Face model folder: its tokenizer.model (SentencePiece, taken when present: exact)
or its tokenizer.json, the special tokens' roles from tokenizer_config.json (else special_tokens_map.json, else
config.json's *_token_id), and its chat template (chat_template.jinja, else tokenizer_config.json's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm.data.tokenizer.base import CHAT_TEMPLATE_FILE, JSON_CONFIG_FILE, JSON_FILE, MODEL_FILE, Tokenizer
from llm.data.tokenizer.json_model import ROLES, JsonTokenizer, config_text
from llm.data.tokenizer.sp_model import SentencePieceTokenizer
from llm.errors import TokenizerError

SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from a file, {} when there is none; anything else is a clear error naming it."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: not a JSON object")
    return value


def read_chat_template(src: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The folder's chat template: chat_template.jinja (newer transformers) or tokenizer_config.json's."""
    if (src / CHAT_TEMPLATE_FILE).is_file():
        return (src / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        template = next(
            (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
        )
    return template if isinstance(template, str) else None


def _token_names(spec: dict[str, Any]) -> dict[int, str]:
    """{id: text} of tokenizer.json's added tokens and vocabulary (for roles given as ids)."""
    vocab = spec.get("model", {}).get("vocab", {})
    names = {i: t for t, i in vocab.items()} if isinstance(vocab, dict) else dict(enumerate(v[0] for v in vocab))
    return names | {t["id"]: t["content"] for t in spec.get("added_tokens", []) if isinstance(t, dict)}


def _roles(src: Path, spec: dict[str, Any], tokenizer_config: dict[str, Any], model_config: dict[str, Any]) -> dict:
    """{bos_token, eos_token, pad_token, unk_token: text or None}, from the first file that names each."""
    special_map = read_json_file(src / SPECIAL_TOKENS_MAP)
    names = None
    roles = {}
    for role in ROLES:
        value = tokenizer_config.get(role, special_map.get(role))
        if isinstance(value, dict):
            value = value.get("content")
        token_id = model_config.get(role.replace("_token", "_token_id"))
        token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
        if value is None and isinstance(token_id, int):
            names = names if names is not None else _token_names(spec)
            value = names.get(token_id)
        roles[role] = value if isinstance(value, str) else None
    return roles


def folder_tokenizer(src: Path, model_config: dict[str, Any]) -> Tokenizer:
    """The tokenizer of the Hugging Face folder src (model_config: its config.json)."""
    tokenizer_config = read_json_file(src / JSON_CONFIG_FILE)
    template = read_chat_template(src, tokenizer_config)
    if (src / MODEL_FILE).is_file():
        return SentencePieceTokenizer((src / MODEL_FILE).read_bytes(), str(src / MODEL_FILE), template)
    if not (src / JSON_FILE).is_file():
        raise TokenizerError(f"{src}: no tokenizer ({MODEL_FILE} or {JSON_FILE}) in the folder")
    text = (src / JSON_FILE).read_text(encoding="utf-8")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{src / JSON_FILE}: not valid JSON ({e})") from None
    roles = _roles(src, spec if isinstance(spec, dict) else {}, tokenizer_config, model_config)
    return JsonTokenizer(text, config_text(roles), str(src / JSON_FILE), template)
