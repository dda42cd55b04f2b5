"""Running `python -m llm ...` as a child process, the way users and the studio run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llm.data.corpus import WindowBatches
from llm.run import read_records

REPO = Path(__file__).resolve().parent.parent
# One thread a process: the runs are tiny, and every run of a comparison must do its arithmetic the same way.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def llm_args(*args: object) -> list[str]:
    return [sys.executable, "-m", "llm", *map(str, args)]


def run_llm(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(llm_args(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def start_llm(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        llm_args(*args), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def read_metrics(path: Path) -> list[dict]:
    """Every whole record of a metrics file, in order (the library's own reader)."""
    return read_records(path)


def wait_for(path: Path, proc: subprocess.Popen, ready, timeout: float = 120) -> list[dict]:
    """Poll the metrics file until ready(records) holds; fail if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = read_metrics(path)
        if ready(records):
            return records
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) first: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting on {path}")


def train_steps(records: list[dict]) -> list[int]:
    return [r["step"] for r in records if "train_loss" in r and "event" not in r]


def loss_curve(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r and "event" not in r}


def sigterm_at_step(monkeypatch, step: int) -> None:
    """SIGTERM to this process when the pretraining batches of `step` are drawn, as the studio's Stop button
    sends it: the run finishes that step, checkpoints and stops. monkeypatch.undo() (or the test's end) ends it."""
    original = WindowBatches.train_batch

    def signalling(self, at, micro):
        if at == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, at, micro)

    monkeypatch.setattr(WindowBatches, "train_batch", signalling)
