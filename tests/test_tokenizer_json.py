"""The tokenizer.json implementation of the Tokenizer interface, on a tiny byte-level BPE trained here and on our
own SentencePiece model written as a SentencePiece-derived tokenizer.json: the same ids as transformers and as
SentencePiece, special tokens only from a chat template's text, bytes and spans of partial characters."""

from __future__ import annotations

import json
import pickle

import pytest
from conftest import make_stories
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from llm.data import chat
from llm.data.tokenizer import JsonTokenizer, SentencePieceTokenizer, Tokenizer, TokenizerError
from llm.data.tokenizer.json_model import config_text
from llm.eval.inside import tokenize

TEXTS = [
    "Once upon a time, Lily had a cat.",
    "小猫很高兴 🐱🎉 emoji",
    "  two  spaces\n\nnew lines 12345",
    "héllo naïve",
]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Can Lily play with 小猫?"},
    {"role": "assistant", "content": "Yes! 🐱"},
    {"role": "user", "content": "And <|im_end|> Tom?"},
    {"role": "assistant", "content": "Tom was happy."},
]
ROLES = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": None, "unk_token": None}


def byte_level_json(texts: list[str]) -> str:
    """A 400-token byte-level BPE with three special tokens, trained on texts (as GPT-2's is built)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


@pytest.fixture(scope="module")
def bpe() -> JsonTokenizer:
    return JsonTokenizer(byte_level_json(make_stories(200) + TEXTS), config_text(ROLES), "tiny", CHATML)


def test_byte_level_round_trip_and_roles(bpe):
    for text in TEXTS:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert (bpe.eos_id, bpe.pad_id, bpe.start_id, bpe.special) == (2, 2, 0, {})  # start: <|endoftext|>
    assert bpe.bos_id == bpe.unk_id == -1 and not bpe.adds_bos


def test_special_texts_are_text_except_in_a_rendered_template(bpe):
    typed = bpe.encode("say <|im_end|> now")
    assert bpe.eos_id not in typed and bpe.decode(typed) == "say <|im_end|> now"
    assert bpe.encode_special("<|im_start|>user\nhi<|im_end|>")[::-1][0] == bpe.eos_id
    assert bpe.is_special(bpe.eos_id) and not bpe.is_special(typed[0])
    assert bpe.special_ids() == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


def test_partial_characters_are_bytes_and_show_as_bytes(bpe):
    ids = bpe.encode("象鱼")  # not in the training text: six byte tokens
    assert len(ids) == 6 and bpe.byte_ids[ids].all()
    assert bpe.id_to_piece(ids[0]) == "<0xE8>"  # 象 is E8 B1 A1
    assert bpe.id_to_piece(bpe.encode(" cat")[0]).startswith(" ")
    assert not bpe.byte_ids[bpe.encode("Once upon a time")].any()


def test_inside_spans_share_a_character_split_into_bytes(bpe):
    tokens = tokenize(bpe, text="象 cat")
    assert [r.text for r in tokens.rows[:3]] == ["象"] * 3 and tokens.rows[-1].text.strip() == "cat"
    assert tokens.text == "象 cat" and tokens.start == "<|endoftext|>"


def test_pickles_as_its_files(bpe):
    again = pickle.loads(pickle.dumps(bpe))
    assert again.files() == bpe.files() and again.encode(TEXTS[1]) == bpe.encode(TEXTS[1])


def test_saved_and_loaded_from_a_model_directory(bpe, tmp_path):
    assert bpe.save(tmp_path).name == "tokenizer.json"
    again = Tokenizer.load(tmp_path)
    assert isinstance(again, JsonTokenizer) and again.chat_template == CHATML and again.same_vocabulary(bpe)


def test_ids_and_chat_ids_equal_transformers(bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    (tmp_path / "tokenizer.json").write_text(bpe.files()["tokenizer.json"])
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "chat_template": CHATML}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert bpe.encode(text) == theirs(text, add_special_tokens=False).input_ids
    ids, mask = chat.render(bpe, CONVERSATION)
    assert ids == theirs.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    trained = bpe.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "Yes! 🐱\nTom was happy.\n"  # the answers, each ended by <|im_end|> (not decoded) and "\n"


def test_sentencepiece_derived_json_encodes_as_sentencepiece(tok):
    """Our SentencePiece model as a tokenizer.json (the Hugging Face export's) reads every text the same."""
    as_json = JsonTokenizer(tok.hf_files()["tokenizer.json"], config_text({"eos_token": "</s>"}), "ours.json", CHATML)
    for text in TEXTS:
        ids = tok.encode(text)
        assert as_json.encode(text) == ids and as_json.decode(ids) == tok.decode(ids)
        assert [as_json.token_bytes(i) for i in ids] == [tok.token_bytes(i) for i in ids]
        assert (as_json.byte_ids[ids] == tok.byte_ids[ids]).all()
    assert as_json.start_id == tok.start_id  # the export's post-processor puts our start token first


def test_refusals_name_the_file_and_field(bpe):
    with pytest.raises(TokenizerError, match="tokenizer.json is not valid JSON"):
        JsonTokenizer("{", config_text(ROLES), "bad", CHATML)
    with pytest.raises(TokenizerError, match="eos_token '<nope>' is not in the vocabulary"):
        JsonTokenizer(bpe.files()["tokenizer.json"], config_text({"eos_token": "<nope>"}), "bad", CHATML)
    with pytest.raises(TokenizerError, match="names no eos_token"):
        JsonTokenizer(bpe.files()["tokenizer.json"], config_text({}), "bad", CHATML)
    with pytest.raises(TokenizerError, match="has no chat template"):
        JsonTokenizer(bpe.files()["tokenizer.json"], config_text(ROLES), "bad", None)
    wordpiece = json.dumps({"model": {"type": "WordPiece", "vocab": {}}})
    with pytest.raises(TokenizerError, match="model type 'WordPiece' is not supported"):
        JsonTokenizer(wordpiece, config_text(ROLES), "bad", CHATML)


def test_the_interface_hides_sentencepiece(tok):
    assert isinstance(tok, SentencePieceTokenizer) and not hasattr(tok, "sp") and not hasattr(tok, "proto")
