"""What every import shares: a model's weight shapes from its config alone, sane sizes, whether it fits in
memory, and writing the imported model directory one tensor at a time (never a second full copy in memory).
llm/model/hf.py (Hugging Face folders) and llm/model/gguf.py (GGUF files) fill it."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llm.config import ModelConfig
from llm.data.tokenizer import Tokenizer
from llm.errors import CheckpointError
from llm.model import checkpoint

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
# Sane bounds for an imported model's shape, checked before anything is allocated.
LIMITS = {
    "vocab_size": 1 << 20,
    "context_length": 1 << 20,
    "n_layer": 1024,
    "n_head": 1024,
    "d_model": 1 << 16,
    "mlp_hidden": 1 << 18,
}


def check_sizes(values: dict[str, Any], source: str, error: type[CheckpointError]) -> None:
    """Each size in values (a ModelConfig field: vocab_size, n_layer, ...) is a whole number in its sane range."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= LIMITS[name]:
            raise error(f"{source}: {name} = {value!r} is outside the sane range 1..{LIMITS[name]}")


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


def memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: ModelConfig, source: str, limit: int | None, error: type[CheckpointError]) -> None:
    """Refuse a model whose fp32 weights (as llm.model.checkpoint.load_model holds them) exceed limit (default:
    this machine's memory)."""
    needed, limit = 4 * parameter_count(cfg), limit or memory_bytes()
    if needed > limit:
        raise error(
            f"{source}: {parameter_count(cfg) / 1e9:.2f}B parameters need {needed / 2**30:.1f} GiB in fp32, "
            f"more than the {limit / 2**30:.1f} GiB of memory here"
        )


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


def write_imported(
    out_dir: str | Path,
    cfg: ModelConfig,
    tok: Tokenizer,
    info: dict[str, Any],
    tensors: Iterator[tuple[str, torch.Tensor]],
    shapes: dict[str, tuple],
) -> Path:
    """An imported model's directory, written atomically: config.json, the tokenizer's files, info.json (with
    the parameter count and whether the model brings its own chat template) and the streamed weights."""
    info = {"kind": "imported", **info, "params": parameter_count(cfg)}
    info["chat_template"] = "own" if tok.chat_template else "none"
    return checkpoint.write_dir(
        out_dir,
        {
            checkpoint.CONFIG: json.dumps(cfg.to_dict(), indent=2) + "\n",
            **tok.files(),
            checkpoint.INFO: json.dumps(info, indent=2) + "\n",
            checkpoint.WEIGHTS: lambda path: write_safetensors(path, tensors, shapes),
        },
    )
