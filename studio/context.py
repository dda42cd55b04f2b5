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
from collections import OrderedDict
from pathlib import Path
from typing import Any

from llm.config import DEFAULT_BASE_MODEL
from studio.jobs import Jobs
from studio.store import Store, new_id

REPO = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO / "datasets" / "samples"
DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
BASE_ID = "base"
MAX_UPLOAD_BYTES = 50_000_000  # uploads above this are refused (by Gradio at the door, and again here)


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Studio:
    def __init__(
        self,
        workspace: str | Path,
        base_model: str | Path = DEFAULT_BASE_MODEL,
        samples_dir: str | Path = SAMPLES_DIR,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
    ):
        self.max_upload_bytes = max_upload_bytes
        self._tokenizer: tuple[float, Any, int] | None = None
        self.store = Store(workspace)
        self.workspace = self.store.workspace
        for sub in ("datasets", "runs", "exports", "compare"):
            (self.workspace / sub).mkdir(exist_ok=True)
        self.base_model = Path(base_model).resolve()
        self.samples_dir = Path(samples_dir)
        self.jobs = Jobs(self.store)
        self.store.set_model(
            BASE_ID, "base (shipped)" if self.base_model == DEFAULT_BASE_MODEL else "base", self.base_model
        )
        samples = sorted(p for p in self.samples_dir.glob("*") if p.suffix.lower() in DATA_SUFFIXES)
        self.store.sync_samples(samples)
        # Loaded (model, tokenizer, info) by (directory, info.json time), the most recently used last.
        self._models: OrderedDict[tuple[Path, float], tuple] = OrderedDict()
        self._model_lock = threading.Lock()

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

    def preview_tokenizer(self) -> tuple[Any, int] | None:
        """(tokenizer, context length) of the default base model, for data previews; None if it is missing."""
        if not is_model_dir(self.base_model):
            return None
        from llm.tokenizer import Tokenizer

        stamp = (self.base_model / "tokenizer.model").stat().st_mtime
        if self._tokenizer is None or self._tokenizer[0] != stamp:
            context = json.loads((self.base_model / "config.json").read_text())["context_length"]
            self._tokenizer = (stamp, Tokenizer.load(self.base_model), context)
        return self._tokenizer[1], self._tokenizer[2]

    def base_choices(self) -> list[tuple[str, str]]:
        return [(m["name"], f"base:{m['id']}") for m in self.store.models() if is_model_dir(self.store.abs(m["path"]))]

    # Datasets
    def dataset_choices(self) -> list[tuple[str, str]]:
        choices = []
        for d in self.store.datasets():
            tag = "sample" if d["source"] == "sample" else "uploaded"
            rows = f", {plural(d['rows'], 'example')}" if d["rows"] is not None else ""
            choices.append((f"{d['name']} ({tag}{rows})", d["id"]))
        return choices

    def dataset_path(self, key: str) -> Path:
        row = self.store.dataset(key)
        if row is None:
            raise ValueError("Choose a dataset first (upload one in the Data tab, or pick a sample).")
        return self.store.abs(row["path"])

    # Models
    def model_dir(self, ref: str) -> Path:
        """The model directory a ref names; ValueError with a readable message if it is gone."""
        kind, _, key = ref.partition(":")
        if kind == "base":
            row = self.store.model(key)
            if row is None or not is_model_dir(self.store.abs(row["path"])):
                raise ValueError(self.base_missing() or f"The base model {key!r} is missing.")
            return self.store.abs(row["path"])
        run_id, _, which = key.partition("/")
        run = self.store.run(run_id) if kind == "run" else None
        if run is None:
            raise ValueError(f"Unknown model {ref!r}: it may have been deleted. Refresh the list.")
        run_dir = self.store.abs(run["dir"])
        for sub in (which,) if which else ("best", "latest"):
            if is_model_dir(run_dir / sub):
                return run_dir / sub
        raise ValueError(f"{run['name']} has no checkpoint yet.")

    def model_label(self, ref: str) -> str:
        return dict((v, k) for k, v in self.model_choices()).get(ref, ref)

    def model_choices(self) -> list[tuple[str, str]]:
        """Every model that can generate: base models, then each run's best and latest checkpoints."""
        choices = list(self.base_choices())
        for run in self.store.runs():
            run_dir = self.store.abs(run["dir"])
            best, latest = is_model_dir(run_dir / "best"), is_model_dir(run_dir / "latest")
            if best or latest:
                choices.append((run["name"], f"run:{run['id']}"))
            if best and latest:
                step = json.loads((run_dir / "latest" / "info.json").read_text()).get("step", "?")
                choices.append((f"{run['name']} · last checkpoint (step {step})", f"run:{run['id']}/latest"))
        return choices

    def load(self, ref: str) -> tuple[Any, Any, dict]:
        """(model, tokenizer, info) for a ref on the best device, cached (the 4 most recently used stay loaded)."""
        from llm.checkpoint import load_model
        from llm.device import pick_device

        path = self.model_dir(ref)
        stamp = (path, (path / "info.json").stat().st_mtime if (path / "info.json").exists() else 0)
        with self._model_lock:
            if stamp in self._models:
                self._models.move_to_end(stamp)
                return self._models[stamp]
            loaded = load_model(path, pick_device("auto"))
            self._models[stamp] = loaded
            while len(self._models) > 4:
                self._models.popitem(last=False)
            return loaded

    def forget(self, path: Path) -> None:
        with self._model_lock:
            for stamp in [s for s in self._models if s[0].is_relative_to(path)]:
                del self._models[stamp]

    def create_run(self, base_ref: str, dataset_id: str, settings: dict[str, Any], name: str = "") -> str:
        """Record a queued run with its own folder (the job runner starts it). settings: FinetuneConfig
        fields; the dataset's chosen format and columns go with them. ValueError if a choice is gone."""
        base_dir, data_path = self.model_dir(base_ref), self.dataset_path(dataset_id)
        dataset = self.store.dataset(dataset_id)
        name = name.strip()[:80] or f"{Path(dataset['name']).stem}-{settings['method']}-{len(self.store.runs()) + 1}"
        config = {
            **settings,
            "base_path": str(base_dir),
            "data_path": str(data_path),
            "format": dataset["format"],
            "mapping": dataset["mapping"],
        }
        run_dir = self.workspace / "runs" / new_id()
        run_dir.mkdir(parents=True)
        return self.store.add_run(name, base_ref, dataset_id, settings["method"], config, run_dir)

    def delete_run(self, run_id: str) -> None:
        run = self.store.run(run_id)
        assert run is not None
        run_dir = self.store.abs(run["dir"])
        self.forget(run_dir)
        self.store.delete_run(run_id)
        shutil.rmtree(run_dir, ignore_errors=True)
