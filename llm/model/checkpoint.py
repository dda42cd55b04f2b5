"""Model directories: written atomically, loaded safely.

A model directory holds
  config.json          the ModelConfig
  model.safetensors    the weights (no pickle: loading never runs code); or, for a LoRA adapter stored alone,
  adapter.safetensors  + adapter.json naming the base model directory it applies to
  tokenizer files      tokenizer.model (SentencePiece) or tokenizer.json + tokenizer_config.json, and an imported
                       model's chat_template.jinja (llm/data/tokenizer owns them)
  info.json            what made it: base model, dataset, method, hyperparameters, metrics
  trainer_state.pt     optimizer, step and RNG state for --resume (tensors and plain data only)

A directory is written under a temporary name and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llm.config import ModelConfig
from llm.data.tokenizer import Tokenizer
from llm.device import check_model_fits
from llm.errors import CheckpointError, ConfigError
from llm.model.transformer import Transformer
from llm.run import CONFIG, INFO, STATE, RunDir, is_checkpoint, read_info, read_json

WEIGHTS = "model.safetensors"
ADAPTER, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"
TEMPORARY = re.compile(r"\..+\.tmp-(\d+)")  # write_dir's working name for <name>: .<name>.tmp-<pid>
# What the trainer reads back from trainer_state.pt (llm/train/trainer.py), and the types it expects.
TRAINER_STATE_KEYS = {
    "step": int,
    "train_config": dict,
    "optimizer": dict,
    "elapsed": (int, float),
    "best_val": (int, float),
    "patience_used": int,
    "rng": (list, tuple),
}


def resolve(path: str | Path) -> Path:
    """A model directory, or a run directory whose best (else latest) checkpoint is taken."""
    path = Path(path)
    candidates = [path, *RunDir(path).checkpoints(), path.with_name(path.name + ".old")]
    for candidate in candidates:
        if is_checkpoint(candidate):
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory")
    raise CheckpointError(f"{path}: not a model directory (no {CONFIG} in it, nor in best/ or latest/)")


def weights_to_save(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        del state["lm_head.weight"]  # the same tensor as tok_emb.weight; safetensors refuses shared storage
    return {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}


def _writer_alive(pid: int) -> bool:
    """Whether process pid may still be writing a temporary directory: it exists and, where /proc tells, it is
    a Python process (a pid reused by another program after a kill does not keep a stale directory alive)."""
    if pid == os.getpid():
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self/cmdline").exists():
        try:
            return b"python" in cmdline.read_bytes().lower()
        except OSError:  # no such process (or it ended while we looked)
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(parent: str | Path) -> list[Path]:
    """Delete the .<name>.tmp-<pid> directories in parent that write_dir left when its process was killed
    (the process is gone); return them. Saving calls this, and so does resuming (load_trainer_state)."""
    parent = Path(parent)
    stale = []
    for path in parent.glob(".*.tmp-*") if parent.is_dir() else []:
        match = TEMPORARY.fullmatch(path.name)
        if match and path.is_dir() and not _writer_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            stale.append(path)
    return stale


def write_dir(target: str | Path, files: dict[str, Any]) -> Path:
    """Write {name: bytes | str | tensor dict | callable(path)} into target atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
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


def read_config(directory: Path) -> ModelConfig:
    """A model directory's ModelConfig. A config.json that leaves out a field the weights' shapes or the
    arithmetic depend on (ModelConfig.REQUIRED) is refused: a default would run another model, silently."""
    path = directory / CONFIG
    cfg = ModelConfig.load(path)  # a ConfigError naming the file for bad JSON, types or ranges
    missing = [name for name in ModelConfig.REQUIRED if name not in json.loads(path.read_text(encoding="utf-8"))]
    if missing:
        raise CheckpointError(
            f"{path}: {', '.join(missing)} missing; a model's config.json gives every field of its shape"
        )
    return cfg


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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, dict]:
    """Load (model in eval mode, tokenizer, info) from a model directory (or a run directory)."""
    directory = resolve(path)
    try:
        cfg = read_config(directory)
        # Built on the CPU from the weights file read beside it (2 copies), then moved to the device.
        check_model_fits(cfg, torch.device("cpu"), copies=2, what=f"{directory}: the model")
        if torch.device(device).type != "cpu":
            check_model_fits(cfg, torch.device(device), what=f"{directory}: the model")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    tokenizer = Tokenizer.load(directory)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but config.json says {cfg.vocab_size}"
        )
    info = read_info(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        from llm.model import lora

        model = load_with_adapter(directory)
        lora.merge_lora(model)
    elif (directory / WEIGHTS).is_file():
        model = Transformer(cfg)
        load_weights(model, directory / WEIGHTS)
    else:
        raise CheckpointError(f"{directory}: the model directory is missing {WEIGHTS}")
    return model.to(device).eval(), tokenizer, info


def load_with_adapter(directory: Path) -> Transformer:
    """A LoRA checkpoint as its base model with the adapter applied, unmerged (so it can keep training)."""
    from llm.model import lora

    adapter_cfg = read_json(directory / ADAPTER_CONFIG)
    if not (isinstance(adapter_cfg, dict) and isinstance(adapter_cfg.get("base"), str)):
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: not an adapter config (no base model named)")
    base = Path(adapter_cfg["base"])
    if not base.is_absolute():
        base = (directory / base).resolve()
    model, _, _ = load_model(base, "cpu")
    lora.apply_lora(model, **adapter_cfg["lora"])
    lora.load_adapter(model, directory / ADAPTER)
    return model


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """The trainer state saved beside a checkpoint, for resuming. The file is loaded with torch's safe loader
    (tensors and plain data only: a file that asks to run code is refused) and checked for what the trainer
    reads back. Resuming starts here, so the run folder's stale temporary directories are cleaned first."""
    path = directory / STATE
    remove_stale_temporaries(directory.parent)
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {STATE} to resume from")
    refused = f"{path}: not a trainer state this project wrote, so the run cannot be resumed from it"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged, truncated, or holding objects the safe loader refuses
        # torch's message ends with advice to load the file unsafely: give only what it refused, if anything.
        refusal = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = (
            f"it refers to code, {refusal.group(1)}, which is never loaded"
            if refusal
            else f"damaged or truncated: {type(e).__name__}"
        )
        raise CheckpointError(f"{refused} ({why})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{refused} (it holds {type(state).__name__}, not a dictionary)")
    missing = [key for key in TRAINER_STATE_KEYS if key not in state]
    wrong = [key for key, kind in TRAINER_STATE_KEYS.items() if key in state and not isinstance(state[key], kind)]
    if missing or wrong:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"wrong type: {', '.join(wrong)}"] if wrong else []
        )
        raise CheckpointError(f"{refused} ({'; '.join(problems)})")
    if not state["rng"] or not all(isinstance(r, torch.Tensor) and r.dtype == torch.uint8 for r in state["rng"]):
        raise CheckpointError(f"{refused} (rng is not a list of random generator states)")
    return state
