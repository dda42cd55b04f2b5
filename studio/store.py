"""What the studio knows about datasets, base models, runs and votes: one SQLite file in the workspace.

The files themselves (uploaded datasets, run folders with checkpoints and metrics) live in the workspace
too; the database indexes them, so a restarted studio shows everything made before. Every write opens its
own short connection (Gradio runs handlers on many threads, and two studios may share one workspace), in
WAL mode so readers never wait for the writer. Reads go through one connection per thread, kept open: opening
a connection (and reading the schema) costs twenty times a query, and a page's opening asks dozens.

Paths inside the workspace are stored relative to it, so a workspace folder can be moved as a whole.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,                 -- 'sample' (shipped) or 'upload'
    format TEXT NOT NULL DEFAULT 'auto',  -- the format the user chose ('auto': detect)
    mapping TEXT NOT NULL DEFAULT '{}',   -- pairs column mapping, JSON
    rows INTEGER,                         -- examples kept at the last validation
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (      -- base models; fine-tuned models are the runs
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    base_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    method TEXT NOT NULL,
    config TEXT NOT NULL,                 -- the run's settings (its command's config), JSON
    dir TEXT NOT NULL,                    -- run folder: latest/, best/, metrics.jsonl, train.log
    status TEXT NOT NULL,                 -- see RUN_STATES
    pid INTEGER,
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    queued REAL NOT NULL,                 -- when it last joined the queue (the queue's order)
    started REAL,                         -- when its first attempt started (kept across Stop/Resume)
    finished REAL,
    command TEXT NOT NULL DEFAULT 'finetune', -- the `python -m llm` command that trains it
    attempt_started REAL,                 -- when its latest attempt started
    elapsed_before REAL NOT NULL DEFAULT 0    -- seconds trained by its earlier attempts (checkpoint wall_seconds)
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    prompt TEXT NOT NULL,
    models TEXT NOT NULL,                 -- JSON list of model refs, in column order
    answers TEXT NOT NULL,                -- JSON list of answers, same order
    settings TEXT NOT NULL,               -- JSON sampling settings (seed included)
    winner TEXT NOT NULL,                 -- the preferred model ref, or 'tie'
    comparison TEXT                       -- the comparison voted on: one vote each, a new vote replaces it
);
CREATE TABLE IF NOT EXISTS presets (     -- saved Fine-tune form settings, by name
    name TEXT PRIMARY KEY COLLATE NOCASE,
    settings TEXT NOT NULL,               -- FinetuneConfig fields, JSON
    created REAL NOT NULL
);
"""

# queued -> starting -> running -> (stopping ->) done | stopped | failed; interrupted: the process vanished
# without a final event (the machine or the process was killed); it can be resumed from its last checkpoint.
# queued -> cancelled: taken off the queue before it started (nothing to resume; it can be started again).
LAUNCHED_STATES = ("starting", "running", "stopping")  # a process exists, or is being started
WORKING_STATES = ("running", "stopping")  # the trainer is working
ACTIVE_STATES = ("queued", *LAUNCHED_STATES)
RESUMABLE_STATES = ("stopped", "interrupted", "failed")
FINAL_STATES = ("done", "cancelled", *RESUMABLE_STATES)
RUN_STATES = ACTIVE_STATES + FINAL_STATES
# The commands whose runs make a model; a "bench" run (studio/tabs/bench.py) scores models, and shares the queue.
MODEL_COMMANDS = ("pretrain", "finetune", "prefer")


def new_id() -> str:
    """Sortable by creation time and unique across threads and processes."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Store:
    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace).resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.path = self.workspace / "studio.db"
        self.readers = threading.local()  # each thread's connection for reads (see _rows)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._migrate(db)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring a workspace made by an earlier studio up to this schema."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        for column, kind in (
            ("command", "TEXT NOT NULL DEFAULT 'finetune'"),
            ("attempt_started", "REAL"),
            ("elapsed_before", "REAL NOT NULL DEFAULT 0"),
        ):
            if column not in columns:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        # Runs that ended before attempts were timed: their one attempt is the span since they started.
        db.execute("UPDATE runs SET attempt_started = started WHERE attempt_started IS NULL AND started IS NOT NULL "
                   f"AND elapsed_before = 0 AND status IN ({','.join(repr(s) for s in FINAL_STATES)})")  # fmt: skip
        if "comparison" not in {row[1] for row in db.execute("PRAGMA table_info(votes)")}:
            db.execute("ALTER TABLE votes ADD COLUMN comparison TEXT")
        db.execute("CREATE UNIQUE INDEX IF NOT EXISTS votes_by_comparison ON votes(comparison)")

    @contextmanager
    def connect(self):
        """A connection in autocommit mode; `with db:` blocks inside are transactions."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    # Paths: relative inside the workspace, absolute outside it.
    def rel(self, path: str | Path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(self.workspace)) if path.is_relative_to(self.workspace) else str(path)

    def abs(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.workspace / path

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        """The rows a SELECT gives, read on this thread's kept connection. It only ever reads, in autocommit
        mode: each query is a transaction of its own, which sees every write committed before it and holds no
        lock once its rows are fetched."""
        assert sql.lstrip().upper().startswith("SELECT"), sql
        reader = getattr(self.readers, "db", None)
        if reader is None:
            reader = self.readers.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            reader.row_factory = sqlite3.Row
        return [dict(r) for r in reader.execute(sql, args).fetchall()]

    def _one(self, table: str, key: str) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT * FROM {table} WHERE id = ?", (key,))
        return rows[0] if rows else None

    # Datasets
    def add_dataset(
        self, name: str, path: Path, source: str, fmt: str = "auto", mapping=None, rows=None, key=None
    ) -> str:
        key = key or new_id()
        with self.connect() as db:
            db.execute(
                "INSERT INTO datasets (id, name, path, source, format, mapping, rows, created) VALUES (?,?,?,?,?,?,?,?)",
                (key, name, self.rel(path), source, fmt, json.dumps(mapping or {}), rows, time.time()),
            )
        return key

    def sync_samples(self, paths: list[Path]) -> None:
        """Offer every shipped sample file; forget samples that are gone."""
        wanted = {f"sample-{p.stem}": p for p in paths}
        with self.connect() as db, db:
            for key, path in wanted.items():
                db.execute(
                    "INSERT INTO datasets (id, name, path, source, created) VALUES (?,?,?,'sample',?) "
                    "ON CONFLICT(id) DO UPDATE SET path = excluded.path",
                    (key, path.name, self.rel(path), time.time()),
                )
            known = [r[0] for r in db.execute("SELECT id FROM datasets WHERE source = 'sample'")]
            for key in set(known) - set(wanted):
                db.execute("DELETE FROM datasets WHERE id = ?", (key,))

    def dataset(self, key: str) -> dict[str, Any] | None:
        row = self._one("datasets", key)
        if row:
            row["mapping"] = json.loads(row["mapping"])
        return row

    def datasets(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM datasets ORDER BY source DESC, created DESC")
        for row in rows:
            row["mapping"] = json.loads(row["mapping"])
        return rows

    def delete_dataset(self, key: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM datasets WHERE id = ?", (key,))

    def update_dataset(self, key: str, **fields: Any) -> None:
        if "mapping" in fields:
            fields["mapping"] = json.dumps(fields["mapping"] or {})
        self._update("datasets", key, fields)

    # Base models
    def set_model(self, key: str, name: str, path: Path) -> None:
        with self.connect() as db:
            db.execute(
                "INSERT INTO models (id, name, path, created) VALUES (?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET path = excluded.path",
                (key, name, self.rel(path), time.time()),
            )

    def delete_model(self, key: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM models WHERE id = ?", (key,))

    def update_model(self, key: str, **fields: Any) -> None:
        self._update("models", key, fields)

    def model(self, key: str) -> dict[str, Any] | None:
        return self._one("models", key)

    def models(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM models ORDER BY created")

    # Runs
    def add_run(
        self,
        name: str,
        base_id: str,
        dataset_id: str,
        method: str,
        config: dict,
        run_dir: Path,
        command: str = "finetune",
    ) -> str:
        key, now = run_dir.name, time.time()
        with self.connect() as db:
            db.execute(
                "INSERT INTO runs (id, name, base_id, dataset_id, method, config, dir, status, created, queued, "
                "command) VALUES (?,?,?,?,?,?,?,'queued',?,?,?)",
                (key, name, base_id, dataset_id, method, json.dumps(config), self.rel(run_dir), now, now, command),
            )
        return key

    def run(self, key: str) -> dict[str, Any] | None:
        row = self._one("runs", key)
        if row:
            row["config"] = json.loads(row["config"])
        return row

    def runs(
        self, states: tuple[str, ...] = RUN_STATES, commands: tuple[str, ...] | None = MODEL_COMMANDS
    ) -> list[dict[str, Any]]:
        """The runs in these states, newest first: those that make a model, or of these commands (None: every
        job on the device, benchmark runs too)."""
        marks = ",".join("?" * len(states))
        where = f"WHERE status IN ({marks})"
        if commands is not None:
            where += f" AND command IN ({','.join('?' * len(commands))})"
        return self._runs(where + " ORDER BY created DESC", (*states, *(commands or ())))

    def _runs(self, where: str, args: tuple) -> list[dict[str, Any]]:
        rows = self._rows(f"SELECT * FROM runs {where}", args)
        for row in rows:
            row["config"] = json.loads(row["config"])
        return rows

    def update_run(self, key: str, **fields: Any) -> None:
        if "status" in fields:
            assert fields["status"] in RUN_STATES, fields["status"]
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        self._update("runs", key, fields)

    def claim_next_run(self) -> dict[str, Any] | None:
        """Move the oldest queued run to 'starting' when no other run holds the device; None otherwise.

        One transaction (BEGIN IMMEDIATE takes the write lock first), so two threads or two studios on
        one workspace can never both start a run.
        """
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                busy = db.execute("SELECT 1 FROM runs WHERE status IN ('starting','running','stopping')").fetchone()
                row = (
                    None if busy else db.execute("SELECT * FROM runs WHERE status='queued' ORDER BY queued").fetchone()
                )
                if row is not None:
                    db.execute(  # `started` is the first attempt's: a resumed run keeps it
                        "UPDATE runs SET status='starting', started=COALESCE(started, ?), attempt_started=? WHERE id=?",
                        (now := time.time(), now, row["id"]),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if row is None:
            return None
        return self.run(row["id"])

    def built_on(self, key: str) -> list[dict[str, Any]]:
        """The runs whose base model is a checkpoint of run key (its best, or its latest): deleting key
        would take their base away."""
        prefix = f"run:{key}/"
        return self._runs(
            "WHERE base_id = ? OR substr(base_id, 1, ?) = ? ORDER BY created", (prefix[:-1], len(prefix), prefix)
        )

    def built_on_base(self, key: str) -> list[dict[str, Any]]:
        """The runs (of every command) whose base is the base model key."""
        return self._runs("WHERE base_id = ? ORDER BY created", (f"base:{key}",))

    def delete_run(self, key: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (key,))

    def names(self) -> list[tuple[str, str]]:
        """(ref, name) of every base model and run: names are unique across both."""
        rows = self._rows("SELECT 'base:' || id AS ref, name FROM models UNION ALL SELECT 'run:' || id, name FROM runs")
        return [(r["ref"], r["name"]) for r in rows]

    # Presets
    def save_preset(self, name: str, settings: dict[str, Any]) -> None:
        """Save settings under name (a preset of the same name, in any case, is replaced)."""
        with self.connect() as db, db:
            db.execute("DELETE FROM presets WHERE name = ?", (name,))
            db.execute(
                "INSERT INTO presets (name, settings, created) VALUES (?,?,?)",
                (name, json.dumps(settings), time.time()),
            )

    def presets(self) -> dict[str, dict[str, Any]]:
        """Every preset's settings by name, in name order."""
        rows = self._rows("SELECT name, settings FROM presets ORDER BY name COLLATE NOCASE")
        return {r["name"]: json.loads(r["settings"]) for r in rows}

    # Votes
    def add_vote(
        self, prompt: str, models: list[str], answers: list[str], settings: dict, winner: str, comparison: str
    ) -> None:
        """Record the vote on a comparison; voting again on the same comparison replaces its vote."""
        with self.connect() as db:
            db.execute(
                "INSERT INTO votes (created, prompt, models, answers, settings, winner, comparison) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(comparison) DO UPDATE SET winner = excluded.winner, "
                "created = excluded.created",
                (
                    time.time(),
                    prompt,
                    json.dumps(models),
                    json.dumps(answers),
                    json.dumps(settings),
                    winner,
                    comparison,
                ),
            )

    def votes(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM votes ORDER BY id")
        for row in rows:
            for key in ("models", "answers", "settings"):
                row[key] = json.loads(row[key])
        return rows

    def _update(self, table: str, key: str, fields: dict[str, Any]) -> None:
        if not fields:
            return
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self.connect() as db:
            db.execute(f"UPDATE {table} SET {columns} WHERE id = ?", (*fields.values(), key))
