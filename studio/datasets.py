"""The studio's one dataset cache: a task file as llm.data.tasks reads it, and its encoding for a base model,
each kept once per version of the file, its format and columns (and, encoded, the base model and the overflow
rule). Data (the preview, page by page), Fine-tune (the plan, redrawn at every change of a setting: the split,
the method and the schedule only select from the encoding) and Compare (batch scoring) share it, so an
unchanged file is never read or encoded twice. A file that cannot be read is not kept: its error is raised
each time."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.config import FinetuneConfig
from llm.run import info_version


def file_version(path: str | Path) -> tuple:
    """A file's (modification time, size): unchanged means the same content."""
    stat = Path(path).stat() if Path(path).is_file() else None
    return (stat.st_mtime_ns, stat.st_size) if stat else ()


class TaskFiles:
    """Read task files and their encodings, the most recently used `size` of each kind."""

    def __init__(self, size: int = 4):
        self.size, self.lock = size, threading.Lock()
        self.reads: OrderedDict[tuple, Any] = OrderedDict()
        self.encodings: OrderedDict[tuple, Any] = OrderedDict()

    def _kept(self, table: OrderedDict, key: tuple, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in table:
                table.move_to_end(key)
                return table[key]
        value = make()  # outside the lock: a read of another file never waits for this one
        with self.lock:
            table[key] = value
            while len(table) > self.size:
                table.popitem(last=False)
        return value

    @staticmethod
    def reading(path: str | Path, fmt: str, mapping: dict[str, str] | None) -> tuple:
        """What a read depends on: the file, its version, the format and the columns chosen."""
        return str(path), file_version(path), fmt, json.dumps(mapping or {}, sort_keys=True)

    def read(self, path: str | Path, fmt: str = "auto", mapping: dict[str, str] | None = None, name: str | None = None):
        """llm.data.tasks.read_task_file(path, fmt, mapping), once per version (name: how errors call it)."""
        from llm.data import tasks

        return self._kept(
            self.reads,
            self.reading(path, fmt, mapping),
            lambda: tasks.read_task_file(path, fmt, mapping or None, name=name),
        )

    def encoded(self, cfg: FinetuneConfig, name: str | None = None) -> tuple[Any, Any]:
        """(cfg's data as read, every example of it encoded for cfg's base model with cfg.overflow): once per
        version of the file, its format and columns, the base model and the overflow rule."""
        from llm.train import finetune

        data = self.read(cfg.data, cfg.format, cfg.mapping, name)
        base = Path(cfg.base)
        key = (self.reading(cfg.data, cfg.format, cfg.mapping), str(base), info_version(base), cfg.overflow)
        return data, self._kept(self.encodings, key, lambda: finetune.encode_data(cfg, data))
