"""Training throughput and MFU of the ~124M `gpt2` preset on a CUDA GPU, with and without torch.compile.

    python benchmarks/cuda_train.py [--steps 20] [--warmup 5] [--batch-size 16] [--vocab-size 50304] [--json F]

The real training step (bf16 autocast, causal_lm_loss, backward, gradient clipping, fused AdamW from
llm.train.trainer.make_optimizer) on random token batches; the warm-up steps, which include torch.compile's
compilation, are not timed. MFU is against llm.device.peak_flops (the data-sheet dense bf16 peak for known
GPUs); achieved FLOP/s is Transformer.flops_per_token() times tokens/s. Needs a CUDA GPU: on any other
machine it says so and exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `llm` importable

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    machine_info,
    print_machine,
    print_table,
    time_training_steps,
    write_json,
)
from llm.config import preset  # noqa: E402
from llm.device import autocast_dtype, peak_flops  # noqa: E402
from llm.model.transformer import Transformer  # noqa: E402


def measure(args: argparse.Namespace, device: torch.device, compile: bool, peak: float) -> dict:
    torch.manual_seed(0)
    model = Transformer(preset("gpt2", vocab_size=args.vocab_size, context_length=args.context_length))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    timing = time_training_steps(model, device, args.batch_size, args.steps, args.warmup, compile)
    flops = model.flops_per_token()
    return {
        "compile": compile,
        "params": model.num_params(),
        "non_embedding_params": model.num_params(non_embedding=True),
        "flops_per_token": flops,
        **timing,
        "achieved_flops": flops * timing["tokens_per_s"],
        "mfu": flops * timing["tokens_per_s"] / peak,
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=50304, help="50304 (GPT-2's, padded) or e.g. 32768")
    parser.add_argument("--context-length", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser.parse_args()


def run(args: argparse.Namespace, device: torch.device) -> None:
    info = machine_info(device)
    print_machine(info)
    peak = peak_flops(device)
    print(f"autocast: {autocast_dtype(device)}; peak for MFU: {peak / 1e12:.0f} TFLOP/s (llm.device.peak_flops)")
    results = []
    for mode in args.modes:
        print(f"measuring {mode} ...", flush=True)
        results.append(measure(args, device, mode == "compile", peak))

    r0 = results[0]
    print(
        f"gpt2 preset: {r0['params'] / 1e6:.1f}M params ({r0['non_embedding_params'] / 1e6:.1f}M without the "
        f"embedding), vocab {args.vocab_size}, context {args.context_length}, batch {args.batch_size}; "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    print_table(
        ["mode", "warm-up s", "s/step", "tokens/s", "TFLOP/s", "MFU", "max mem GiB", "loss"],
        [
            [
                "compile" if r["compile"] else "eager",
                f"{r['warmup_seconds']:.1f}",
                f"{r['seconds_per_step']:.4f}",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['achieved_flops'] / 1e12:.1f}",
                f"{r['mfu']:.1%}",
                f"{r['max_memory_gib']:.1f}",
                f"{r['last_loss']:.2f}",
            ]
            for r in results
        ],
    )
    if len(results) == 2:
        print(f"torch.compile speed-up: {results[1]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")
    write_json(
        args.json,
        {
            "benchmark": "cuda_train",
            **info,
            "gpu": torch.cuda.get_device_name(device),
            "peak_flops": peak,
            "vocab_size": args.vocab_size,
            "context_length": args.context_length,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "results": results,
        },
    )


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            f"cuda_train.py measures training on a CUDA GPU, and this machine has none "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
            "For this machine's figures run benchmarks/train_throughput.py."
        )
    run(args, torch.device("cuda"))


if __name__ == "__main__":
    main()
