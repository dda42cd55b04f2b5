"""The task suite: held-out exact match and F1 of a base model and of its default fine-tune, per task family.

    python datasets/tasks/make_tasks.py                      # the seven families (seeded)
    python benchmarks/task_suite.py [--base models/base] [--families plural extract] [--early-stop-metric exact]
                                    [--json F]

For each family (datasets/tasks/<family>.jsonl): the held-out rows are the split a fine-tune keeps aside
(llm.data.tasks.split_examples, FinetuneConfig's defaults); the base model answers them greedily, then a fine-tune
with every setting at its default (llm.config.FinetuneConfig: LoRA) trains on the rest, and answers them
again. Families named in make_tasks.HELD_OUT_FAMILIES are kept out of every tuning decision: the table
reports them apart, as the honest figure. Runs go to a temporary folder; nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: make `llm` importable
sys.path.insert(0, str(REPO / "datasets" / "tasks"))

import torch  # noqa: E402
from make_tasks import FAMILIES, HELD_OUT_FAMILIES  # noqa: E402

from benchmarks.common import machine_info, print_machine, print_table, write_json  # noqa: E402
from llm.config import DEFAULT_BASE_MODEL, EARLY_STOP_METRICS, FinetuneConfig  # noqa: E402
from llm.data import tasks  # noqa: E402
from llm.device import pick_device  # noqa: E402
from llm.eval import tasks as task_eval  # noqa: E402
from llm.train import finetune  # noqa: E402

TASKS_DIR = REPO / "datasets" / "tasks"
MAX_NEW_TOKENS = 24  # the longest reference answer is a few words


def held_out_scores(model_dir: Path, held_out: tasks.TaskData) -> dict[str, float]:
    table = task_eval.evaluate_models([model_dir], held_out, max_new_tokens=MAX_NEW_TOKENS)
    totals = task_eval.totals(table).iloc[0]
    return {"exact_match": float(totals["exact_match"]), "f1": float(totals["f1"])}


def measure_family(family: str, base: Path, runs: Path, early_stop_metric: str) -> dict:
    path = TASKS_DIR / f"{family}.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run python datasets/tasks/make_tasks.py first")
    data = tasks.read_task_file(path)
    _, held_out = tasks.split_examples(data)
    before = held_out_scores(base, held_out)
    start = time.time()
    cfg = FinetuneConfig(base=str(base), data=str(path), early_stop_metric=early_stop_metric)
    result = finetune.finetune(cfg, runs / family)
    seconds = time.time() - start
    after = held_out_scores(runs / family, held_out)
    return {
        "family": family,
        "held_out_tuning": family in HELD_OUT_FAMILIES,
        "held_out_rows": len(held_out.examples),
        "base": before,
        "tuned": after,
        "steps": result.step,
        "reason": result.reason,
        "finetune_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(DEFAULT_BASE_MODEL), help="the base model (default: shipped)")
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--early-stop-metric",
        choices=EARLY_STOP_METRICS,
        default=FinetuneConfig().early_stop_metric,
        help="the one setting the suite varies (default: the library's)",
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(pick_device("auto"))
    print_machine(info)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            results.append(measure_family(family, Path(args.base), Path(tmp), args.early_stop_metric))
            r = results[-1]
            print(f"{family}: exact {r['base']['exact_match']:.0%} -> {r['tuned']['exact_match']:.0%} "
                  f"in {r['finetune_seconds']:.0f} s", flush=True)  # fmt: skip
    rows = [
        [
            r["family"] + (" (held out)" if r["held_out_tuning"] else ""),
            r["held_out_rows"],
            f"{r['base']['exact_match']:.0%} / {r['base']['f1']:.2f}",
            f"{r['tuned']['exact_match']:.0%} / {r['tuned']['f1']:.2f}",
            f"{r['finetune_seconds']:.0f} s ({r['steps']} steps, {r['reason']})",
        ]
        for r in results
    ]
    print_table(["family", "rows", "base exact / F1", "fine-tuned exact / F1", "fine-tune time"], rows)
    tuned = [r["tuned"]["exact_match"] for r in results if not r["held_out_tuning"]]
    honest = [r["tuned"]["exact_match"] for r in results if r["held_out_tuning"]]
    if tuned:
        print(f"median held-out exact match, families used for tuning decisions: {statistics.median(tuned):.0%}")
    if honest:
        print(f"held-out exact match, families kept out of tuning: {', '.join(f'{x:.0%}' for x in honest)}")
    report = {"machine": info, "base": args.base, "early_stop_metric": args.early_stop_metric, "results": results}
    write_json(args.json, report)


if __name__ == "__main__":
    main()
