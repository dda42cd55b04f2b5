"""The studio's shared state: the workspace, its SQLite index, the job runner and loaded models.

Nothing here lives in a browser session: every tab reads the same store, so two browser tabs (or a
reloaded page) see the same datasets, runs and models.

Models are named by refs: "base:<id>" (a base model), "run:<id>" (a run's best checkpoint, else its
latest) and "run:<id>/latest" (a run's newest checkpoint).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from llm.config import DEFAULT_BASE_MODEL, FinetuneConfig
from llm.data.tasks import READERS
from llm.errors import LLMError
from llm.run import CONFIG, INFO, LATEST, RunDir, is_checkpoint
from studio.datasets import TaskFiles
from studio.jobs import Jobs
from studio.store import ACTIVE_STATES, Store, new_id

REPO = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO / "datasets" / "samples"
DATA_SUFFIXES = READERS  # what llm.data.tasks reads
BASE_ID = "base"
MAX_NAME_CHARS = 80
MAX_UPLOAD_BYTES = 50 * 2**20  # a dataset or text above this is refused (in the page, and again here)
# A model file (Models -> Import) above this is refused at the door; a larger one is imported from its path.
MAX_MODEL_UPLOAD_BYTES = 8 * 2**30
MAX_LOADED = 4  # models kept loaded for Compare, Chat and Inside


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


class StudioError(LLMError):
    """A choice in the studio that cannot be used (a dataset or model that is gone, nothing chosen)."""

    kind = "studio"


def memory_now() -> str:
    """What the training device has in use now: the GPU's name and memory, else the CPU's threads and RAM."""
    import os

    import torch  # imported by then: the plan that shows this line needs it

    from llm.device import gpu_memory

    # The first GPU the studio sees: its runs' (studio.jobs.job_gpu).
    gpu = gpu_memory(torch.device("cuda", 0)) if torch.cuda.is_available() else None
    if gpu is not None:
        name, used, total = gpu
        return f"GPU {name}: {human_size(used)} of {human_size(total)} memory in use, {human_size(total - used)} free"
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():  # kB figures; MemAvailable counts what the kernel can free (caches)
        fields = {
            k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in meminfo.read_text().splitlines())
        }
        total, free = fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return (
        f"CPU, {plural(os.cpu_count() or 1, 'core')}: {human_size(total - free)} of {human_size(total)} memory "
        f"in use, {human_size(free)} free"
    )


def release_gpu_memory() -> None:
    """Give the GPU memory of models no longer held back to the device (torch keeps freed blocks cached for its
    own process otherwise, where a training run cannot use them)."""
    import sys

    if "torch" not in sys.modules:
        return  # nothing to release before torch is imported
    import torch  # an import still under way in another thread (the studio's warm-up) is waited for

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def is_model_dir(path: Path) -> bool:
    return is_checkpoint(path)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def spreadsheet_safe(frame: Any) -> Any:
    """A copy of a DataFrame whose text cells cannot run as spreadsheet formulas when a CSV of it is opened:
    a cell that starts with = + - @ (or a tab or carriage return) gets a leading apostrophe, as OWASP advises."""

    def escape(value: Any) -> Any:
        return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    return frame.map(escape)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def upload_limit(n: int) -> str:
    """The upload limit in binary units, as Gradio words its own refusal ("... size of 50.0 Mb")."""
    if n >= 2**30:
        return f"{n / 2**30:.3g} GiB"
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


class Studio:
    def __init__(
        self,
        workspace: str | Path,
        base_model: str | Path = DEFAULT_BASE_MODEL,
        samples_dir: str | Path = SAMPLES_DIR,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_model_upload_bytes: int = MAX_MODEL_UPLOAD_BYTES,
    ):
        from studio.imports import Imports

        self.max_upload_bytes, self.max_model_upload_bytes = max_upload_bytes, max_model_upload_bytes
        self._tokenizers: dict[Path, tuple[float, Any, int]] = {}  # folder: (config.json time, tokenizer, context)
        self.store = Store(workspace)
        self.workspace = self.store.workspace
        for sub in ("datasets", "runs", "exports", "compare", "models"):
            (self.workspace / sub).mkdir(exist_ok=True)
        self.base_model = Path(base_model).resolve()
        self.samples_dir = Path(samples_dir)
        self.jobs = Jobs(self.store, on_launch=self.step_aside)
        self.store.set_model(
            BASE_ID, "base (shipped)" if self.base_model == DEFAULT_BASE_MODEL else "base", self.base_model
        )
        samples = sorted(p for p in self.samples_dir.glob("*") if p.suffix.lower() in DATA_SUFFIXES)
        self.store.sync_samples(samples)
        # Loaded (model, tokenizer, info) by (directory, info.json time, device), the most recently used last.
        self._models: OrderedDict[tuple[Path, float, str], tuple] = OrderedDict()
        self._model_lock = threading.Lock()
        self.task_files = TaskFiles()  # the one dataset cache of Data, Fine-tune and Compare
        self.imports = Imports(self)

    # Base model
    def base_missing(self) -> str:
        """'' when the default base model exists, else a message saying what to do."""
        if is_model_dir(self.base_model):
            return ""
        return (
            f"The base model is missing ({self.base_model} has no config.json). It ships with the project; until "
            "it is there, you can prepare data, but fine-tuning and comparing need a base model: train one with "
            "`python -m llm pretrain` or start the studio with --base-model DIR."
        )

    def preview_tokenizer(self, base_ref: str | None = None) -> tuple[Any, int, Path] | None:
        """(tokenizer, context length, folder) of a base model (base_ref; default and fallback: the studio's own),
        for data previews; None if that is missing."""
        try:
            folder = self.model_dir(base_ref) if base_ref and base_ref.startswith("base:") else self.base_model
        except StudioError:  # imported, then deleted: the studio's own base reads the data instead
            folder = self.base_model
        if not is_model_dir(folder):
            return None
        from llm.data.tokenizer import Tokenizer

        stamp = (folder / CONFIG).stat().st_mtime  # config.json is rewritten whenever the folder is
        with self._model_lock:
            if self._tokenizers.get(folder, (None,))[0] != stamp:
                context = json.loads((folder / CONFIG).read_text())["context_length"]
                self._tokenizers[folder] = (stamp, Tokenizer.load(folder), context)
            _, tokenizer, context = self._tokenizers[folder]
        return tokenizer, context, folder

    def base_choices(self) -> list[tuple[str, str]]:
        return [(m["name"], f"base:{m['id']}") for m in self.store.models() if is_model_dir(self.store.abs(m["path"]))]

    # Datasets
    def dataset_choices(self) -> list[tuple[str, str]]:
        """(label, id) of every dataset. An upload whose name another dataset has too says when it came."""
        datasets = self.store.datasets()
        names = Counter(d["name"] for d in datasets)
        choices = []
        for d in datasets:
            tag = "sample" if d["source"] == "sample" else "uploaded"
            if tag == "uploaded" and names[d["name"]] > 1:
                tag += time.strftime(" %d %b %H:%M:%S", time.localtime(d["created"]))
            rows = f", {plural(d['rows'], 'example')}" if d["rows"] is not None else ""
            choices.append((f"{d['name']} ({tag}{rows})", d["id"]))
        return choices

    def dataset_path(self, key: str) -> Path:
        row = self.store.dataset(key)
        if row is None:
            raise StudioError("Choose a dataset first (upload one in the Data tab, or pick a sample).")
        return self.store.abs(row["path"])

    def deletable_dataset(self, key: str | None) -> dict[str, Any]:
        """The dataset key names, if it may be deleted: an upload no queued or running run uses (a sample
        ships with the studio). StudioError naming it otherwise."""
        row = self.store.dataset(key) if key else None
        if row is None:
            raise StudioError("Pick a dataset first.")
        if row["source"] == "sample":
            raise StudioError(f"{row['name']} is a sample that ships with the studio: it cannot be deleted.")
        users = [r["name"] for r in self.store.runs(ACTIVE_STATES) if r["dataset_id"] == key]
        if users:
            raise StudioError(f"{row['name']} is used by {', '.join(users)}: stop or finish that run first.")
        return row

    def delete_dataset(self, key: str | None) -> str:
        """Delete an uploaded dataset and its file (see deletable_dataset); what was deleted."""
        row = self.deletable_dataset(key)
        path = self.store.abs(row["path"])
        self.store.delete_dataset(key)
        if path.parent.parent == self.workspace / "datasets":  # the upload's own folder, <workspace>/datasets/<id>
            shutil.rmtree(path.parent, ignore_errors=True)
        return f"Deleted {row['name']}."

    # Models
    def model_dir(self, ref: str) -> Path:
        """The model directory a ref names; ValueError with a readable message if it is gone."""
        kind, _, key = ref.partition(":")
        if kind == "base":
            row = self.store.model(key)
            if row is None or not is_model_dir(self.store.abs(row["path"])):
                known = ", ".join(ref for _, ref in self.base_choices())
                unknown = f"Unknown model {ref!r}: the base models are {known}." if row is None else ""
                raise StudioError(self.base_missing() or unknown or f"The base model {key!r} is missing.")
            return self.store.abs(row["path"])
        run_id, _, which = key.partition("/")
        run = self.store.run(run_id) if kind == "run" else None
        if run is None:
            raise StudioError(f"Unknown model {ref!r}: it may have been deleted. Refresh the list.")
        run_dir = RunDir(self.store.abs(run["dir"]))
        found = [run_dir.latest] if which == LATEST else run_dir.checkpoints()
        if not found or not is_model_dir(found[0]):
            raise StudioError(f"{run['name']} has no checkpoint yet.")
        return found[0]

    def model_label(self, ref: str) -> str:
        return dict((v, k) for k, v in self.model_choices()).get(ref, ref)

    def model_choices(self) -> list[tuple[str, str]]:
        """Every model that can generate: base models, then each run's best and latest checkpoints. The labels
        name no step: a training run's latest checkpoint moves on, and the choices stay the same while it does."""
        choices = list(self.base_choices())
        for run in self.store.runs():
            run_dir = RunDir(self.store.abs(run["dir"]))
            checkpoints = run_dir.checkpoints()
            if checkpoints:
                choices.append((run["name"], f"run:{run['id']}"))
            if len(checkpoints) == 2:
                choices.append((f"{run['name']} · last checkpoint", f"run:{run['id']}/{LATEST}"))
        return choices

    def load(self, ref: str) -> tuple[Any, Any, dict]:
        """(model, tokenizer, info) for a ref, cached (the MAX_LOADED most recently used stay loaded): on the best
        device, except while a run trains, when the studio's models stay on the CPU and leave the GPU to it."""
        from llm.device import pick_device
        from llm.model.checkpoint import load_model

        path = self.model_dir(ref)
        device = pick_device("cpu" if self.jobs.training() else "auto")
        stamp = (path, (path / INFO).stat().st_mtime if (path / INFO).exists() else 0, str(device))
        with self._model_lock:
            if stamp in self._models:
                self._models.move_to_end(stamp)
                return self._models[stamp]
            loaded = load_model(path, device)
            self._models[stamp] = loaded
            while len(self._models) > MAX_LOADED:
                self._models.popitem(last=False)
            release_gpu_memory()
            return loaded

    def step_aside(self) -> None:
        """A run starts training: the models the studio holds on a GPU are let go (it loads them on the CPU until
        the run ends), and the memory they held goes back to the GPU."""
        with self._model_lock:
            for stamp in [s for s in self._models if not s[2].startswith("cpu")]:
                del self._models[stamp]
            release_gpu_memory()

    def forget(self, path: Path) -> None:
        with self._model_lock:
            for stamp in [s for s in self._models if s[0].is_relative_to(path)]:
                del self._models[stamp]
            release_gpu_memory()

    def finetune_config(self, base_ref: str, dataset_id: str, settings: dict[str, Any]) -> FinetuneConfig:
        """The whole FinetuneConfig of a run: the form's settings, the base model, and the dataset with its
        chosen format and columns. StudioError if a choice is gone; ConfigError if a setting is wrong."""
        dataset = self.store.dataset(dataset_id)
        if dataset is None:
            raise StudioError("Choose a dataset first (upload one in the Data tab, or pick a sample).")
        return FinetuneConfig(
            **settings,
            base=str(self.model_dir(base_ref)),
            data=str(self.store.abs(dataset["path"])),
            format=dataset["format"],
            mapping=dataset["mapping"] or {},
        )

    def check_name(self, name: str, ref: str | None = None) -> str:
        """name trimmed, if it can name a model or run: printable, at most MAX_NAME_CHARS characters, and used
        by no other base model or run (in any case; ref: the one being renamed). StudioError otherwise."""
        name = (name or "").strip()
        if not name:
            raise StudioError("is empty: type a name", field="name")
        if not name.isprintable():
            raise StudioError(
                "may hold printable characters only (no tabs, line breaks or control characters)", field="name"
            )
        if len(name) > MAX_NAME_CHARS:
            raise StudioError(f"is {len(name)} characters long; at most {MAX_NAME_CHARS}", field="name")
        for other, taken in self.store.names():
            if other != ref and taken.casefold() == name.casefold():
                raise StudioError(f"{name!r} is taken by another model or run: choose another name", field="name")
        return name

    def free_name(self, stem: str) -> str:
        """stem-1, stem-2, ...: the first that no model or run uses."""
        taken = {name.casefold() for _, name in self.store.names()}
        n = 1
        while f"{stem}-{n}".casefold() in taken:
            n += 1
        return f"{stem}-{n}"

    def create_run(self, base_ref: str, dataset_id: str, settings: dict[str, Any], name: str = "") -> str:
        """Record a queued run with its own folder holding its finetune.json (the job runner starts it).
        settings: FinetuneConfig fields chosen in the form; name: checked by check_name, else made up."""
        cfg = self.finetune_config(base_ref, dataset_id, settings)
        dataset = self.store.dataset(dataset_id)
        stem = f"{Path(dataset['name']).stem}-{cfg.method}"[: MAX_NAME_CHARS - 6]
        name = self.check_name(name) if (name or "").strip() else self.free_name(stem)
        return self.add_run("finetune", cfg, name, base_ref, dataset_id, cfg.method)

    def rename(self, ref: str, name: str) -> str:
        """Rename the base model or run ref names; the new name, or StudioError (unknown ref, bad name)."""
        kind, _, key = (ref or "").partition(":")
        exists = self.store.model(key) if kind == "base" else self.store.run(key) if kind == "run" else None
        if exists is None:
            raise StudioError(f"unknown model {ref!r}: it may have been deleted. Refresh the list.")
        name = self.check_name(name, ref)
        if kind == "base":
            self.store.update_model(key, name=name)
        else:
            self.store.update_run(key, name=name)
        return name

    def add_run(self, command: str, cfg: Any, name: str, base_ref: str, dataset_id: str, method: str) -> str:
        """A queued run of `python -m llm <command>` in a new folder holding its config file (cfg: the
        command's config dataclass)."""
        run = RunDir(self.workspace / "runs" / new_id())
        run.path.mkdir(parents=True)
        cfg.save(run.settings(command))
        return self.store.add_run(name, base_ref, dataset_id, method, cfg.to_dict(), run.path, command)

    def check_deletable(self, run: dict[str, Any]) -> None:
        """StudioError when run may not be deleted now: it is queued or training, or another run is built on
        it (their base would be gone: a LoRA adapter no longer loads, a model's lineage reads as a raw id)."""
        if run["status"] in ACTIVE_STATES:
            raise StudioError(f"{run['name']} is {run['status']}: stop it first.")
        users = [r["name"] for r in self.store.built_on(run["id"])]
        if users:
            them = "it" if len(users) == 1 else "them"
            raise StudioError(
                f"{run['name']} is the base model of {', '.join(users)}: {them} would no longer load. Delete "
                f"{them} first (download {them} to keep a copy)."
            )

    def deletable_base(self, key: str) -> dict[str, Any]:
        """The base model key names, if it may be deleted: one this studio imported, no run built on it.
        StudioError naming why not otherwise."""
        row = self.store.model(key)
        if row is None:
            raise StudioError("That model no longer exists.")
        if not self.store.abs(row["path"]).is_relative_to(self.workspace / "models"):
            raise StudioError(f"{row['name']} is the studio's own base model: it cannot be deleted (imports can).")
        users = [r["name"] for r in self.store.built_on_base(key)]
        if users:
            raise StudioError(
                f"{row['name']} is the base model of {', '.join(users)}: delete {'it' if len(users) == 1 else 'them'}"
                " first (download to keep a copy)."
            )
        return row

    def delete_base(self, key: str) -> None:
        """Delete an imported base model and its folder (see deletable_base)."""
        path = self.store.abs(self.deletable_base(key)["path"])
        self.forget(path)
        self.store.delete_model(key)
        shutil.rmtree(path, ignore_errors=True)

    def delete_run(self, run_id: str) -> None:
        """Delete a run and its folder; StudioError (see check_deletable) when it may not be deleted now."""
        run = self.store.run(run_id)
        assert run is not None
        self.check_deletable(run)
        run_dir = self.store.abs(run["dir"])
        self.forget(run_dir)
        self.store.delete_run(run_id)
        shutil.rmtree(run_dir, ignore_errors=True)
