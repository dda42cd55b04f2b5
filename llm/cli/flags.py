"""CLI flags generated from the config dataclasses' fields (llm/config.py): one name, default and help text,
and the one place that says how a config field is spelt as a flag.

Every flag defaults to None ("not given"), so a config built from the flags takes the dataclass's own
defaults, and a config loaded from a file (`--config`) is overridden only by the flags actually given.
A dict-typed field (a column mapping, model or train overrides) is not a flag: it comes from a config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from llm.config import CONFIGS, TASK_ROLES

# Fields whose flag is not their name (a list given one item at a time reads better in the singular).
FLAG_NAMES = {"probes": "--probe", "inputs": "--input", "sample_prompts": "--sample-prompt", "models": "--model"}
# Flags that are not config fields but name one: --prompt-column for mapping["prompt"], ...
COLUMN_FLAGS = {f"{role}_column": "mapping" for role in TASK_ROLES}


def flag_name(f: dataclasses.Field) -> str:
    return FLAG_NAMES.get(f.name) or "--" + f.name.replace("_", "-")


def cli_fields(cls) -> list[dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    return [f for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is not dict]


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, skip: tuple[str, ...] = (), defaults: bool = True
) -> None:
    """A flag per field of cls (not in skip). The help shows the default unless defaults=False (a preset
    or the data supplies it)."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if defaults and default not in (None, [], ""):
            help_text += f" (default {default})"
        kwargs: dict[str, Any] = {"default": None, "dest": f.name, "help": help_text}
        if hint is bool:
            parser.add_argument(flag_name(f), action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) is list:
            # Repeatable (--stop a --stop b) or several values at once (--probe a b).
            parser.add_argument(flag_name(f), nargs="+", action="extend", type=typing.get_args(hint)[0], **kwargs)
        else:
            scalar = next(h for h in typing.get_args(hint) or (hint,) if h is not type(None))
            parser.add_argument(flag_name(f), type=scalar, **kwargs)


def add_column_flags(parser: argparse.ArgumentParser) -> None:
    """--prompt-column, --response-column, --system-column: the task file's columns by role (the mapping)."""
    for role in TASK_ROLES:
        parser.add_argument(f"--{role}-column", help=f"the column holding the {role} (default: found by its name)")


def column_mapping(args: argparse.Namespace) -> dict[str, str]:
    """The mapping the --*-column flags give: {role: column}."""
    return {role: getattr(args, f"{role}_column") for role in TASK_ROLES if getattr(args, f"{role}_column", None)}


def given(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of cls that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if getattr(args, f.name, None) is not None}


def config_from_args(cls, args: argparse.Namespace, base: dict[str, Any] | None = None, **overrides: Any):
    """cls from base (e.g. a config file's fields), then the flags given, then overrides."""
    return cls.from_dict({**(base or {}), **given(args, cls), **overrides})


def flag_for(field: str) -> str:
    """How the CLI names a config field in messages (--lr for lr, --probe for probes)."""
    if field == "mapping":
        return "--" + " / --".join(f"{role}-column" for role in TASK_ROLES)
    for cls in CONFIGS:
        named = {f.name: flag_name(f) for f in dataclasses.fields(cls)}
        if field in named:
            return named[field]
    return "--" + field.replace("_", "-")
