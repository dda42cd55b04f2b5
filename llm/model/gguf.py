"""GGUF files (llama.cpp's format, what Ollama, LM Studio and llama.cpp keep on disk): a Llama-family model read
from one as a model directory of ours. The `gguf` package (llama.cpp's own) parses the file and dequantizes the
tensors (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the K-quants and more); the weights are kept in fp32.

    GGUF                          ours
    token_embd.weight             tok_emb.weight
    blk.{i}.attn_norm.weight      blocks.{i}.attn_norm.weight
    blk.{i}.attn_q/k/v/output     blocks.{i}.attn.wq/wk/wv/wo.weight (q and k rows permuted back, below)
    blk.{i}.ffn_norm.weight       blocks.{i}.mlp_norm.weight
    blk.{i}.ffn_gate/up/down      blocks.{i}.mlp.w_gate/w_up/w_down.weight
    output_norm.weight            norm.weight
    output.weight                 lm_head.weight (absent when tied to the embeddings)
    rope_freqs.weight             Llama 3's rotary scaling, as factors per frequency (ModelConfig.rope_scaling)

llama.cpp rotates interleaved pairs (x[2j], x[2j+1]) of a head; we (and Hugging Face) rotate the halves
(x[j], x[j + D/2]). Its converter permutes the rows of attn_q and attn_k so that the same model results:
row h*D + 2j + t of the file is row h*D + t*D/2 + j of ours. unpermute() undoes it, permute() does it.

A file from elsewhere is untrusted: every tensor's type and data region are checked against the file before
anything is read (a lying offset or shape, an unknown type, a truncated file are clear errors naming the tensor),
and so are the architecture, the shape the metadata gives and each tensor's shape against it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, LlamaFileType, dequantize

from llm.config import ConfigError, ModelConfig
from llm.data.chat import as_ours
from llm.data.tokenizer.gguf_vocab import tokenizer_from_gguf
from llm.errors import CheckpointError
from llm.model.transformer import llama3_frequencies
from llm.model.weights import check_memory, check_sizes, weight_shapes, write_imported

ARCHITECTURES = ("llama",)  # Llama, Llama 2 and 3, Mistral (dense), SmolLM, TinyLlama: all written as "llama"
DEQUANTIZABLE = {
    getattr(GGMLQuantizationType, name)
    for name in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
}
TOP_NAMES = {
    "tok_emb.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
BLOCK_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.wq.weight": "attn_q.weight",
    "attn.wk.weight": "attn_k.weight",
    "attn.wv.weight": "attn_v.weight",
    "attn.wo.weight": "attn_output.weight",
    "mlp_norm.weight": "ffn_norm.weight",
    "mlp.w_gate.weight": "ffn_gate.weight",
    "mlp.w_up.weight": "ffn_up.weight",
    "mlp.w_down.weight": "ffn_down.weight",
}
ROPE_FREQS = "rope_freqs.weight"
LLAMA3_BAND = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 8192}  # Llama 3.1-3.2


class GGUFError(CheckpointError):
    """A GGUF file this project cannot read as a model (the message names the file and what is wrong)."""


def tensor_names(cfg: ModelConfig) -> dict[str, str]:
    """{our name: GGUF name} of every stored tensor (no output.weight when tied)."""
    names = {ours: TOP_NAMES[ours] for ours in ("tok_emb.weight", "norm.weight")}
    for i in range(cfg.n_layer):
        names |= {f"blocks.{i}.{ours}": f"blk.{i}.{theirs}" for ours, theirs in BLOCK_NAMES.items()}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = TOP_NAMES["lm_head.weight"]
    return names


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Our q/k rows (halves rotated) -> llama.cpp's (pairs rotated): each head's rows j and j + D/2 side by side."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k rows -> ours: the inverse of permute()."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- reading a file ---


class _CheckedReader(GGUFReader):
    """GGUFReader that checks each tensor's type and data region (inside the file, apart from the others)
    before the library builds its view of it."""

    def __init__(self, path: Path):
        self.source = str(path)
        super().__init__(path)

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        regions = []
        for field in fields:
            _, name_data, _, dims, raw_type, offset = field.parts
            name = bytes(name_data).decode("utf-8", errors="replace")
            if int(raw_type[0]) not in {t.value for t in DEQUANTIZABLE}:
                known = int(raw_type[0]) in {t.value for t in GGMLQuantizationType}
                kind = GGMLQuantizationType(int(raw_type[0])).name if known else f"number {int(raw_type[0])}"
                raise GGUFError(f"{self.source}: tensor {name} has type {kind}, which cannot be dequantized")
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_type[0]))]
            count = math.prod(int(d) for d in dims)
            start = start_offs + int(offset[0])
            end = start + count // block * size
            if count % block or end > len(self.data):
                raise GGUFError(
                    f"{self.source}: tensor {name} (shape {[int(d) for d in dims]}, bytes {start}..{end}) does not "
                    f"fit in the file of {len(self.data)} bytes: a wrong offset or shape, or a truncated file"
                )
            regions.append((start, end, name))
        regions.sort()
        for (_, end, first), (start, _, second) in zip(regions, regions[1:], strict=False):  # neighbours
            if start < end:
                raise GGUFError(f"{self.source}: tensors {first} and {second} overlap: a wrong offset")
        super()._build_tensors(start_offs, fields)


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata {key: value, arrays as lists}, tensors {name: the reader's tensor}) of a GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    try:
        reader = _CheckedReader(path)
        meta = {key: field.contents() for key, field in reader.fields.items()}
    except GGUFError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, MemoryError) as e:
        # the library's parser meets a damaged header this way (it reads the memory-mapped file as it goes)
        raise GGUFError(f"{path}: not a GGUF file this project can read (damaged or truncated: {e})") from None
    return meta, {t.name: t for t in reader.tensors}


# --- the model's shape ---


def _number(meta: dict[str, Any], key: str, source: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GGUFError(f"{source}: {key} must be a number, got {value!r}")
    return value


def _rope_scaling(meta: dict[str, Any], tensors: dict[str, Any], arch: str, theta: float, head_dim: int, source: str):
    """Our rope_scaling: none, or Llama 3's, recognised in rope_freqs.weight (llama.cpp keeps only its factors
    per frequency: they must be those of factor = their largest, with Llama 3's band)."""
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind not in ("none", None):
        raise GGUFError(f"{source}: {arch}.rope.scaling.type {kind!r} is not supported (only Llama 3's scaling)")
    if ROPE_FREQS not in tensors:
        return {}
    factors = torch.from_numpy(np.array(_dequantized(tensors[ROPE_FREQS]), dtype=np.float32)).reshape(-1)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    scaling = {"factor": float(factors.max()), **LLAMA3_BAND}
    if factors.shape != inv_freq.shape or not torch.allclose(inv_freq / factors, llama3_frequencies(inv_freq, scaling)):
        raise GGUFError(f"{source}: {ROPE_FREQS} holds rotary factors that are not Llama 3's; not supported")
    return scaling


def config_from_gguf(meta: dict[str, Any], tensors: dict[str, Any], source: str) -> ModelConfig:
    """The model's shape from its metadata ({arch}.block_count, ...), refusing what our model cannot represent."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{source}: general.architecture {arch!r} is not supported (only {', '.join(ARCHITECTURES)})")
    if meta.get(f"{arch}.expert_count", 0):
        raise GGUFError(f"{source}: a mixture of experts ({arch}.expert_count) is not supported")
    keys = {"context_length": "context_length", "n_layer": "block_count", "d_model": "embedding_length"}
    keys |= {"n_head": "attention.head_count", "mlp_hidden": "feed_forward_length"}
    values = {ours: _number(meta, f"{arch}.{key}", source) for ours, key in keys.items()}
    values["vocab_size"] = len(meta.get("tokenizer.ggml.tokens") or [])
    check_sizes(values, source, GGUFError)
    head_dim = values["d_model"] // values["n_head"]
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if _number(meta, f"{arch}.{key}", source, head_dim) != head_dim:
            raise GGUFError(f"{source}: {arch}.{key} is not the head size {head_dim}; not supported")
    theta = float(_number(meta, f"{arch}.rope.freq_base", source, 10000.0))
    try:
        return ModelConfig(
            **values,
            n_kv_head=int(_number(meta, f"{arch}.attention.head_count_kv", source, values["n_head"])),
            tie_embeddings="output.weight" not in tensors,
            rope_theta=theta,
            norm_eps=float(_number(meta, f"{arch}.attention.layer_norm_rms_epsilon", source, 1e-5)),
            rope_scaling=_rope_scaling(meta, tensors, arch, theta, head_dim, source),
        )
    except ConfigError as e:
        raise GGUFError(f"{source}: {e}") from None


# --- the weights ---


def _dequantized(tensor: Any) -> np.ndarray:
    """A tensor's values in fp32, shaped as torch shapes it (the file lists the fastest dimension first)."""
    values = dequantize(tensor.data, tensor.tensor_type)  # may be a view of the read-only file: copied
    return np.array(values, dtype=np.float32).reshape(tuple(reversed([int(d) for d in tensor.shape])))


def _weights(cfg: ModelConfig, names: dict[str, str], tensors: dict[str, Any]):
    """(our name, fp32 tensor) one at a time, q and k permuted back to our rotary layout."""
    heads = {"attn.wq.weight": cfg.n_head, "attn.wk.weight": cfg.kv_heads}
    for ours, theirs in names.items():
        values = _dequantized(tensors[theirs])
        kind = ours.split(".", 2)[-1]
        if kind in heads:
            values = unpermute(values, heads[kind])
        yield ours, torch.from_numpy(np.ascontiguousarray(values))


def _checked_names(cfg: ModelConfig, tensors: dict[str, Any], source: str) -> dict[str, str]:
    """{our name: GGUF name}, every tensor present with the shape the metadata implies and none left over."""
    names, shapes = tensor_names(cfg), weight_shapes(cfg)
    missing = sorted(set(names.values()) - set(tensors))
    extra = sorted(set(tensors) - set(names.values()) - {ROPE_FREQS})
    if missing or extra:
        raise GGUFError(f"{source}: tensors missing {missing[:5]} or not understood {extra[:5]} for a Llama model")
    for ours, theirs in names.items():
        shape = tuple(reversed([int(d) for d in tensors[theirs].shape]))
        if shape != shapes[ours]:
            raise GGUFError(f"{source}: tensor {theirs} has shape {shape}, the metadata implies {shapes[ours]}")
    return names


def import_gguf(
    path: str | Path, out_dir: str | Path, memory_limit: int | None = None, origin: str | None = None
) -> Path:
    """A Llama-family GGUF file -> a model directory of ours: weights dequantized to fp32 one tensor at a time,
    the tokenizer rebuilt from the metadata, the chat template kept (one of ours comes back as ours). Refuses a model whose fp32 weights exceed
    memory_limit (default: this machine's memory). origin: where it came from, for info.json (default: the file)."""
    path = Path(path)
    meta, tensors = read_gguf(path)
    source = str(path)
    cfg = config_from_gguf(meta, tensors, source)
    tok = as_ours(tokenizer_from_gguf(meta, source))
    check_memory(cfg, source, memory_limit, GGUFError)
    names = _checked_names(cfg, tensors, source)
    shapes = {ours: (torch.float32, shape) for ours, shape in weight_shapes(cfg).items()}
    file_type = meta.get("general.file_type")
    file_type = LlamaFileType(file_type).name if file_type in {t.value for t in LlamaFileType} else None
    info = {
        "imported_from": origin or str(path.resolve()),
        "format": "gguf",
        "architecture": meta["general.architecture"],
    }
    info |= {"dtype": "float32", "gguf_file_type": file_type, "name": meta.get("general.name")}
    info |= {"license": meta.get("general.license")}
    return write_imported(out_dir, cfg, tok, info, _weights(cfg, names, tensors), shapes)
