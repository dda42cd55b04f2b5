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
    dtype = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}[args.save_dtype]
    import torch

    pretrain(
        args.data, args.out, model_cfg, train_cfg, args.resume, args.metrics, getattr(torch, dtype) if dtype else None
    )


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
        from llm.chat import prompt_ids, stop_ids

        ids, stop_ids = prompt_ids(tok, [{"role": "user", "content": args.prompt}]), stop_ids(tok)
    else:
        ids, stop_ids = [tok.start_id] + tok.encode(args.prompt), (tok.eos_id,)
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

    if args.format == "hf":
        from llm.hf import export_hf

        dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype or "fp32"]
        target = export_hf(args.model, args.out, dtype)
        size = sum(f.stat().st_size for f in target.iterdir())
        print(f"{resolve(args.model)} -> {target} (Hugging Face LlamaForCausalLM, {size / 1e6:.1f} MB)")
        return
    args.dtype = args.dtype or "fp16"
    source = resolve(args.model)
    model, tok, info = load_model(source)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    target = save_checkpoint(args.out, model, tok, {**info, "exported_from": str(source)}, dtype=dtype)
    size = sum(f.stat().st_size for f in target.iterdir())
    print(f"{source} -> {target} ({args.dtype}, {size / 1e6:.1f} MB, no trainer state)")


def cmd_import(args: argparse.Namespace) -> None:
    from llm.hf import import_hf

    target = import_hf(args.source, args.out)
    info = json.loads((target / "info.json").read_text())
    print(
        f"{args.source} -> {target} ({info['params'] / 1e6:.1f}M parameters, {info['dtype']}, chat template: "
        f"{info['chat_template']})"
    )


def task_mapping(args: argparse.Namespace) -> dict[str, str] | None:
    mapping = {"prompt": args.prompt_column, "response": args.response_column, "system": args.system_column}
    return {k: v for k, v in mapping.items() if v} or None


def print_data_summary(info: dict) -> None:
    tokens = info["tokens"]
    print(
        f"{info['source']}: {info['format']} format, {info['rows']} rows, {info['kept']} kept, "
        f"{info['dropped']} dropped, {info['truncated']} truncated to the context; "
        f"tokens per example min {tokens['min']} / median {tokens['median']:.0f} / max {tokens['max']}"
    )
    for problem in info["problems"][:10]:
        print(f"  dropped {problem}")
    if len(info["problems"]) > 10:
        print(f"  ... and {len(info['problems']) - 10} more ({info['drop_reasons']})")


def cmd_finetune(args: argparse.Namespace) -> None:
    from llm import finetune, tasks
    from llm.config import ModelConfig
    from llm.tokenizer import MODEL_FILE, Tokenizer

    fields = finetune.FinetuneConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    cfg = finetune.FinetuneConfig(**values, probes=args.probe or [])
    mapping = task_mapping(args)
    if not args.resume:
        data = tasks.read_task_file(args.data, args.format, mapping)
        val_data = tasks.read_task_file(args.val_data, data.format, mapping) if args.val_data else None
        plan = finetune.plan(args.base, data, cfg, val_data)
        tokenizer = Tokenizer.load(Path(plan["base"]) / MODEL_FILE)
        context = ModelConfig.load(Path(plan["base"]) / "config.json").context_length
        print_data_summary(tasks.summary(data, tasks.encode_examples(data, tokenizer, context, cfg.overflow)))
        print(
            f"{plan['method']} fine-tuning of {plan['base']} on {plan['device']}: {plan['trainable_params']:,} of "
            f"{plan['params']:,} parameters trained, {plan['train_examples']} train / {plan['val_examples']} val "
            f"examples, {plan['max_steps']} steps (batch {plan['batch_size']}, lr {plan['lr']:g}), "
            f"about {plan['est_seconds']:.0f} s"
        )
    result = finetune.finetune(
        args.base, args.data, args.out, cfg, args.format, mapping, args.val_data, args.metrics, args.resume
    )
    best = f", best validation loss {result.best_val_loss:.4f}" if result.best_val_loss < float("inf") else ""
    print(f"{result.reason} at step {result.step}{best}: the model is in {args.out}")
    print(f'try it: python -m llm generate --model {args.out} --chat --temperature 0 --prompt "..."')


def cmd_eval_task(args: argparse.Namespace) -> None:
    from llm import task_eval, tasks
    from llm.finetune import FinetuneConfig, base_directory

    defaults = FinetuneConfig()
    args.model = args.model or [str(DEFAULT_BASE_MODEL)]
    args.seed = defaults.seed if args.seed is None else args.seed
    args.val_fraction = defaults.val_fraction if args.val_fraction is None else args.val_fraction
    for model in args.model:
        base_directory(model)  # a clear message for a missing model before reading anything else
    data = tasks.read_task_file(args.data, args.format, task_mapping(args))
    if args.split != "all":
        train, val = tasks.split_examples(data, args.val_fraction, args.seed)
        data = val if args.split == "val" else train
    print(f"{args.data}: {len(data.examples)} rows ({args.split}), {len(args.model)} model(s)", flush=True)
    table = task_eval.evaluate_models(
        args.model, data, args.rows, args.seed, args.max_new_tokens, args.temperature, args.device
    )
    totals = task_eval.totals(table)
    print(totals.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "data": {"path": str(args.data), "content_hash": data.content_hash, "split": args.split},
            "settings": {k: getattr(args, k) for k in ("rows", "seed", "max_new_tokens", "temperature")},
            "totals": totals.to_dict("records"),
            "rows": table.to_dict("records"),
        }
        for path, write in (
            (out, lambda p: table.to_csv(p, index=False)),
            (out.with_suffix(".json"), lambda p: p.write_text(json.dumps(report, indent=1) + "\n")),
        ):
            tmp = path.with_name(f".{path.name}.tmp")
            write(tmp)
            tmp.replace(path)  # whole files only, never half a report
        print(f"rows in {out}, totals and rows in {out.with_suffix('.json')}")


def add_task_data_flags(p: argparse.ArgumentParser) -> None:
    from llm.tasks import FORMATS

    p.add_argument("--data", required=True, help="task file: .csv .tsv .json .jsonl .parquet")
    p.add_argument("--format", choices=["auto", *FORMATS], default="auto", help="default: detected from the columns")
    p.add_argument("--prompt-column", help="pairs: the column holding the prompt")
    p.add_argument("--response-column", help="pairs: the column holding the response")
    p.add_argument("--system-column", help="an optional column holding a system prompt")


def add_finetune_flags(p: argparse.ArgumentParser) -> None:
    # No defaults here: unset flags take FinetuneConfig's (llm/finetune.py), printed in the plan before training.
    # (Importing llm.finetune here would load torch for every command, even `--help`.)
    p.add_argument("--base", default=str(DEFAULT_BASE_MODEL), help="base model or run folder (default: shipped)")
    add_task_data_flags(p)
    p.add_argument("--val-data", help="a validation file (default: hold out --val-fraction of --data)")
    p.add_argument("--out", required=True, help="run folder: checkpoints in latest/ and best/")
    p.add_argument("--metrics", help="metrics JSONL file (default <out>/metrics.jsonl)")
    p.add_argument("--method", choices=["lora", "full"], help="default lora")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="default: from --epochs")
    p.add_argument("--lr", type=float, help="default: per method (higher for LoRA)")
    p.add_argument("--batch-size", type=int, help="default: from the context length")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lora-rank", type=int)
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--lora-targets", nargs="+", help="of wq wk wv wo w_gate w_up w_down (default: all)")
    p.add_argument("--val-fraction", type=float, help="share of --data held out for validation")
    p.add_argument("--seed", type=int)
    p.add_argument("--early-stop-patience", type=int, help="evaluations without a better val loss; 0: never stop")
    p.add_argument("--overflow", choices=["truncate", "drop"], help="rows longer than the context (default truncate)")
    p.add_argument("--probe", nargs="+", help="prompts answered at every evaluation (logged as samples)")
    p.add_argument("--merge", action="store_true", default=None, help="LoRA: store merged full weights in best/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", help="auto, cpu, cuda, mps (default auto)")


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

    p = sub.add_parser("export", help="copy a checkpoint without its trainer state, or as a Hugging Face folder")
    p.add_argument("--model", required=True, help="model or run folder (a LoRA run is merged into its base)")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["ours", "hf"], default="ours", help="hf: a LlamaForCausalLM folder")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default fp16 (ours), fp32 (hf)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="a local Hugging Face Llama folder (SentencePiece tokenizer) -> a model")
    p.add_argument(
        "--from", dest="source", required=True, help="folder with config.json, *.safetensors, tokenizer.model"
    )
    p.add_argument("--out", required=True, help="the new model directory")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("finetune", help="fine-tune a model on a task dataset (LoRA or full)")
    add_finetune_flags(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval-task", help="answer and score a task dataset; several models: a before/after table")
    p.add_argument("--model", action="append", help="model or run folder (repeatable; default: the shipped base)")
    add_task_data_flags(p)
    p.add_argument("--rows", type=int, default=None, help="score a seeded sample of N rows (default: all)")
    p.add_argument("--split", choices=["all", "train", "val"], default="all", help="rows of a fine-tune's split")
    p.add_argument("--val-fraction", type=float, help="for --split (default: finetune's)")
    p.add_argument("--seed", type=int, help="row sample, split and sampling seed (default: finetune's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy answers")
    p.add_argument("--out", help="CSV of every answer (a .json with totals and rows is written beside it)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval_task)

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
