"""A model directory as one GGUF file, for llama.cpp, Ollama (`ollama create` with a Modelfile naming it) and LM
Studio: written with llama.cpp's own `gguf` package, weights in fp32, fp16 or q8_0 (norms stay fp32, as
llama.cpp's converter keeps them; a matrix whose rows are not whole q8_0 blocks falls back to fp16), q and k rows
permuted to llama.cpp's rotary layout (llm/model/gguf.py), the tokenizer as llama.cpp's vocabulary
(llm/data/tokenizer/gguf_vocab.py) and the chat template (an imported model's own, or ours in Jinja)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType, quantize

from llm.config import ModelConfig
from llm.data.chat import jinja_template
from llm.data.tokenizer import Tokenizer
from llm.errors import ConfigError
from llm.model import checkpoint
from llm.model.gguf import ROPE_FREQS, permute, tensor_names
from llm.model.transformer import llama3_frequencies
from llm.run import run_of

ARCH = "llama"
DTYPES = {"fp32": GGMLQuantizationType.F32, "fp16": GGMLQuantizationType.F16, "q8_0": GGMLQuantizationType.Q8_0}
FILE_TYPES = {"fp32": LlamaFileType.ALL_F32, "fp16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}


def _add(writer: GGUFWriter, key: str, value: Any) -> None:
    """One metadata value, typed as llama.cpp reads it: ids and sizes uint32, token types int32."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))


def _metadata(cfg: ModelConfig, tok: Tokenizer, info: dict[str, Any], dtype: str, name: str) -> dict[str, Any]:
    meta = {
        "general.name": info.get("name") or name,
        f"{ARCH}.context_length": cfg.context_length,
        f"{ARCH}.embedding_length": cfg.d_model,
        f"{ARCH}.block_count": cfg.n_layer,
        f"{ARCH}.feed_forward_length": cfg.mlp_hidden,
        f"{ARCH}.attention.head_count": cfg.n_head,
        f"{ARCH}.attention.head_count_kv": cfg.kv_heads,
        f"{ARCH}.rope.freq_base": float(cfg.rope_theta),
        f"{ARCH}.rope.dimension_count": cfg.head_dim,
        f"{ARCH}.attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        f"{ARCH}.vocab_size": cfg.vocab_size,
        "general.file_type": int(FILE_TYPES[dtype]),
        **tok.gguf_metadata(),
        "tokenizer.chat_template": jinja_template(tok),
    }
    if dtype == "q8_0":
        meta["general.quantization_version"] = 2
    if info.get("license"):
        meta["general.license"] = info["license"]
    return meta


def _tensor(values: np.ndarray, dtype: str) -> tuple[np.ndarray, GGMLQuantizationType]:
    """(data to write, its type): vectors in fp32, matrices in dtype (fp16 where q8_0 blocks do not fit a row)."""
    qtype = GGMLQuantizationType.F32 if values.ndim == 1 else DTYPES[dtype]
    if values.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        qtype = GGMLQuantizationType.F16
    return quantize(values, qtype), qtype


def rope_factors(cfg: ModelConfig) -> np.ndarray:
    """Llama 3's rotary scaling as llama.cpp keeps it: by how much each frequency is divided (D/2,)."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    return (inv_freq / llama3_frequencies(inv_freq, cfg.rope_scaling)).numpy().astype(np.float32)


def export_gguf(model_dir: str | Path, out: str | Path, dtype: str = "fp16") -> Path:
    """Write the model at model_dir (a LoRA run merged into its base) as the GGUF file out (written under a
    temporary name, then renamed: never half a file). Returns out."""
    if dtype not in DTYPES:
        raise ConfigError(f"must be one of {', '.join(DTYPES)} for GGUF, got {dtype!r}", field="dtype")
    source = checkpoint.resolve(model_dir)
    model, tok, info = checkpoint.load_model(source)
    cfg, state = model.cfg, model.state_dict()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = GGUFWriter(tmp, ARCH)
    try:
        run = run_of(source)  # a run's checkpoint (best/, latest/) is named after its run
        name = run.path.name if run else source.name
        for key, value in _metadata(cfg, tok, info, dtype, name).items():
            _add(writer, key, value)
        heads = {"attn.wq.weight": cfg.n_head, "attn.wk.weight": cfg.kv_heads}
        for ours, theirs in tensor_names(cfg).items():
            values = state[ours].detach().float().cpu().numpy()
            kind = ours.split(".", 2)[-1]
            data, qtype = _tensor(permute(values, heads[kind]) if kind in heads else values, dtype)
            writer.add_tensor(theirs, data, raw_dtype=qtype)
        if cfg.rope_scaling:
            writer.add_tensor(ROPE_FREQS, rope_factors(cfg))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out
