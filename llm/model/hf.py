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
An imported model's tokenizer (tokenizer.model, or a tokenizer.json with its special tokens' roles) and chat
template are kept as they are (llm/data/tokenizer/hf_folder.py), and an export passes them through unchanged.
Weights are written and read one tensor at a time (never a second full copy in memory); only safetensors files
inside the folder are read, so importing never unpickles anything nor reads elsewhere.

RoPE: plain, or Llama 3's `llama3` scaling (ModelConfig.rope_scaling); any other scaling is refused, and so is a
config whose rope_parameters and rope_scaling disagree (which applies would be a guess).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llm.config import ConfigError, ModelConfig
from llm.data.chat import as_ours, jinja_template, stop_ids
from llm.data.tokenizer import Tokenizer
from llm.data.tokenizer.hf_folder import folder_tokenizer, read_json_file
from llm.model import checkpoint
from llm.model.checkpoint import CheckpointError
from llm.model.weights import (
    SAFETENSORS_DTYPES,
    check_memory,
    check_sizes,
    weight_shapes,
    write_imported,
    write_safetensors,
)

HF_WEIGHTS, HF_INDEX, HF_CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
ARCHITECTURE = "LlamaForCausalLM"
ROPE_TYPES = ("default", "llama3")

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


class HFFormatError(CheckpointError):
    """A folder is not a Hugging Face model this project can import (the message says what is missing)."""


# --- config ---


def bos_id(tok: Tokenizer) -> int:
    """The BOS a Hugging Face config names: an imported tokenizer's own, or the token every sequence of ours
    starts with (EOS)."""
    return tok.bos_id if tok.chat_template else tok.start_id


def rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    """Hugging Face's rope_parameters of our config: plain, or Llama 3's scaling."""
    if not cfg.rope_scaling:
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    scaling = cfg.rope_scaling
    return {
        "rope_type": "llama3",
        "rope_theta": cfg.rope_theta,
        "factor": scaling["factor"],
        "low_freq_factor": scaling["low_freq_factor"],
        "high_freq_factor": scaling["high_freq_factor"],
        "original_max_position_embeddings": int(scaling["original_context_length"]),
    }


def hf_config(cfg: ModelConfig, tok: Tokenizer, end_id: int) -> dict[str, Any]:
    """Our ModelConfig -> a LlamaConfig dict."""
    rope = rope_parameters(cfg)
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
        "rope_parameters": rope,
        "rope_scaling": rope if cfg.rope_scaling else None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": bos_id(tok),
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


def rope_from_hf(config: dict[str, Any], source: Path) -> tuple[float, dict[str, float]]:
    """(rope_theta, our rope_scaling) from rope_parameters (transformers 5) and rope_scaling (older), which
    must not disagree: a config with both, one plain and one scaled, is refused rather than guessed."""
    kinds = {}
    for key in ("rope_parameters", "rope_scaling"):
        spec = config.get(key)
        if spec is not None and not isinstance(spec, dict):
            raise HFFormatError(f"{source}: {key} must be an object, got {spec!r}")
        if spec:
            kinds[key] = spec.get("rope_type", spec.get("type", "default"))
    if len(set(kinds.values())) > 1:
        said = " but ".join(f"{key} says {kind!r}" for key, kind in kinds.items())
        raise HFFormatError(f"{source}: {said}; which RoPE applies is unclear, so the model is not imported")
    kind = next(iter(kinds.values()), "default")
    if kind not in ROPE_TYPES:
        raise HFFormatError(f"{source}: RoPE scaling {kind!r} is not supported (only Llama 3's llama3)")
    spec = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    theta = _number({"rope_theta": spec.get("rope_theta", config.get("rope_theta", 10000.0))}, "rope_theta", source)
    if kind == "default":
        return theta, {}
    keys = {"factor": "factor", "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor"}
    keys["original_context_length"] = "original_max_position_embeddings"
    return theta, {ours: _number(spec, theirs, source) for ours, theirs in keys.items()}


def config_from_hf(config: dict[str, Any], source: Path) -> ModelConfig:
    """A LlamaConfig dict -> our ModelConfig, refusing what our model cannot represent and insane sizes."""
    architectures = config.get("architectures") or []
    if ARCHITECTURE not in architectures and config.get("model_type") != "llama":
        raise HFFormatError(
            f"{source}: not a Llama-architecture model (architectures={architectures}, "
            f"model_type={config.get('model_type')!r}); only {ARCHITECTURE} can be imported"
        )
    unsupported = {
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "attention_bias": (config.get("attention_bias", False), False),
        "mlp_bias": (config.get("mlp_bias", False), False),
        "pretraining_tp": (config.get("pretraining_tp", 1) or 1, 1),
    }
    for name, (value, wanted) in unsupported.items():
        if value != wanted:
            raise HFFormatError(f"{source}: {name}={value!r} is not supported (only {wanted!r})")
    theirs = {"vocab_size": "vocab_size", "context_length": "max_position_embeddings", "n_layer": "num_hidden_layers"}
    theirs |= {"n_head": "num_attention_heads", "d_model": "hidden_size", "mlp_hidden": "intermediate_size"}
    values = {ours: _number(config, key, source) for ours, key in theirs.items()}
    check_sizes(values, str(source), HFFormatError)
    kv_heads = _number(config, "num_key_value_heads", source, values["n_head"])
    head_dim = config.get("head_dim") or values["d_model"] // values["n_head"]
    if head_dim * values["n_head"] != values["d_model"]:
        raise HFFormatError(f"{source}: head_dim={head_dim} times {values['n_head']} heads must equal hidden_size")
    rope_theta, rope_scaling = rope_from_hf(config, source)
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
            rope_scaling=rope_scaling,
        )
    except ConfigError as e:
        raise HFFormatError(f"{source}: {e}") from None


# --- weights ---


def weight_names(cfg: ModelConfig) -> dict[str, str]:
    """{our name: Hugging Face name} of every stored tensor (no lm_head when tied)."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(cfg.n_layer):
        names |= {f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in LAYER_NAMES.items()}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


def chat_end_id(tok: Tokenizer) -> int:
    """The token that ends an assistant turn, and so generation."""
    return stop_ids(tok)[0]


def tokenizer_files(tok: Tokenizer, context_length: int) -> dict[str, Any]:
    """The tokenizer's files of an export (tokenizer.json, and tokenizer.model for SentencePiece) and
    tokenizer_config.json with the chat template."""

    def name(i: int) -> str | None:
        return tok.id_to_piece(i) if i >= 0 else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(bos_id(tok)),
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
    generation = {"bos_token_id": bos_id(tok), "eos_token_id": sorted({end, tok.eos_id}), "pad_token_id": tok.pad_id}
    config = hf_config(cfg, tok, end) | {"torch_dtype": str(shapes["model.norm.weight"][0]).removeprefix("torch.")}
    files = {
        HF_CONFIG: json.dumps(config, indent=2) + "\n",
        "generation_config.json": json.dumps(generation, indent=2) + "\n",
        **tokenizer_files(tok, cfg.context_length),
        HF_WEIGHTS: lambda path: write_safetensors(path, tensors, shapes),
    }
    if info:
        files["llm_info.json"] = json.dumps({**info, "exported_from": str(source)}, indent=2, default=str) + "\n"
    return checkpoint.write_dir(out_dir, files)


# --- import ---


def _inside(src: Path, name: Any, where: Path) -> Path:
    """src/name, refused when the name leads out of src (an absolute path, ".."): nothing outside the folder
    is ever read."""
    if isinstance(name, str) and not Path(name).is_absolute():
        path = Path(os.path.normpath(src / name))
        if Path(os.path.normpath(src)) in path.parents:
            return path
    raise HFFormatError(f"{where}: names {name!r}, a file outside the folder; only files inside it are read")


def _weight_files(src: Path) -> dict[str, Path]:
    """{Hugging Face tensor name: safetensors file holding it}; refuses pickled weights and files elsewhere."""
    if (src / HF_INDEX).is_file():
        weight_map = read_json_file(src / HF_INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HFFormatError(f"{src / HF_INDEX}: no weight_map object")
        return {name: _inside(src, file, src / HF_INDEX) for name, file in weight_map.items()}
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


def _tokenizer(src: Path, hf: dict[str, Any], cfg: ModelConfig) -> Tokenizer:
    """The folder's tokenizer; one of ours exported comes back as ours (llm.data.chat.as_ours)."""
    tok = as_ours(folder_tokenizer(src, hf))
    if tok.vocab_size != cfg.vocab_size:
        raise HFFormatError(f"{tok.source} has {tok.vocab_size} tokens but config.json says {cfg.vocab_size}")
    return tok


def _licence(src: Path) -> str | None:
    """The licence a model card (README.md) names in its front matter (between two --- lines), if any."""
    card = src / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace")[:8000] if card.is_file() else ""
    front = re.match(r"---\n(.*?)\n---", text, re.DOTALL)
    found = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front.group(1), re.MULTILINE) if front else None
    return found.group(1).strip() if found else None


def import_hf(src: str | Path, out_dir: str | Path, memory_limit: int | None = None, origin: str | None = None) -> Path:
    """A local Hugging Face folder of a Llama-architecture model -> a model directory of ours (weights streamed
    tensor by tensor, in their own dtype; its tokenizer and chat template kept). Refuses a model whose fp32
    weights exceed memory_limit (default: this machine's memory). origin: where it came from, for info.json
    (default: the folder)."""
    src = Path(src)
    if not (src / HF_CONFIG).is_file():
        raise HFFormatError(f"{src}: no {HF_CONFIG}; not a Hugging Face model folder")
    hf = read_json_file(src / HF_CONFIG)
    cfg = config_from_hf(hf, src / HF_CONFIG)
    tok = _tokenizer(src, hf, cfg)
    check_memory(cfg, str(src), memory_limit, HFFormatError)
    files = _weight_files(src)
    names = weight_names(cfg)
    missing = sorted(theirs for theirs in names.values() if theirs not in files)
    if missing:
        raise HFFormatError(
            f"{src}: weights missing for this config: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    with ExitStack() as stack:
        handles = _open_all(stack, {files[theirs] for theirs in names.values()})
        shapes = _checked_shapes(src, cfg, names, files, handles)
        tensors = ((ours, handles[files[theirs]].get_tensor(theirs)) for ours, theirs in names.items())
        info = {"imported_from": origin or str(src.resolve()), "format": "hf", "architecture": ARCHITECTURE}
        info |= {"dtype": str(shapes["norm.weight"][0]).removeprefix("torch."), "license": _licence(src)}
        return write_imported(out_dir, cfg, tok, info, tensors, shapes)


def _checked_shapes(src: Path, cfg: ModelConfig, names: dict, files: dict, handles: dict) -> dict[str, tuple]:
    """{our name: (dtype, shape)} of each tensor, each shape checked against the one config.json implies."""
    shapes, reference = {}, weight_shapes(cfg)
    for ours, theirs in names.items():
        piece = handles[files[theirs]].get_slice(theirs)
        shape, dtype = tuple(piece.get_shape()), _torch_dtype(piece.get_dtype(), theirs)
        if shape != reference[ours]:
            raise HFFormatError(f"{src}: {theirs} has shape {shape}, config.json implies {reference[ours]}")
        shapes[ours] = (dtype, shape)
    return shapes


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
