"""A model as a standalone copy to share: our own model directory, or a Hugging Face folder. The one export,
used by `python -m llm export` and the studio's Models downloads."""

from __future__ import annotations

from pathlib import Path

import torch

from llm.errors import ConfigError
from llm.model import checkpoint

FORMATS = ("ours", "hf")


def export_model(source: str | Path, out: str | Path, format: str = "ours", dtype: torch.dtype | None = None) -> Path:
    """Write the model at source (a model directory, or a run folder's best checkpoint) to out as a folder
    that needs nothing else: a LoRA adapter is merged into its base, the trainer state is left behind.
    format "ours": a model directory (config.json, model.safetensors, tokenizer, info.json); "hf": a Hugging
    Face LlamaForCausalLM folder. dtype: the weights' dtype (None: as trained, fp32)."""
    if format not in FORMATS:
        raise ConfigError(f"must be one of {', '.join(FORMATS)}, got {format!r}", field="format")
    source = checkpoint.resolve(source)
    if format == "hf":
        from llm.model.hf import export_hf

        return export_hf(source, out, dtype)
    model, tokenizer, info = checkpoint.load_model(source)
    return checkpoint.save_checkpoint(out, model, tokenizer, {**info, "exported_from": str(source)}, dtype=dtype)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
