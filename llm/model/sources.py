"""Where a model comes from: a Hugging Face folder (or a .zip of one), a .gguf file, or the Hugging Face hub
(`owner/name`, or `owner/name/file.gguf`) when this machine is online. import_model() is the one import, used by
`python -m llm import` and the studio's Models tab; llm/model/hf.py and llm/model/gguf.py do the reading."""

from __future__ import annotations

import json
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from llm.config import ModelConfig
from llm.data.tokenizer.hf_folder import read_json_file
from llm.errors import InputError
from llm.model.gguf import config_from_gguf, import_gguf, read_gguf
from llm.model.hf import HF_CONFIG, config_from_hf, import_hf
from llm.model.weights import parameter_count

HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_GGUF = re.compile(rf"({HUB_REPO.pattern})/([\w./-]+\.gguf)")
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "README.md"]  # never pickles


def source_kind(source: str | Path) -> tuple[str, Path | str]:
    """(kind, where) of a source an import takes: ("folder", path), ("gguf", path), ("zip", path) or ("hub", id);
    InputError naming it for anything else."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file() and path.suffix.lower() in (".gguf", ".zip"):
        return path.suffix.lower()[1:], path
    if path.exists():
        raise InputError(f"{path}: not a model: give a Hugging Face folder (or a .zip of one) or a .gguf file")
    if HUB_GGUF.fullmatch(str(source)) or HUB_REPO.fullmatch(str(source)):
        return "hub", str(source)
    raise InputError(f"{source}: no such file or folder (nor a Hugging Face hub id such as owner/name)")


def import_model(source: str | Path, out_dir: str | Path, memory_limit: int | None = None) -> Path:
    """Import the model at source into the model directory out_dir (written whole or not at all); returns it.
    memory_limit: refuse a model whose fp32 weights need more (default: this machine's memory)."""
    kind, where = source_kind(source)
    if kind == "folder":
        return import_hf(where, out_dir, memory_limit)
    if kind == "gguf":
        return import_gguf(where, out_dir, memory_limit)
    if kind == "zip":
        with _scratch(out_dir) as tmp:
            return import_hf(unzip_folder(where, Path(tmp)), out_dir, memory_limit, origin=str(where.resolve()))
    return _from_hub(where, out_dir, memory_limit)


def source_config(source: str | Path) -> ModelConfig | None:
    """The shape of the model an import of source would bring, read from its header alone (a GGUF's metadata, a
    folder's or a .zip's config.json; no weights read), for what the import will need; None for a hub id (its
    shape is known once downloaded). The errors import_model would raise for a malformed header."""
    kind, where = source_kind(source)
    if kind == "folder":
        return config_from_hf(read_json_file(where / HF_CONFIG), where / HF_CONFIG)
    if kind == "gguf":
        meta, tensors = read_gguf(where)
        return config_from_gguf(meta, tensors, str(where))
    if kind == "zip":
        with _open_zip(where) as archive:
            member = _config_member(where, archive)
            try:
                config = json.loads(archive.read(member))
            except (ValueError, UnicodeDecodeError) as e:
                raise InputError(f"{where}: {member} is not valid JSON ({e})") from None
        return config_from_hf(config, where / member)
    return None


def imported_summary(info: dict) -> str:
    """What an import brought, from its info.json: "134.5M parameters, float32, chat template: own, licence ..."."""
    licence = f", licence {info['license']}" if info.get("license") else ""
    return f"{info['params'] / 1e6:.1f}M parameters, {info['dtype']}, chat template: {info['chat_template']}{licence}"


def import_needs(cfg: ModelConfig) -> dict[str, int]:
    """What importing (and then using) a model of this shape takes: its parameters, and the bytes of its fp32
    weights, which the import writes to disk and a loaded model holds in memory."""
    params = parameter_count(cfg)
    return {"params": params, "fp32_bytes": 4 * params}


def _scratch(out_dir: str | Path) -> tempfile.TemporaryDirectory:
    """A temporary folder beside out_dir (the same disk), removed afterwards."""
    parent = Path(out_dir).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".import-", dir=parent)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: not a zip file ({e})") from None


def _config_member(path: Path, archive: zipfile.ZipFile) -> str:
    """The archive's config.json nearest its top: the zipped folder's."""
    configs = [name for name in archive.namelist() if Path(name).name == HF_CONFIG]
    if not configs:
        raise InputError(f"{path}: no {HF_CONFIG} in it: not a zipped Hugging Face model folder")
    return min(configs, key=lambda name: name.count("/"))


def unzip_folder(path: Path, target: Path) -> Path:
    """Unpack a zipped Hugging Face folder into target and return the folder holding its config.json. Refuses
    members that would land outside target (absolute, "..", links) and more than the disk has free."""
    with _open_zip(path) as archive:
        members = archive.infolist()
        for member in members:
            link = stat.S_ISLNK(member.external_attr >> 16)
            if link or Path(member.filename).is_absolute() or ".." in Path(member.filename).parts:
                raise InputError(f"{path}: {member.filename!r} would be unpacked outside its folder; refused")
        config = _config_member(path, archive)
        needed, free = sum(m.file_size for m in members), shutil.disk_usage(target).free
        if needed > free:
            raise InputError(f"{path}: unpacked it needs {needed / 2**30:.1f} GiB, the disk has {free / 2**30:.1f}")
        try:
            archive.extractall(target)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(f"{path}: cannot unpack it ({e})") from None
    return (target / config).parent


def _from_hub(source: str, out_dir: str | Path, memory_limit: int | None) -> Path:
    """Download a hub repository's folder (safetensors, configs, tokenizer) or one .gguf file, then import it."""
    try:
        import huggingface_hub
    except ImportError:
        raise InputError(f"{source}: the Hugging Face hub needs the huggingface_hub package") from None
    gguf = HUB_GGUF.fullmatch(source)
    with _scratch(out_dir) as tmp:
        try:
            if gguf:
                file = huggingface_hub.hf_hub_download(gguf.group(1), gguf.group(2), local_dir=tmp)
            else:
                folder = huggingface_hub.snapshot_download(source, allow_patterns=HUB_FILES, local_dir=tmp)
        except Exception as e:  # offline, no such repository, gated: the hub client raises many kinds
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(
                f"{source}: cannot download it from the Hugging Face hub ({reason}); is this machine offline? "
                "Download the folder or .gguf file elsewhere and give its path"
            ) from None
        origin = f"https://huggingface.co/{source}"
        if gguf:
            return import_gguf(file, out_dir, memory_limit, origin=origin)
        return import_hf(Path(folder), out_dir, memory_limit, origin=origin)
