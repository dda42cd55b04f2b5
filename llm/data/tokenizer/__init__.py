"""Tokenizers: one interface (base.py), two implementations (SentencePiece, Hugging Face tokenizer.json), our
SentencePiece training, and the conversions to and from Hugging Face and GGUF files. The one owner of the
tokenizer files in a model directory (base.TOKENIZER_FILES)."""

from llm.data.tokenizer.base import (
    CHAT_TEMPLATE_FILE,
    CHAT_TOKENS,
    JSON_CONFIG_FILE,
    JSON_FILE,
    MODEL_FILE,
    TOKENIZER_FILES,
    Tokenizer,
    byte_fallback_share,
    from_files,
    holds_tokenizer,
)
from llm.data.tokenizer.json_model import JsonTokenizer
from llm.data.tokenizer.sp_model import SentencePieceTokenizer
from llm.data.tokenizer.training import BOS, EOS, MIN_VOCAB_SIZE, PAD, UNK, train_tokenizer
from llm.errors import TokenizerError

__all__ = [
    "BOS",
    "CHAT_TEMPLATE_FILE",
    "CHAT_TOKENS",
    "EOS",
    "JSON_CONFIG_FILE",
    "JSON_FILE",
    "MIN_VOCAB_SIZE",
    "MODEL_FILE",
    "PAD",
    "TOKENIZER_FILES",
    "UNK",
    "JsonTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerError",
    "byte_fallback_share",
    "from_files",
    "holds_tokenizer",
    "train_tokenizer",
]
