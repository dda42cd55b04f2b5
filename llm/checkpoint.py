"""Model directories: written atomically, loaded safely.

A model directory holds
  config.json          the ModelConfig
  model.safetensors    the weights (no pickle: loading never runs code); or, for a LoRA adapter stored alone,
  adapter.safetensors  + adapter.json naming the base model directory it applies to
  tokenizer.model      the SentencePiece tokenizer (and chat_template.jinja for an imported model: llm/hf.py)
  info.json            what made it: base model, dataset, method, hyperparameters, metrics
  trainer_state.pt     optimizer, step and RNG state for --resume (tensors and plain data only)

A directory is written under a temporary name and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llm.config import ConfigError, ModelConfig
from llm.model import Transformer
from llm.tokenizer import MODEL_FILE, Tokenizer

CONFIG, WEIGHTS, INFO, STATE = "config.json", "model.safetensors", "info.json", "trainer_state.pt"
ADAPTER, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"


class CheckpointError(ValueError):
    pass


def resolve(path: str | Path) -> Path:
    """A model directory, or a run directory whose best (else latest) checkpoint is taken."""
    path = Path(path)
    for candidate in (path, path / "best", path / "latest", path.with_name(path.name + ".old")):
        if (candidate / CONFIG).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory")
    raise CheckpointError(f"{path}: not a model directory (no {CONFIG} in it, nor in best/ or latest/)")


def weights_to_save(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        del state["lm_head.weight"]  # the same tensor as tok_emb.weight; safetensors refuses shared storage
    return {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}


def write_dir(target: str | Path, files: dict[str, Any]) -> Path:
    """Write {name: bytes | str | tensor dict | callable(path)} into target atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, content in files.items():
            dest = tmp / name
            if isinstance(content, bytes):
                dest.write_bytes(content)
            elif isinstance(content, str):
                dest.write_text(content)
            else:
                content(dest)
        old = target.with_name(target.name + ".old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)  # if we die after this line, resolve() still finds <target>.old
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_checkpoint(
    target: str | Path,
    model: Transformer,
    tokenizer: Tokenizer,
    info: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    adapter: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Save a model directory. With adapter=(tensors, adapter_config), only the adapter is stored."""
    files: dict[str, Any] = {
        CONFIG: json.dumps(model.cfg.to_dict(), indent=2) + "\n",
        **tokenizer.files(),
        INFO: json.dumps(info or {}, indent=2, default=str) + "\n",
    }
    if adapter is None:
        weights = weights_to_save(model, dtype)
        files[WEIGHTS] = lambda p: save_file(weights, str(p), metadata={"format": "pt"})
    else:
        tensors, adapter_cfg = adapter
        files[ADAPTER] = lambda p: save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(p))
        files[ADAPTER_CONFIG] = json.dumps(adapter_cfg, indent=2) + "\n"
    if trainer_state is not None:
        files[STATE] = lambda p: torch.save(trainer_state, p)
    return write_dir(target, files)


def load_weights(model: Transformer, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({e})") from None
    if model.cfg.tie_embeddings:
        state["lm_head.weight"] = state.get("tok_emb.weight")
    reference = model.state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match config.json (missing {missing}, extra {unexpected})")
    for name, tensor in state.items():
        if tensor.shape != reference[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(reference[name].shape)}"
            )
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})


def read_info(directory: Path) -> dict[str, Any]:
    path = directory / INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    """Load (model in eval mode, tokenizer, info) from a model directory (or a run directory)."""
    directory = resolve(path)
    for name in (CONFIG, MODEL_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: the model directory is missing {name}")
    try:
        cfg = ModelConfig.load(directory / CONFIG)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    tokenizer = Tokenizer.load(directory / MODEL_FILE)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but config.json says {cfg.vocab_size}"
        )
    info = read_info(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        adapter_cfg = json.loads((directory / ADAPTER_CONFIG).read_text())
        base = Path(adapter_cfg["base"])
        if not base.is_absolute():
            base = (directory / base).resolve()
        from llm import lora

        model, _, _ = load_model(base, "cpu")
        lora.apply_lora(model, **adapter_cfg["lora"])
        lora.load_adapter(model, directory / ADAPTER)
        lora.merge_lora(model)
    elif (directory / WEIGHTS).is_file():
        model = Transformer(cfg)
        load_weights(model, directory / WEIGHTS)
    else:
        raise CheckpointError(f"{directory}: the model directory is missing {WEIGHTS}")
    return model.to(device).eval(), tokenizer, info


def load_trainer_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {STATE} to resume from")
    return torch.load(path, map_location="cpu", weights_only=True)
