"""Importing Hugging Face folders with a byte-level tokenizer.json (sharded or not, zipped or not), Llama 3's RoPE
scaling, and the refusals of what cannot be imported faithfully: each a clear error naming the file and field,
with nothing written. transformers is the independent reference for outputs, tokens and chat ids."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from test_hf import assert_same_model, hf_model
from test_tokenizer_json import CHATML, CONVERSATION, TEXTS, byte_level_json

from llm.data import chat
from llm.errors import CheckpointError, InputError
from llm.model import hf
from llm.model.checkpoint import load_model
from llm.model.sources import import_model

transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


def make_folder(folder: Path, rope: dict | None = None, shard: str | None = None) -> Path:
    """A SmolLM-like Hugging Face folder: GQA, tied embeddings, a byte-level BPE tokenizer.json with ChatML."""
    tokenizer_json = byte_level_json(TEXTS * 20)
    vocab = len(json.loads(tokenizer_json)["model"]["vocab"])
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_theta": 1e5, "rope_type": "default", **(rope or {})}, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.3)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    (folder / "tokenizer.json").write_text(tokenizer_json)
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings | {"chat_template": CHATML}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# A tiny model\n")
    return folder


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("sharded"), shard="60KB")


def test_byte_level_sharded_folder_imports_with_transformers_outputs(tmp_path, sharded):
    assert (sharded / hf.HF_INDEX).is_file()  # several safetensors files and their index
    model, tok, info = load_model(import_model(sharded, tmp_path / "imported"))
    assert info["license"] == "apache-2.0" and info["chat_template"] == "own"
    assert_same_model(model, hf_model(sharded), tok.vocab_size)
    theirs = transformers.AutoTokenizer.from_pretrained(sharded)
    for text in TEXTS:
        assert tok.encode(text) == theirs(text, add_special_tokens=False).input_ids
    ids, _ = chat.render(tok, CONVERSATION)
    assert ids == theirs.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert chat.stop_ids(tok) == (theirs.eos_token_id,)


def test_hf_export_passes_tokenizer_json_and_template_through(tmp_path, sharded):
    imported = import_model(sharded, tmp_path / "imported")
    out = hf.export_hf(imported, tmp_path / "out")
    assert (out / "tokenizer.json").read_text() == (sharded / "tokenizer.json").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    assert not (out / "tokenizer.model").exists()
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert (
        theirs.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
        == chat.render(load_model(imported)[1], CONVERSATION)[0]
    )


def test_a_zipped_folder_imports_and_a_hostile_zip_is_refused(tmp_path, sharded):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sharded.iterdir():
            z.write(path, f"tiny-model/{path.name}")
    model, _, info = load_model(import_model(archive, tmp_path / "from-zip"))
    assert info["imported_from"] == str(archive.resolve()) and model.cfg.n_layer == 2
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../../escaped.txt", "x")
    with pytest.raises(InputError, match="'../../escaped.txt' would be unpacked outside its folder"):
        import_model(tmp_path / "evil.zip", tmp_path / "evil")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_llama3_rope_scaling_matches_transformers_past_the_original_context(tmp_path):
    folder = make_folder(tmp_path / "llama3", rope=LLAMA3 | {"original_max_position_embeddings": 32})
    model, tok, _ = load_model(import_model(folder, tmp_path / "imported"))
    assert model.cfg.rope_scaling == {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 32
    }  # fmt: skip
    x = torch.randint(0, tok.vocab_size, (1, 200), generator=torch.Generator().manual_seed(0))  # 200 > 32
    with torch.no_grad():
        assert (model(x) - hf_model(folder)(x).logits).abs().max() <= 1e-4
    back = hf.export_hf(tmp_path / "imported", tmp_path / "back")
    with torch.no_grad():
        assert (model(x) - hf_model(back)(x).logits).abs().max() <= 1e-4


def edited(source: Path, target: Path, **changes) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | changes))
    return target


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters says 'default' but rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "RoPE scaling 'yarn' is not"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor must be a number, got None"),
        ({"rope_scaling": "fast"}, "rope_scaling must be an object"),
    ],
)
def test_rope_that_cannot_be_honoured_is_refused(tmp_path, sharded, changes, message):
    with pytest.raises(hf.HFFormatError, match=message):
        import_model(edited(sharded, tmp_path / "bad", **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("outside", ["../../elsewhere.safetensors", "/etc/passwd", "../sharded/model.safetensors"])
def test_a_weight_map_never_reads_outside_the_folder(tmp_path, sharded, outside):
    folder = tmp_path / "f"
    shutil.copytree(sharded, folder)
    index = json.loads((folder / hf.HF_INDEX).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = outside
    (folder / hf.HF_INDEX).write_text(json.dumps(index))
    with pytest.raises(hf.HFFormatError, match=f"names '{outside}', a file outside the folder"):
        import_model(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_our_config_without_a_shape_field_is_refused(tmp_path, sharded):
    imported = import_model(sharded, tmp_path / "imported")
    config = json.loads((imported / "config.json").read_text())
    del config["d_model"]
    (imported / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: d_model missing"):
        load_model(imported)


def test_a_hub_id_offline_says_so(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="HuggingFaceTB/SmolLM2-135M-Instruct: cannot download it .* offline"):
        import_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "out")
    with pytest.raises(InputError, match="no such file or folder"):
        import_model(tmp_path / "missing" / "folder", tmp_path / "out")
    assert not (tmp_path / "out").exists()


HOSTILE_TEMPLATES = {
    "huge range": "{% for i in range(100000000) %}x{% endfor %}",
    "nested loops": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "huge string": "{{ 'x' * 1000000000 }}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "wide format": "{{ '{:>999999999}'.format(1) }}",
    "wide filter": "{{ 'x' | center(1000000000) }}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
}


@pytest.fixture(scope="module")
def looping(tmp_path_factory, sharded) -> Path:
    """An imported model whose chat template never ends."""
    folder = tmp_path_factory.mktemp("looping") / "folder"
    shutil.copytree(sharded, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    loop = HOSTILE_TEMPLATES["nested loops"]
    (folder / "tokenizer_config.json").write_text(json.dumps(settings | {"chat_template": loop}))
    return import_model(folder, tmp_path_factory.mktemp("looping") / "model")


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES.values(), ids=HOSTILE_TEMPLATES.keys())
def test_a_template_that_loops_or_explodes_is_a_clear_error(looping, template):
    tok = load_model(looping)[1]
    tok.chat_template = template
    with pytest.raises(chat.ChatTemplateError, match=f"{tok.source}: the chat template"):
        chat.prompt_ids(tok, CONVERSATION)


def test_generate_chat_with_a_looping_template_exits_2(looping):
    from llm_cli import run_llm

    result = run_llm("generate", "--model", looping, "--chat", "--prompt", "Hi", "--max-new-tokens", "3")
    assert result.returncode == 2 and "runs more than" in result.stderr and "Traceback" not in result.stderr


def test_the_studio_warm_up_survives_a_looping_template(tmp_path, looping):
    from studio.context import SAMPLES_DIR, Studio
    from studio.tabs import finetune as finetune_tab

    studio = Studio(tmp_path / "ws", looping, SAMPLES_DIR)
    finetune_tab.warm_up(studio)  # the start-up warm-up: it plans the default form, whose base loops
    dataset = studio.store.datasets()[0]["id"]
    plan = finetune_tab.plan_markdown(studio, studio.base_choices()[0][1], dataset, {})
    assert plan.startswith("⚠") and "runs more than" in plan
