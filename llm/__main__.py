"""The command line: python -m llm <command> ...  Each command is a thin wrapper over library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm.config import DEFAULT_BASE_MODEL, PRESETS, TrainConfig


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from llm.textio import expand_inputs
    from llm.tokenizer import train_tokenizer

    tok = train_tokenizer(expand_inputs(args.input), args.out, args.vocab_size, args.max_chars)
    print(f"tokenizer with {tok.vocab_size} tokens written to {Path(args.out) / 'tokenizer.model'}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from llm.corpus import prepare
    from llm.textio import expand_inputs

    meta = prepare(
        expand_inputs(args.input),
        args.tokenizer,
        args.out,
        args.val_fraction,
        args.workers,
        args.shard_tokens,
        args.text_field,
        args.seed,
        progress=not args.quiet,
    )
    mb_s = meta["bytes"] / 1e6 / max(meta["seconds"], 1e-9)
    print(
        f"{meta['tokens']['train']:,} train and {meta['tokens']['val']:,} val tokens "
        f"({meta['dtype']}) in {args.out}, {meta['seconds']:.1f} s, {mb_s:.2f} MB/s"
    )


def train_config_from(args: argparse.Namespace, **overrides) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in names and v is not None and k != "extra"}
    return TrainConfig(**{**values, **overrides})


def add_train_flags(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    g = p.add_argument_group("training")
    for name, value in defaults.to_dict().items():
        if name == "extra":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            g.add_argument(flag, type=type(value), default=None, help=f"default {value}")
    g.add_argument("--metrics", help="metrics JSONL file (default <out>/metrics.jsonl)")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from llm.config import preset
    from llm.pretrain import pretrain

    shape = {
        k: getattr(args, k)
        for k in ("n_layer", "n_head", "d_model", "context_length", "mlp_hidden", "dropout", "tie_embeddings")
    }
    model_cfg = preset(args.preset, **shape)
    overrides = {}
    if args.resume and args.max_steps is None:  # keep the run's own step budget, and with it its lr schedule
        from llm import checkpoint

        run_info = checkpoint.read_info(checkpoint.resolve(Path(args.out) / "latest"))
        overrides["max_steps"] = run_info["train_config"]["max_steps"]
    train_cfg = train_config_from(args, **overrides)
    metrics = args.metrics or Path(args.out) / "metrics.jsonl"
    dtype = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}[args.save_dtype]
    import torch

    pretrain(args.data, args.out, model_cfg, train_cfg, args.resume, metrics, getattr(torch, dtype) if dtype else None)


def cmd_generate(args: argparse.Namespace) -> None:
    from llm.checkpoint import load_model
    from llm.device import pick_device
    from llm.generate import SamplingConfig, stream_text

    model, tok, _ = load_model(args.model, pick_device(args.device))
    sampling = SamplingConfig(
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.repetition_penalty,
        args.stop or [],
        args.seed,
    )
    if args.chat:
        from llm.chat import prompt_ids

        ids, stop_ids = prompt_ids(tok, [{"role": "user", "content": args.prompt}]), (tok.special["<|end|>"],)
    else:
        ids, stop_ids = [tok.eos_id] + tok.encode(args.prompt), (tok.eos_id,)
        print(args.prompt, end="", flush=True)
    for piece in stream_text(model, tok, ids, sampling, stop_ids, use_cache=not args.no_cache):
        print(piece, end="", flush=True)
    print()


def cmd_eval(args: argparse.Namespace) -> None:
    from llm.checkpoint import load_model
    from llm.device import pick_device
    from llm.evaluate import score_text
    from llm.textio import expand_inputs, iter_documents

    model, tok, _ = load_model(args.model, pick_device(args.device))
    text = "".join(iter_documents(expand_inputs(args.text)))
    if args.max_chars:
        text = text[: args.max_chars]
    score = score_text(model, tok, text)
    print(json.dumps(score.to_dict(), indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from llm.checkpoint import load_model, resolve, save_checkpoint

    source = resolve(args.model)
    model, tok, info = load_model(source)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    target = save_checkpoint(args.out, model, tok, {**info, "exported_from": str(source)}, dtype=dtype)
    size = sum(f.stat().st_size for f in target.iterdir())
    print(f"{source} -> {target} ({args.dtype}, {size / 1e6:.1f} MB, no trainer state)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm", description="Build your own LLM: train, tune, sample.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenizer", help="train a SentencePiece BPE tokenizer")
    p.add_argument("--input", nargs="+", required=True, help="text files, folders or globs")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--max-chars", type=int, default=200_000_000, help="text used to learn the merges")
    p.add_argument("--out", required=True, help="output folder for tokenizer.model")
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("prepare", help="tokenize a corpus into token shards")
    p.add_argument("--input", nargs="+", required=True, help=".txt/.txt.gz/.txt.xz/.jsonl files, folders, globs")
    p.add_argument("--tokenizer", required=True, help="folder with tokenizer.model (or the file)")
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: all cores)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--text-field", default="text", help="the field of .jsonl records holding the text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pretrain", help="train a transformer from scratch on prepared data")
    p.add_argument("--data", required=True, help="a folder made by `prepare`")
    p.add_argument("--out", required=True, help="run folder: checkpoints in latest/ (and best/)")
    p.add_argument("--preset", default="mini", help=f"model shape: {', '.join(PRESETS)}")
    for name, kind in (
        ("n_layer", int),
        ("n_head", int),
        ("d_model", int),
        ("context_length", int),
        ("mlp_hidden", int),
        ("dropout", float),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    p.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--save-dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="dtype of saved weights")
    add_train_flags(p, TrainConfig())
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("export", help="copy a checkpoint without its trainer state, optionally in fp16/bf16")
    p.add_argument("--model", required=True, help="model or run folder")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16")
    p.set_defaults(func=cmd_export)

    for name, helptext, func in (
        ("generate", "sample text from a model", cmd_generate),
        ("eval", "loss, perplexity and bits per byte on a text", cmd_eval),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", default=str(DEFAULT_BASE_MODEL), help="model or run folder (default: shipped)")
        p.add_argument("--device", default="auto")
        p.set_defaults(func=func)
        if name == "eval":
            p.add_argument("--text", nargs="+", required=True, help="text files to score")
            p.add_argument("--max-chars", type=int, default=0, help="score only the first N characters")
            continue
        p.add_argument("--prompt", default="", help="text to continue")
        p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
        p.add_argument("--max-new-tokens", type=int, default=200)
        p.add_argument("--temperature", type=float, default=0.8)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float, default=0.95)
        p.add_argument("--repetition-penalty", type=float, default=1.0)
        p.add_argument("--stop", action="append", help="stop at this string (repeatable)")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--no-cache", action="store_true", help="recompute the whole context at every token")

    return parser


def main(argv: list[str] | None = None) -> int:
    from llm.errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
