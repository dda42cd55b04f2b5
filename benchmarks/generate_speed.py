"""Generation speed with and without the KV cache, at 256 and 1024 new tokens.

    python benchmarks/generate_speed.py [--new-tokens 256 1024] [--prompt-tokens 16] [--json F]

A `mini`-shaped model with a 1280-token context and random weights decodes greedily through
llm.model.generate.generate_ids, once with the cache and once re-running the whole context at every token. Greedy
decoding makes both paths choose the same tokens, which the script checks, so the timings compare the same
work. The prompt plus the new tokens stay within the context, so the cache never restarts its window. The
output projection is untied: with random tied embeddings each token predicts itself and greedy decoding
repeats one token forever, which would make the equality check empty.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `llm` importable

import torch  # noqa: E402

from benchmarks.common import machine_info, print_machine, print_table, synchronize, write_json  # noqa: E402
from llm.config import preset  # noqa: E402
from llm.device import pick_device  # noqa: E402
from llm.model.generate import SamplingConfig, generate_ids  # noqa: E402
from llm.model.transformer import Transformer  # noqa: E402


def timed_generation(
    model: Transformer, prompt: list[int], new_tokens: int, use_cache: bool
) -> tuple[list[int], float]:
    """Greedy token ids and the seconds they took (the first step's prompt pass included)."""
    device = next(model.parameters()).device
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, seed=0)
    synchronize(device)
    start = time.perf_counter()
    ids = list(generate_ids(model, prompt, cfg, use_cache=use_cache))
    synchronize(device)
    return ids, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=1280)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    longest = args.prompt_tokens + max(args.new_tokens)
    if longest > args.context_length:
        parser.error(f"--prompt-tokens + --new-tokens = {longest} exceeds --context-length {args.context_length}")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    print_machine(info)
    torch.manual_seed(0)
    shape = preset("mini", context_length=args.context_length, vocab_size=args.vocab_size, tie_embeddings=False)
    model = Transformer(shape)
    model.to(device).eval()
    prompt = torch.randint(4, args.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0))
    prompt_ids = prompt.tolist()
    timed_generation(model, prompt_ids, 8, use_cache=True)  # warm up the kernels and the allocator

    results = []
    for n in args.new_tokens:
        cached_ids, cached_s = timed_generation(model, prompt_ids, n, use_cache=True)
        full_ids, full_s = timed_generation(model, prompt_ids, n, use_cache=False)
        assert len(cached_ids) == len(full_ids) == n, "generation stopped early: no stop ids were given"
        if cached_ids != full_ids:
            first = next(i for i, (a, b) in enumerate(zip(cached_ids, full_ids, strict=True)) if a != b)
            raise AssertionError(f"{n} new tokens: the cached and uncached paths differ first at token {first}")
        results.append(
            {
                "new_tokens": n,
                "prompt_tokens": args.prompt_tokens,
                "cached_seconds": cached_s,
                "uncached_seconds": full_s,
                "cached_tokens_per_s": n / cached_s,
                "uncached_tokens_per_s": n / full_s,
                "speedup": full_s / cached_s,
                "distinct_tokens": len(set(cached_ids)),
            }
        )

    print(
        f"model: mini, {model.num_params() / 1e6:.2f}M params, context {args.context_length}, vocab "
        f"{args.vocab_size}, random untied weights; prompt {args.prompt_tokens} tokens; greedy, same tokens both ways"
    )
    print_table(
        ["new tokens", "cache tok/s", "no-cache tok/s", "cache s", "no-cache s", "speed-up", "distinct"],
        [
            [
                r["new_tokens"],
                f"{r['cached_tokens_per_s']:,.1f}",
                f"{r['uncached_tokens_per_s']:,.1f}",
                f"{r['cached_seconds']:.2f}",
                f"{r['uncached_seconds']:.2f}",
                f"{r['speedup']:.1f}x",
                r["distinct_tokens"],
            ]
            for r in results
        ],
    )
    write_json(
        args.json,
        {"benchmark": "generate_speed", **info, "config": model.cfg.to_dict(), "results": results},
    )


if __name__ == "__main__":
    main()
