"""The command line, `python -m llm <command>`: the parser generated from the config dataclasses
(parser.py, flags.py) and the commands, each a thin wrapper over library functions (commands.py).

Errors in input or settings (llm.errors) print one line naming the flag and exit with code 2; anything else
is a bug and keeps its traceback. A training command's error is also recorded in its run's metrics file, for
the studio to read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RUN_COMMANDS = ("pretrain", "finetune", "prefer", "bench")  # commands whose --out is a run folder


def record_run_error(args: argparse.Namespace, error: BaseException) -> None:
    """An error that ends a run's command goes into its metrics file (when the run folder exists, e.g. made
    by the studio), unless the trainer recorded it already."""
    from llm.run import RunDir, record_error

    if args.command in RUN_COMMANDS and args.out and Path(args.out).is_dir():
        record_error(Path(getattr(args, "metrics", None) or RunDir(args.out).metrics), error)


def main(argv: list[str] | None = None) -> int:
    from llm.cli.flags import flag_for
    from llm.cli.parser import build_parser
    from llm.errors import LLMError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LLMError as e:
        record_run_error(args, e)
        print(f"error: {e.worded(flag_for(e.field) if e.field else None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        record_run_error(args, e)
        raise
    return 0
