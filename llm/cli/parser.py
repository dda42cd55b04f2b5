"""The parser of `python -m llm`: one sub-parser per command, its settings' flags generated from the config
dataclasses (llm/cli/flags.py), the rest (files, folders, formats) written here."""

from __future__ import annotations

import argparse

from llm.cli import commands
from llm.cli.flags import add_column_flags, add_config_flags
from llm.config import (
    DEFAULT_BASE_MODEL,
    TASK_FORMATS,
    BenchConfig,
    FinetuneConfig,
    ModelConfig,
    PreferConfig,
    PretrainConfig,
    SamplingConfig,
    TrainConfig,
)
from llm.model.export import FORMATS, GGUF_DTYPES, TORCH_DTYPES

SHIPPED = str(DEFAULT_BASE_MODEL)


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a SentencePiece BPE tokenizer")
    p.add_argument("--input", nargs="+", required=True, help="text files, folders or globs")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--max-chars", type=int, default=200_000_000, help="text used to learn the merges")
    p.add_argument("--out", required=True, help="output folder for tokenizer.model")
    p.set_defaults(func=commands.cmd_tokenizer)

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
    p.set_defaults(func=commands.cmd_prepare)


def add_run_flags(p: argparse.ArgumentParser, config: str) -> None:
    """What every training command takes: its run folder, a config file, resume, and where metrics go."""
    p.add_argument("--out", required=True, help="run folder: checkpoints in latest/ (and best/)")
    p.add_argument("--config", help=f"a {config} JSON file (flags given as well override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    p.add_argument("--metrics", help="metrics JSONL file (default: the run folder's)")


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="train a transformer from scratch: on prepared data, or on raw text")
    add_run_flags(p, "PretrainConfig")
    p.add_argument("--data", help="a folder made by `prepare` (or give --input text, or --config)")
    p.add_argument("--save-dtype", choices=list(TORCH_DTYPES), default="fp32", help="dtype of best/")
    raw = p.add_argument_group("from raw text (tokenizer and shards made in <out>/data); --preset, --sample-*")
    add_config_flags(raw, PretrainConfig, skip=("max_steps", "max_time"))
    add_config_flags(p.add_argument_group("model shape (default: the preset's)"), ModelConfig, ("vocab_size",), False)
    add_config_flags(p.add_argument_group("training"), TrainConfig)
    p.set_defaults(func=commands.cmd_pretrain)


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a model without its trainer state, as a Hugging Face folder or as GGUF")
    p.add_argument("--model", required=True, help="model or run folder (a LoRA run is merged into its base)")
    p.add_argument("--out", required=True, help="a folder (ours, hf) or a .gguf file")
    p.add_argument("--format", choices=FORMATS, default="ours", help="hf: a LlamaForCausalLM folder; gguf: llama.cpp")
    dtypes = sorted({*TORCH_DTYPES, *GGUF_DTYPES})
    defaults = ", ".join(f"{d} ({f})" for f, d in commands.EXPORT_DTYPES.items())
    p.add_argument("--dtype", choices=dtypes, help=f"q8_0: gguf only; default {defaults}")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("import", help="a Llama-family model (Hugging Face folder, .zip, .gguf or hub id) -> a model")
    p.add_argument(
        "--from", dest="source", required=True, help="a Hugging Face folder or .zip of one, a .gguf file, or a hub id"
    )
    p.add_argument("--out", required=True, help="the new model directory")
    p.set_defaults(func=commands.cmd_import)

    p = sub.add_parser("generate", help="sample text from a model")
    p.add_argument("--model", default=SHIPPED, help="model or run folder (default: shipped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context at every token")
    add_config_flags(p.add_argument_group("sampling"), SamplingConfig)
    p.set_defaults(func=commands.cmd_generate)


def add_task_data_flags(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="task file: .csv .tsv .json .jsonl .parquet")
    p.add_argument("--format", choices=["auto", *TASK_FORMATS], help="default: detected from the columns")
    add_column_flags(p)


def add_tuning_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on a task dataset (LoRA or full)")
    add_run_flags(p, "FinetuneConfig")
    add_task_data_flags(p, required=False)
    add_config_flags(p.add_argument_group("fine-tuning"), FinetuneConfig, ("data", "format"))
    p.set_defaults(func=commands.cmd_finetune)

    p = sub.add_parser("prefer", help="tune a model on preference pairs (DPO; LoRA or full)")
    add_run_flags(p, "PreferConfig")
    add_config_flags(p.add_argument_group("preference tuning"), PreferConfig)
    p.set_defaults(func=commands.cmd_prefer)


def add_scoring_flags(p: argparse.ArgumentParser, default_split: str, whose: str) -> None:
    """The flags eval-task and eval-prefer share: which rows, the seeds, answer length, the report file."""
    p.add_argument("--rows", type=int, default=None, help="a seeded sample of N rows (default: all)")
    p.add_argument("--split", choices=["all", "train", "val"], default=default_split, help="rows of a run's split")
    p.add_argument("--val-fraction", type=float, help=f"for --split (default: {whose}'s)")
    p.add_argument("--seed", type=int, help=f"row sample, split and sampling seed (default: {whose}'s)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", help="CSV of every answer (a .json with totals and rows is written beside it)")
    p.add_argument("--device", default="auto")


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="loss, perplexity and bits per byte on a text")
    p.add_argument("--model", default=SHIPPED, help="model or run folder (default: shipped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--text", nargs="+", required=True, help="text files to score")
    p.add_argument("--max-chars", type=int, default=0, help="score only the first N characters")
    p.set_defaults(func=commands.cmd_eval)

    p = sub.add_parser("eval-task", help="answer and score a task dataset; several models: a before/after table")
    p.add_argument("--model", action="append", help="model or run folder (repeatable; default: the shipped base)")
    add_task_data_flags(p, required=True)
    add_scoring_flags(p, "all", "finetune")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy answers")
    p.set_defaults(func=commands.cmd_eval_task)

    p = sub.add_parser("eval-prefer", help="win rate of a preference-tuned model over its base under a rule")
    p.add_argument("--model", required=True, help="the tuned model or run folder")
    p.add_argument("--base", help="the model to compare with (default: the tuned model's base)")
    p.add_argument("--data", required=True, help="preference file whose prompts are asked")
    p.add_argument("--rule", required=True, help="shorter, longer, ends-with-question, contains:TEXT, regex:PATTERN")
    add_scoring_flags(p, "val", "prefer")
    p.set_defaults(func=commands.cmd_eval_prefer)


def add_bench(sub: argparse._SubParsersAction) -> None:
    from llm.data.benchmarks import TASKS

    listing = "\n".join(f"  {t.name:<14} {t.about} ({t.split}; lm-eval version {t.version})" for t in TASKS.values())
    p = sub.add_parser(
        "bench",
        help="standard benchmarks (BLiMP, HellaSwag, ARC, PIQA, ...): zero-shot, scored as lm-evaluation-harness",
        epilog=f"tasks:\n{listing}\n  or a task file (.jsonl / .jsonl.gz, see datasets/benchmarks/MANIFEST.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="a BenchConfig JSON file (flags given as well override it)")
    p.add_argument("--out", help="a run folder for a studio job: progress goes into its metrics.jsonl")
    add_config_flags(p, BenchConfig)
    p.set_defaults(func=commands.cmd_bench)


def add_inspect(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=commands.cmd_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm", description="Build your own LLM: train, tune, sample.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_data_commands, add_pretrain, add_tuning_commands, add_model_commands, add_eval_commands):
        add(sub)
    add_inspect(sub)
    add_bench(sub)
    return parser
