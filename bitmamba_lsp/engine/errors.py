"""The engine's errors: one module that every other engine module may import (it imports nothing)."""

from __future__ import annotations


class ModelFormatError(ValueError):
    """A model file is malformed. The message names the file, the tensor and the problem."""


class ModelNotFoundError(FileNotFoundError):
    """The named model could not be found (or downloaded). The message says what to do."""


class HubError(ModelNotFoundError):
    """A Hub model could not be resolved; the message is one actionable line."""


class TokenizerFormatError(ValueError):
    """A tokenizer file is malformed; the message names the file and the problem."""


class NoTokenizerError(RuntimeError):
    """Text was given to a model that has no tokenizer (it takes token ids only)."""
