"""The errors that mean "the input or settings are wrong": the CLI prints their message, not a traceback."""

from llm.checkpoint import CheckpointError
from llm.config import ConfigError
from llm.textio import InputError
from llm.tokenizer import TokenizerError
from llm.trainer import TrainingError

# ValueError covers the classes above and argument checks; OSError covers missing files and full disks.
USER_ERRORS = (InputError, TokenizerError, ConfigError, CheckpointError, TrainingError, ValueError, OSError)
