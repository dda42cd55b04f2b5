"""Hugging Face format, proven against transformers itself: identical logits, greedy tokens, token ids and
chat templates both ways (our model -> HF folder, HF folder -> our model), and safe, clear refusals."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from conftest import make_stories
from llm_cli import run_llm
from safetensors.torch import load_file

from llm.config import ALL_PROJECTIONS, ModelConfig
from llm.data import chat
from llm.data.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerError, train_tokenizer
from llm.errors import ConfigError
from llm.model import hf, lora, weights
from llm.model.checkpoint import load_model, save_checkpoint
from llm.model.generate import SamplingConfig, generate_ids
from llm.model.transformer import Transformer

try:  # the independent reference; the tests that do not compare with it run without it
    import transformers
except ImportError:
    transformers = None


def need_transformers() -> None:
    if transformers is None:
        pytest.skip("transformers is not installed: it is the reference this test compares with")


TEXT = "Once upon a time, Lily had a cat.  Two  spaces,\n\nnew lines; 小猫很高兴 🐱🎉 emoji 😀 12345 héllo naïve"
CONVERSATION = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Can Lily play with 小猫?"},
    {"role": "assistant", "content": "Yes! 🐱 They played all day."},
    {"role": "user", "content": "And Tom?"},
    {"role": "assistant", "content": "Tom was happy."},
]
# TinyLlama's (Zephyr's) chat template: role markers as plain text, each turn ended by EOS.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
SHAPES = {
    "tied-mha": dict(tie_embeddings=True, n_kv_head=0, rope_theta=10000.0),
    "untied-gqa": dict(tie_embeddings=False, n_kv_head=2, rope_theta=500.0),
}


@pytest.fixture(scope="module")
def unicode_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("unicode") / "text.txt"
    path.write_text("\n".join(make_stories(300)) + "\n小猫很高兴。我们一起玩吧！🐱🎉 héllo naïve café\n" * 3)
    return path


@pytest.fixture(scope="module")
def our_tok(tmp_path_factory, unicode_text) -> Tokenizer:
    return train_tokenizer([unicode_text], tmp_path_factory.mktemp("ourtok"), vocab_size=500)


@pytest.fixture(scope="module")
def llama_proto(unicode_text) -> bytes:
    """A SentencePiece model made as Llama's: unk 0, bos 1, eos 2, no pad, dummy prefix, no chat tokens."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(unicode_text),
        model_writer=model,
        model_type="bpe",
        vocab_size=500,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=0.9995,
        pad_id=-1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Random weights with spread-out logits (the default init makes near-ties that greedy decoding flips on)."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.3)
    return model.eval()


def our_model_dir(tmp_path: Path, tok: Tokenizer, **shape) -> Path:
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=96, n_layer=2, n_head=4, d_model=64, **shape)
    return save_checkpoint(tmp_path / "ours", random_model(cfg), tok)


def hf_model(path: Path):
    need_transformers()
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def assert_same_model(ours: Transformer, theirs, vocab_size: int) -> None:
    """fp32 logits within 1e-4 on random batches; 50 greedy tokens identical."""
    torch.manual_seed(1)
    x = torch.randint(0, vocab_size, (3, 48))
    with torch.no_grad():
        diff = (theirs(x).logits - ours(x)).abs().max().item()
    assert diff <= 1e-4, diff
    prompt = x[0, :5].tolist()
    greedy = list(generate_ids(ours, prompt, SamplingConfig(max_new_tokens=50, temperature=0)))
    out = theirs.generate(
        torch.tensor([prompt]), max_new_tokens=50, min_new_tokens=50, do_sample=False, eos_token_id=None
    )
    assert out[0, 5:].tolist() == greedy


def assert_same_tokens(ours: Tokenizer, theirs) -> None:
    for text in (TEXT, " leading space", "x", "  two leading", "tab\tend ", "free text, 🐱 in 小猫 "):
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text), text
        assert theirs.decode(ours.encode(text)) == text


def assert_same_chat(ours: Tokenizer, theirs) -> None:
    """apply_chat_template gives exactly chat.render's ids; the mask covers the assistant turns only."""
    ids, mask = chat.render(ours, CONVERSATION)
    assert theirs.apply_chat_template(CONVERSATION, return_dict=False) == ids
    prompt = theirs.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_dict=False)
    assert prompt == chat.prompt_ids(ours, CONVERSATION[:2])
    trained = ours.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert "Yes! 🐱 They played all day." in trained and "Tom was happy." in trained
    assert "Lily" not in trained and "kind" not in trained and "Tom?" not in trained


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_export_loads_in_transformers_with_the_same_outputs(tmp_path, our_tok, shape):
    model_dir = our_model_dir(tmp_path, our_tok, **shape)
    out = hf.export_hf(model_dir, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] == shape["tie_embeddings"]
    assert config["num_key_value_heads"] == (shape["n_kv_head"] or 4) and config["rope_theta"] == shape["rope_theta"]
    ours, _, _ = load_model(model_dir)
    assert_same_model(ours, hf_model(out), our_tok.vocab_size)


def test_exported_tokenizer_gives_the_same_ids_and_chat(tmp_path, our_tok):
    need_transformers()
    out = hf.export_hf(our_model_dir(tmp_path, our_tok, tie_embeddings=True), tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert_same_tokens(our_tok, theirs)
    assert_same_chat(our_tok, theirs)
    assert theirs.eos_token == "<|end|>"  # generation stops at the end of an assistant turn
    assert theirs("hi")["input_ids"][0] == our_tok.eos_id  # a text starts as our documents do
    generation = json.loads((out / "generation_config.json").read_text())
    assert our_tok.special["<|end|>"] in generation["eos_token_id"]


def test_import_of_export_is_bit_for_bit(tmp_path, our_tok):
    model_dir = our_model_dir(tmp_path, our_tok, tie_embeddings=False, n_kv_head=2, rope_theta=500.0)
    back = hf.import_hf(hf.export_hf(model_dir, tmp_path / "hf"), tmp_path / "back")
    original, returned = load_file(str(model_dir / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert original.keys() == returned.keys()
    assert all(torch.equal(original[k], returned[k]) and original[k].dtype == returned[k].dtype for k in original)
    assert json.loads((back / "config.json").read_text()) == json.loads((model_dir / "config.json").read_text())
    assert (back / "tokenizer.model").read_bytes() == (model_dir / "tokenizer.model").read_bytes()
    assert not (back / "chat_template.jinja").exists()  # our own tokenizer: the built-in template stays


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, llama_proto) -> Path:
    """A Hugging Face folder as TinyLlama's: GQA, untied, its own tokenizer and chat template."""
    need_transformers()  # it writes the folder
    folder = tmp_path_factory.mktemp("tinyllama")
    config = transformers.LlamaConfig(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=96,
        rms_norm_eps=1e-5,
        rope_theta=2000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.3)
    model.save_pretrained(folder)
    tok = SentencePieceTokenizer(llama_proto, "llama tokenizer", ZEPHYR_TEMPLATE)
    (folder / "tokenizer.model").write_bytes(llama_proto)
    (folder / "tokenizer.json").write_text(tok.hf_files()["tokenizer.json"])
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings | {"chat_template": ZEPHYR_TEMPLATE}))
    return folder


def test_import_keeps_outputs_tokenizer_and_chat_template(tmp_path, llama_folder):
    ours_dir = hf.import_hf(llama_folder, tmp_path / "imported")
    assert (ours_dir / "chat_template.jinja").read_text() == ZEPHYR_TEMPLATE
    model, tok, info = load_model(ours_dir)
    assert model.cfg.n_kv_head == 2 and info["kind"] == "imported"
    assert (tok.start_id, tok.eos_id, chat.stop_ids(tok)) == (1, 2, (2,))
    assert_same_model(model, hf_model(llama_folder), 500)
    theirs = transformers.AutoTokenizer.from_pretrained(llama_folder)
    assert_same_tokens(tok, theirs)
    assert_same_chat(tok, theirs)
    # ... and back out: the export of the import is the same model for transformers
    again = hf.export_hf(ours_dir, tmp_path / "again")
    assert_same_model(model, hf_model(again), 500)
    assert_same_chat(tok, transformers.AutoTokenizer.from_pretrained(again))


def test_merged_lora_export_equals_the_unmerged_model(tmp_path, our_tok):
    base_dir = our_model_dir(tmp_path, our_tok, tie_embeddings=True)
    model, _, _ = load_model(base_dir)
    tokens = sorted(our_tok.special.values())
    settings = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": list(ALL_PROJECTIONS), "tokens": tokens}
    lora.apply_lora(model, **settings)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)
    adapter = (lora.adapter_tensors(model), {"base": str(base_dir), "lora": settings})
    lora_dir = save_checkpoint(tmp_path / "lora", model, our_tok, adapter=adapter)
    merged = load_file(str(hf.export_hf(lora_dir, tmp_path / "hf-lora") / "model.safetensors"))
    plain = load_file(str(hf.export_hf(base_dir, tmp_path / "hf-base") / "model.safetensors"))
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], plain["model.layers.0.self_attn.q_proj.weight"]
    )
    assert_same_model(model.eval(), hf_model(tmp_path / "hf-lora"), our_tok.vocab_size)


class Boom:
    def __reduce__(self):
        return (Path("/nonexistent-dir/never").touch, ())  # would raise if ever unpickled


def test_pickled_weights_are_never_unpickled(tmp_path, llama_folder, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((llama_folder / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(hf.HFFormatError, match="only safetensors.*pytorch_model.bin is a pickle"):
        hf.import_hf(folder, tmp_path / "out")
    (folder / "model.safetensors").write_bytes(pickle.dumps(Boom()))  # a pickle under the safetensors name
    with pytest.raises(hf.HFFormatError, match="model.safetensors: not a valid safetensors file"):
        hf.import_hf(folder, tmp_path / "out")
    header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(hf.HFFormatError, match="not a valid safetensors file"):
        hf.import_hf(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refusals_name_what_is_wrong(tmp_path, llama_folder):
    folder = tmp_path / "f"
    folder.mkdir()
    config = json.loads((llama_folder / "config.json").read_text())

    def attempt(**changes):
        (folder / "config.json").write_text(json.dumps(config | changes))
        return hf.import_hf(folder, tmp_path / "out")

    with pytest.raises(hf.HFFormatError, match="no config.json"):
        hf.import_hf(folder, tmp_path / "out")
    with pytest.raises(hf.HFFormatError, match=r"not a Llama-architecture model \(architectures=\['GPT2LMHeadModel'\]"):
        attempt(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(hf.HFFormatError, match="vocab_size = 1000000000 is outside the sane range"):
        attempt(vocab_size=10**9)
    with pytest.raises(hf.HFFormatError, match="hidden_act='gelu' is not supported"):
        attempt(hidden_act="gelu")
    with pytest.raises(TokenizerError, match=r"no tokenizer \(tokenizer.model or tokenizer.json\)"):
        attempt()
    (folder / "tokenizer.model").write_bytes((llama_folder / "tokenizer.model").read_bytes())
    with pytest.raises(TokenizerError, match="lacks the reserved tokens .* and has no chat template"):
        attempt()
    (folder / "tokenizer_config.json").write_text((llama_folder / "tokenizer_config.json").read_text())
    with pytest.raises(hf.HFFormatError, match=r"0\.21B parameters need 0\.8 GiB in fp32, more than the 0\.5 GiB"):
        (folder / "config.json").write_text(
            json.dumps(config | {"hidden_size": 8192, "head_dim": 2048, "num_hidden_layers": 1})
        )
        hf.import_hf(folder, tmp_path / "out", memory_limit=2**29)
    with pytest.raises(hf.HFFormatError, match="no model.safetensors"):
        attempt()


def test_chat_tokens_are_found_by_the_unknown_id_of_the_tokenizer(llama_proto):
    """Llama's unknown id is 0 (ours is 1): a missing chat token is not 'present with id 0'."""
    tok = SentencePieceTokenizer(llama_proto, "llama", ZEPHYR_TEMPLATE)
    assert tok.unk_id == 0 and tok.special == {}
    with pytest.raises(TokenizerError, match="lacks the reserved tokens"):
        SentencePieceTokenizer(llama_proto, "llama")


def test_old_config_files_mean_multi_head_attention():
    cfg = ModelConfig.from_dict({"n_head": 4, "d_model": 64})
    assert cfg.n_kv_head == 0 and cfg.kv_heads == 4
    with pytest.raises(ConfigError, match="n_kv_head must divide n_head=4, got 3"):
        ModelConfig(n_head=4, n_kv_head=3, d_model=64)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_weight_shapes_from_the_config_match_the_model(shape):
    cfg = ModelConfig(vocab_size=300, n_layer=2, n_head=4, d_model=64, mlp_hidden=96, **shape)
    built = {name: tuple(t.shape) for name, t in Transformer(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        del built["lm_head.weight"]  # stored once, as tok_emb.weight
    assert weights.weight_shapes(cfg) == built
    assert weights.parameter_count(cfg) == Transformer(cfg).num_params()


def test_gqa_cached_generation_equals_uncached(our_tok):
    cfg = ModelConfig(vocab_size=our_tok.vocab_size, context_length=32, n_layer=2, n_head=4, n_kv_head=1, d_model=32)
    model = random_model(cfg)
    sampling = SamplingConfig(max_new_tokens=40, temperature=0)
    cached = list(generate_ids(model, [3, 10, 11], sampling))
    assert cached == list(generate_ids(model, [3, 10, 11], sampling, use_cache=False))


@pytest.mark.slow
def test_cli_export_import_generate_and_finetune(tmp_path, llama_folder):
    imported = tmp_path / "imported"
    result = run_llm("import", "--from", llama_folder, "--out", imported)
    assert result.returncode == 0, result.stderr
    result = run_llm("generate", "--model", imported, "--chat", "--prompt", "Hi", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    data = tmp_path / "pairs.csv"
    data.write_text("prompt,response\n" + "".join(f"say {i},{i} {i}\n" for i in range(20)))
    run = tmp_path / "run"
    result = run_llm("finetune", "--base", imported, "--data", data, "--out", run, "--max-steps", "3")
    assert result.returncode == 0, result.stderr
    result = run_llm("export", "--model", run, "--format", "hf", "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    result = run_llm("import", "--from", tmp_path / "hf" / "nothing", "--out", tmp_path / "x")
    assert result.returncode == 2 and "no such file or folder" in result.stderr and "Traceback" not in result.stderr
