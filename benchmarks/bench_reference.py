"""Check llm.eval.bench against published lm-evaluation-harness figures, with an independent model
implementation: transformers runs the Hugging Face folder of SmolLM2-135M-Instruct, our encoding and scoring
turn its logits into acc / acc_norm, and each score is set beside the published one with its distance in
standard errors. With --model (the same model imported into this project), our own model scores the same
rows and the two sets of log-likelihoods are compared request by request.

    python benchmarks/bench_reference.py --hf /work/cache/smollm2/hf --tasks hellaswag:1000,arc_easy,piqa \
        [--model models/smollm2] [--save build/reference-lls.npz]

TASK:N scores the first N rows (lm-eval's --limit). transformers is a test-only dependency of this project.
Published: HuggingFaceTB/SmolLM2-135M-Instruct, lm-eval 0-shot, the "Baseline" column of the model card of
lldois/SmolLM2-135M-Reasoning-SLERP-Champion (a third-party run; lm-eval version, dtype and batch size unknown).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `llm` importable

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llm.data.benchmarks import read_task  # noqa: E402
from llm.eval import bench, likelihood  # noqa: E402
from llm.model.checkpoint import load_model  # noqa: E402

PUBLISHED = {"hellaswag": ("acc_norm", 0.4299), "arc_easy": ("acc", 0.5412), "piqa": ("acc_norm", 0.6692)}


class HFModel(torch.nn.Module):
    """What llm.eval.bench.loglikelihoods needs of a model: cfg.context_length, parameters(), ids -> logits."""

    def __init__(self, folder: str):
        from transformers import AutoModelForCausalLM

        super().__init__()
        self.hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.cfg = type("Cfg", (), {"context_length": self.hf.config.max_position_embeddings})

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx).logits


class HFTokenizer:
    """encode() without special tokens, as lm-eval's HFLM encodes; start_id: BOS (lm-eval's prefix token)."""

    def __init__(self, folder: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)
        self.start_id = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]


def score(model, tokenizer, task, batch_tokens: int) -> tuple[np.ndarray, dict]:
    started = time.perf_counter()
    lls = likelihood.loglikelihoods(model, likelihood.encode_task(tokenizer, task), batch_tokens)
    summary = bench.summarise(task, bench.row_scores(task, lls))
    print(f"  {task.spec.name}: {len(task.rows)} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return lls, summary["metrics"]


def report(name: str, rows: int, metrics: dict, who: str) -> None:
    cells = [f"{m} {metrics[m]:.4f} ± {metrics[m + '_stderr']:.4f}" for m in ("acc", "acc_norm") if m in metrics]
    line = f"{who:<13} {name:<10} {rows:>6} rows  " + "   ".join(cells)
    if name in PUBLISHED:
        metric, value = PUBLISHED[name]
        z = (metrics[metric] - value) / metrics[f"{metric}_stderr"]
        line += f"   published {metric} {value:.4f}: {z:+.2f} standard errors"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="the Hugging Face folder (transformers)")
    parser.add_argument("--model", help="the same model imported into this project")
    parser.add_argument("--tasks", default="hellaswag:1000,arc_easy,piqa", help="TASK or TASK:N, comma-separated")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--save", type=Path, help="an .npz of every request's log-likelihood, by task")
    args = parser.parse_args()
    hf = (HFModel(args.hf), HFTokenizer(args.hf))
    ours = load_model(args.model)[:2] if args.model else None
    saved = {}
    for entry in args.tasks.split(","):
        name, _, limit = entry.partition(":")
        task = read_task(name, int(limit or 0))
        lls, metrics = score(*hf, task, args.batch_tokens)
        report(name, len(task.rows), metrics, "transformers")
        saved[name] = lls
        if ours:
            our_lls, our_metrics = score(*ours, task, args.batch_tokens)
            report(name, len(task.rows), our_metrics, "llm")
            print(f"  largest log-likelihood difference: {np.abs(our_lls - lls).max():.2e} nats", flush=True)
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
