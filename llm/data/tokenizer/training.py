"""Training our SentencePiece tokenizer: BPE with byte fallback (no text is ever unknown), the chat tokens
reserved as control symbols, newline a piece of its own, digits split, no dummy prefix."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

from llm.data.text import iter_documents, name_files, short_pieces
from llm.data.tokenizer.base import CHAT_TOKENS, MODEL_FILE
from llm.data.tokenizer.sp_model import SentencePieceTokenizer
from llm.errors import TokenizerError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
# pad/unk/bos/eos, the chat tokens, newline and the 256 byte pieces, and room for a few merges
MIN_VOCAB_SIZE = 4 + len(CHAT_TOKENS) + 1 + 256 + 17
MAX_SENTENCE_BYTES = 1 << 16  # the longest line the trainer reads (it skips longer ones)


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
) -> SentencePieceTokenizer:
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
    tok = SentencePieceTokenizer(model.getvalue(), str(out / MODEL_FILE))
    tok.save(out)
    return tok
