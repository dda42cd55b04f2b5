"""Hugging Face export and import: time and peak memory, for the shipped model and a TinyLlama-shaped one.

    python benchmarks/hf_roundtrip.py [--skip-large] [--lora-steps 3] [--json F]

Each export and import runs in a child process (this script with --step), so its peak resident memory
(ru_maxrss) is its own. The 1.1B model has TinyLlama's shape (22 layers, d 2048, 32 heads, 4 kv heads, MLP
5632, vocabulary 32000, context 2048) and random weights made here: nothing is downloaded. Its 32000-token
tokenizer is trained here on synthetic text. Last, a few
LoRA fine-tuning steps at that shape on this device (batch 1, rows of --row-tokens) give steps/s.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `llm` importable

import torch  # noqa: E402

from benchmarks.common import machine_info, print_machine, print_table, synchronize, write_json  # noqa: E402
from benchmarks.synthetic_text import write_corpus  # noqa: E402
from llm.config import ALL_PROJECTIONS, DEFAULT_BASE_MODEL, ModelConfig  # noqa: E402
from llm.data.tokenizer import train_tokenizer  # noqa: E402
from llm.device import pick_device  # noqa: E402
from llm.model import hf, lora  # noqa: E402
from llm.model.checkpoint import load_model, save_checkpoint  # noqa: E402
from llm.model.transformer import Transformer, causal_lm_loss  # noqa: E402

TINYLLAMA = dict(
    vocab_size=32000, context_length=2048, n_layer=22, n_head=32, n_kv_head=4, d_model=2048, mlp_hidden=5632
)
TINYLLAMA_EXTRA = dict(tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-5)


def make_large_model(directory: Path, text_mb: int) -> Path:
    """A randomly initialised TinyLlama-shaped model directory with a 32000-token tokenizer trained here on
    synthetic English-like text (benchmarks/synthetic_text.py): real shapes, no download."""
    corpus = write_corpus(directory.parent / "corpus", text_mb << 20, n_files=1)
    tok = train_tokenizer(corpus, directory.parent / "tok", vocab_size=TINYLLAMA["vocab_size"])
    cfg = ModelConfig(**TINYLLAMA, **TINYLLAMA_EXTRA)
    torch.manual_seed(0)
    model = Transformer(cfg)
    return save_checkpoint(directory, model, tok, {"kind": "benchmark", "note": "random TinyLlama shape"})


def run_step(step: str, source: Path, target: Path) -> dict[str, float]:
    """One export or import in a child process: wall seconds and its peak resident memory."""
    command = [sys.executable, __file__, "--step", step, "--source", str(source), "--target", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{step} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(step: str, source: Path, target: Path) -> None:
    start = time.perf_counter()
    if step == "export":
        hf.export_hf(source, target)
    else:
        hf.import_hf(source, target)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"seconds": round(seconds, 2), "peak_gib": round(peak_kb / 2**20, 2)}))


def lora_steps_per_second(model_dir: Path, steps: int, row_tokens: int, device: torch.device) -> float:
    """LoRA (rank 8, every projection) steps of batch 1 on rows of row_tokens tokens; the first is warm-up."""
    model, _, _ = load_model(model_dir)  # on the CPU: the adapters are made beside the weights, then all move
    lora.apply_lora(model, rank=8, alpha=16.0, dropout=0.0, targets=list(ALL_PROJECTIONS))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, model.cfg.vocab_size, (1, row_tokens + 1), device=device)
    times = []
    for _ in range(steps + 1):
        synchronize(device)  # a GPU runs the step after the Python returns: time it to its end
        start = time.perf_counter()
        loss = causal_lm_loss(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return steps / sum(times[1:])


def roundtrip(name: str, model_dir: Path, work: Path) -> dict[str, object]:
    exported = run_step("export", model_dir, work / f"{name}-hf")
    imported = run_step("import", work / f"{name}-hf", work / f"{name}-back")
    size = sum(f.stat().st_size for f in (work / f"{name}-hf").iterdir())
    return {"model": name, "hf_folder_mb": round(size / 1e6, 1), "export": exported, "import": imported}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-large", action="store_true", help="only the shipped model")
    parser.add_argument("--lora-steps", type=int, default=3)
    parser.add_argument("--row-tokens", type=int, default=64)
    parser.add_argument("--text-mb", type=int, default=8, help="synthetic text for the 32000-token tokenizer")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--step", choices=["export", "import"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return child(args.step, args.source, args.target)
    device = pick_device(args.device)
    info = machine_info(device)
    print_machine(info)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf-roundtrip-") as tmp:
        work = Path(tmp)
        rows.append(roundtrip("models/base", DEFAULT_BASE_MODEL, work))
        if not args.skip_large:
            start = time.perf_counter()
            large = make_large_model(work / "tinyllama-shape", args.text_mb)
            print(f"random TinyLlama-shaped model made in {time.perf_counter() - start:.0f} s")
            rows.append(roundtrip("TinyLlama shape (1.1B)", large, work))
            rate = lora_steps_per_second(large, args.lora_steps, args.row_tokens, device)
            rows[-1]["lora_steps_per_s"] = round(rate, 3)
    headers = ["model", "HF folder MB", "export s", "export peak GiB", "import s", "import peak GiB", "LoRA steps/s"]
    table = [
        [
            r["model"],
            r["hf_folder_mb"],
            r["export"]["seconds"],
            r["export"]["peak_gib"],
            r["import"]["seconds"],
            r["import"]["peak_gib"],
            r.get("lora_steps_per_s", "-"),
        ]
        for r in rows
    ]
    print_table(headers, table)
    write_json(args.json, {"machine": info, "rows": rows, "settings": {k: str(v) for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
