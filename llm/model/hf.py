"""Hugging Face format: export a model directory as a LlamaForCausalLM folder, import one back.

Our model is the Llama architecture, so the conversion is a renaming:
    ours                          Hugging Face (LlamaForCausalLM)
    tok_emb.weight                model.embed_tokens.weight
    blocks.{i}.attn_norm.weight   model.layers.{i}.input_layernorm.weight
    blocks.{i}.attn.wq/wk/wv/wo   model.layers.{i}.self_attn.q_proj/k_proj/v_proj/o_proj.weight
    blocks.{i}.mlp_norm.weight    model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.mlp.w_gate/up/down model.layers.{i}.mlp.gate_proj/up_proj/down_proj.weight
    norm.weight                   model.norm.weight
    lm_head.weight                lm_head.weight (absent when tied to the embeddings)
The rotary layout needs no permutation: llm.model.apply_rotary rotates the halves (x[:D/2], x[D/2:]) of
each head, as Hugging Face's rotate_half does (tests/test_hf.py proves it with identical logits).

The tokenizer travels as tokenizer.model (SentencePiece, for llama.cpp and for import) and as tokenizer.json
(the same BPE for the `tokenizers` library: vocabulary, merges ordered as SentencePiece applies them, byte
fallback, spaces as U+2581, no dummy prefix for ours), so AutoTokenizer needs neither sentencepiece nor protobuf.
Weights are written and read one tensor at a time (never a second full copy in memory); only safetensors files
are read, so importing never unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llm.config import ConfigError, ModelConfig
from llm.data.chat import jinja_template, stop_ids
from llm.data.tokenizer import CHAT_TEMPLATE_FILE, CHAT_TOKENS, MODEL_FILE, SentencePieceTokenizer, Tokenizer
from llm.model import checkpoint
from llm.model.checkpoint import CheckpointError

HF_WEIGHTS, HF_INDEX = "model.safetensors", "model.safetensors.index.json"
ARCHITECTURE = "LlamaForCausalLM"

# Our parameter name suffix in a block -> Hugging Face's in a layer.
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}

# Sane bounds for an imported config, checked before anything is allocated.
LIMITS = {
    "vocab_size": 1 << 20,
    "context_length": 1 << 20,
    "n_layer": 1024,
    "n_head": 1024,
    "d_model": 1 << 16,
    "mlp_hidden": 1 << 18,
}


class HFFormatError(CheckpointError):
    """A folder is not a Hugging Face model this project can import (the message says what is missing)."""


# --- config ---


def hf_config(cfg: ModelConfig, tok: Tokenizer, end_id: int) -> dict[str, Any]:
    """Our ModelConfig -> a LlamaConfig dict. BOS is the token every sequence starts with (ours: EOS)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": tok.start_id,
        "eos_token_id": end_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _number(config: dict[str, Any], key: str, source: Path, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HFFormatError(f"{source}: {key} must be a number, got {value!r}")
    return value


def config_from_hf(config: dict[str, Any], source: Path) -> ModelConfig:
    """A LlamaConfig dict -> our ModelConfig, refusing what our model cannot represent and insane sizes."""
    architectures = config.get("architectures") or []
    if ARCHITECTURE not in architectures and config.get("model_type") != "llama":
        raise HFFormatError(
            f"{source}: not a Llama-architecture model (architectures={architectures}, "
            f"model_type={config.get('model_type')!r}); only {ARCHITECTURE} can be imported"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    unsupported = {
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "attention_bias": (config.get("attention_bias", False), False),
        "mlp_bias": (config.get("mlp_bias", False), False),
        "rope type": (rope.get("rope_type", rope.get("type", "default")), "default"),
        "pretraining_tp": (config.get("pretraining_tp", 1) or 1, 1),
    }
    for name, (value, wanted) in unsupported.items():
        if value != wanted:
            raise HFFormatError(f"{source}: {name}={value!r} is not supported (only {wanted!r})")
    values = {
        "vocab_size": _number(config, "vocab_size", source),
        "context_length": _number(config, "max_position_embeddings", source),
        "n_layer": _number(config, "num_hidden_layers", source),
        "n_head": _number(config, "num_attention_heads", source),
        "d_model": _number(config, "hidden_size", source),
        "mlp_hidden": _number(config, "intermediate_size", source),
    }
    for name, value in values.items():
        if not isinstance(value, int) or not 0 < value <= LIMITS[name]:
            raise HFFormatError(f"{source}: {name} = {value!r} is outside the sane range 1..{LIMITS[name]}")
    kv_heads = _number(config, "num_key_value_heads", source, values["n_head"])
    head_dim = config.get("head_dim") or values["d_model"] // values["n_head"]
    if head_dim * values["n_head"] != values["d_model"]:
        raise HFFormatError(f"{source}: head_dim={head_dim} times {values['n_head']} heads must equal hidden_size")
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    norm_eps = _number(config, "rms_norm_eps", source, 1e-6)
    if not (0 < rope_theta < 1e12 and 0 < norm_eps < 1):
        raise HFFormatError(f"{source}: rope_theta={rope_theta} or rms_norm_eps={norm_eps} is outside the sane range")
    try:
        return ModelConfig(
            **values,
            n_kv_head=int(kv_heads),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_theta=float(rope_theta),
            norm_eps=float(norm_eps),
        )
    except ConfigError as e:
        raise HFFormatError(f"{source}: {e}") from None


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{our name: shape} of every stored tensor of llm.model.Transformer(cfg), from the config alone (nothing is
    allocated; tests/test_hf.py checks it against a built model)."""
    C, V, H, kv = cfg.d_model, cfg.vocab_size, cfg.mlp_hidden, cfg.kv_heads * cfg.head_dim
    block = {"attn_norm.weight": (C,), "attn.wq.weight": (C, C), "attn.wk.weight": (kv, C)}
    block |= {"attn.wv.weight": (kv, C), "attn.wo.weight": (C, C), "mlp_norm.weight": (C,)}
    block |= {"mlp.w_gate.weight": (H, C), "mlp.w_up.weight": (H, C), "mlp.w_down.weight": (C, H)}
    shapes = {"tok_emb.weight": (V, C), "norm.weight": (C,)}
    for i in range(cfg.n_layer):
        shapes |= {f"blocks.{i}.{name}": shape for name, shape in block.items()}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of a model of this shape (tied embeddings counted once)."""
    return sum(math.prod(shape) for shape in weight_shapes(cfg).values())


# --- weights ---


def weight_names(cfg: ModelConfig) -> dict[str, str]:
    """{our name: Hugging Face name} of every stored tensor (no lm_head when tied)."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(cfg.n_layer):
        names |= {f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in LAYER_NAMES.items()}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path: Path, tensors: Iterator[tuple[str, torch.Tensor]], shapes: dict[str, tuple]) -> None:
    """Write a safetensors file one tensor at a time (safetensors' save_file would hold a second full copy).
    shapes: {name: (dtype, shape)} of the tensors that `tensors` will yield, in that order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in shapes.items():
        size = dtype.itemsize * int(torch.Size(shape).numel())
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for (name, tensor), expected in zip(tensors, shapes, strict=True):
            assert name == expected and tensor.dtype == shapes[name][0] and tuple(tensor.shape) == shapes[name][1]
            # bytes of the tensor in place: bf16 has no numpy type, so view every dtype as raw bytes
            f.write(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def chat_end_id(tok: Tokenizer) -> int:
    """The token that ends an assistant turn, and so generation."""
    return stop_ids(tok)[0]


def tokenizer_files(tok: Tokenizer, context_length: int) -> dict[str, Any]:
    """The tokenizer's files of an export (tokenizer.json, and tokenizer.model for SentencePiece) and
    tokenizer_config.json with the chat template. BOS is the token every sequence starts with (ours: EOS), or
    an imported tokenizer's own."""

    def name(i: int) -> str | None:
        return tok.id_to_piece(i) if i >= 0 else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(tok.bos_id if tok.chat_template else tok.start_id),
        "eos_token": name(chat_end_id(tok)),
        "pad_token": name(tok.pad_id),
        "unk_token": name(tok.unk_id),
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": jinja_template(tok),
    }
    return {**tok.hf_files(), "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n"}


# --- export ---


def export_hf(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write model_dir (a LoRA run is merged into its base) as a Hugging Face LlamaForCausalLM folder that
    transformers' AutoModelForCausalLM and AutoTokenizer load without custom code. Returns out_dir."""
    source = checkpoint.resolve(model_dir)
    model, tok, info = checkpoint.load_model(source)
    cfg = model.cfg
    state = model.state_dict()
    names = weight_names(cfg)
    shapes = {theirs: (dtype or state[ours].dtype, tuple(state[ours].shape)) for ours, theirs in names.items()}
    tensors = ((theirs, state[ours].to(dtype) if dtype else state[ours]) for ours, theirs in names.items())
    end = chat_end_id(tok)
    generation = {"bos_token_id": tok.start_id, "eos_token_id": sorted({end, tok.eos_id}), "pad_token_id": tok.pad_id}
    config = hf_config(cfg, tok, end) | {"torch_dtype": str(shapes["model.norm.weight"][0]).removeprefix("torch.")}
    files = {
        "config.json": json.dumps(config, indent=2) + "\n",
        "generation_config.json": json.dumps(generation, indent=2) + "\n",
        **tokenizer_files(tok, cfg.context_length),
        HF_WEIGHTS: lambda path: write_safetensors(path, tensors, shapes),
    }
    if info:
        files["llm_info.json"] = json.dumps({**info, "exported_from": str(source)}, indent=2, default=str) + "\n"
    return checkpoint.write_dir(out_dir, files)


# --- import ---


def _weight_files(src: Path) -> dict[str, Path]:
    """{Hugging Face tensor name: safetensors file holding it}; refuses pickled weights."""
    if (src / HF_INDEX).is_file():
        index = json.loads((src / HF_INDEX).read_text())
        return {name: src / file for name, file in index.get("weight_map", {}).items()}
    if (src / HF_WEIGHTS).is_file():
        try:
            with safe_open(str(src / HF_WEIGHTS), framework="pt") as f:
                return {name: src / HF_WEIGHTS for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError) as e:
            raise HFFormatError(f"{src / HF_WEIGHTS}: not a valid safetensors file ({e})") from None
    pickled = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise HFFormatError(
            f"{src}: only safetensors weights can be imported; {', '.join(pickled)} is a pickle (loading it could "
            "run code). Convert it where you trust it, e.g. with transformers' save_pretrained(safe_serialization=True)"
        )
    raise HFFormatError(f"{src}: no {HF_WEIGHTS} (nor {HF_INDEX}) in the folder")


def read_chat_template(src: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The folder's chat template: chat_template.jinja (newer transformers) or tokenizer_config.json's."""
    if (src / CHAT_TEMPLATE_FILE).is_file():
        return (src / CHAT_TEMPLATE_FILE).read_text()
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def import_hf(src: str | Path, out_dir: str | Path, memory_limit: int | None = None) -> Path:
    """A local Hugging Face folder of a Llama-architecture model with a SentencePiece tokenizer.model -> a
    model directory of ours (weights streamed tensor by tensor, in their own dtype). Refuses a model whose fp32
    weights (as llm.model.checkpoint.load_model holds them) exceed memory_limit (default: this machine's memory)."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise HFFormatError(f"{src}: no config.json; not a Hugging Face model folder")
    try:
        hf = json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{src / 'config.json'}: not valid JSON ({e})") from None
    cfg = config_from_hf(hf, src / "config.json")
    if not (src / MODEL_FILE).is_file():
        raise HFFormatError(
            f"{src}: no SentencePiece {MODEL_FILE}; only models with a SentencePiece tokenizer can be imported"
        )
    tokenizer_config_path = src / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text()) if tokenizer_config_path.is_file() else {}
    proto, template = (src / MODEL_FILE).read_bytes(), read_chat_template(src, tokenizer_config)
    tok = SentencePieceTokenizer(proto, str(src / MODEL_FILE), template)
    if len(tok.special) == len(CHAT_TOKENS) and template == jinja_template(SentencePieceTokenizer(proto)):
        tok = SentencePieceTokenizer(proto, str(src / MODEL_FILE))  # one of ours: llm/data/chat.py renders it itself
    if tok.vocab_size != cfg.vocab_size:
        raise HFFormatError(f"{src}: {MODEL_FILE} has {tok.vocab_size} tokens but config.json says {cfg.vocab_size}")
    needed, limit = 4 * parameter_count(cfg), memory_limit or memory_bytes()
    if needed > limit:
        raise HFFormatError(
            f"{src}: {parameter_count(cfg) / 1e9:.2f}B parameters need {needed / 2**30:.1f} GiB in fp32, "
            f"more than the {limit / 2**30:.1f} GiB of memory here"
        )
    files = _weight_files(src)
    names = weight_names(cfg)
    missing = sorted(theirs for theirs in names.values() if theirs not in files)
    if missing:
        raise HFFormatError(
            f"{src}: weights missing for this config: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    shapes = {}
    with ExitStack() as stack:
        handles = _open_all(stack, set(files.values()))
        reference = weight_shapes(cfg)
        for ours, theirs in names.items():
            piece = handles[files[theirs]].get_slice(theirs)
            shape, dtype = tuple(piece.get_shape()), _torch_dtype(piece.get_dtype(), theirs)
            if shape != reference[ours]:
                raise HFFormatError(f"{src}: {theirs} has shape {shape}, config.json implies {reference[ours]}")
            shapes[ours] = (dtype, shape)
        tensors = ((ours, handles[files[theirs]].get_tensor(theirs)) for ours, theirs in names.items())
        info = {
            "kind": "imported",
            "imported_from": str(src.resolve()),
            "format": "hf",
            "architecture": ARCHITECTURE,
            "params": parameter_count(cfg),
            "dtype": str(shapes["norm.weight"][0]).removeprefix("torch."),
            "chat_template": "own" if tok.chat_template else "none",
        }
        return checkpoint.write_dir(
            out_dir,
            {
                checkpoint.CONFIG: json.dumps(cfg.to_dict(), indent=2) + "\n",
                **tok.files(),
                checkpoint.INFO: json.dumps(info, indent=2) + "\n",
                checkpoint.WEIGHTS: lambda path: write_safetensors(path, tensors, shapes),
            },
        )


def _open_all(stack: ExitStack, paths: set[Path]) -> dict[Path, Any]:
    """safe_open every file (memory-mapped: a tensor is read only when asked for), closed with the stack."""
    handles = {}
    for path in sorted(paths):
        try:
            handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
        except (SafetensorError, OSError) as e:
            raise HFFormatError(f"{path}: not a valid safetensors file ({e})") from None
    return handles


def _torch_dtype(name: str, tensor: str) -> torch.dtype:
    dtypes = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    if name not in dtypes:
        raise HFFormatError(f"{tensor}: dtype {name} is not supported (only {', '.join(dtypes)})")
    return dtypes[name]
