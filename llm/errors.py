"""The one error model: every error that means "the input or the settings are wrong" is an LLMError.

An LLMError carries the setting it concerns (`field`, a config field name such as "lr") and a `kind`, so
each front end can word it for its reader (the CLI names the flag, the studio the form field) and react to
it without reading its text. Anything else that escapes the library (a bare ValueError, an OSError, a
RuntimeError) is a bug or a machine problem and keeps its traceback.

This module imports nothing from llm, so every module can raise these.
"""

from __future__ import annotations


class LLMError(Exception):
    """Bad input or settings. str(e) names the field as written in code; worded() as a front end names it."""

    kind = "input"

    def __init__(self, message: str, field: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field
        if kind is not None:
            self.kind = kind

    def worded(self, name: str | None = None) -> str:
        """The message with the field called `name` (a flag, a form label), or as written in code."""
        if self.field is None:
            return self.message
        return f"{name or self.field} {self.message}"

    def __str__(self) -> str:
        return self.worded()


class ConfigError(LLMError):
    """A setting is wrong: field names it, the message says what it must be."""

    kind = "config"


class InputError(LLMError):
    """A text input (corpus file, folder, glob) cannot be read."""


class TokenizerError(LLMError):
    kind = "tokenizer"


class TaskFileError(LLMError):
    """A task dataset cannot be used; the message names the file and, where it applies, row and column.
    kind "columns": the file reads, but its columns must be named (a front end can offer them)."""

    kind = "data"


class CheckpointError(LLMError):
    kind = "checkpoint"


class TrainingError(LLMError):
    """A run cannot go on. kind "diverged": the loss became NaN/inf; "memory": the device ran out of memory."""

    kind = "training"
