"""A model as a standalone copy to share: our own model directory, a Hugging Face folder, or a GGUF file. The one
export, used by `python -m llm export` and the studio's Models downloads."""

from __future__ import annotations

from pathlib import Path

import torch

from llm.errors import ConfigError
from llm.model import checkpoint

FORMATS = ("ours", "hf", "gguf")
TORCH_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # ours and hf (fp32: as trained)
GGUF_DTYPES = ("fp32", "fp16", "q8_0")


def export_model(source: str | Path, out: str | Path, format: str = "ours", dtype: str | None = None) -> Path:
    """Write the model at source (a model directory, or a run folder's best checkpoint) to out as a copy that
    needs nothing else: a LoRA adapter is merged into its base, the trainer state is left behind.
    format "ours": a model directory (config.json, model.safetensors, tokenizer, info.json); "hf": a Hugging
    Face LlamaForCausalLM folder; "gguf": one GGUF file (out is its path). dtype: fp32, fp16, bf16 (ours, hf) or
    q8_0 (gguf); default: as trained (fp32), fp16 for GGUF."""
    if format not in FORMATS:
        raise ConfigError(f"must be one of {', '.join(FORMATS)}, got {format!r}", field="format")
    dtype = dtype or ("fp16" if format == "gguf" else "fp32")
    allowed = GGUF_DTYPES if format == "gguf" else tuple(TORCH_DTYPES)
    if dtype not in allowed:
        raise ConfigError(f"must be one of {', '.join(allowed)} for the {format} format, got {dtype!r}", field="dtype")
    source = checkpoint.resolve(source)
    if format == "gguf":
        from llm.model.gguf_export import export_gguf

        return export_gguf(source, out, dtype)
    if format == "hf":
        from llm.model.hf import export_hf

        return export_hf(source, out, TORCH_DTYPES[dtype])
    model, tokenizer, info = checkpoint.load_model(source)
    info = {**info, "exported_from": str(source)}
    return checkpoint.save_checkpoint(out, model, tokenizer, info, dtype=TORCH_DTYPES[dtype])


def output_size(path: Path) -> int:
    """Bytes of an export: a file's, or a folder's files together."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
