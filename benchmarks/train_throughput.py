"""Training throughput and MFU on this device, for the `tiny` preset and a ~10M-parameter shape.

    python benchmarks/train_throughput.py [--steps 10] [--warmup 2] [--batch-size 16] [--compile]
                                          [--precisions fp32 bf16] [--json F]

The peak that MFU is taken against is measured in the same run (llm.device.measure_matmul_flops: fp32 on a
CPU, bf16 on a GPU), three times before and three times after each shape; the best of all those runs is the
peak. Achieved FLOP/s is Transformer.flops_per_token() (6N + 12LCT) times tokens/s. On a machine shared
with other work both the runs and the training step are slowed, by different amounts at different times: see
the spread of the matmul runs before reading much into an MFU. A bf16 row on a CPU gets no MFU (the peak
measured is fp32's): read its tokens/s against the fp32 row's, measured in the same run.
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
from llm.config import PRECISIONS, preset  # noqa: E402
from llm.device import measure_matmul_flops, pick_device  # noqa: E402
from llm.model.transformer import Transformer  # noqa: E402

# The shapes measured: the tests' preset, and the ~10M-parameter one (10.6M without the embedding).
SHAPES = {
    "tiny": dict(name="tiny", vocab_size=4096),
    "small": dict(name="small", vocab_size=4096),
}


def measure_peak(device: torch.device, repeats: int = 3) -> list[float]:
    """A few matmul-rate measurements (FLOP/s): on a shared machine the best is closest to the peak."""
    return [measure_matmul_flops(device) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per shape")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (more with --compile)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=["auto"],
        help="training precisions to time (llm.config.TrainConfig.precision); bf16 on a CPU needs bf16 units",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    print_machine(info)
    results = []
    for shape, precision in [(s, p) for s in args.shapes for p in args.precisions]:
        spec = dict(SHAPES[shape])
        torch.manual_seed(0)
        model = Transformer(preset(spec.pop("name"), **spec))
        # The matmul rate is measured just before and just after each shape; on a shared machine the load
        # drifts, and the best of all these runs is the nearest to the device's peak.
        rates = measure_peak(device)
        timing = time_training_steps(
            model, device, args.batch_size, args.steps, args.warmup, args.compile, precision=precision
        )
        rates += measure_peak(device)
        flops = model.flops_per_token()
        results.append(
            {
                "shape": shape,
                "precision": precision,
                "config": model.cfg.to_dict(),
                "params": model.num_params(),
                "non_embedding_params": model.num_params(non_embedding=True),
                "batch_size": args.batch_size,
                "compile": args.compile,
                "flops_per_token": flops,
                **timing,
                "achieved_flops": flops * timing["tokens_per_s"],
                "matmul_runs": rates,
            }
        )
        del model
    peak = max(rate for r in results for rate in r["matmul_runs"])
    for r in results:  # a bf16 row on a CPU has no measured peak of its own: no MFU
        r["mfu"] = None if device.type == "cpu" and r["precision"] == "bf16" else r["achieved_flops"] / peak

    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s (the best of the runs around each shape, below)")

    print(f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, compile={args.compile}")
    print_table(
        ["shape", "precision", "params", "ctx", "s/step", "tokens/s", "GFLOP/s", "MFU", "loss", "matmul runs GFLOP/s"],
        [
            [
                r["shape"],
                r["precision"],
                f"{r['params'] / 1e6:.2f}M",
                r["config"]["context_length"],
                f"{r['seconds_per_step']:.3f}",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['achieved_flops'] / 1e9:.1f}",
                f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
                f"{r['last_loss']:.2f}",
                " ".join(f"{x / 1e9:.0f}" for x in r["matmul_runs"]),
            ]
            for r in results
        ],
    )
    write_json(
        args.json,
        {
            "benchmark": "train_throughput",
            **info,
            "peak_flops": peak,
            "steps": args.steps,
            "warmup": args.warmup,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
