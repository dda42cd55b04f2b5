"""The command line: python -m llm <command> ...  Each command is a thin wrapper over library functions.

The flags of the config dataclasses (TrainConfig, ModelConfig, FinetuneConfig, SamplingConfig in
llm/config.py) are generated from their fields (llm/cli_flags.py). Errors in input or settings (llm.errors)
print one line naming the flag and exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm.cli_flags import add_config_flags, config_from_args, flag_for, given
from llm.config import (
    DEFAULT_BASE_MODEL,
    PRESETS,
    TASK_FORMATS,
    FinetuneConfig,
    ModelConfig,
    PreferConfig,
    PretrainConfig,
    SamplingConfig,
    TrainConfig,
    load_json,
)
from llm.errors import ConfigError

SAVE_DTYPES = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


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


def cmd_pretrain(args: argparse.Namespace) -> None:
    import torch

    from llm import pretrain as lib
    from llm.config import preset
    from llm.run import RunDir

    dtype = SAVE_DTYPES[args.save_dtype]
    save_dtype = getattr(torch, dtype) if dtype else None
    budgets = {k: v for k, v in given(args, TrainConfig).items() if k in ("max_steps", "max_time", "device")}
    if args.config or args.inputs:  # from raw text: tokenizer, shards and training in one command
        if args.resume:
            raise ConfigError("continues the run with its own settings: give --out and --resume only", field="config")
        cfg = pretrain_config(args)
        plan = lib.plan(cfg)
        print(
            f"pretraining a {plan['params']:,}-parameter model ({cfg.preset}, vocabulary {plan['vocab_size']:,}) on "
            f"{plan['device']}: {plan['max_steps']} steps of {plan['tokens_per_step']:,} tokens, about "
            f"{plan['est_seconds']:.0f} s",
            flush=True,
        )
        lib.pretrain_text(cfg, args.out, args.metrics, save_dtype, progress=True)
        return
    if args.resume and not args.data:  # the run knows its data (a run from raw text keeps it inside)
        lib.resume(args.out, **budgets, metrics_path=args.metrics, save_dtype=save_dtype)
        return
    if not args.data:
        raise ConfigError("is required: a folder made by `prepare` (or --input text files, or --config)", field="data")
    model_cfg = preset(args.preset or "mini", **given(args, ModelConfig))
    if args.resume:  # the run's own settings; only the budgets and the device given here change
        train_cfg = TrainConfig.from_dict(RunDir(args.out).resumed_train_settings(**budgets))
    else:
        train_cfg = config_from_args(TrainConfig, args)
    lib.pretrain(
        args.data,
        args.out,
        model_cfg,
        train_cfg,
        args.resume,
        args.metrics,
        save_dtype,
        sample_prompts=args.sample_prompt or lib.DEFAULT_SAMPLE_PROMPTS,
        sample_tokens=lib.DEFAULT_SAMPLE_TOKENS if args.sample_tokens is None else args.sample_tokens,
    )


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """PretrainConfig from --config's file, then the flags given: its own, the shape's (into model) and the
    training's (budgets into their fields, the rest into train)."""
    saved = load_json(PretrainConfig, args.config).to_dict() if args.config else {}
    training = given(args, TrainConfig)
    overrides = {k: training.pop(k) for k in ("max_steps", "max_time") if k in training}
    if args.preset:
        overrides["preset"] = args.preset
    if args.sample_prompt:
        overrides["sample_prompts"] = args.sample_prompt
    if args.sample_tokens is not None:
        overrides["sample_tokens"] = args.sample_tokens
    shape = {k: v for k, v in given(args, ModelConfig).items() if k != "vocab_size"}  # --vocab-size: the tokenizer's
    model = {**saved.get("model", {}), **shape}
    train = {**saved.get("train", {}), **training}
    return config_from_args(PretrainConfig, args, saved, model=model, train=train, **overrides)


def cmd_generate(args: argparse.Namespace) -> None:
    from llm.chat import user_messages
    from llm.checkpoint import load_model
    from llm.device import pick_device
    from llm.generate import stream_chat, stream_text

    model, tok, _ = load_model(args.model, pick_device(args.device))
    sampling = config_from_args(SamplingConfig, args)
    if args.chat:
        pieces = stream_chat(model, tok, user_messages(args.prompt), sampling)
    else:
        print(args.prompt, end="", flush=True)
        ids = [tok.start_id] + tok.encode(args.prompt)
        pieces = stream_text(model, tok, ids, sampling, (tok.eos_id,), use_cache=not args.no_cache)
    for piece in pieces:
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


def cmd_inspect(args: argparse.Namespace) -> None:
    from llm.device import pick_device
    from llm.inspect import format_report, inspect_text

    result = inspect_text(
        args.model or [str(DEFAULT_BASE_MODEL)],
        args.text,
        args.prompt,
        args.answer,
        args.system,
        pick_device(args.device),
        position=args.position,
        top_k=args.top_k,
        temperature=args.temperature,
        top_p=args.top_p,
        layer=args.layer,
        head=args.head,
    )
    print(json.dumps(result, indent=1) if args.json else format_report(result))


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


def task_mapping(args: argparse.Namespace) -> dict[str, str]:
    mapping = {"prompt": args.prompt_column, "response": args.response_column, "system": args.system_column}
    return {k: v for k, v in mapping.items() if v}


def print_data_summary(info: dict) -> None:
    tokens = info["tokens"]
    print(
        f"{info['source']}: {info['format']} format, {info['rows']} rows, {info['kept']} kept, "
        f"{info['dropped']} dropped, {info['truncated']} truncated to the context; "
        f"tokens per example min {tokens['min']} / median {tokens['median']:.0f} / max {tokens['max']}"
    )
    for warning in info.get("warnings", []):
        print(f"  warning: {warning}")
    for problem in info["problems"][:10]:
        print(f"  dropped {problem}")
    if len(info["problems"]) > 10:
        print(f"  ... and {len(info['problems']) - 10} more ({info['drop_reasons']})")


def print_run_end(out: str, result) -> None:
    """How a tuning run ended, and a warning when most of its answers to training prompts were empty."""
    from llm.run import RunDir

    answers = [e for e in RunDir(out).read_metrics().events if e["event"] == "answers"]
    if answers and answers[-1]["empty"] > answers[-1]["rows"] / 2:
        print(
            f"warning: {answers[-1]['empty']} of {answers[-1]['rows']} greedy answers to training prompts are "
            "empty: the model learnt to stop at once (check that the answers fit the context in the data summary)"
        )
    best = f", best validation loss {result.best_val_loss:.4f}" if result.best_val_loss < float("inf") else ""
    print(f"{result.reason} at step {result.step}{best}: the model is in {out}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from llm import finetune

    if args.resume:
        budgets = given(args, FinetuneConfig)
        result = finetune.resume(args.out, budgets.get("max_steps"), budgets.get("device"), args.metrics)
    else:
        saved = load_json(FinetuneConfig, args.config).to_dict() if args.config else {}
        mapping = {**saved.get("mapping", {}), **task_mapping(args)}
        cfg = config_from_args(FinetuneConfig, args, saved, mapping=mapping)
        prep = finetune.prepare(cfg)
        print_data_summary(prep.summary())
        plan = finetune.plan(prep)
        print(
            f"{plan['method']} fine-tuning of {plan['base']} on {plan['device']}: {plan['trainable_params']:,} of "
            f"{plan['params']:,} parameters trained, {plan['train_examples']} train / {plan['val_examples']} val "
            f"examples, {plan['max_steps']} steps (batch {plan['batch_size']}, lr {plan['lr']:g}), "
            f"about {plan['est_seconds']:.0f} s"
        )
        result = finetune.finetune(prep, args.out, args.metrics)
    print_run_end(args.out, result)
    print(f'try it: python -m llm generate --model {args.out} --chat --temperature 0 --prompt "..."')


def cmd_prefer(args: argparse.Namespace) -> None:
    from llm import prefer

    if args.resume:
        budgets = given(args, PreferConfig)
        result = prefer.resume(args.out, budgets.get("max_steps"), budgets.get("device"), args.metrics)
    else:
        saved = load_json(PreferConfig, args.config).to_dict() if args.config else {}
        prep = prefer.prepare(config_from_args(PreferConfig, args, saved))
        info, tc = prefer.summary(prep), prep.train_cfg
        print(
            f"{info['path']}: {info['rows']} rows, {info['dropped']} dropped, {info['truncated']} truncated; "
            f"{info['train_pairs']} train / {info['val_pairs']} held-out pairs"
        )
        for problem in info["problems"][:10]:
            print(f"  dropped {problem}")
        print(
            f"DPO ({prep.cfg.method}, beta {prep.cfg.beta:g}) of {prep.base_dir}: {tc.max_steps} steps "
            f"(batch {tc.batch_size} pairs, lr {tc.lr:g})"
        )
        result = prefer.prefer(prep, args.out, args.metrics)
    print_run_end(args.out, result)
    print(f"compare it with its base: python -m llm eval-prefer --model {args.out} --data PAIRS --rule RULE")


def cmd_eval_prefer(args: argparse.Namespace) -> None:
    from llm import prefer_eval, tasks
    from llm.preferences import read_preference_file

    rule = prefer_eval.parse_rule(args.rule)
    defaults = PreferConfig()
    data = read_preference_file(args.data)
    if args.split != "all":
        val_fraction = defaults.val_fraction if args.val_fraction is None else args.val_fraction
        train, val = tasks.split_examples(data, val_fraction, defaults.seed if args.seed is None else args.seed)
        data = val if args.split == "val" else train
    print(f"{args.data}: {len(data.examples)} prompts ({args.split}), rule {rule}", flush=True)
    totals, table = prefer_eval.win_rate(
        args.model, args.base, data, rule, args.rows, args.seed or 0, args.max_new_tokens, device=args.device
    )
    print(json.dumps(totals, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        out.with_suffix(".json").write_text(json.dumps({"totals": totals, "rows": table.to_dict("records")}) + "\n")
        print(f"rows in {out}, totals and rows in {out.with_suffix('.json')}")


def cmd_eval_task(args: argparse.Namespace) -> None:
    from llm import task_eval, tasks
    from llm.finetune import base_directory

    args.model = args.model or [str(DEFAULT_BASE_MODEL)]
    args.seed = FinetuneConfig().seed if args.seed is None else args.seed
    for model in args.model:
        base_directory(model)  # a clear message for a missing model before reading anything else
    data = tasks.read_task_file(args.data, args.format or "auto", task_mapping(args))
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


def add_task_data_flags(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="task file: .csv .tsv .json .jsonl .parquet")
    p.add_argument("--format", choices=["auto", *TASK_FORMATS], help="default: detected from the columns")
    p.add_argument("--prompt-column", help="pairs: the column holding the prompt")
    p.add_argument("--response-column", help="pairs: the column holding the response")
    p.add_argument("--system-column", help="an optional column holding a system prompt")


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

    p = sub.add_parser("pretrain", help="train a transformer from scratch: on prepared data, or on raw text")
    p.add_argument("--data", help="a folder made by `prepare` (or give --input text, or --config)")
    p.add_argument("--out", required=True, help="run folder: checkpoints in latest/ (and best/)")
    p.add_argument("--config", help="a PretrainConfig JSON file (flags given as well override it)")
    p.add_argument("--preset", help=f"model shape: {', '.join(PRESETS)} (default: mini; from raw text: micro)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--save-dtype", choices=list(SAVE_DTYPES), default="fp32", help="dtype of saved weights")
    p.add_argument("--metrics", help="metrics JSONL file (default: the run folder's)")
    p.add_argument(
        "--sample-prompt",
        action="append",
        help='continued at every evaluation, logged as samples (repeatable; default "Once upon a time", "The")',
    )
    p.add_argument("--sample-tokens", type=int, help="tokens sampled per prompt (default 48); 0: no samples")
    raw = "from raw text (tokenizer and shards made in <out>/data)"
    skip = ("preset", "max_steps", "max_time", "sample_prompts", "sample_tokens")
    add_config_flags(p.add_argument_group(raw), PretrainConfig, skip)
    add_config_flags(p.add_argument_group("model shape (default: the preset's)"), ModelConfig, ("vocab_size",), False)
    add_config_flags(p.add_argument_group("training"), TrainConfig)
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
    p.add_argument("--out", required=True, help="run folder: checkpoints in latest/ and best/")
    p.add_argument("--config", help="a FinetuneConfig JSON file (flags given as well override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    p.add_argument("--metrics", help="metrics JSONL file (default: the run folder's)")
    add_task_data_flags(p, required=False)
    add_config_flags(p.add_argument_group("fine-tuning"), FinetuneConfig, ("data", "format"))
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("prefer", help="tune a model on preference pairs (DPO; LoRA or full)")
    p.add_argument("--out", required=True, help="run folder: checkpoints in latest/ and best/")
    p.add_argument("--config", help="a PreferConfig JSON file (flags given as well override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    p.add_argument("--metrics", help="metrics JSONL file (default: the run folder's)")
    add_config_flags(p.add_argument_group("preference tuning"), PreferConfig)
    p.set_defaults(func=cmd_prefer)

    p = sub.add_parser("eval-prefer", help="win rate of a preference-tuned model over its base under a rule")
    p.add_argument("--model", required=True, help="the tuned model or run folder")
    p.add_argument("--base", help="the model to compare with (default: the tuned model's base)")
    p.add_argument("--data", required=True, help="preference file whose prompts are asked")
    p.add_argument(
        "--rule", required=True, help="shorter, longer, ends-with-question, contains:TEXT, regex:PATTERN ..."
    )
    p.add_argument("--rows", type=int, default=None, help="ask a seeded sample of N prompts (default: all)")
    p.add_argument("--split", choices=["all", "train", "val"], default="val", help="prompts of a run's split")
    p.add_argument("--val-fraction", type=float, help="for --split (default: prefer's)")
    p.add_argument("--seed", type=int, help="split and row sample seed (default: prefer's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", help="CSV of every answer (a .json with totals and rows is written beside it)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval_prefer)

    p = sub.add_parser("eval-task", help="answer and score a task dataset; several models: a before/after table")
    p.add_argument("--model", action="append", help="model or run folder (repeatable; default: the shipped base)")
    add_task_data_flags(p, required=True)
    p.add_argument("--rows", type=int, default=None, help="score a seeded sample of N rows (default: all)")
    p.add_argument("--split", choices=["all", "train", "val"], default="all", help="rows of a fine-tune's split")
    p.add_argument("--val-fraction", type=float, help="for --split (default: finetune's)")
    p.add_argument("--seed", type=int, help="row sample, split and sampling seed (default: finetune's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy answers")
    p.add_argument("--out", help="CSV of every answer (a .json with totals and rows is written beside it)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval_task)

    p = sub.add_parser("inspect", help="tokens, per-token surprise, next-token choices and attention of a text")
    p.add_argument("--model", action="append", help="model or run folder; twice to compare (default: shipped)")
    p.add_argument("--text", help="the text to inspect")
    p.add_argument("--prompt", help="with --answer: a conversation, rendered with the chat template")
    p.add_argument("--answer", help="the assistant's answer to --prompt (its tokens are the ones scored)")
    p.add_argument("--system", help="an optional system message before --prompt")
    p.add_argument("--position", type=int, help="show the next-token choices after this token (-1: the last)")
    p.add_argument("--top-k", type=int, default=10, help="next-token choices shown")
    p.add_argument("--temperature", type=float, default=1.0, help="for the sampled next-token probabilities")
    p.add_argument("--top-p", type=float, default=1.0, help="for the sampled next-token probabilities")
    p.add_argument("--layer", type=int, help="show this layer's attention (from 0)")
    p.add_argument("--head", type=int, help="with --layer: one head (default: the mean over heads)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("generate", help="sample text from a model")
    p.add_argument("--model", default=str(DEFAULT_BASE_MODEL), help="model or run folder (default: shipped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context at every token")
    add_config_flags(p.add_argument_group("sampling"), SamplingConfig)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte on a text")
    p.add_argument("--model", default=str(DEFAULT_BASE_MODEL), help="model or run folder (default: shipped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--text", nargs="+", required=True, help="text files to score")
    p.add_argument("--max-chars", type=int, default=0, help="score only the first N characters")
    p.set_defaults(func=cmd_eval)
    return parser


def record_error(args: argparse.Namespace, error: Exception) -> None:
    """An error that ends a training command goes into its run's metrics file too (when the run folder
    exists, e.g. made by the studio), as a record the studio reads instead of parsing the console."""
    from llm.errors import LLMError
    from llm.run import MetricsWriter, RunDir

    if args.command not in ("pretrain", "finetune", "prefer") or not Path(args.out).is_dir():
        return
    path = Path(args.metrics) if args.metrics else RunDir(args.out).metrics
    record = {"event": "error", "message": str(error), "kind": "internal"}
    if isinstance(error, LLMError):
        record.update(message=error.message, field=error.field, kind=error.kind)
    MetricsWriter(path).append(record)


def main(argv: list[str] | None = None) -> int:
    from llm.errors import LLMError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LLMError as e:
        record_error(args, e)
        print(f"error: {e.worded(flag_for(e.field) if e.field else None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        record_error(args, e)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
