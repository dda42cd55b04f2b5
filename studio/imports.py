"""Models brought into the studio: a .gguf file or a zipped Hugging Face folder (uploaded, or a path on this
machine), or a hub id when the machine is online. `python -m llm import` does the work in a child process (its
memory goes back when it ends; the studio stays responsive) into <workspace>/models/<id>; once it has finished,
the model is a base model everywhere (Fine-tune, Compare, Chat, Votes, Inside, Benchmarks). One import at a time;
it goes on, and is registered, if the page that started it closes."""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llm.errors import LLMError
from llm.run import read_info
from studio.context import StudioError, human_size
from studio.jobs import REPO, at_low_priority, child_env
from studio.store import new_id

if TYPE_CHECKING:
    from llm.config import ModelConfig
    from studio.context import Studio

# Import time per GB of fp32 weights: SmolLM2-135M's Q4_1 GGUF (0.54 GB in fp32) imported in 15.5 s on the
# 2-core CPU (benchmarks/smollm2_finetune.py). Only for the estimate shown before an import starts.
SECONDS_PER_FP32_GB = 29.0
MODEL_SUFFIXES = (".gguf", ".zip")


@dataclass
class Import:
    """One import: where from, the name it gets, and how it went (running, done or failed)."""

    source: str
    name: str
    key: str
    estimate: float | None  # seconds, None when the size is not known before (a hub id)
    started: float = field(default_factory=time.time)
    state: str = "running"
    message: str = ""

    def line(self) -> str:
        """One line of Markdown on how it goes."""
        name = html.escape(self.name)
        if self.state == "done":
            return f"✓ Imported **{name}**: {html.escape(self.message)}. It is a base model in every tab now."
        if self.state == "failed":
            return f"⚠ {html.escape(self.message)}"
        elapsed = time.time() - self.started
        of = f" of about {self.estimate:.0f} s" if self.estimate else ""
        return f"⏳ Importing **{name}**… {elapsed:.0f} s{of}."


def needs_text(source: str) -> str:
    """What importing source will take (its parameters, memory and disk, and roughly how long), from its header
    alone; or what is wrong with it."""
    from llm.model.sources import import_needs, source_config

    try:
        cfg = source_config(source)
    except LLMError as e:
        return f"⚠ {html.escape(str(e))}"
    if cfg is None:
        return "A hub id: it is downloaded first (this machine must be online); its size is known after."
    needs = import_needs(cfg)
    size = human_size(needs["fp32_bytes"])
    return (
        f"{needs['params'] / 1e6:,.1f}M parameters, {cfg.n_layer} layers, context {cfg.context_length:,}: about "
        f"{size} of memory to use it and {size} on disk; the import takes about {import_seconds(cfg):.0f} s on a "
        "2-core CPU."
    )


def import_seconds(cfg: ModelConfig) -> float:
    """Roughly how long importing a model of this shape takes (SECONDS_PER_FP32_GB), a second at least."""
    from llm.model.sources import import_needs

    return max(1.0, import_needs(cfg)["fp32_bytes"] / 1e9 * SECONDS_PER_FP32_GB)


class Imports:
    """The studio's imports: at most one running, each a `python -m llm import` child process whose result a
    watcher thread registers as a base model."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.lock = threading.Lock()
        self.current: Import | None = None

    def start(self, source: str, name: str = "") -> Import:
        """Start importing source (a path or hub id) as a base model called name (default: from the source).
        StudioError when another import is running, or the name is taken."""
        from llm.model.sources import source_config

        source = source.strip()
        if not source:
            raise StudioError("Give a model: upload a .gguf or zipped folder, or type a path or hub id.")
        with self.lock:
            if self.current is not None and self.current.state == "running":
                raise StudioError(f"{self.current.name} is being imported: wait until it has finished.")
            try:
                cfg = source_config(source)
            except LLMError as e:
                raise StudioError(str(e)) from None
            name = self.studio.check_name(name.strip() or default_name(source), None)
            job = Import(source, name, new_id(), import_seconds(cfg) if cfg else None)
            self.current = job
        threading.Thread(target=self._run, args=(job,), daemon=True).start()
        return job

    def _run(self, job: Import) -> None:
        """Run the import; register the model when it has finished, or keep its error (the CLI's message)."""
        from llm.model.sources import imported_summary

        target = self.studio.workspace / "models" / job.key
        command = [sys.executable, "-m", "llm", "import", "--from", job.source, "--out", str(target)]
        result = subprocess.run(
            at_low_priority(command), cwd=REPO, env=child_env(), capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            self.studio.store.set_model(job.key, job.name, target)
            job.message, job.state = imported_summary(read_info(target)), "done"
            return
        shutil.rmtree(target, ignore_errors=True)  # the import writes whole or not at all; nothing to keep
        lines = [line.removeprefix("error: ") for line in result.stderr.strip().splitlines()]
        job.message = lines[-1] if lines else f"the import stopped (exit code {result.returncode})"
        job.state = "failed"


def default_name(source: str) -> str:
    """A base model's name from where it comes: the file or folder name, or the hub id's last part."""
    stem = Path(source.rstrip("/")).name
    for suffix in MODEL_SUFFIXES:
        stem = stem.removesuffix(suffix).removesuffix(suffix.upper())
    return stem[:80] or "imported model"
