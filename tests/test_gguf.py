"""GGUF both ways, proven against transformers' GGUF reader (the independent reference): a file written here by
hand (every tensor type we read, a byte-level BPE vocabulary) imports with transformers' logits; our models export
as GGUF that transformers reads with our logits; hostile files are refused, naming the file and what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter, quantize
from llm_cli import run_llm
from test_hf import random_model
from test_tokenizer_json import CHATML, TEXTS, byte_level_json

from llm.config import ModelConfig
from llm.data import chat
from llm.data.tokenizer import TokenizerError
from llm.data.tokenizer.gguf_vocab import tokenizer_from_gguf
from llm.model.checkpoint import load_model, save_checkpoint
from llm.model.export import export_model
from llm.model.gguf import GGUFError, import_gguf, permute, read_gguf
from llm.model.sources import import_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers reads GGUF files with it

Q = GGMLQuantizationType
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# Where a K-quant block keeps its fp16 scales (the rest of a block is 4-6 bit codes and packed sub-scales)
K_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
SHAPE = dict(context_length=64, n_layer=2, n_head=4, n_kv_head=2, d_model=256, mlp_hidden=512, rope_theta=1e5)


def encoded(values: np.ndarray, qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    """values in a GGUF type: quantized by the gguf package, or for a K-quant (which it cannot quantize) random
    codes with small fp16 scales, so that any values the type can hold are read back by both readers."""
    if qtype not in K_SCALES:
        return quantize(values, qtype)
    block, size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (values.size // block, size), dtype=np.uint8)
    for at in K_SCALES[qtype]:
        data[:, at : at + 2] = np.full((len(data), 1), 0.004, np.float16).view(np.uint8)
    return data.reshape(values.shape[0], -1)


def write_gguf(path: Path, arch: str = "llama", pre: str = "gpt-2") -> Path:
    """A small Llama model as llama.cpp's converter writes one: q/k rows permuted (its own formula), matrices in
    every type of TYPES in turn, a byte-level BPE vocabulary with ChatML special tokens and template."""
    spec = json.loads(byte_level_json(TEXTS * 20))
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    cfg = ModelConfig(vocab_size=len(tokens), **SHAPE)
    writer = GGUFWriter(path, arch)
    for key, value in [("context_length", 64), ("block_count", 2), ("embedding_length", 256)]:
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_uint32(f"{arch}.feed_forward_length", 512)
    writer.add_uint32(f"{arch}.attention.head_count", 4)
    writer.add_uint32(f"{arch}.attention.head_count_kv", 2)
    writer.add_float32(f"{arch}.rope.freq_base", 1e5)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", pre)
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", [3 if t.startswith("<|") else 1 for t in tokens])
    writer.add_array("tokenizer.ggml.merges", [" ".join(m) for m in spec["model"]["merges"]])
    writer.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>"))
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("tokenizer.chat_template", CHATML)
    rng = np.random.default_rng(0)
    names = {"token_embd.weight": (len(tokens), 256), "output_norm.weight": (256,), "output.weight": (len(tokens), 256)}
    for i in range(2):
        names |= {f"blk.{i}.attn_{k}.weight": (n, 256) for k, n in (("q", 256), ("k", 128), ("v", 128))}
        names |= {f"blk.{i}.attn_output.weight": (256, 256), f"blk.{i}.ffn_down.weight": (256, 512)}
        names |= {f"blk.{i}.ffn_{k}.weight": (512, 256) for k in ("gate", "up")}
        names |= {f"blk.{i}.{k}_norm.weight": (256,) for k in ("attn", "ffn")}
    matrices = iter(TYPES * 4)  # each type in turn
    for name, shape in names.items():
        values = rng.normal(1.0 if "norm" in name else 0.0, 0.1, shape).astype(np.float32)
        if "attn_q" in name or "attn_k" in name:
            values = permute(values, 4 if "attn_q" in name else 2)
        qtype = Q.F32 if len(shape) == 1 else next(matrices)
        writer.add_tensor(name, encoded(values, qtype, rng), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert cfg.vocab_size == len(tokens)
    return path


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def their_gguf(path: Path):
    """transformers' own reading of a GGUF file (dequantized to fp32)."""
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_every_tensor_type_imports_as_transformers_reads_it(tmp_path, gguf_file):
    types = {t.tensor_type for t in read_gguf(gguf_file)[1].values()}
    assert set(TYPES) <= types  # the file holds each type we claim to read
    model, tok, info = load_model(import_model(gguf_file, tmp_path / "imported"))
    assert info["format"] == "gguf" and model.cfg.n_kv_head == 2 and not model.cfg.tie_embeddings
    x = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    assert (logits(model, x) - logits(their_gguf(gguf_file), x)).abs().max() <= 1e-4


def test_byte_level_vocabulary_and_template_come_back(tmp_path, gguf_file):
    _, tok, _ = load_model(import_gguf(gguf_file, tmp_path / "imported"))
    spec_tokens = json.loads(byte_level_json(TEXTS * 20))["model"]["vocab"]
    assert tok.eos_id == spec_tokens["<|im_end|>"] and tok.chat_template == CHATML and tok.start_id == 0
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    ids, mask = chat.render(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert ids[0] == spec_tokens["<|im_start|>"] and tok.decode([i for i, m in zip(ids, mask, strict=True) if m])


def test_smollm_pre_tokenizer_splits_every_digit():
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.chat_template": CHATML}
    spec = json.loads(byte_level_json(["2024 12345 99 x"] * 50 + TEXTS))
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    meta |= {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": [" ".join(m) for m in spec["model"]["merges"]]}
    meta |= {"tokenizer.ggml.eos_token_id": tokens.index("<|im_end|>")}
    smollm = tokenizer_from_gguf(meta, "smollm")
    gpt2 = tokenizer_from_gguf(meta | {"tokenizer.ggml.pre": "gpt-2"}, "gpt2")
    assert all(len(smollm.decode([i]).strip()) <= 1 for i in smollm.encode("2024 12345"))
    assert len(gpt2.encode("2024 12345")) < len(smollm.encode("2024 12345"))
    with pytest.raises(TokenizerError, match="tokenizer.ggml.pre 'qwen9' is not a pre-tokenizer"):
        tokenizer_from_gguf(meta | {"tokenizer.ggml.pre": "qwen9"}, "x")


@pytest.fixture(scope="module")
def our_dir(tmp_path_factory, tok) -> Path:
    shape = dict(context_length=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64, tie_embeddings=False)
    cfg = ModelConfig(vocab_size=tok.vocab_size, **shape)
    return save_checkpoint(tmp_path_factory.mktemp("ours") / "model", random_model(cfg), tok)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "q8_0"])
def test_our_export_reads_in_transformers_and_back(tmp_path, our_dir, tok, dtype):
    """fp32: transformers' logits are ours (1e-4); fp16: ours with fp16 weights (1e-3); any: our import of the
    file equals transformers' reading of it, and its tokenizer and chat are ours again."""
    path = export_model(our_dir, tmp_path / "m.gguf", "gguf", dtype)
    ours, _, _ = load_model(our_dir)
    x = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    theirs = logits(their_gguf(path), x)
    if dtype != "q8_0":
        with torch.no_grad():
            for p in ours.parameters():
                p.copy_(p.half().float() if dtype == "fp16" and p.ndim == 2 else p)
        assert (logits(ours, x) - theirs).abs().max() <= (1e-4 if dtype == "fp32" else 1e-3)
    back, back_tok, _ = load_model(import_gguf(path, tmp_path / "back"))
    assert (logits(back, x) - theirs).abs().max() <= 1e-4
    assert back_tok.chat_template is None and back_tok.special == tok.special  # ours again
    conversation = [{"role": "user", "content": "Hi 小猫 🐱"}, {"role": "assistant", "content": "Hello."}]
    assert chat.render(back_tok, conversation) == chat.render(tok, conversation)


def test_llama3_rope_scaling_travels_as_rope_freqs(tmp_path, our_dir):
    scaled = tmp_path / "scaled"
    shutil.copytree(our_dir, scaled)
    config = json.loads((scaled / "config.json").read_text())
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 8192}
    (scaled / "config.json").write_text(json.dumps(config | {"rope_scaling": scaling}))
    path = export_model(scaled, tmp_path / "s.gguf", "gguf", "fp32")
    assert "rope_freqs.weight" in read_gguf(path)[1]
    model, _, _ = load_model(import_gguf(path, tmp_path / "back"))
    assert model.cfg.rope_scaling == scaling


# --- hostile files ---


def tensor_info_at(path: Path, name: str) -> dict[str, int]:
    """Byte positions of a tensor's dims, type and offset in the file's header."""
    tensor = next(t for t in GGUFReader(path).tensors if t.name == name)
    sizes = [int(part.nbytes) for part in tensor.field.parts]  # name length, name, n_dims, dims, type, offset
    start = tensor.field.offset
    return {"dims": start + sum(sizes[:3]), "type": start + sum(sizes[:4]), "offset": start + sum(sizes[:5])}


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def damaged(source: Path, target: Path, name: str, field: str, value: int, size: int) -> Path:
    data = bytearray(source.read_bytes())
    at = tensor_info_at(source, name)[field]
    data[at : at + size] = value.to_bytes(size, "little")
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f, t: written(t, f.read_bytes()[: f.stat().st_size // 2]), "does not fit in the file"),
        (lambda f, t: damaged(f, t, "blk.0.attn_q.weight", "offset", 2**40, 8), "blk.0.attn_q.weight .* does not fit"),
        (lambda f, t: damaged(f, t, "blk.1.ffn_up.weight", "offset", 0, 8), "overlap: a wrong offset"),
        (lambda f, t: damaged(f, t, "blk.0.attn_v.weight", "dims", 512, 8), "attn_v.weight and .* overlap"),
        (lambda f, t: damaged(f, t, "blk.0.attn_v.weight", "type", 99, 4), "has type number 99"),
        (lambda f, t: damaged(f, t, "blk.0.attn_v.weight", "type", int(Q.IQ2_XXS), 4), "IQ2_XXS, which cannot"),
        (lambda f, t: write_gguf(t, arch="gpt2"), "general.architecture 'gpt2' is not supported"),
        (lambda f, t: written(t, b"GGUF" + bytes(range(200))), "not a GGUF file this project can read"),
        (lambda f, t: written(t, b""), "not a GGUF file this project can read"),
    ],
    ids=["truncated", "offset", "overlap", "shape", "unknown-type", "no-dequantizer", "architecture", "junk", "empty"],
)
def test_hostile_files_are_refused_naming_what_is_wrong(tmp_path, gguf_file, damage, message):
    bad = damage(gguf_file, tmp_path / "bad.gguf")
    with pytest.raises(GGUFError, match=message):
        import_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_shape_that_disagrees_with_the_metadata_is_refused(tmp_path, gguf_file):
    # same size, other shape: (128, 256) stored as (256, 128)
    bad = damaged(gguf_file, tmp_path / "bad.gguf", "blk.0.attn_v.weight", "dims", 128, 8)
    data = bytearray(bad.read_bytes())
    at = tensor_info_at(gguf_file, "blk.0.attn_v.weight")["dims"] + 8
    data[at : at + 8] = (256).to_bytes(8, "little")
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"attn_v.weight has shape \(256, 128\), the metadata implies \(128, 256\)"):
        import_gguf(bad, tmp_path / "out")


def test_cli_refusal_exits_2_without_a_traceback(tmp_path, gguf_file):
    bad = damaged(gguf_file, tmp_path / "bad.gguf", "blk.0.attn_v.weight", "type", 99, 4)
    result = run_llm("import", "--from", bad, "--out", tmp_path / "out")
    assert result.returncode == 2 and "has type number 99" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
