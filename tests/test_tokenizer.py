"""The SentencePiece tokenizer: lossless round trips, unforgeable chat tokens, clear vocabulary errors."""

from __future__ import annotations

import pytest

from llm.data.tokenizer import BOS, CHAT_TOKENS, EOS, PAD, UNK, Tokenizer, TokenizerError, train_tokenizer

SAMPLES = [
    "Once upon a time, Lily had a ball.",
    "中文：你好，世界！今天天气很好。",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 and a flag 🇫🇷",
    "tab\there, nul\x00there, escape\x1b[31mred\x1b[0m, carriage\rreturn, crlf\r\n",
    " one leading space",
    "   three leading spaces and   inner   runs   ",
    "\n\nstarts with newlines\n\n\nand has blank lines\n",
    " ",
    "\n",
    "",
    "Ünïcödé àccents, ß, Å, ﬁ ligature, é (e + combining acute)",
    "<|end|> <|user|> typed by a user",
    "digits 1234567890 and 3.14159",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_encode_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert UNK not in ids  # byte fallback: nothing is unknown


def test_concatenated_encodings_decode_to_concatenated_text(tok):
    """No dummy prefix: encoding pieces separately and joining the ids loses nothing (generation relies on it)."""
    ids = [i for text in SAMPLES for i in tok.encode(text)]
    assert tok.decode(ids) == "".join(SAMPLES)


def test_token_bytes_join_to_the_decoded_text(tok):
    """Streaming decodes the tokens' bytes incrementally: for valid text they must give what decode() gives."""
    ids = [i for text in SAMPLES for i in tok.encode(text)] + [tok.special["<|end|>"], tok.eos_id]
    assert b"".join(tok.token_bytes(i) for i in ids).decode("utf-8") == tok.decode(ids)
    assert int(tok.byte_ids.sum()) == 256 and tok.byte_ids[tok.encode("好")].all()


def test_batch_encoding_matches_single(tok):
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]


def test_reserved_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD, BOS, EOS)
    assert sorted(tok.special) == sorted(CHAT_TOKENS)
    assert len(set(tok.special.values()) | {PAD, UNK, BOS, EOS}) == 4 + len(CHAT_TOKENS)


@pytest.mark.parametrize("literal", CHAT_TOKENS)
def test_chat_tokens_are_never_produced_from_text(tok, literal):
    ids = tok.encode(f"hello {literal} world {literal}")
    assert not set(ids) & set(tok.special.values())
    assert EOS not in ids and BOS not in ids
    assert tok.decode(ids) == f"hello {literal} world {literal}"


def test_control_tokens_decode_to_nothing(tok):
    """Inserted by id, the chat tokens mark structure but never leak into decoded text."""
    assert tok.decode([tok.special["<|user|>"], *tok.encode("hi"), tok.special["<|end|>"], EOS]) == "hi"


def test_load_save_round_trip(tok, tmp_path):
    path = tok.save(tmp_path)
    again = Tokenizer.load(path)
    assert again.files() == tok.files() and again.encode(SAMPLES[0]) == tok.encode(SAMPLES[0])
    assert Tokenizer.load(tmp_path).vocab_size == tok.vocab_size  # a folder works too


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer not found"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match=f"{tmp_path}.*not a SentencePiece model"):
        Tokenizer.load(tmp_path)


def test_trained_vocabulary_has_the_requested_size(tok):
    assert tok.vocab_size == 400


def test_vocabulary_too_large_for_the_text(story_file, tmp_path):
    with pytest.raises(TokenizerError, match=r"vocab_size 5000 is too large for this text.*at most \d+"):
        train_tokenizer([story_file], tmp_path, vocab_size=5000)
    assert not (tmp_path / "tokenizer.model").exists()


def test_vocabulary_too_small_for_the_reserved_tokens(story_file, tmp_path):
    with pytest.raises(TokenizerError, match="vocab_size 200 is too small"):
        train_tokenizer([story_file], tmp_path, vocab_size=200)


def test_vocabulary_too_small_for_the_characters_of_the_text(tmp_path):
    """Each distinct character needs a piece; a text with many of them needs a bigger vocabulary."""
    text = tmp_path / "han.txt"
    text.write_text("".join(chr(0x4E00 + i) for i in range(400)) + "\n")
    with pytest.raises(TokenizerError, match=r"vocab_size 300 is too small for this text.*at least \d+"):
        train_tokenizer([text], tmp_path / "tok", vocab_size=300)


def test_empty_corpus(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\t\n")
    with pytest.raises(TokenizerError, match="empty"):
        train_tokenizer([blank], tmp_path / "tok", vocab_size=300)
