"""The commands of `python -m llm`: each reads its parsed flags, calls the library and prints the outcome.
Errors are raised as the library raises them; llm.cli.main words them and records a run's error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm.cli.flags import column_mapping, config_from_args, given
from llm.config import (
    DEFAULT_BASE_MODEL,
    DEFAULT_PRESET,
    BenchConfig,
    FinetuneConfig,
    ModelConfig,
    PreferConfig,
    PretrainConfig,
    SamplingConfig,
    TrainConfig,
    load_json,
)
from llm.errors import ConfigError

EXPORT_DTYPES = {"ours": "fp16", "hf": "fp32", "gguf": "fp16"}  # export's --dtype when none is given


def torch_dtype(name: str | None):
    """A dtype named as the --save-dtype flag names it (fp32: None, the weights as they are)."""
    from llm.model.export import TORCH_DTYPES

    return TORCH_DTYPES[name or "fp32"]


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from llm.data.text import expand_inputs
    from llm.data.tokenizer import train_tokenizer

    tok = train_tokenizer(expand_inputs(args.input), args.out, args.vocab_size, args.max_chars)
    print(f"tokenizer with {tok.vocab_size} tokens written to {args.out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from llm.data.corpus import prepare
    from llm.data.text import expand_inputs

    meta = prepare(
        expand_inputs(args.input), args.tokenizer, args.out, args.val_fraction, args.workers, args.shard_tokens,
        args.text_field, args.seed, progress=not args.quiet,
    )  # fmt: skip
    mb_s = meta["bytes"] / 1e6 / max(meta["seconds"], 1e-9)
    print(
        f"{meta['tokens']['train']:,} train and {meta['tokens']['val']:,} val tokens "
        f"({meta['dtype']}) in {args.out}, {meta['seconds']:.1f} s, {mb_s:.2f} MB/s"
    )


def cmd_pretrain(args: argparse.Namespace) -> None:
    from llm.config import preset
    from llm.run import RunDir, is_main_process
    from llm.train import pretrain as lib

    save_dtype = torch_dtype(args.save_dtype)
    budgets = {k: v for k, v in given(args, TrainConfig).items() if k in ("max_steps", "max_time", "device")}
    if args.config or args.inputs:  # from raw text: tokenizer, shards and training in one command
        if args.resume:
            raise ConfigError("continues the run with its own settings: give --out and --resume only", field="config")
        cfg = pretrain_config(args)
        if is_main_process():
            print_pretrain_plan(cfg, lib.plan(cfg))
        lib.pretrain_text(cfg, args.out, args.metrics, save_dtype, progress=True)
        return
    if args.resume and not args.data:  # the run knows its data (a run from raw text keeps it inside)
        lib.resume(args.out, **budgets, metrics_path=args.metrics, save_dtype=save_dtype)
        return
    if not args.data:
        raise ConfigError("is required: a folder made by `prepare` (or --input text files, or --config)", field="data")
    model_cfg = preset(args.preset or DEFAULT_PRESET, **given(args, ModelConfig))
    if args.resume:  # the run's own settings; only the budgets and the device given here change
        train_cfg = TrainConfig.from_dict(RunDir(args.out).resumed_train_settings(**budgets))
    elif "max_time" in budgets and "max_steps" not in budgets:  # a time budget alone: the run follows the clock
        train_cfg = config_from_args(TrainConfig, args, max_steps=0)
    else:
        train_cfg = config_from_args(TrainConfig, args)
    lib.pretrain(
        args.data, args.out, model_cfg, train_cfg, resume=args.resume, metrics_path=args.metrics,
        save_dtype=save_dtype, sample_prompts=args.sample_prompts or lib.DEFAULT_SAMPLE_PROMPTS,
        sample_tokens=lib.DEFAULT_SAMPLE_TOKENS if args.sample_tokens is None else args.sample_tokens,
    )  # fmt: skip


def print_pretrain_plan(cfg: PretrainConfig, plan: dict) -> None:
    steps = f"about {plan['max_steps']:,} steps" if plan["steps_from_time"] else f"{plan['max_steps']:,} steps"
    print(
        f"pretraining a {plan['params']:,}-parameter model ({cfg.preset}, vocabulary {plan['vocab_size']:,}) on "
        f"{plan['device']}: {steps} of {plan['tokens_per_step']:,} tokens ({plan['step_seconds']:.3g} s a step, "
        f"measured), about {plan['est_seconds']:.0f} s",
        flush=True,
    )


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """PretrainConfig from --config's file, then the flags given: its own, the shape's (into model) and the
    training's (budgets into their fields, the rest into train)."""
    saved = load_json(PretrainConfig, args.config).to_dict() if args.config else {}
    training = given(args, TrainConfig)
    overrides = {k: training.pop(k) for k in ("max_steps", "max_time") if k in training}
    shape = {k: v for k, v in given(args, ModelConfig).items() if k != "vocab_size"}  # --vocab-size: the tokenizer's
    model = {**saved.get("model", {}), **shape}
    train = {**saved.get("train", {}), **training}
    return config_from_args(PretrainConfig, args, saved, model=model, train=train, **overrides)


def cmd_generate(args: argparse.Namespace) -> None:
    from llm.data.chat import user_messages
    from llm.device import pick_device
    from llm.model.checkpoint import load_model
    from llm.model.generate import stream_chat, stream_text

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
    from llm.data.text import expand_inputs, iter_documents
    from llm.device import pick_device
    from llm.eval.perplexity import score_text
    from llm.model.checkpoint import load_model

    model, tok, _ = load_model(args.model, pick_device(args.device))
    text = "".join(iter_documents(expand_inputs(args.text)))
    if args.max_chars:
        text = text[: args.max_chars]
    print(json.dumps(score_text(model, tok, text).to_dict(), indent=2))


def cmd_inspect(args: argparse.Namespace) -> None:
    from llm.device import pick_device
    from llm.eval.inside import format_report, inspect_text

    result = inspect_text(
        args.model or [str(DEFAULT_BASE_MODEL)], args.text, args.prompt, args.answer, args.system,
        pick_device(args.device), position=args.position, top_k=args.top_k, temperature=args.temperature,
        top_p=args.top_p, layer=args.layer, head=args.head,
    )  # fmt: skip
    print(json.dumps(result, indent=1) if args.json else format_report(result))


def cmd_export(args: argparse.Namespace) -> None:
    from llm.model.checkpoint import resolve
    from llm.model.export import export_model, output_size

    dtype = args.dtype or EXPORT_DTYPES[args.format]
    target = export_model(args.model, args.out, args.format, dtype)
    what = {"hf": "Hugging Face LlamaForCausalLM", "gguf": "GGUF for llama.cpp", "ours": "no trainer state"}
    print(f"{resolve(args.model)} -> {target} ({what[args.format]}, {dtype}, {output_size(target) / 1e6:.1f} MB)")


def cmd_import(args: argparse.Namespace) -> None:
    from llm.model.checkpoint import read_info
    from llm.model.sources import import_model, imported_summary

    target = import_model(args.source, args.out)
    print(f"{args.source} -> {target} ({imported_summary(read_info(target))})")


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

    empty = RunDir(out).read_metrics().empty_answers()
    if empty:
        print(
            f"warning: {empty[0]} of {empty[1]} greedy answers to training prompts are empty: the model learnt "
            "to stop at once (check that the answers fit the context in the data summary)"
        )
    best = f", best validation loss {result.best_val_loss:.4f}" if result.best_val_loss < float("inf") else ""
    print(f"{result.reason} at step {result.step}{best}: the model is in {out}")


def resume_tuning(resume, cls, args: argparse.Namespace):
    """Continue a tuning run with its own settings: only --max-steps and --device given here change."""
    budgets = given(args, cls)
    return resume(args.out, budgets.get("max_steps"), budgets.get("device"), args.metrics)


def cmd_finetune(args: argparse.Namespace) -> None:
    from llm.train import finetune

    if args.resume:
        result = resume_tuning(finetune.resume, FinetuneConfig, args)
    else:
        saved = load_json(FinetuneConfig, args.config).to_dict() if args.config else {}
        mapping = {**saved.get("mapping", {}), **column_mapping(args)}
        cfg = config_from_args(FinetuneConfig, args, saved, mapping=mapping)
        prep = finetune.prepare(cfg)
        print_data_summary(prep.summary())
        plan = finetune.plan(prep)
        print(
            f"{plan['method']} fine-tuning of {plan['base']} on {plan['device']}: {plan['trainable_params']:,} of "
            f"{plan['params']:,} parameters trained, {plan['train_examples']} train / {plan['val_examples']} val "
            f"examples, {plan['max_steps']} steps (batch {plan['batch_size']}, lr {plan['lr']:g}), "
            f"about {plan['est_seconds']:.0f} s ({plan['est_step_seconds']:.2f} s a step, timed)"
        )
        result = finetune.finetune(prep, args.out, args.metrics)
    print_run_end(args.out, result)
    print(f'try it: python -m llm generate --model {args.out} --chat --temperature 0 --prompt "..."')


def cmd_prefer(args: argparse.Namespace) -> None:
    from llm.train import prefer

    if args.resume:
        result = resume_tuning(prefer.resume, PreferConfig, args)
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


def write_report(out: str, table, report: dict) -> None:
    """A scoring command's rows as CSV in out and {report, rows} as JSON beside it, each file whole or not
    at all."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers = (
        (path, lambda p: table.to_csv(p, index=False)),
        (path.with_suffix(".json"), lambda p: p.write_text(json.dumps(report, indent=1) + "\n")),
    )
    for target, write in writers:
        tmp = target.with_name(f".{target.name}.tmp")
        write(tmp)
        tmp.replace(target)
    print(f"rows in {path}, totals and rows in {path.with_suffix('.json')}")


def held_out_split(data, split: str, val_fraction: float, seed: int):
    """The rows of a run's split: "all", or the "train" or "val" side of the one held-out split."""
    from llm.data.tasks import split_examples

    if split == "all":
        return data
    train, val = split_examples(data, val_fraction, seed)
    return val if split == "val" else train


def cmd_eval_prefer(args: argparse.Namespace) -> None:
    from llm.data.preferences import read_preference_file
    from llm.eval import preferences

    rule = preferences.parse_rule(args.rule)
    defaults = PreferConfig()
    val_fraction = defaults.val_fraction if args.val_fraction is None else args.val_fraction
    seed = defaults.seed if args.seed is None else args.seed
    data = held_out_split(read_preference_file(args.data), args.split, val_fraction, seed)
    print(f"{args.data}: {len(data.examples)} prompts ({args.split}), rule {rule}", flush=True)
    totals, table = preferences.win_rate(
        args.model, args.base, data, rule, args.rows, args.seed or 0, args.max_new_tokens, device=args.device
    )
    print(json.dumps(totals, indent=2))
    if args.out:
        write_report(args.out, table, {"totals": totals, "rows": table.to_dict("records")})


def cmd_eval_task(args: argparse.Namespace) -> None:
    from llm.data import tasks
    from llm.eval import tasks as scoring
    from llm.train.tuning import base_directory

    models = args.model or [str(DEFAULT_BASE_MODEL)]
    seed = FinetuneConfig().seed if args.seed is None else args.seed
    for model in models:
        base_directory(model)  # a clear message for a missing model before reading anything else
    data = tasks.read_task_file(args.data, args.format or "auto", column_mapping(args))
    data = held_out_split(data, args.split, args.val_fraction, seed)
    print(f"{args.data}: {len(data.examples)} rows ({args.split}), {len(models)} model(s)", flush=True)
    table = scoring.evaluate_models(models, data, args.rows, seed, args.max_new_tokens, args.temperature, args.device)
    totals = scoring.totals(table)
    print(totals.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        settings = {"rows": args.rows, "seed": seed, "max_new_tokens": args.max_new_tokens}
        report = {
            "data": {"path": str(args.data), "content_hash": data.content_hash, "split": args.split},
            "settings": {**settings, "temperature": args.temperature},
            "totals": totals.to_dict("records"),
            "rows": table.to_dict("records"),
        }
        write_report(args.out, table, report)


def cmd_bench(args: argparse.Namespace) -> None:
    import signal

    from llm.eval import bench
    from llm.run import RunDir

    saved = load_json(BenchConfig, args.config).to_dict() if args.config else {}
    cfg = config_from_args(BenchConfig, args, saved)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # the studio's Stop: a "stopped" record, then exit
    results = bench.run_bench(cfg, RunDir(args.out).metrics if args.out else None, bench.ProgressLine())
    print(bench.format_table(results))
    if cfg.save_results:
        print(f"saved in each model's directory ({bench.BENCHMARKS})")
