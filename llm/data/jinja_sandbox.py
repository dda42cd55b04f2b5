"""Rendering an imported model's chat template (Jinja, from a file someone else wrote) with bounds on what it
may cost: transformers' sandbox (no attribute tricks, no mutation of the data) plus limits on the work and the
memory a template can ask for, so that a looping or exploding template is a clear error, never a hung or
killed process.

    loop work     every line the compiled template runs is counted (a trace function on its frames only):
                  at most MAX_LINES per rendering (a chat template runs a few dozen per message)
    output        the rendered text is counted as it streams out: at most MAX_CHARS characters
    big values    a number argument to any call or filter (range, center, indent, truncate ...) at most
                  MAX_ARGUMENT; a string or list made by *, +, ~ or % at most MAX_CHARS long; a power's exponent
                  at most MAX_EXPONENT; a format width at most 6 digits
Any error a template raises (its own raise_exception, a type error, a limit) comes out as TemplateLimitError or
jinja2's TemplateError, for llm/data/chat.py to word with the tokenizer's file.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from typing import Any

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_LINES = 2_000_000
MAX_CHARS = 1 << 22  # 4M characters: more than any context holds
MAX_ARGUMENT = 100_000
MAX_EXPONENT = 1_000
WIDE_FORMAT = re.compile(r"\d{7,}")  # a format width or precision of a million or more


class TemplateLimitError(SecurityError):
    """A template asked for more work or memory than a chat template needs."""


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_CHARS:
        raise TemplateLimitError(f"it builds a value of {len(value):,} items (at most {MAX_CHARS:,})")
    return value


def _check_arguments(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ARGUMENT:
            raise TemplateLimitError(f"it passes the number {value} to a call (at most {MAX_ARGUMENT:,})")


def _check_format(text: Any) -> None:
    if isinstance(text, str) and WIDE_FORMAT.search(text):
        raise TemplateLimitError("it formats with a width of a million characters or more")


def _guarded(function):
    """A filter that refuses huge number arguments (center(10**9) ...) and results."""

    @functools.wraps(function)  # keeps jinja's pass_context / pass_eval_context marks
    def filtered(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs)
        return _check_size(function(*args, **kwargs))

    return filtered


class _Generator(CodeGenerator):
    """Jinja's code generator, with `a ~ b` joined by BoundedSandbox.concat (which checks the size)."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """transformers' apply_chat_template environment (sandboxed, trim_blocks, lstrip_blocks, loop controls,
    raise_exception, tojson), with the bounds above."""

    code_generator_class = _Generator
    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        self.globals["raise_exception"] = _raise
        self.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
        self.filters = {name: _guarded(f) for name, f in self.filters.items()}

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's own signature)
        _check_arguments(args, kwargs)
        if getattr(__obj, "__name__", "") in ("format", "format_map"):  # "{:>9}".format(x): check the string
            _check_format(getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None))
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and (abs(right) > MAX_EXPONENT or _bits(left) > MAX_CHARS):
            raise TemplateLimitError(f"it raises a number to the power {right} (at most {MAX_EXPONENT})")
        if operator == "*" and isinstance(left, (str, list, tuple)) != isinstance(right, (str, list, tuple)):
            sequence, times = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
            if isinstance(times, int) and len(sequence) * times > MAX_CHARS:
                raise TemplateLimitError(f"it repeats a value {times:,} times (at most {MAX_CHARS:,} items)")
        if operator == "%":
            _check_format(left)
        return _check_size(super().call_binop(context, operator, left, right))

    def concat(self, parts: tuple) -> str:
        return _check_size("".join(str(part) for part in parts))


def _bits(value: Any) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@functools.cache
def compiled(template: str) -> jinja2.Template:
    return BoundedSandbox().from_string(template)


def render(template: str, **values: Any) -> str:
    """The template filled in, within the bounds (TemplateLimitError past one)."""
    lines = 0

    def count(frame, event: str, arg: Any):
        nonlocal lines
        lines += 1
        if lines > MAX_LINES:
            raise TemplateLimitError(f"it runs more than {MAX_LINES:,} steps (a loop that does not end?)")
        return count

    def trace(frame, event: str, arg: Any):  # only the template's own code is counted
        return count if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        parts, size = [], 0
        for part in compiled(template).generate(**values):
            size += len(part)
            if size > MAX_CHARS:
                raise TemplateLimitError(f"it writes more than {MAX_CHARS:,} characters")
            parts.append(part)
        return "".join(parts)
    finally:
        sys.settrace(previous)
