"""Corpus preparation throughput and memory: `python -m llm prepare` on about 1 GB of generated text.

    python benchmarks/prepare_throughput.py [--size-mb 1000] [--workers 0] [--tmp-dir DIR] [--json F]

Steps: write --size-mb of English-like text into several files in a temporary folder, train a tokenizer on a
slice of it, run `python -m llm prepare` as a child process, and report its rate (MB/s) and memory. Memory is
taken two ways: getrusage(RUSAGE_CHILDREN).ru_maxrss, which is the largest single process only, and the sum
over the whole process tree (the prepare process and its workers), polled from /proc every 0.2 s: summed
RSS (counts pages shared between the forked workers once per process: an upper bound) and summed PSS
(shares those pages out: the memory really in use). The temporary folder is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: make `llm` importable

import torch  # noqa: E402

from benchmarks.common import machine_info, print_machine, print_table, write_json  # noqa: E402
from benchmarks.synthetic_text import write_corpus  # noqa: E402
from llm.data.corpus import TokenData  # noqa: E402
from llm.data.tokenizer import train_tokenizer  # noqa: E402

POLL_SECONDS = 0.2
TARGET_CORPUS_BYTES = 45e9  # the corpus size the rate is extrapolated to


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name (field 2) is in parentheses and may hold spaces: the parent id follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """root and all its descendants."""
    children, tree, todo = _children_by_parent(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _kib_field(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass  # the process ended while we looked
    return 0


def tree_memory(root: int) -> tuple[int, int, int]:
    """(summed RSS KiB, summed PSS KiB, process count) over root's process tree."""
    pids = process_tree(root)
    rss = sum(_kib_field(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(_kib_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return rss, pss, len(pids)


def run_prepare(command: list[str], log_path: Path) -> tuple[float, list[tuple[float, int, int, int]]]:
    """Run the prepare command, polling its process tree's memory; return wall seconds and the samples."""
    samples: list[tuple[float, int, int, int]] = []  # (seconds since start, RSS KiB, PSS KiB, processes)
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            rss, pss, n = tree_memory(proc.pid)
            if n:
                samples.append((time.perf_counter() - start, rss, pss, n))
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed with exit code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
    return seconds, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000, help="MB of text to generate and prepare")
    parser.add_argument("--files", type=int, default=8, help="the text is split into this many files")
    parser.add_argument("--workers", type=int, default=0, help="prepare's worker processes (0: all cores)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--tokenizer-mb", type=float, default=10, help="MB of the text the tokenizer learns on")
    parser.add_argument("--tmp-dir", help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.size_mb <= 0 or args.files <= 0:
        parser.error("--size-mb and --files must be positive")

    info = machine_info(torch.device("cpu"))
    print_machine(info)
    size = int(args.size_mb * 1e6)
    base = Path(args.tmp_dir or tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    if free < 2 * size:
        raise SystemExit(f"{base}: {free / 1e9:.1f} GB free, the benchmark needs about {2 * size / 1e9:.1f} GB")

    with tempfile.TemporaryDirectory(prefix="prepare-bench-", dir=base) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        files = write_corpus(tmp / "text", size, args.files)
        text_bytes = sum(p.stat().st_size for p in files)
        write_s = time.perf_counter() - t0
        print(f"generated {text_bytes / 1e6:,.0f} MB in {len(files)} files in {write_s:.1f} s")

        t0 = time.perf_counter()
        train_tokenizer(files[:1], tmp / "tok", args.vocab_size, max_chars=int(args.tokenizer_mb * 1e6))
        tokenizer_s = time.perf_counter() - t0
        print(f"tokenizer ({args.vocab_size} tokens) trained on {args.tokenizer_mb:g} MB in {tokenizer_s:.1f} s")

        command = [sys.executable, "-m", "llm", "prepare", "--input", str(tmp / "text"), "--tokenizer"]
        command += [str(tmp / "tok"), "--out", str(tmp / "data"), "--workers", str(args.workers), "--quiet"]
        print("running:", " ".join(command))
        wall_s, samples = run_prepare(command, tmp / "prepare.log")
        summary = (tmp / "prepare.log").read_text().strip().splitlines()
        max_child_rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        meta = TokenData.open(tmp / "data").meta
        data_bytes = sum(
            (tmp / "data" / s["file"]).stat().st_size for split in ("train", "val") for s in meta["shards"][split]
        )

    tokens = meta["tokens"]["train"] + meta["tokens"]["val"]
    rate = meta["bytes"] / meta["seconds"]  # prepare()'s own clock: reading, encoding and writing
    wall_rate = meta["bytes"] / wall_s  # the whole command, Python and torch start-up included
    assert samples, "the prepare process ended before its memory could be sampled"
    peak_rss = max(s[1] for s in samples)
    peak_pss = max(s[2] for s in samples)
    # Bounded memory: the tree's peak in the second half of the run is no higher than in the first.
    half = wall_s / 2
    first_half = max((s[2] for s in samples if s[0] <= half), default=0)
    second_half = max((s[2] for s in samples if s[0] > half), default=0)
    hours_45gb = TARGET_CORPUS_BYTES / rate / 3600
    tokens_45gb = TARGET_CORPUS_BYTES * tokens / meta["bytes"]

    print(summary[-1] if summary else "(prepare printed nothing)")
    workers = args.workers or os.cpu_count()
    print_table(
        ["what", "value"],
        [
            [
                "text prepared",
                f"{meta['bytes'] / 1e6:,.0f} MB, {tokens:,} tokens ({meta['bytes'] / tokens:.2f} B/token)",
            ],
            ["workers", workers],
            ["rate, prepare()'s clock", f"{rate / 1e6:.2f} MB/s ({meta['seconds']:.1f} s)"],
            ["rate, whole command", f"{wall_rate / 1e6:.2f} MB/s ({wall_s:.1f} s)"],
            ["peak RSS, largest child", f"{max_child_rss_kib / 1024:,.0f} MiB (getrusage RUSAGE_CHILDREN)"],
            ["peak RSS, process tree sum", f"{peak_rss / 1024:,.0f} MiB (polled every {POLL_SECONDS} s)"],
            ["peak PSS, process tree sum", f"{peak_pss / 1024:,.0f} MiB"],
            ["PSS peak, 1st / 2nd half", f"{first_half / 1024:,.0f} / {second_half / 1024:,.0f} MiB"],
            ["processes in the tree", max(s[3] for s in samples)],
            ["token shards on disk", f"{data_bytes / 1e6:,.0f} MB ({meta['dtype']})"],
        ],
    )
    print(
        f"45 GB corpus at this rate: {hours_45gb:.1f} hours with {workers} workers on this machine, about "
        f"{tokens_45gb / 1e9:.1f}B tokens ({tokens_45gb * data_bytes / tokens / 1e9:.0f} GB of shards) if its text "
        f"tokenizes like this one. Memory does not grow with the corpus: the tree's PSS peaked at "
        f"{first_half / 1024:,.0f} MiB in the first half of the run and {second_half / 1024:,.0f} MiB in the "
        f"second, as prepare keeps at most 2 x workers batches of ~1 MB in flight."
    )
    step = max(1, len(samples) // 200)  # a thinned timeline for the JSON
    write_json(
        args.json,
        {
            "benchmark": "prepare_throughput",
            **info,
            "size_mb": text_bytes / 1e6,
            "files": len(files),
            "workers": workers,
            "generate_seconds": write_s,
            "tokenizer_seconds": tokenizer_s,
            "tokenizer_mb": args.tokenizer_mb,
            "vocab_size": args.vocab_size,
            "bytes": meta["bytes"],
            "tokens": tokens,
            "prepare_seconds": meta["seconds"],
            "wall_seconds": wall_s,
            "mb_per_s": rate / 1e6,
            "wall_mb_per_s": wall_rate / 1e6,
            "max_child_rss_mib": max_child_rss_kib / 1024,
            "peak_tree_rss_mib": peak_rss / 1024,
            "peak_tree_pss_mib": peak_pss / 1024,
            "pss_peak_first_half_mib": first_half / 1024,
            "pss_peak_second_half_mib": second_half / 1024,
            "shard_bytes": data_bytes,
            "extrapolated_45gb_hours": hours_45gb,
            "extrapolated_45gb_tokens": tokens_45gb,
            "timeline": [
                {"t": round(t, 2), "rss_mib": round(r / 1024, 1), "pss_mib": round(p / 1024, 1), "procs": n}
                for t, r, p, n in samples[::step]
            ],
        },
    )


if __name__ == "__main__":
    main()
