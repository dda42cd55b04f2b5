"""Fine-tuning jobs: the CLI run as a child process, one at a time, watched through its run folder.

A run is `python -m llm <command> --config <run>/<command>.json --out <run>` (command: finetune, ...): the
studio writes the run's config as a file and the CLI reads it, so every setting travels as data. stdout and stderr go to the
run's log file (a file, not a pipe: nobody has to drain it, and it outlives the studio). The child starts in
its own session, so closing the browser, reloading the page or even stopping the studio never stops it; the
studio re-attaches through the process id in SQLite and the run folder (llm.run.RunDir). Stop sends SIGTERM,
which the trainer answers with a last checkpoint.

Only one run holds the device at a time: a second one is queued and starts when the first ends. A watcher
thread moves the queue along and notices runs that ended; a run whose process vanished without a final
event (the machine or the process was killed) is marked interrupted and can be resumed from its last
checkpoint.
"""

from __future__ import annotations

import html
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.run import FINISHED, Metrics, RunDir, read_metrics
from studio.store import ACTIVE_STATES, LAUNCHED_STATES, WORKING_STATES, Store

REPO = Path(__file__).resolve().parent.parent

# The child trains with all cores but one, so the studio keeps a core for generation and the page.
CHILD_THREADS = max(1, (os.cpu_count() or 2) - 1)
# A child (a run's trainer, an import) runs below the studio's CPU priority (nice 10): where the cores are few,
# the pages a user clicks through (the studio's answers, the browser drawing them) come first, and the child
# takes every cycle they leave. See at_low_priority and lower_session_priority.
CHILD_NICENESS = 10
LOG_TAIL_BYTES = 32_768  # enough for the last lines of a log, however long the run
MEMORY_HINT = "Try a smaller batch size, LoRA instead of full fine-tuning, or a lower LoRA rank."
# How the studio names a setting in messages (the form's labels); others are spelled from the field name.
FIELD_LABELS = {
    "lr": "Learning rate",
    "max_steps": "Max steps",
    "batch_size": "Batch size",
    "lora_rank": "LoRA rank",
    "probes": "Probe prompts",
    "val_fraction": "Held-out share",
    "base": "Base model",
    "data": "Dataset",
}


def field_label(field: str | None) -> str | None:
    return None if field is None else FIELD_LABELS.get(field, field.replace("_", " ").capitalize())


def command_line(command: str, run: RunDir, resume: bool) -> list[str]:
    """The CLI command line of a run: its settings are in its <command>.json; a resumed run has its own."""
    cmd = [sys.executable, "-m", "llm", command, "--out", str(run.path)]
    return cmd + (["--resume"] if resume else ["--config", str(run.settings(command))])


def at_low_priority(cmd: list[str]) -> list[str]:
    """cmd run at CHILD_NICENESS where the system has `nice` (every POSIX system), else as it is. `nice` itself
    execs the trainer, so the priority holds from its first instruction, for every thread it starts."""
    nice = shutil.which("nice")
    return [nice, "-n", str(CHILD_NICENESS), *cmd] if nice else cmd


def lower_session_priority(pid: int) -> None:
    """Linux with autogroup scheduling (the default of most distributions) shares the CPU fairly between sessions
    first, and a thread's niceness counts only within its session: the trainer, which has a session of its own,
    would take a full share whatever its niceness. Lower its session's too, where the kernel has autogroups."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(CHILD_NICENESS))
    except OSError:  # a kernel without autogroups, a child already ended: the run goes on at its own niceness
        pass


def job_gpu() -> str:
    """The one GPU a run trains on, as CUDA_VISIBLE_DEVICES names it: the first this studio may use."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()


def child_env() -> dict[str, str]:
    """The trainer's environment: its threads, and one GPU, the first the studio may use (a trainer that sees
    every GPU of the machine would open a context on each)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(CHILD_THREADS), MKL_NUM_THREADS=str(CHILD_THREADS), PYTHONUNBUFFERED="1")
    env["CUDA_VISIBLE_DEVICES"] = job_gpu()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def empty_answers_warning(run: RunDir) -> str:
    """A warning when most of a finished fine-tune's answers to its own training prompts are empty."""
    answers = [e for e in run.read_metrics().events if e["event"] == "answers"]
    if not answers or answers[-1]["empty"] <= answers[-1]["rows"] / 2:
        return ""
    last = answers[-1]
    return (
        f" ⚠ {last['empty']} of {last['rows']} answers to training prompts are empty: the model learnt to stop "
        "at once. Check in the Data tab that the answers fit the context."
    )


def log_tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def explain(error: dict[str, Any] | None, returncode: int | None = None) -> str:
    """A failed attempt in words, with what to try: from the error record the CLI wrote into the metrics
    file (its kind and field, never its wording), or from how the process ended."""
    if error is None:
        if returncode in (-9, 137):
            return f"The trainer was killed by the system, most often because memory ran out. {MEMORY_HINT}"
        return f"The trainer ended with exit code {returncode} and no message. The log below has the details."
    message = error.get("message", "").strip()
    field = error.get("field")
    if field:
        message = f"{field_label(field)} {message}"
    if message and message[-1] not in ".!?)":
        message += "."
    kind = error.get("kind")
    if kind == "memory":
        return f"The run ran out of memory: {message} {MEMORY_HINT}"
    if kind == "diverged":
        return f"The training diverged: {message} Try half the learning rate."
    if kind in ("data", "columns"):
        return f"The dataset has a problem: {message} Fix the file and check it in the Data tab."
    if kind == "internal":
        return f"The trainer crashed: {message} The log below has the details."
    return f"The run failed: {message}"


def wall_time(run: dict[str, Any]) -> float:
    """Seconds a run has taken across its attempts, by the studio's clock: its earlier attempts' (added up when
    it is queued again) plus its latest attempt's, up to now while it works, else up to when it ended. (Not
    the checkpoint's own count, which leaves out each attempt's start-up: the figure would step back.)"""
    attempt = run.get("attempt_started")
    if attempt is None:  # queued (again): its attempts so far are added up in elapsed_before
        return run.get("elapsed_before") or 0.0
    end = time.time() if run["status"] in WORKING_STATES else run["finished"]
    return (run.get("elapsed_before") or 0.0) + max(0.0, (end or attempt) - attempt)


def trained_seconds(metrics: Metrics, working: bool) -> float:
    """Seconds the trainer has trained (its clock, earlier attempts included): its last log line's, and while it
    works the time since that line was written."""
    if not metrics.train:
        return 0.0
    last = metrics.train[-1]
    return last["elapsed"] + (max(0.0, time.time() - last.get("time", time.time())) if working else 0.0)


def process_alive(pid: int, marker: str) -> bool:
    """Is pid a live (not zombie) process whose command line contains marker (guards against pid reuse)?"""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0]
        return state not in ("Z", "X") and marker in cmdline
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Jobs:
    def __init__(self, store: Store, on_launch: Callable[[], None] | None = None):
        """on_launch: called when a run's trainer has started (the studio then lets its GPU models go)."""
        self.store, self.on_launch = store, on_launch
        self.children: dict[int, subprocess.Popen] = {}  # processes this studio started, to reap them
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.lock_metrics = threading.Lock()
        self._metrics: dict[tuple[str, int, int], Metrics] = {}  # by (file, mtime, size); one version a file

    def run_dir(self, run: dict[str, Any]) -> RunDir:
        return RunDir(self.store.abs(run["dir"]))

    def file_times(self, run: dict[str, Any]) -> tuple[int, ...]:
        """The run's metrics and log files' (modification time, size): unchanged means nothing new to show."""
        run_dir = self.run_dir(run)
        stats = [path.stat() if path.exists() else None for path in (run_dir.metrics, run_dir.log)]
        return tuple(x for st in stats for x in ((st.st_mtime_ns, st.st_size) if st else (0, 0)))

    def metrics(self, run: dict[str, Any]) -> Metrics:
        """The run's metrics, read again only when the file changed (many pages ask every second)."""
        path = self.run_dir(run).metrics
        st = path.stat() if path.exists() else None
        key = (str(path), st.st_mtime_ns if st else 0, st.st_size if st else 0)
        with self.lock_metrics:
            if key in self._metrics:
                return self._metrics[key]
        metrics = read_metrics(path)
        with self.lock_metrics:
            self._metrics = {k: v for k, v in self._metrics.items() if k[0] != key[0]}
            self._metrics[key] = metrics
        return metrics

    def submit(self, run_id: str) -> str:
        """Start a queued run now if the device is free; say what happened."""
        self.tick()
        run = self.store.run(run_id)
        assert run is not None, run_id
        if run["status"] == "queued":
            ahead = [
                r for r in self.store.runs(ACTIVE_STATES, None) if r["id"] != run_id and r["queued"] < run["queued"]
            ]
            busy = [r["name"] for r in ahead if r["status"] != "queued"]
            return (
                f"Queued: another run ({html.escape(', '.join(busy)) or 'an earlier one'}) is using the device; "
                f"this one starts when it ends ({len(ahead)} ahead)."
            )
        return f"Started {html.escape(run['name'])}." if run["status"] in ACTIVE_STATES else run["message"]

    def tick(self) -> None:
        """Notice runs that ended, then start the next queued run if the device is free."""
        with self.lock:
            for run in self.store.runs(LAUNCHED_STATES, None):
                self._reconcile(run)
            while (run := self.store.claim_next_run()) is not None:
                if self._launch(run):
                    break

    def _launch(self, run: dict[str, Any]) -> bool:
        """Start the child for a claimed run; False (run marked failed) if it could not even start."""
        run_dir = self.run_dir(run)
        resume = bool(run["config"].get("resume")) and run_dir.resumable()
        cmd = at_low_priority(command_line(run["command"], run_dir, resume))
        run_dir.command.write_text(json.dumps(cmd, indent=1) + "\n")
        try:
            with open(run_dir.log, "ab") as log:
                log.write(f"$ {shlex.join(cmd)}\n".encode())
                log.flush()
                child = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=REPO,
                    env=child_env(),
                    start_new_session=True,  # its own process group: survives the studio and Ctrl-C in its terminal
                )
        except OSError as e:
            self.store.update_run(run["id"], status="failed", message=f"could not start the trainer: {e}")
            return False
        self.children[child.pid] = child
        lower_session_priority(child.pid)
        if self.on_launch is not None:
            self.on_launch()
        self.store.update_run(run["id"], status="running", pid=child.pid, attempt_started=time.time(), message="")
        return True

    def training(self) -> bool:
        """Whether a run's trainer is working now (it holds the device)."""
        return bool(self.store.runs(WORKING_STATES))

    def _alive(self, run: dict[str, Any]) -> tuple[bool, int | None]:
        """(is the run's process alive, its exit code when this studio started it and it has exited)."""
        pid = run["pid"]
        if pid is None:
            return False, None
        child = self.children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return True, None
            del self.children[pid]
            return False, code
        return process_alive(pid, str(self.run_dir(run).path)), None

    def _reconcile(self, run: dict[str, Any]) -> None:
        if run["status"] == "starting":
            launched = run["attempt_started"] or run["started"] or 0
            if run["pid"] is None and time.time() - launched > 60:  # a studio died while launching it
                self.store.update_run(run["id"], status="queued")
            return
        alive, code = self._alive(run)
        if alive:
            return
        run_dir = self.run_dir(run)
        final = run_dir.read_metrics().final
        if final is not None and final["event"] in FINISHED:
            status, message = "done", "Finished." + empty_answers_warning(run_dir)
        elif final is not None and final["event"] == "stopped":
            status, message = "stopped", "Stopped; the last checkpoint was saved and can be resumed."
        elif final is not None:
            status, message = "failed", explain(final, code)
        elif run["status"] == "stopping":  # stopped while starting up, before the trainer took over SIGTERM
            status = "stopped"
            message = "Stopped before training began." + (
                " Resume continues from its last checkpoint." if run_dir.resumable() else ""
            )
        elif code not in (None, 0):
            status, message = "failed", explain(None, code)
        else:
            status = "interrupted"
            message = "The trainer ended without a last record: it was killed, or the machine went down."
            if run_dir.resumable():
                message += " Its last checkpoint is kept: Resume continues from it."
        self.store.update_run(run["id"], status=status, message=message, finished=time.time())

    def stop(self, run_id: str) -> str:
        """SIGTERM the run (the trainer checkpoints and exits); a queued run is just taken off the queue."""
        with self.lock:
            run = self.store.run(run_id)
            if run is None:
                return "No such run."
            name = html.escape(run["name"])
            if run["status"] == "queued":
                # Never started (or queued again after a stop): a resumable run keeps its checkpoint.
                resumable = run["config"].get("resume") and self.run_dir(run).resumable()
                status = "stopped" if resumable else "cancelled"
                message = (
                    "Taken off the queue; Resume continues from its last checkpoint."
                    if resumable
                    else ("Cancelled while queued: it never started. Start again queues it from the beginning.")
                )
                self.store.update_run(run_id, status=status, message=message, finished=time.time())
                return f"{name} was taken off the queue."
            if run["status"] not in WORKING_STATES or not self._alive(run)[0]:
                return f"{name} is not running."
            try:
                os.kill(run["pid"], signal.SIGTERM)
            except ProcessLookupError:
                return f"{name} had already ended."
            self.store.update_run(run_id, status="stopping", message="Stopping: writing a last checkpoint...")
            return f"Stopping {name}: it writes a last checkpoint, then ends."

    def resume(self, run_id: str) -> str:
        """Queue an ended run again: from its last checkpoint when there is one, else from the start."""
        run = self.store.run(run_id)
        if run is None:
            return "No such run."
        if run["status"] in ACTIVE_STATES:
            return f"{html.escape(run['name'])} is already {run['status']}."
        if run["status"] == "done":
            return f"{html.escape(run['name'])} has finished; start a new run to train more."
        # A cancelled run never trained: it starts again from the beginning. A resumed one keeps its clock: the
        # attempts so far are added up now, and the next attempt counts from its own start.
        again = run["status"] != "cancelled"
        self.store.update_run(
            run_id,
            config={**run["config"], "resume": again},
            status="queued",
            message="",
            pid=None,
            queued=time.time(),
            elapsed_before=wall_time(run) if again else 0.0,
            attempt_started=None,
            finished=None,
        )
        return self.submit(run_id)

    def watch(self, interval: float = 2.0) -> None:
        """Call tick() every interval seconds on a daemon thread, until close()."""

        def loop() -> None:
            while not self.closed.wait(interval):
                try:
                    self.tick()
                except Exception as e:  # keep watching: a transient error (disk, lock) must not end the queue
                    print(f"studio: job watcher: {e}", file=sys.stderr)

        threading.Thread(target=loop, name="studio-jobs", daemon=True).start()

    def close(self) -> None:
        """Stop watching (running trainers go on: they belong to no studio)."""
        self.closed.set()

    def progress(self, run_id: str) -> dict[str, Any]:
        """Everything the Fine-tune and Pretrain tabs show about a run, read from SQLite and the run's files.
        A run by the clock (a time budget and no step budget) shows the share of its time trained; a run
        that finished shows 100%."""
        run = self.store.run(run_id)
        assert run is not None, run_id
        run_dir = self.run_dir(run)
        metrics = self.metrics(run)
        start = metrics.start
        max_steps = start.get("max_steps", run["config"].get("max_steps")) or 0
        max_time = (start.get("max_time", run["config"].get("max_time")) or 0.0) if not max_steps else 0.0
        step, working = metrics.step, run["status"] in WORKING_STATES
        trained = trained_seconds(metrics, working)
        if run["status"] == "done":
            fraction = 1.0
        elif max_time:
            fraction = min(1.0, trained / max_time)
        else:
            fraction = min(1.0, step / max_steps) if max_steps else 0.0
        remaining = None
        if working and max_time:
            remaining = max(0.0, max_time - trained)
        elif working and step and max_steps and metrics.train:
            remaining = metrics.train[-1]["elapsed"] / step * max(0, max_steps - step)
        return {
            "run": run,
            "status": run["status"],
            "message": run["message"],
            "step": step,
            "max_steps": max_steps,
            "max_time": max_time,  # a run by the clock; 0 for a run with a step budget
            "trained": trained,
            "fraction": fraction,
            "elapsed": wall_time(run),
            "remaining": remaining,
            "metrics": metrics,
            "log": log_tail(run_dir.log, 12),
        }
